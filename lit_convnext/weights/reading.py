"""Read a weights file (or a Hugging Face model folder) into memory without running untrusted code.

Checkpoints downloaded from the internet are pickles, and unpickling can execute arbitrary code.
Everything that is not safetensors therefore goes through ``torch.load(weights_only=True)``,
which only rebuilds tensors and plain containers; anything else becomes a one-line ``UserError``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as _load_safetensors

from lit_convnext.errors import UserError

#: Files looked for, in order, inside a Hugging Face model folder.
HF_WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
_HF_INDEX_FILES: tuple[str, ...] = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

#: Harmless, data-only classes that training scripts commonly store next to the weights
#: (``args`` namespaces, paths). Allowing them keeps ``weights_only=True`` while still reading
#: e.g. the official ConvNeXt training checkpoints, which carry an ``argparse.Namespace``.
_EXTRA_SAFE_GLOBALS: list[Any] = [
    argparse.Namespace,
    pathlib.PosixPath,
    pathlib.WindowsPath,
    pathlib.PurePosixPath,
    pathlib.PureWindowsPath,
]

_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"RIFF", "a RIFF (WebP/WAV) file"),
    (b"BM", "a BMP image"),
)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Return the top-level dict stored in a weights file or Hugging Face model folder.

    ``.safetensors`` is read with safetensors; every other file with
    ``torch.load(map_location="cpu", weights_only=True)``. The file's bytes decide the reader,
    so a safetensors file named ``.pth`` still loads. Problems raise ``UserError``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"weights file not found: {path}; check the path")
    if path.is_dir():
        return _read_hf_folder(path)
    if path.stat().st_size == 0:
        raise UserError(f"weights file {path} is empty (0 bytes); download or copy it again")
    kind = _sniff(path)
    if kind == "safetensors":
        return _read_safetensors(path)
    if kind in ("zip", "pickle"):
        obj = _torch_load(path, kind)
        if not isinstance(obj, dict):
            raise UserError(
                f"{path} holds a {type(obj).__name__}, not a dict of weights; "
                "save model.state_dict() instead of the object itself"
            )
        return obj
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    raise UserError(f"{path} is not a checkpoint: it is {kind}; point to a .safetensors/.pth/.bin/.ckpt file")


def _sniff(path: Path) -> str:
    """Classify a file by its first bytes: safetensors, zip (torch.save), pickle, or a description."""
    with path.open("rb") as fh:
        head = fh.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if 0 < header_len < path.stat().st_size:
            return "safetensors"
    for magic, what in _IMAGE_MAGIC:
        if head.startswith(magic):
            return what
    return "not a PyTorch or safetensors file (unrecognised bytes; truncated or corrupt?)"


def _read_safetensors(path: Path) -> dict[str, Any]:
    """Load a safetensors file to CPU tensors, turning format errors into ``UserError``."""
    try:
        return dict(_load_safetensors(str(path), device="cpu"))
    except Exception as exc:  # safetensors raises its own error type plus OSError/ValueError
        raise UserError(f"{path} is not a valid safetensors file ({_first_line(exc)}); download it again") from exc


def _torch_load(path: Path, kind: str) -> Any:
    """``torch.load`` with ``weights_only=True``; refused pickles and corrupt files become ``UserError``."""
    try:
        with _allow_extra_globals(), quiet_pickle_protocol():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        needed = _unsafe_globals(path) if kind == "zip" else []
        if needed or kind == "pickle":
            what = f"it needs {', '.join(needed)}" if needed else "it is not plain tensor data"
            raise UserError(
                f"refusing to unpickle untrusted code in {path}: {what}; only tensors and plain containers "
                "are loaded (weights_only=True). Convert it to .safetensors in an environment you trust"
            ) from exc
        raise UserError(f"{path} is not a readable checkpoint ({_first_line(exc)}); download it again") from exc
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, AttributeError, TypeError) as exc:
        raise UserError(
            f"{path} is not a readable checkpoint (truncated or corrupt: {_first_line(exc)}); download it again"
        ) from exc


def _unsafe_globals(path: Path) -> list[str]:
    """The classes and functions a ``torch.save`` file would import that ``weights_only`` loading refuses, as torch
    lists them (empty where this torch cannot tell, or the file cannot be read that far)."""
    find = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
    if find is None:
        return []
    try:
        with _allow_extra_globals():
            return list(find(str(path)))
    except Exception:  # a damaged archive: the caller reports it as unreadable
        return []


@contextlib.contextmanager
def quiet_pickle_protocol() -> Iterator[None]:
    """Leave out torch's warning about a plain pickle's protocol: ``weights_only`` loading gives it right before
    refusing such a file, which the error that follows reports with the file's name."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        yield


def _allow_extra_globals() -> contextlib.AbstractContextManager[Any]:
    """Allow the data-only classes above for one load (no-op on torch versions without the API)."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    return safe_globals(_EXTRA_SAFE_GLOBALS) if safe_globals else contextlib.nullcontext()


def _read_hf_folder(folder: Path) -> dict[str, Any]:
    """Read the weights of a Hugging Face ``save_pretrained`` folder (single file or sharded)."""
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return read_checkpoint(folder / name)
    for name in _HF_INDEX_FILES:
        index = folder / name
        if index.is_file():
            return _read_sharded(index)
    raise UserError(
        f"folder {folder} has no {' or '.join(HF_WEIGHT_FILES)}; pass a weights file or a Hugging Face model folder"
    )


def _read_sharded(index: Path) -> dict[str, Any]:
    """Merge the shards listed in a Hugging Face ``*.index.json`` into one state dict."""
    try:
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{index} is not a valid Hugging Face shard index ({_first_line(exc)})") from exc
    merged: dict[str, Any] = {}
    for shard in sorted(set(weight_map.values())):
        merged.update(read_checkpoint(index.parent / shard))
    return merged


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception message, trimmed for a one-line error."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip().split(". ")[0].rstrip(".")[:160]
    return type(exc).__name__
