"""read_checkpoint: safe loading, clear errors for files that are not checkpoints."""

from __future__ import annotations

import argparse
import pathlib
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lit_convnext.errors import UserError
from lit_convnext.weights import read_checkpoint


class _TouchOnUnpickle:
    """Unpickling this object creates a file: the marker proves whether code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (pathlib.Path.touch, (self.marker,))


class _OpenOnUnpickle:
    """Variant that calls ``open(marker, "w")`` while unpickling."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("name", ["evil.pth", "evil.ckpt", "evil.bin"])
@pytest.mark.parametrize("payload", [_TouchOnUnpickle, _OpenOnUnpickle])
@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_malicious_pickle_is_refused_without_running_code(
    tmp_path: Path, name: str, payload: type, writer: str
) -> None:
    marker = tmp_path / "marker"
    evil = tmp_path / name
    obj = {"state_dict": {"w": torch.zeros(2)}, "x": payload(marker)}
    if writer == "pickle":
        with evil.open("wb") as fh:
            pickle.dump(obj, fh)
    else:
        torch.save(obj, evil)
    with pytest.raises(UserError, match="refusing to unpickle untrusted code") as info:
        read_checkpoint(evil)
    assert name in str(info.value) and "safetensors" in str(info.value)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_reads_torch_and_safetensors(tmp_path: Path) -> None:
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4)}
    torch.save({"model": tensors, "epoch": 3, "args": argparse.Namespace(lr=1e-3)}, tmp_path / "x.pth")
    save_file(tensors, str(tmp_path / "x.safetensors"))
    save_file(tensors, str(tmp_path / "misnamed.pth"))  # content decides the reader, not the suffix
    loaded = read_checkpoint(tmp_path / "x.pth")
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["a"], tensors["a"])
    for name in ("x.safetensors", "misnamed.pth"):
        assert torch.equal(read_checkpoint(str(tmp_path / name))["b"], tensors["b"])


def test_hf_folder_prefers_safetensors_and_reports_empty_folder(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    with pytest.raises(UserError, match="hf"):
        read_checkpoint(folder)
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    assert torch.equal(read_checkpoint(folder)["w"], torch.zeros(1))
    save_file({"w": torch.ones(1)}, str(folder / "model.safetensors"))
    assert torch.equal(read_checkpoint(folder)["w"], torch.ones(1))


def _png_bytes() -> bytes:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("case", ["png", "png_as_safetensors", "truncated_zip", "truncated_safetensors",
                                  "empty", "missing", "random", "not_a_dict"])
def test_bad_files_raise_user_error_naming_the_file(tmp_path: Path, case: str) -> None:
    good = tmp_path / "good.pth"
    torch.save({"w": torch.randn(64, 64)}, good)
    name = f"bad_{case}.pth"
    path = tmp_path / name
    if case == "png":
        path.write_bytes(_png_bytes())
    elif case == "png_as_safetensors":
        name = "image.safetensors"
        path = tmp_path / name
        path.write_bytes(_png_bytes())
    elif case == "truncated_zip":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "truncated_safetensors":
        name = "cut.safetensors"
        path = tmp_path / name
        save_file({"w": torch.randn(64, 64)}, str(path))
        path.write_bytes(path.read_bytes()[:200])
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "random":
        path.write_bytes(torch.randint(0, 256, (512,), generator=torch.Generator().manual_seed(3),
                                       dtype=torch.uint8).numpy().tobytes())
    elif case == "not_a_dict":
        torch.save([torch.zeros(1)], path)
    with pytest.raises(UserError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert name in message and "\n" not in message
    if case == "png":
        assert "PNG image" in message
    if case == "empty":
        assert "empty" in message
    if case == "missing":
        assert "not found" in message
