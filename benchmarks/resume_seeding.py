"""What the exact mid-epoch resume costs per training image: the seed each draw's augmentation runs under.

Times the app's training transform (timm's, RandAugment on) on one decoded image, alone and inside
``seeded_random`` (the RNG states saved, seeded and put back: what ``SeededSamples`` adds to every image), paired
in the same process and repeated, and prints the medians.

    python benchmarks/resume_seeding.py                 # 224 px (the recipe's size)
    python benchmarks/resume_seeding.py --size 64 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import photos  # noqa: F401  (puts the repository on sys.path)
import timm
from PIL import Image

from lit_convnext.data.resumable import derive_seed, seeded_random
from lit_convnext.data.transforms import TrainAugmentation, build_train_transform
from lit_convnext.model.classifier import resolve_preprocessing


def per_image_ms(transform, image: Image.Image, count: int, seeded: bool) -> float:  # noqa: ANN001
    start = time.perf_counter()
    for index in range(count):
        if seeded:
            with seeded_random(derive_seed(42, 0, index)):
                transform(image)
        else:
            transform(image)
    return (time.perf_counter() - start) / count * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="convnext_atto", help="timm model whose preprocessing is used")
    parser.add_argument("--size", type=int, default=224, help="training image size")
    parser.add_argument("--count", type=int, default=200, help="images per timing")
    parser.add_argument("--rounds", type=int, default=7, help="paired timings; the medians are printed")
    args = parser.parse_args()
    # The preprocessing the app would use: timm's pretrained config of the model (no weights needed for it).
    preprocessing = resolve_preprocessing(timm.create_model(args.model, pretrained=False), args.size, None)
    transform = build_train_transform(preprocessing, TrainAugmentation().for_task("multiclass")[0])
    image = Image.new("RGB", (args.size * 2, args.size * 2), (120, 80, 200))
    plain, seeded = [], []
    for _ in range(args.rounds):
        plain.append(per_image_ms(transform, image, args.count, seeded=False))
        seeded.append(per_image_ms(transform, image, args.count, seeded=True))
    start = time.perf_counter()
    for index in range(args.count * 10):
        with seeded_random(derive_seed(42, 0, index)):
            pass
    alone = (time.perf_counter() - start) / (args.count * 10) * 1000
    p, s = statistics.median(plain), statistics.median(seeded)
    print(f"{args.size} px training transform (RandAugment on), median of {args.rounds} x {args.count} images:")
    print(f"  plain   {p:.3f} ms/image")
    print(f"  seeded  {s:.3f} ms/image  (+{s - p:.3f} ms, {100 * (s - p) / p:+.1f}%)")
    print(f"  the seeding alone: {alone * 1000:.1f} us/image")


if __name__ == "__main__":
    main()
