"""Build a multi-label sample task from the bundled digits: 16x16 images holding two or three different digits.

Each image is a 2x2 grid of 8x8 cells; two or three cells get a scan of different digits from ``data/digits``
(training images from ``digits/train``, validation images from ``digits/val``, so no scan is in both), the other
cells stay black. The label file lists the digits present, joined by ``;``:

    python data/make_multilabel_digits.py      # writes data/multilabel_digits/{images/,labels.csv}
    lit-convnext fit --config configs/multilabel_quickstart.yaml

Deterministic (seeded); needs only Pillow and numpy.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "digits"
OUT = HERE / "multilabel_digits"
#: Images to compose per split (each split draws only from the same split of the digits).
COUNTS = {"train": 800, "val": 200}


def compose(scans: dict[str, list[Path]], rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """One 16x16 image with two or three different digits in random cells, and the digits present."""
    digits = sorted(rng.choice(sorted(scans), size=int(rng.integers(2, 4)), replace=False).tolist(), key=int)
    cells = rng.permutation(4)[: len(digits)]
    canvas = np.zeros((16, 16), dtype=np.uint8)
    for digit, cell in zip(digits, cells):
        scan = np.asarray(Image.open(scans[digit][int(rng.integers(len(scans[digit])))]).convert("L"))
        row, col = divmod(int(cell), 2)
        canvas[row * 8:(row + 1) * 8, col * 8:(col + 1) * 8] = scan
    return canvas, digits


def main(out: Path = OUT, counts: dict[str, int] = COUNTS) -> Path:
    """Write the images and ``labels.csv`` under ``out``; returns the label file."""
    rng = np.random.default_rng(0)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, count in counts.items():
        scans = {d.name: sorted(d.glob("*.png")) for d in sorted((SOURCE / split).iterdir()) if d.is_dir()}
        for i in range(count):
            canvas, digits = compose(scans, rng)
            name = f"images/{split}_{i:04d}.png"
            Image.fromarray(canvas, mode="L").save(out / name, optimize=True)
            rows.append({"path": name, "labels": ";".join(digits), "split": split})
    with (out / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "labels", "split"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} images and {out / 'labels.csv'}")
    return out / "labels.csv"


if __name__ == "__main__":
    main()
