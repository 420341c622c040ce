"""``--model.channels_last`` and ``--model.compile`` change speed, not predictions or checkpoints."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from lit_convnext.model import classifier as model_module
from lit_convnext.model.classifier import ConvNeXtClassifier
from tests.helpers import TINY_MODEL

CLASSES = ["a", "b", "c"]


def _model(**options) -> ConvNeXtClassifier:
    torch.manual_seed(0)
    return ConvNeXtClassifier(TINY_MODEL, pretrained=False, class_names=CLASSES, image_size=32,
                              drop_path_rate=0.0, head_init_scale=1.0, **options).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_channels_last_gives_the_same_predictions(images: torch.Tensor) -> None:
    reference, fast = _model(), _model(channels_last=True)
    fast.load_state_dict(reference.state_dict())
    assert fast.net.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(fast(images), reference(images), rtol=1e-4, atol=1e-4)


def test_compiled_model_predicts_the_same_and_its_checkpoint_loads_uncompiled(
    images: torch.Tensor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # aot_eager traces through dynamo and AOTAutograd like inductor does, without minutes of C++ codegen
    # on a 2-core CI machine; the inductor backend is exercised by benchmarks/gpu.py.
    monkeypatch.setattr(model_module, "COMPILE_OPTIONS", {"backend": "aot_eager"})
    reference, compiled = _model(), _model(compile=True)
    compiled.load_state_dict(reference.state_dict())
    with torch.no_grad():
        out = compiled(images)
    assert compiled.net._compiled_call_impl is not None, "forward did not go through torch.compile"
    torch.testing.assert_close(out, reference(images), rtol=1e-4, atol=1e-4)

    keys = list(compiled.state_dict())
    assert keys == list(reference.state_dict()) and not any("_orig_mod" in k for k in keys)
    path = tmp_path / "compiled.ckpt"
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(compiled)
    trainer.save_checkpoint(path)
    plain = ConvNeXtClassifier.load_from_checkpoint(path, compile=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(images), out, rtol=1e-4, atol=1e-4)


def test_compiled_module_deep_copies_without_sharing_the_compiled_network(
    images: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    import copy

    monkeypatch.setattr(model_module, "COMPILE_OPTIONS", {"backend": "eager"})
    compiled = _model(compile=True)
    with torch.no_grad():
        compiled(images)
    twin = copy.deepcopy(compiled)
    with torch.no_grad():
        torch.nn.init.zeros_(twin.net.head.fc.weight)
        torch.nn.init.zeros_(twin.net.head.fc.bias)
        assert torch.count_nonzero(twin(images)) == 0  # runs its own weights, not the original's
