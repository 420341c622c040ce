"""Near-duplicate detection measured: perceptual hashes against backbone embeddings, on the real digits scans with
planted variants, and the seconds for 10,000 images.

The digits folder (``data/digits``, 1,797 scans upscaled to 64 px) gets, for 100 of its training images, four
re-saved forms: a JPEG at quality 60 (same class folder), a copy resized to 48 px (in ``val/``: leakage), a copy
cropped by 3 px on each side (in another class: a labelling conflict) and one brightened by 30 % (same class).
For each method and distance it prints the recall of the 400 planted (original, variant) pairs and how many pairs
it reports between different pictures (false pairs). Then it times hashing on photo-like 640x480 JPEGs and the
pair search on 10,000 and 30,000 hashes.

    python benchmarks/near_duplicates.py [--ckpt CKPT]   # CKPT: a digits checkpoint, to measure its embeddings
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` from a checkout
    sys.path.insert(0, str(REPO))

DIGITS = REPO / "data" / "digits"
PLANTED = 100


def build(root: Path, seed: int = 0) -> tuple[list[Path], dict[Path, int]]:
    """The upscaled digits with planted variants; every file and the picture (original) it comes from."""
    rng = random.Random(seed)
    files, source = [], {}
    originals = sorted(DIGITS.glob("*/*/*.png"))
    classes = sorted({p.parent.name for p in originals})
    for n, path in enumerate(originals):
        out = root / path.relative_to(DIGITS)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("RGB").resize((64, 64), Image.BICUBIC).save(out)
        files.append(out)
        source[out] = n
    train = [f for f in files if f.parts[-3] == "train"]
    for f in rng.sample(train, PLANTED):
        image, label = Image.open(f).convert("RGB"), f.parent.name
        other = rng.choice([c for c in classes if c != label])
        variants = {
            root / "train" / label / f"{f.stem}_q60.jpg": (image, {"quality": 60}),
            root / "val" / label / f"{f.stem}_48px.png": (image.resize((48, 48), Image.BICUBIC), {}),
            root / "train" / other / f"{f.stem}_crop.png": (image.crop((3, 3, 61, 61)), {}),
            root / "train" / label / f"{f.stem}_bright.png": (ImageEnhance.Brightness(image).enhance(1.3), {}),
        }
        for path, (variant, options) in variants.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            variant.save(path, **options)
            files.append(path)
            source[path] = source[f]
    return files, source


def score(pairs: set[tuple[int, int]], files: list[Path], source: dict[Path, int]) -> tuple[float, int]:
    """(recall of the planted original-variant pairs, pairs of different pictures)."""
    by_source: dict[int, list[int]] = {}
    for i, f in enumerate(files):
        by_source.setdefault(source[f], []).append(i)
    planted = {(group[0], v) for group in by_source.values() if len(group) > 1 for v in group[1:]}
    found = sum((min(a, b), max(a, b)) in pairs for a, b in planted)
    false = sum(source[files[i]] != source[files[j]] for i, j in pairs)
    return found / len(planted), false


def hash_pairs(files: list[Path], kind: str, max_distance: int) -> set[tuple[int, int]]:
    import imagehash

    from lit_convnext.checks.near_duplicates import close_pairs
    from lit_convnext.data.images import load_rgb

    function = {"phash": imagehash.phash, "dhash": imagehash.dhash, "whash": imagehash.whash}[kind]
    hashes = [int(str(function(load_rgb(f))), 16) for f in files]
    return {(i, j) for i, j, _ in close_pairs(hashes, max_distance)}, hashes


def embedding_pairs(files: list[Path], ckpt: Path) -> np.ndarray:
    """Cosine similarities of the checkpoint's pooled backbone features (all pairs)."""
    from torch.nn import functional as F

    from lit_convnext.inference.predictor import load_checkpoint_model
    from lit_convnext.inference.suggest import score_pool

    model = load_checkpoint_model(ckpt).eval()
    features = F.normalize(score_pool(model, files, batch_size=256).embeddings, dim=1)
    return (features @ features.T).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, help="a checkpoint trained on digits, for the embeddings")
    parser.add_argument("--photos", type=int, default=2000, help="photo-like JPEGs to time hashing on (0: no timing)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files, source = build(Path(tmp) / "digits")
        print(f"{len(files)} files, {PLANTED * 4} planted (original, variant) pairs\n")
        print("| method | distance | recall of planted pairs | false pairs |")
        print("|---|---:|---:|---:|")
        for kind in ("phash", "dhash", "whash"):
            all_pairs, hashes = hash_pairs(files, kind, 16)
            values = np.array(hashes, dtype=np.uint64)
            for distance in (4, 6, 8, 10, 12):
                pairs = {(i, j) for i, j in all_pairs if int(np.bitwise_count(values[i] ^ values[j])) <= distance}
                recall, false = score(pairs, files, source)
                print(f"| {kind} | {distance} bits | {100 * recall:.1f} % | {false} |")
        if args.ckpt:
            similarity = embedding_pairs(files, args.ckpt)
            for threshold in (0.99, 0.98, 0.95, 0.9):
                rows, cols = np.nonzero(np.triu(similarity >= threshold, k=1))
                recall, false = score(set(zip(rows.tolist(), cols.tolist())), files, source)
                print(f"| embeddings ({args.ckpt.name}) | cosine >= {threshold} | {100 * recall:.1f} % | {false} |")
        if args.photos:
            timing(Path(tmp), args.photos)


def timing(tmp: Path, count: int) -> None:
    from benchmarks.photos import make_photo_folder
    from lit_convnext.checks.near_duplicates import close_pairs, hash_files

    folder = make_photo_folder(tmp / "photos", 640, 480, count)
    paths = [str(p) for p in sorted(folder.glob("*/*.jpg"))]
    tic = time.perf_counter()
    hash_files(paths)
    per_image = (time.perf_counter() - tic) / len(paths)
    print(f"\nhashing: {1000 * per_image:.2f} ms per 640x480 JPEG ({len(paths)} files, one worker per core) "
          f"-> {10_000 * per_image:.1f} s for 10,000 images")
    rng = np.random.default_rng(0)
    for n in (10_000, 30_000):
        hashes = rng.integers(0, 2**63, n, dtype=np.uint64).tolist()
        runs, cpu = [], []
        for _ in range(3):
            tic, cpu_tic = time.perf_counter(), time.process_time()
            close_pairs(hashes)
            runs.append(time.perf_counter() - tic)
            cpu.append(time.process_time() - cpu_tic)
        print(f"pair search: {sorted(runs)[1]:.2f} s ({sorted(cpu)[1]:.2f} s of CPU) for {n:,} hashes (median of 3)")


if __name__ == "__main__":
    main()
