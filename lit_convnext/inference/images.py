"""The labelled images an export is checked on and the images INT8 is calibrated on, as model-ready tensors.

By default both are the run's validation images, found from the checkpoint's run record (``config.yaml`` and any
``split_manifest.csv`` in the run folder above ``checkpoints/``), so the check is on the user's own data.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lit_convnext.data.datasets import decode_error
from lit_convnext.data.folders import class_folders, iter_images, scan_split
from lit_convnext.data.labels import multi_hot, sample_labels
from lit_convnext.data.transforms import build_eval_transform, eval_decode_size
from lit_convnext.errors import UserError
from lit_convnext.text import preview


@dataclass(frozen=True)
class ImageSet:
    """Image files with their class indices, or (multi-label) one multi-hot row per image (``None``: unlabelled,
    good for calibration only)."""

    paths: list[Path]
    targets: list[int] | list[list[float]] | None
    #: Where they came from, for messages and the report.
    source: str


def folder_images(folder: Path, class_names: list[str], purpose: str, labelled: bool = True) -> ImageSet:
    """The images of ``folder``: class sub-folders named as the model's classes, or (``labelled=False``) any images.

    Empty folders and class folders the model does not know are one-line errors, before any work is done.
    """
    folder = Path(folder).expanduser()
    option = f"--{purpose}_dir"
    if not folder.is_dir():
        raise UserError(f"{option} {folder} is not a folder; pass a folder of images in class sub-folders")
    if class_folders(folder) or labelled:
        per_class = scan_split(folder)
        unknown = sorted(set(per_class) - set(class_names))
        if unknown:
            raise UserError(f"{option} {folder} has classes the model does not know: {preview(unknown, 5)}; the "
                            f"model's classes are {preview(class_names, 8)}")
        index = {name: i for i, name in enumerate(class_names)}
        pairs = [(path, index[name]) for name, paths in per_class.items() for path in paths]
        return ImageSet([p for p, _ in pairs], [t for _, t in pairs], str(folder))
    paths = list(iter_images(folder))
    if not paths:
        raise UserError(f"{option} {folder} holds no images; pass a folder of images like the ones the model sees")
    return ImageSet(paths, None, str(folder))


def validation_images(ckpt_path: Path, class_names: list[str]) -> ImageSet:
    """The validation images of the run that wrote ``ckpt_path``, from its run folder's ``config.yaml``."""
    import yaml

    from lit_convnext.data.datamodule import SPLIT_MANIFEST_NAME, ImageFolderDataModule

    run = Path(ckpt_path).expanduser().resolve().parent.parent
    config_path = run / "config.yaml"
    if not config_path.is_file():
        raise UserError(f"no run record ({config_path}) beside {ckpt_path} to find its validation images: pass "
                        "--check_dir (and --calibration_dir for --int8) with images in class sub-folders")
    data: dict[str, Any] = dict((yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}).get("data") or {})
    if data.get("root") is None and data.get("labels") is None:
        raise UserError(f"{config_path} names no data.root: pass --check_dir with images in class sub-folders")
    manifest = run / SPLIT_MANIFEST_NAME
    if data.get("split_manifest") is None and manifest.is_file():
        data["split_manifest"] = manifest  # the split the run drew, exactly
    keys = set(inspect.signature(ImageFolderDataModule).parameters) - {"augmentation", "predict_dir"}
    module = ImageFolderDataModule(**{k: v for k, v in data.items() if k in keys})
    splits = module.splits
    source = f"the run's validation images ({data.get('root') or data.get('labels')})"
    index = {name: i for i, name in enumerate(class_names)}
    if module.task == "multilabel":
        if not splits.val or any(name not in index for sample in splits.val for name in sample_labels(sample)):
            raise UserError(f"the validation images of {config_path} do not match the checkpoint's classes; "
                            "export the checkpoint from the run folder it was trained in")
        return ImageSet([s.path for s in splits.val], multi_hot(splits.val, class_names).tolist(), source)
    if not splits.val or any(sample.class_name not in index for sample in splits.val):
        raise UserError(f"the validation images of {config_path} do not match the checkpoint's classes: pass "
                        "--check_dir with images in class sub-folders")
    return ImageSet([s.path for s in splits.val], [index[s.class_name] for s in splits.val], source)


def load_tensors(images: ImageSet, preprocessing: dict[str, Any]) -> torch.Tensor:
    """All images as one float32 NCHW tensor with the model's evaluation transform; an unreadable file is an error."""
    transform = build_eval_transform(preprocessing)
    decode_size = eval_decode_size(preprocessing)
    tensors = []
    for path in images.paths:
        image, reason = decode_error(path, decode_size)
        if image is None:
            raise UserError(f"cannot read {path}: {reason}; remove it from {images.source} or fix it")
        tensors.append(transform(image))
    return torch.stack(tensors)
