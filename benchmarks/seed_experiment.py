"""Train seed CNNs on a packed data set (see pack_dataset.py) with augmentation on the GPU,
and score them on the clean test split and on low-quality versions of it.

One run per process; prints one JSON line and writes it to --out. Used for the pooling
experiment (max / avg / fuzzy / fuzzy1, several seeds) and for the seed's full recipe:

    python benchmarks/seed_experiment.py --pack .devdata/endangered11_232.npz --model seed_m4_gap \
        --pool fuzzy --seed 0 --image-size 112 --epochs 30 --batch-size 32 --lr 1e-3 --out res.json
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from wildwatch.models import create_model

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def load_pack(path: Path, side: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, list[str]]:
    z = np.load(path, allow_pickle=False)
    jpeg, off = z["jpeg"], z["offsets"]

    def decode(i):
        img = Image.open(io.BytesIO(jpeg[off[i]:off[i + 1]].tobytes())).convert("RGB")
        if img.size[0] != side:
            img = img.resize((side, side), Image.BICUBIC)
        return np.asarray(img)

    with ThreadPoolExecutor(16) as pool:
        arr = np.stack(list(pool.map(decode, range(len(off) - 1))))
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(z["labels"]).long(), z["part"], [str(c) for c in z["classes"]]


def augment(xb: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """Random resized crop (area 25-100%, aspect 3/4-4/3), flip and brightness/contrast, batched."""
    n, dev = len(xb), xb.device
    area = torch.empty(n).uniform_(0.25, 1.0, generator=g)
    logr = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g)
    sx = torch.sqrt(area * torch.exp(logr)).clamp(max=1)
    sy = torch.sqrt(area / torch.exp(logr)).clamp(max=1)
    tx = (torch.rand(n, generator=g) * 2 - 1) * (1 - sx)
    ty = (torch.rand(n, generator=g) * 2 - 1) * (1 - sy)
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * flip, tx, sy, ty
    grid = F.affine_grid(theta.to(dev), (n, 3, size, size), align_corners=False)
    out = F.grid_sample(xb.float() / 255, grid, mode="bilinear", align_corners=False)
    b = torch.empty(n, 1, 1, 1).uniform_(0.7, 1.3, generator=g).to(dev)
    c = torch.empty(n, 1, 1, 1).uniform_(0.7, 1.3, generator=g).to(dev)
    m = out.mean((1, 2, 3), keepdim=True)
    out = ((out - m) * c + m * b).clamp(0, 1)
    return (out - MEAN.to(dev)) / STD.to(dev)


def eval_view(xb: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the square to size/0.875 and centre-crop size (as the eval transform does)."""
    big = round(size / 0.875)
    out = F.interpolate(xb.float() / 255, size=(big, big), mode="bilinear", antialias=True, align_corners=False)
    o = (big - size) // 2
    return out[:, :, o:o + size, o:o + size]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = math.ceil(3 * sigma)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, device=x.device, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    out = []
    for im in (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy():
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().to(x.device) / 255


def low_quality_views(x01: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    """The clean test images in [0,1] and four degraded versions."""
    g = torch.Generator(device="cpu").manual_seed(123)
    noise = torch.randn(x01.shape, generator=g).to(x01.device) * 0.1
    small = F.interpolate(x01, size=(size // 4, size // 4), mode="bilinear", antialias=True, align_corners=False)
    return {
        "clean": x01,
        "gaussian_blur_s1.5": gaussian_blur(x01, 1.5 * size / 112),
        "gaussian_noise_0.1": (x01 + noise).clamp(0, 1),
        "jpeg_q10": jpeg(x01, 10),
        "downscale_4x": F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False),
    }


@torch.no_grad()
def accuracy(model, x01: torch.Tensor, y: torch.Tensor, dev, bs: int = 256) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(y), bs):
        xb = ((x01[i:i + bs].to(dev) - MEAN.to(dev)) / STD.to(dev))
        correct += (model(xb).argmax(1).cpu() == y[i:i + bs]).sum().item()
    return correct / len(y)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pack", type=Path, required=True)
    ap.add_argument("--model", default="seed_m4_gap")
    ap.add_argument("--pool", default="max")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--step-size", type=int, default=10)
    ap.add_argument("--gamma", type=float, default=0.5)
    ap.add_argument("--max-minutes", type=float, default=1e9, help="stop early (reported) after this long")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    t_start = time.perf_counter()
    dev = torch.device(a.device)
    torch.manual_seed(a.seed)
    side = max(a.image_size + a.image_size // 7, round(a.image_size / 0.875))
    x, y, part, classes = load_pack(a.pack, side)
    tr, va, te = (np.nonzero(part == i)[0] for i in range(3))
    x_train, y_train = x[tr].to(dev), y[tr]
    val01 = eval_view(x[va].to(dev), a.image_size)
    test01 = eval_view(x[te].to(dev), a.image_size)
    model = create_model(a.model, len(classes), image_size=a.image_size, pool=a.pool).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, a.step_size, a.gamma)
    g = torch.Generator().manual_seed(a.seed)
    best, best_state, history, train_imgs, train_time = -1.0, None, [], 0, 0.0
    for epoch in range(a.epochs):
        if (time.perf_counter() - t_start) / 60 > a.max_minutes:
            break
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(tr), generator=g)
        n_batches = len(perm) // a.batch_size
        for b in range(n_batches):
            idx = perm[b * a.batch_size:(b + 1) * a.batch_size]
            xb = augment(x_train[idx.to(dev)], a.image_size, g)
            loss = F.cross_entropy(model(xb), y_train[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        train_time += time.perf_counter() - t0
        train_imgs += n_batches * a.batch_size
        sched.step()
        va_acc = accuracy(model, val01, y[va], dev)
        history.append({"epoch": epoch + 1, "loss": round(loss.item(), 4), "val_acc": round(va_acc, 4)})
        if va_acc > best:
            best = va_acc
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    views = low_quality_views(test01, a.image_size)
    accs = {k: round(accuracy(model, v, y[te], dev), 5) for k, v in views.items()}
    # inference speed: batches of 256 of the test set, best of 3
    model.eval()
    xb = ((test01[:256] - MEAN.to(dev)) / STD.to(dev))
    speeds = []
    with torch.no_grad():
        for _ in range(3):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(xb)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            speeds.append(len(xb) / (time.perf_counter() - t0))
    result = {"model": a.model, "pool": a.pool, "seed": a.seed, "image_size": a.image_size, "epochs_run": len(history),
              "epochs_planned": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "best_val_acc": round(best, 5),
              "test": accs, "train_img_per_s": round(train_imgs / max(train_time, 1e-9), 1),
              "infer_img_per_s": round(max(speeds), 1), "device": str(torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"),
              "n": {"train": len(tr), "val": len(va), "test": len(te)}, "minutes": round((time.perf_counter() - t_start) / 60, 2),
              "history": history}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "history"}))


if __name__ == "__main__":
    main()
