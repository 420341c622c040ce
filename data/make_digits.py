"""Write scikit-learn's handwritten digits (1,797 8x8 scans, UCI) as PNG files under data/digits/.

Run once to (re)create the sample dataset that ``configs/quickstart.yaml`` trains on:
``python data/make_digits.py``. Needs scikit-learn (in the ``test`` extra).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

OUT = Path(__file__).resolve().parent / "digits"


def main() -> None:
    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)  # 0..16 ink -> 0..255
    indices = np.arange(len(images))
    train_idx, val_idx = train_test_split(indices, test_size=0.2, stratify=digits.target, random_state=0)
    for split, chosen in (("train", train_idx), ("val", val_idx)):
        for i in chosen:
            path = OUT / split / str(digits.target[i]) / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(path, optimize=True)
    print(f"wrote {len(train_idx)} train and {len(val_idx)} val images to {OUT}")


if __name__ == "__main__":
    main()
