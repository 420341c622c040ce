"""Class-activation overlays (Grad-CAM on ConvNeXt's last stage) with torchcam, an optional dependency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lit_convnext.data.images import load_rgb
from lit_convnext.data.transforms import build_eval_transform
from lit_convnext.evaluation.report.figures import denormalise

#: Shown in the report instead of the overlays when torchcam is not installed.
CAM_MISSING = "Install the report extra for class-activation overlays: pip install 'lit-convnext[report]' (torchcam)."


def cam_available() -> bool:
    try:
        import torchcam  # noqa: F401
    except ImportError:
        return False
    return True


def cam_overlays(model: Any, paths: list[Path], classes: list[int]) -> list[Image.Image]:
    """Each image as the network saw it (resized, cropped) with Grad-CAM for ``classes[i]`` laid over it."""
    from torchcam.methods import GradCAM
    from torchcam.utils import overlay_mask

    net = model.net
    transform = build_eval_transform(model.preprocessing)
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    extractor = GradCAM(net, target_layer=net.stages[-1], input_shape=tuple(model.preprocessing["input_size"]))
    overlays = []
    try:
        # One batched forward and backward for all images (torchcam takes one class index per image).
        with torch.enable_grad():
            x = torch.stack([transform(load_rgb(Path(path))) for path in paths]).to(device).requires_grad_(True)
            cams = extractor([int(c) for c in classes], net(x))[0].detach().float().cpu()
        seen = denormalise(x.detach(), model.preprocessing).permute(0, 2, 3, 1).numpy()
        for picture, cam in zip(seen, cams):
            image = Image.fromarray((picture * 255).astype("uint8"))
            overlays.append(overlay_mask(image, Image.fromarray(cam.numpy()), alpha=0.55))
    finally:
        extractor.remove_hooks()
        net.train(was_training)
    return overlays
