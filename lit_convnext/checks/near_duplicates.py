"""Near-duplicates: the same picture saved twice in another form (re-encoded, resized, slightly cropped, brightened).

Byte-identical files are found by their digest (:mod:`lit_convnext.checks.scan`); these are the rest. Each image
gets a 64-bit perceptual hash (imagehash's DCT ``phash``: the signs of the lowest frequencies of a 32x32 grey copy,
which re-encoding, resizing and brightness barely move); two images whose hashes differ in at most
:data:`MAX_DISTANCE` bits are a pair. ``benchmarks/near_duplicates.py`` chose the hash and the distance on the digits
scans with planted variants, against the backbone's embeddings (docs/improving-data.md).

Every pair is compared (a block of XORs and bit counts at a time): 10,000 images are 50 million comparisons, 0.35 s
of CPU, 30,000 images 2.7 s; that grows with the square of the folder (100,000: about 30 s), while hashing (a decode
at reduced size per file) grows linearly and is most of the time up to a few hundred thousand images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

#: Hashes that differ in at most this many of their 64 bits are the same picture (measured: see the module docstring).
MAX_DISTANCE = 8
#: Bits of a hash (imagehash's default 8x8 DCT coefficients).
HASH_BITS = 64
#: Short side large JPEGs are decoded at (libjpeg's reduced decoding): the hash reads a 32x32 copy.
DECODE_SIZE = 64
#: Hash pairs compared at once: the XOR block stays near 32 MB, whatever the folder's size.
BLOCK_PAIRS = 4_000_000
#: Files per task sent to a worker process.
CHUNK = 256


def perceptual_hash(path: str | Path) -> int | None:
    """The 64-bit DCT hash of an image file as training sees it (upright RGB), ``None`` when it cannot be read."""
    import imagehash

    from lit_convnext.data.images import load_rgb

    try:
        image = load_rgb(path, DECODE_SIZE)
    except Exception:  # noqa: BLE001 - a file that cannot be decoded is reported by the file checks, not here
        return None
    return int(str(imagehash.phash(image)), 16)


def _hash_chunk(paths: Sequence[str]) -> list[int | None]:
    return [perceptual_hash(path) for path in paths]


def hash_files(paths: Sequence[str], workers: int | None = None,
               progress: Callable[[int], None] | None = None) -> list[int | None]:
    """:func:`perceptual_hash` of each path, in order, spread over ``workers`` processes (default: one per core)."""
    chunks = [list(paths[i:i + CHUNK]) for i in range(0, len(paths), CHUNK)]
    results: list[int | None] = []
    if len(chunks) <= 1 or workers == 1:
        for chunk in chunks:
            results += _hash_chunk(chunk)
            if progress:
                progress(len(chunk))
        return results
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for chunk, hashes in zip(chunks, pool.map(_hash_chunk, chunks)):
            results += hashes
            if progress:
                progress(len(chunk))
    return results


def close_pairs(hashes: Sequence[int], max_distance: int = MAX_DISTANCE) -> list[tuple[int, int, int]]:
    """``(i, j, differing bits)`` for every ``i < j`` whose hashes differ in at most ``max_distance`` bits."""
    values = np.array(hashes, dtype=np.uint64)
    pairs: list[tuple[int, int, int]] = []
    rows_per_block = max(1, BLOCK_PAIRS // max(1, len(values)))
    for start in range(0, len(values), rows_per_block):
        distances = np.bitwise_count(values[start:start + rows_per_block, None] ^ values[None, :])
        rows, cols = np.nonzero(distances <= max_distance)
        for i, j in zip(rows.tolist(), cols.tolist()):
            if start + i < j:
                pairs.append((start + i, j, int(distances[i, j])))
    return pairs


def near_duplicates(paths: Sequence[str], group_of: dict[str, tuple[str, str]], digests: dict[str, str | None],
                    workers: int | None = None, progress: Callable[[int], None] | None = None,
                    max_distance: int = MAX_DISTANCE) -> list[tuple[str, str, float, str]]:
    """The near-duplicate pairs among ``paths``: ``(path, path, similarity, where)``, the pairs that cross splits
    first, then those across classes, then within a class, each by similarity. ``group_of`` maps a path to its
    ``(split, class)``; ``digests`` to its content hash (byte-identical pairs are left to the exact check).
    Similarity is the share of hash bits that agree (1.0: the same hash)."""
    hashes = hash_files(paths, workers, progress)
    readable = [(path, value) for path, value in zip(paths, hashes) if value is not None]
    found = []
    for i, j, distance in close_pairs([value for _, value in readable], max_distance):
        first, second = readable[i][0], readable[j][0]
        if digests.get(first) is not None and digests.get(first) == digests.get(second):
            continue
        (split_a, class_a), (split_b, class_b) = group_of[first], group_of[second]
        where = ("across splits" if split_a != split_b else
                 "across classes" if class_a != class_b else "within a class")
        found.append((first, second, round(1 - distance / HASH_BITS, 3), where))
    order = {"across splits": 0, "across classes": 1, "within a class": 2}
    return sorted(found, key=lambda pair: (order[pair[3]], -pair[2]))
