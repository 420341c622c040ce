"""Streaming datasets: a folder or label file written once as litdata chunks (``lit-convnext optimize``), then
trained from a local directory or ``s3://`` through litdata's ``StreamingDataset`` and ``StreamingDataLoader``.

An optimized dataset is a directory with one litdata dataset per split (``train/``, ``val/``, ``test/``) and
:data:`METADATA_NAME`: the format version, the class names, the task and every image's original path and labels in
the order the chunks hold them. Each chunk item is ``{"index": i, "image": ...}``: the position of the image in its
split's list, so targets and paths come from the metadata (multi-label rows too) and the chunks hold only pixels.

Training reads ``train/`` as litdata's shuffled iterable (each DDP rank and loader worker its own chunks, and a
``state_dict`` that Lightning stores in a mid-epoch checkpoint and restores on resume). Validation and test read
their split by index (litdata's random access) behind an ordinary map-style dataset, so the app's evaluation
sampler, per-image results and reports work unchanged.

litdata and boto3 are imported only here, when a streaming dataset is used (the ``stream`` extra).
"""

from __future__ import annotations

import importlib.util
import io
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from lit_convnext.data.folders import FolderSplits, Sample
from lit_convnext.data.images import decode, open_image
from lit_convnext.data.labels import LabeledSample, multi_hot, sample_labels
from lit_convnext.errors import UserError

#: The file beside the splits' litdata directories that says what the chunks hold.
METADATA_NAME = "lit_convnext_dataset.json"
#: Bumped whenever the chunks or the metadata change in a way an older reader would misread.
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
#: ``encoded``: each file's bytes as they are (decoded while training, like a folder); ``decoded``: RGB pixels,
#: reduced to the short side given at optimize time (no decoding while training, larger chunks).
Storage = Literal["encoded", "decoded"]
INSTALL = "pip install 'lit-convnext[stream]'"


def require_litdata(what: str) -> None:
    """One line when the ``stream`` extra is missing, before anything is read."""
    if importlib.util.find_spec("litdata") is None:
        raise UserError(f"{what} needs litdata, which is not installed: {INSTALL}")


def remote_url(root: Path | str | None) -> str | None:
    """``s3://bucket/prefix`` when ``root`` names one, else ``None``. ``--data.root`` is typed as a path, and a path
    keeps one slash of ``s3://``; the URL is rebuilt from it."""
    if root is None:
        return None
    text = str(root)
    for prefix in ("s3://", "s3:/"):
        if text.startswith(prefix):
            return "s3://" + text[len(prefix):].strip("/")
    return None


def is_optimized(root: Path | str | None) -> bool:
    """Whether ``root`` is a dataset written by ``lit-convnext optimize`` (any ``s3://`` root is taken as one)."""
    if root is None:
        return False
    return remote_url(root) is not None or (Path(root) / METADATA_NAME).is_file()


def check_credentials(url: str) -> None:
    """An ``s3://`` root needs credentials that boto3 finds (environment, profile, instance role): one line if not."""
    import boto3

    if boto3.Session().get_credentials() is None:
        raise UserError(f"{url} is on S3 but no AWS credentials were found: set AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE; AWS_ENDPOINT_URL for an S3-compatible server)")


def _read_metadata(root: str) -> dict[str, Any]:
    url = remote_url(root)
    if url is None:
        return json.loads((Path(root) / METADATA_NAME).read_text(encoding="utf-8"))
    import boto3
    import botocore.exceptions

    check_credentials(url)
    bucket, _, prefix = url[len("s3://"):].partition("/")
    key = f"{prefix}/{METADATA_NAME}" if prefix else METADATA_NAME
    try:
        body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    except botocore.exceptions.ClientError as err:
        raise UserError(f"cannot read {url}/{METADATA_NAME} ({err}): pass the s3:// prefix that "
                        "`lit-convnext optimize` wrote (or uploaded)") from None
    except botocore.exceptions.BotoCoreError as err:
        raise UserError(f"cannot reach {url} ({err}): check AWS_ENDPOINT_URL and the network") from None
    return json.loads(body)


@dataclass
class OptimizedDataset:
    """An optimized dataset's location and metadata (read once), and the datasets and loader built from it.

    Args:
        root: The local directory or ``s3://bucket/prefix``.
        metadata: The content of :data:`METADATA_NAME`.
        cache_dir: Where litdata keeps the chunks of an ``s3://`` dataset; ``None``: litdata's default.
    """

    root: str
    metadata: dict[str, Any]
    cache_dir: Path | None = None

    @classmethod
    def open(cls, root: Path | str, cache_dir: Path | None = None) -> OptimizedDataset:
        """Read the metadata of ``root``, checking that this version of the app can read it."""
        require_litdata(f"--data.root {root}")
        root = remote_url(root) or str(root)
        metadata = _read_metadata(root)
        version = metadata.get("format_version")
        if version != FORMAT_VERSION:
            raise UserError(f"{root} is an optimized dataset of format version {version}, but this lit-convnext reads "
                            f"version {FORMAT_VERSION}: write it again with `lit-convnext optimize` of this version")
        return cls(root, metadata, cache_dir)

    def check_resolution(self, needed: int) -> None:
        """Pixels stored ``decoded`` must not be fewer than the model's transforms take (``needed``: the short side
        of the evaluation resize); an upscale of reduced pixels would train on a blur."""
        short_side = self.metadata.get("short_side")
        if self.metadata["storage"] == "decoded" and short_side is not None and short_side < needed:
            raise UserError(f"{self.root} holds images reduced to a short side of {short_side} px, but this model's "
                            f"transforms take {needed} px: write it again with `lit-convnext optimize --short_side "
                            f"{needed}` (or --storage encoded), or train at a lower --model.image_size")

    def split_dir(self, split: str) -> str:
        return f"{self.root.rstrip('/')}/{split}"

    @cached_property
    def splits(self) -> FolderSplits:
        """The classes and each split's original paths and labels, as the folder run would have them (built
        once: 100,000 rows take a moment)."""
        meta = self.metadata
        multilabel = meta["task"] == "multilabel"

        def samples(split: str) -> list[Sample]:
            rows = meta["splits"].get(split, [])
            if multilabel:
                return [LabeledSample(Path(p), ";".join(labels), tuple(labels)) for p, labels in rows]
            return [Sample(Path(p), labels[0]) for p, labels in rows]

        return FolderSplits(list(meta["class_names"]), samples("train"), samples("val"), samples("test"),
                            val_is_held_out=False, multilabel=multilabel)

    def targets(self, split: str) -> list[int] | torch.Tensor:
        splits = self.splits
        samples = getattr(splits, split)
        return multi_hot(samples, splits.class_names) if splits.multilabel else splits.targets(samples)

    def train_dataset(self, transform: Any, seed: int) -> Any:
        """The shuffled training split, yielding ``(image_tensor, target)``."""
        from litdata import StreamingDataset

        item = ItemToSample(self.metadata["storage"], self.targets("train"), transform)
        return StreamingDataset(self.split_dir("train"), cache_dir=self._cache("train"), shuffle=True, seed=seed,
                                transform=item)

    def train_loader(self, dataset: Any, batch_size: int, workers: int, pin_memory: bool) -> Any:
        """litdata's loader of the training split: equal-size batches, and a ``state_dict`` that Lightning keeps in
        every checkpoint, so ``--ckpt_path last`` goes on mid-epoch from the next batch."""
        from litdata import StreamingDataLoader

        return StreamingDataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=pin_memory,
                                   drop_last=True)

    def eval_dataset(self, split: str, transform: Any) -> IndexedSplit:
        """A validation or test split by index, in the order of its metadata (``paths``, ``targets``)."""
        from litdata import StreamingDataset

        stream = StreamingDataset(self.split_dir(split), cache_dir=self._cache(split), shuffle=False)
        return IndexedSplit(stream, [s.path for s in getattr(self.splits, split)], self.targets(split),
                            ItemToSample(self.metadata["storage"], self.targets(split), transform))

    def _cache(self, split: str) -> str | None:
        if self.cache_dir is None or remote_url(self.root) is None:
            return None
        return str(Path(self.cache_dir) / split)


def decode_item(storage: str, image: Any) -> Image.Image:
    """The RGB image of a chunk item: stored pixels as they are, or the file's bytes decoded as a folder's file."""
    if storage == "decoded":
        return Image.fromarray(np.asarray(image))
    with open_image(io.BytesIO(image)) as img:
        return decode(img)


class ItemToSample:
    """litdata's ``transform``: a chunk item ``{"index", "image"}`` -> ``(image_tensor, target)``; picklable, so each
    loader worker gets its copy."""

    def __init__(self, storage: str, targets: list[int] | torch.Tensor, transform: Any) -> None:
        self.storage = storage
        self.targets = targets
        self.transform = transform

    def __call__(self, item: dict[str, Any]) -> tuple[torch.Tensor, int | torch.Tensor]:
        return self.transform(decode_item(self.storage, item["image"])), self.targets[int(item["index"])]


class IndexedSplit(Dataset):
    """A split of an optimized dataset read by index: a map-style dataset with the original ``paths`` and
    ``targets``, for the evaluation sampler and the per-image reports (position ``i`` is the split's ``i``-th
    image: ``optimize`` writes the evaluation splits in order, and each item's stored index is checked)."""

    def __init__(self, stream: Any, paths: list[Path], targets: list[int] | torch.Tensor, item: ItemToSample) -> None:
        self.stream = stream
        self.paths = paths
        self.targets = targets
        self.item = item

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        if self.stream.cache is None:
            # litdata sets up its reader on the first read: through a slice, it keeps whole chunks in its cache (an
            # int would read the item's bytes alone, again at every validation). Slices count in this process's
            # share under DDP, so the reads themselves go by the global index.
            self.stream[0:1]
        raw = self.stream[index]
        if int(raw["index"]) != index:
            raise UserError(f"item {index} of {self.stream.input_dir.url or self.stream.input_dir.path} holds image "
                            f"{raw['index']}: the dataset was not written by `lit-convnext optimize`; write it again")
        return self.item(raw)


class ReadImage:
    """``litdata.optimize``'s function: ``(index, path)`` -> the chunk item (picklable: it runs in litdata's
    worker processes)."""

    def __init__(self, storage: str, short_side: int) -> None:
        self.storage = storage
        self.short_side = short_side

    def __call__(self, entry: tuple[int, str]) -> dict[str, Any]:
        index, path = entry
        if self.storage == "encoded":
            return {"index": index, "image": Path(path).read_bytes()}
        with open_image(path) as img:
            rgb = decode(img, self.short_side)  # a JPEG is decoded at a reduced size when that still suffices
        if min(rgb.size) > self.short_side:
            scale = self.short_side / min(rgb.size)
            rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                             Image.Resampling.BICUBIC)
        return {"index": index, "image": np.asarray(rgb)}


def check_output(out: str) -> None:
    """``OUT`` must be new or empty: litdata would otherwise mix the chunks of two datasets."""
    url = remote_url(out)
    if url is None:
        path = Path(out)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UserError(f"{out} already exists and is not empty: pass a new directory for the optimized dataset "
                            "(or remove this one)")
        return
    import boto3

    check_credentials(url)
    bucket, _, prefix = url[len("s3://"):].partition("/")
    listing = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", MaxKeys=1)
    if listing.get("KeyCount", 0):
        raise UserError(f"{url} already holds objects: pass a new prefix for the optimized dataset (or remove them)")


def write_optimized(splits: FolderSplits, task: str, out: str, storage: Storage, short_side: int,
                    workers: int, source: dict[str, Any], chunk_bytes: str = "64MB") -> dict[str, Any]:
    """Write each split of ``splits`` as a litdata dataset under ``out`` (local or ``s3://``), then the metadata,
    last, so that a run interrupted half-way leaves no directory that reads as a dataset. Returns the metadata."""
    import multiprocessing

    import litdata
    from litdata import optimize

    out = remote_url(out) or str(out)
    rows = {}
    # litdata sets the process's multiprocessing start method (forced); the caller's is put back afterwards
    callers_method = multiprocessing.get_start_method(allow_none=True)
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"  # fork: no re-import of torch
    try:
        for split in SPLITS:
            samples = getattr(splits, split)
            if not samples:
                continue
            # keep_data_ordered with reorder_files off: the chunks hold the images in the metadata's order, which the
            # evaluation splits' reports rely on (IndexedSplit checks it)
            optimize(fn=ReadImage(storage, short_side), inputs=[(i, str(s.path)) for i, s in enumerate(samples)],
                     output_dir=f"{out.rstrip('/')}/{split}", chunk_bytes=chunk_bytes, num_workers=workers,
                     keep_data_ordered=True, reorder_files=False, verbose=False, start_method=method)
            rows[split] = [[str(s.path), list(sample_labels(s))] for s in samples]
    finally:
        multiprocessing.set_start_method(callers_method, force=True)
    from lit_convnext import __version__ as app_version

    metadata = {"format_version": FORMAT_VERSION, "written_by": f"lit-convnext {app_version}",
                "litdata": litdata.__version__, "storage": storage,
                "short_side": short_side if storage == "decoded" else None, "task": task,
                "class_names": list(splits.class_names), "source": source, "splits": rows}
    text = json.dumps(metadata, ensure_ascii=False)
    url = remote_url(out)
    if url is None:
        (Path(out) / METADATA_NAME).write_text(text, encoding="utf-8")
    else:
        import boto3

        bucket, _, prefix = url[len("s3://"):].partition("/")
        boto3.client("s3").put_object(Bucket=bucket, Key=f"{prefix}/{METADATA_NAME}" if prefix else METADATA_NAME,
                                      Body=text.encode("utf-8"))
    return metadata
