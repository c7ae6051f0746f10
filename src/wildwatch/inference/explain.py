"""Grad-CAM: where in the photo the model looked (Selvaraju et al., ICCV 2017).

The target is the backbone's last convolutional stage (EfficientNet-Lite: the 1280-channel head
convolution; the seed CNNs: their last conv block). Channel weights are the spatial mean of the
gradient of the chosen class's logit; the map is ReLU(Σ_c w_c A_c), upsampled and overlaid.
"""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image

from wildwatch.models.interface import as_network


def gradcam(model: torch.nn.Module, x: torch.Tensor, class_index: int | None = None) -> tuple[np.ndarray, int]:
    """A [H, W] map in [0, 1] at the input's resolution, and the class it explains."""
    network = as_network(model.eval())
    x = x.detach().requires_grad_(False)
    with torch.enable_grad():
        fmap, logits = network.last_conv_map(x[None] if x.dim() == 3 else x)
        fmap.retain_grad()
        idx = int(logits[0].argmax()) if class_index is None else class_index
        logits[0, idx].backward()
    assert fmap.grad is not None  # retained above, filled by backward()
    weights = fmap.grad.mean((2, 3), keepdim=True)
    cam = F.relu((weights * fmap).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0].detach()
    cam = cam - cam.min()
    peak = float(cam.max())
    return (cam / peak).numpy() if peak > 0 else cam.numpy(), idx


def overlay(image: Image.Image, cam: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The heatmap (jet colours) blended over the image, at the image's size."""
    heat = Image.fromarray(np.uint8(cam * 255)).resize(image.size, Image.Resampling.BILINEAR)
    colours = colormaps["jet"](np.asarray(heat) / 255.0)[..., :3]
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return Image.fromarray(np.uint8(np.clip((1 - alpha) * base + alpha * colours, 0, 1) * 255))


def explained_class(predictor, prediction) -> int | None:
    """The class a prediction's heatmap shows: the species in its row (with ``--robust`` named by
    the other network, so not always the model's own top class); None: the model's top class."""
    shown = prediction.top_k[0]["species"] if prediction.top_k else None
    return predictor.classes.index(shown) if shown in predictor.classes else None


def explain_image(predictor, image: Image.Image, class_index: int | None = None) -> Image.Image:
    """Grad-CAM overlay for one image with a Predictor's model and preprocessing (always PyTorch:
    the gradient is needed). The overlay is drawn on the centre crop the model saw."""
    pre = predictor.preprocess
    x = predictor.transform()(image.convert("RGB"))
    cam, _ = gradcam(predictor.model, x, class_index)
    shown = image.convert("RGB")
    w, h = shown.size
    scale = pre.resize_size / min(w, h)
    shown = shown.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    w, h = shown.size
    left, top = (w - pre.image_size) // 2, (h - pre.image_size) // 2
    shown = shown.crop((left, top, left + pre.image_size, top + pre.image_size))
    return overlay(shown, cam)


def png_base64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
