"""Images/second per loader worker: lit-convnext's dataset vs torchvision ImageFolder + timm transforms.

Both use the very same timm train/eval transforms (built from the model's preprocessing); the app
differs in how it decodes (``load_rgb`` with reduced-size JPEG decoding). Each worker decodes and
transforms one image at a time, so single-process throughput is the per-worker figure; multiply by
``--data.num_workers`` (up to the core count) for a loader's ceiling.

    python benchmarks/dataloader.py                # 12 MP and 0.3 MP folders, a few minutes
    python benchmarks/dataloader.py --count 8      # quicker
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import photos  # noqa: F401  (puts the repository on sys.path)
import torch
import torchvision
from photos import make_photo_folder
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms import v2

from lit_convnext.data.datasets import LabeledImages
from lit_convnext.data.transforms import (
    TrainAugmentation,
    build_eval_transform,
    build_train_transform,
    eval_decode_size,
    train_decode_size,
)


def preprocessing_for(image_size: int) -> dict:
    """convnext_tiny's pretrained config (timm) at ``image_size``."""
    import timm
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(timm.create_model("convnext_tiny", pretrained=False))
    return {**config, "input_size": [3, image_size, image_size]}


def rate(dataset, seconds: float) -> float:
    """Images per second of ``dataset[i]`` in this process, at least one full pass and ``seconds``."""
    dataset[0]  # warm caches
    start, n = time.perf_counter(), 0
    while True:
        for i in range(len(dataset)):
            dataset[i]
            n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


class TorchvisionDecodeEval(torch.utils.data.Dataset):
    """Alternative eval path: ``torchvision.io.decode_jpeg`` (full size) + tensor resize/crop/normalise."""

    def __init__(self, paths, preprocessing):
        size = preprocessing["input_size"][-1]
        self.paths = paths
        self.transform = v2.Compose([
            v2.Resize(int(size / preprocessing["crop_pct"]), antialias=True,
                      interpolation=v2.InterpolationMode.BICUBIC),
            v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(preprocessing["mean"], preprocessing["std"]),
        ])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(decode_jpeg(read_file(str(self.paths[i])), mode=ImageReadMode.RGB)), 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("/tmp/lit_convnext_bench"))
    parser.add_argument("--count", type=int, default=24, help="images per folder")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=5.0, help="minimum time per measurement")
    parser.add_argument("--sizes", default="4000x3000,640x480")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a loader worker is one thread

    preprocessing = preprocessing_for(args.image_size)
    augmentation = TrainAugmentation()
    transforms = {"train": build_train_transform(preprocessing, augmentation),
                  "eval": build_eval_transform(preprocessing)}
    decode = {"train": train_decode_size(preprocessing, augmentation), "eval": eval_decode_size(preprocessing)}
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {args.image_size} px, "
          f"decode short side >= train {decode['train']} / eval {decode['eval']} px, 1 thread per worker")
    print(f"{'folder':>10} {'transform':>9} {'variant':<40} {'img/s/worker':>12} {'vs baseline':>11}")
    for spec in args.sizes.split(","):
        width, height = map(int, spec.split("x"))
        root = make_photo_folder(args.root / spec, width, height, args.count)
        for stage in ("train", "eval"):
            baseline_ds = torchvision.datasets.ImageFolder(str(root), transform=transforms[stage])
            paths = [Path(p) for p, _ in baseline_ds.samples]
            targets = [t for _, t in baseline_ds.samples]
            variants = {
                "baseline: ImageFolder + timm transforms": baseline_ds,
                "app: LabeledImages, full decode": LabeledImages(paths, targets, transforms[stage]),
                "app: LabeledImages, reduced decode": LabeledImages(paths, targets, transforms[stage], decode[stage]),
            }
            if stage == "eval":
                variants["alt: torchvision.io.decode_jpeg + v2"] = TorchvisionDecodeEval(paths, preprocessing)
            base = None
            for name, dataset in variants.items():
                r = rate(dataset, args.seconds)
                base = base or r
                print(f"{spec:>10} {stage:>9} {name:<40} {r:12.1f} {r / base:10.2f}x", flush=True)


if __name__ == "__main__":
    main()
