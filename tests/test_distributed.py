"""Distributed data parallel training on CPU with gloo: two real processes."""

import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp
from conftest import free_port

from wildwatch.config import TrainConfig
from wildwatch.engine.train import fit


def _cfg(data, out, batch):
    return TrainConfig(data=data, out=out, model="seed_m4_gap", image_size=32, batch_size=batch, lr=3e-3, epochs=5,
                       step_size=4, workers=0, device="cpu", ratios=(0.6, 0.2, 0.2))


def _worker(rank: int, world: int, port: int, data: str, out: str, result_dir: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    result = fit(_cfg(Path(data), Path(out), batch=8), progress=False)
    torch.save({"state": result.model.state_dict(), "best_val_acc": result.best_val_acc},
               Path(result_dir) / f"rank{rank}.pt")


def test_two_processes_end_with_identical_weights(shapes_dir, tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(shapes_dir), str(tmp_path / "ddp"), str(tmp_path)), nprocs=2)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), k
    assert r0["best_val_acc"] == r1["best_val_acc"]  # validation metrics are reduced over both shards
    assert (tmp_path / "ddp" / "model.safetensors").exists() and (tmp_path / "ddp" / "history.csv").exists()
    # same global batch (2 x 8) in one process: accuracy within noise
    single = fit(_cfg(shapes_dir, tmp_path / "single", batch=16), progress=False)
    assert r0["best_val_acc"] >= 0.75 and single.best_val_acc >= 0.75
    assert abs(r0["best_val_acc"] - single.best_val_acc) <= 0.2


def test_torchrun_launch_through_the_cli(shapes_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
           "-m", "wildwatch", "train", "--data", str(shapes_dir), "--model", "seed_m4_gap", "--epochs", "2",
           "--image-size", "32", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--distributed",
           "--out", str(out), "--ratios", "0.6,0.2,0.2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len((out / "history.csv").read_text().splitlines()) == 3  # header + 2 epochs, written once
    assert '"processes": 2' in (out / "model.json").read_text()
    resumed = subprocess.run(cmd[:-4] + ["--epochs", "3", "--resume", "--out", str(out), "--ratios", "0.6,0.2,0.2"],
                             capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len((out / "history.csv").read_text().splitlines()) == 4
