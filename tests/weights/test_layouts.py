"""Each supported layout loads bit-identical tensors into a timm model, with the right container chosen."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lit_convnext.errors import UserError
from lit_convnext.weights import detect_layout, extract_state_dict, load_pretrained

SameTensors = Callable[..., None]


def test_official_v1_prefers_model_ema(
    tmp_path: Path, make_timm: Callable[..., nn.Module], fresh_timm: Callable[..., nn.Module],
    renamers: SimpleNamespace, same_tensors: SameTensors,
) -> None:
    raw, ema = make_timm("convnext_atto", seed=1), make_timm("convnext_atto", seed=2)
    path = tmp_path / "convnext_atto_official.pth"
    torch.save({"model": renamers.official(raw.state_dict()), "model_ema": renamers.official(ema.state_dict()),
                "epoch": 7}, path)

    model = fresh_timm("convnext_atto")
    report = load_pretrained(model, path)
    assert report.layout == "official-convnext" and report.ema_used and report.container == "model_ema"
    assert report.head == "kept"
    same_tensors(model, ema)

    model = fresh_timm("convnext_atto")
    report = load_pretrained(model, path, use_ema=False)
    assert not report.ema_used and report.ema_available and report.container == "model"
    same_tensors(model, raw)


def test_official_v1_without_ema_falls_back_to_model(
    tmp_path: Path, make_timm: Callable[..., nn.Module], fresh_timm: Callable[..., nn.Module],
    renamers: SimpleNamespace, same_tensors: SameTensors,
) -> None:
    source = make_timm("convnext_atto")
    path = tmp_path / "released.pth"  # released official checkpoints hold only {"model": ...}
    torch.save({"model": renamers.official(source.state_dict())}, path)
    model = fresh_timm("convnext_atto")
    report = load_pretrained(model, path, use_ema=True)
    assert not report.ema_used and not report.ema_available
    assert "no separate EMA" in report.summary()
    same_tensors(model, source)


def test_official_v2_finetuned(
    tmp_path: Path, make_timm: Callable[..., nn.Module], fresh_timm: Callable[..., nn.Module],
    renamers: SimpleNamespace, same_tensors: SameTensors,
) -> None:
    source = make_timm("convnextv2_atto")
    official = renamers.official(source.state_dict())
    assert official["stages.0.0.grn.gamma"].shape == (1, 1, 1, 160)
    path = tmp_path / "convnextv2_atto_1k_224_ema.pt"
    torch.save({"model": official}, path)

    model = fresh_timm("convnextv2_atto")
    report = load_pretrained(model, path)
    assert report.layout == "official-convnextv2" and report.head == "kept"
    same_tensors(model, source)


def test_official_v2_fcmae_pretraining(
    tmp_path: Path, make_timm: Callable[..., nn.Module], fresh_timm: Callable[..., nn.Module],
    renamers: SimpleNamespace, same_tensors: SameTensors,
) -> None:
    source = make_timm("convnextv2_atto")
    fcmae = renamers.fcmae(renamers.official(source.state_dict()))
    assert fcmae["encoder.stages.0.0.dwconv.kernel"].shape == (49, 40)
    assert fcmae["encoder.downsample_layers.1.1.kernel"].shape == (4, 40, 80)
    path = tmp_path / "convnextv2_atto_1k_224_fcmae.pt"
    torch.save({"model": fcmae}, path)

    model = fresh_timm("convnextv2_atto", num_classes=7)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_pretrained(model, path)

    assert report.layout == "official-convnextv2-fcmae"
    assert report.head == "reset" and "FCMAE" in report.head_reason and "final norm" in report.head_reason
    assert not report.missing and not report.unexpected
    assert any(k.startswith("decoder.") for k in report.ignored) and "mask_token" in report.ignored
    same_tensors(model, source, skip=("head.",))
    for key in ("head.norm.weight", "head.norm.bias", "head.fc.weight", "head.fc.bias"):
        assert torch.equal(model.state_dict()[key], init[key]), key


def test_fcmae_dense_kernel_orientation(
    tmp_path: Path, make_timm: Callable[..., nn.Module], fresh_timm: Callable[..., nn.Module],
    renamers: SimpleNamespace,
) -> None:
    """A sparse kernel entry at offset w*k+h lands at dense position (h, w), as in the official remap."""
    source = make_timm("convnextv2_atto")
    fcmae = renamers.fcmae(renamers.official(source.state_dict()))
    kernel = torch.zeros(49, 40)
    kernel[1 * 7 + 4, 3] = 1.0  # w=1, h=4, channel 3
    fcmae["encoder.stages.0.0.dwconv.kernel"] = kernel
    path = tmp_path / "fcmae.pt"
    torch.save({"model": fcmae}, path)
    model = fresh_timm("convnextv2_atto")
    load_pretrained(model, path)
    dense = model.state_dict()["stages.0.blocks.0.conv_dw.weight"]
    assert dense[3, 0, 4, 1] == 1.0 and dense.abs().sum() == 1.0


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_timm_layout_files(
    tmp_path: Path, make_timm: Callable[..., nn.Module], fresh_timm: Callable[..., nn.Module],
    same_tensors: SameTensors, suffix: str,
) -> None:
    source = make_timm("convnext_atto")
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(source.state_dict(), str(path))
    else:
        torch.save(source.state_dict(), path)
    model = fresh_timm("convnext_atto")
    report = load_pretrained(model, path)
    assert report.layout == "timm" and report.container == "top level"
    assert report.tensors_loaded == len(model.state_dict())
    same_tensors(model, source)


@pytest.mark.parametrize("wrap", ["module", "_orig_mod", "module+_orig_mod", "state_dict", "state_dict+module",
                                  "model"])
def test_wrappers_are_stripped(
    tmp_path: Path, make_timm: Callable[..., nn.Module], fresh_timm: Callable[..., nn.Module],
    same_tensors: SameTensors, wrap: str,
) -> None:
    source = make_timm("convnext_atto")
    sd: dict[str, object] = dict(source.state_dict())
    if "module" in wrap.split("+"):
        sd = {"module." + k: v for k, v in sd.items()}
    if "_orig_mod" in wrap:
        sd = {"_orig_mod." + k if not k.startswith("module.") else "module._orig_mod." + k[7:]: v
              for k, v in sd.items()}
    if wrap.startswith("state_dict"):
        sd = {"state_dict": sd, "epoch": 3, "optimizer": {"lr": 0.1}}
    if wrap == "model":
        sd = {"model": {"model." + k: v for k, v in sd.items()}}
    path = tmp_path / "wrapped.pth"
    torch.save(sd, path)
    model = fresh_timm("convnext_atto")
    report = load_pretrained(model, path)
    assert report.layout == "timm"
    same_tensors(model, source)


def _lightning_ckpt(raw: nn.Module, ema: nn.Module | None) -> dict[str, object]:
    """A Lightning checkpoint of a module holding the timm model as ``self.net`` (+ a loss buffer)."""

    def module_state(net: nn.Module) -> dict[str, torch.Tensor]:
        state = {"net." + k: v for k, v in net.state_dict().items()}
        state["criterion.weight"] = torch.ones(10)
        return state

    ckpt: dict[str, object] = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.6.0",
                               "hyper_parameters": {"lr": 1e-3, "model_name": "convnext_atto"}}
    if ema is None:
        ckpt["state_dict"] = module_state(raw)
    else:  # lightning WeightAveraging: averaged weights in state_dict, raw ones in current_model_state
        ckpt["state_dict"] = module_state(ema)
        ckpt["current_model_state"] = module_state(raw)
        ckpt["averaging_state"] = {"n_averaged": torch.tensor(120)}
    return ckpt


def test_lightning_checkpoint_ema_and_raw(
    tmp_path: Path, make_timm: Callable[..., nn.Module], fresh_timm: Callable[..., nn.Module],
    same_tensors: SameTensors,
) -> None:
    raw, ema = make_timm("convnext_atto", seed=1), make_timm("convnext_atto", seed=2)
    path = tmp_path / "epoch=3-step=120.ckpt"
    torch.save(_lightning_ckpt(raw, ema), path)

    model = fresh_timm("convnext_atto")
    report = load_pretrained(model, path)
    assert report.layout == "timm" and report.ema_used and report.container.startswith("state_dict")
    assert "criterion.weight" in report.ignored
    same_tensors(model, ema)

    model = fresh_timm("convnext_atto")
    report = load_pretrained(model, path, use_ema=False)
    assert not report.ema_used and report.container.startswith("current_model_state")
    same_tensors(model, raw)


def test_lightning_checkpoint_without_ema(
    tmp_path: Path, make_timm: Callable[..., nn.Module], fresh_timm: Callable[..., nn.Module],
    same_tensors: SameTensors,
) -> None:
    raw = make_timm("convnext_atto")
    path = tmp_path / "last.ckpt"
    torch.save(_lightning_ckpt(raw, None), path)
    for use_ema in (True, False):
        model = fresh_timm("convnext_atto")
        report = load_pretrained(model, path, use_ema=use_ema)
        assert not report.ema_used and not report.ema_available
        same_tensors(model, raw)


def test_detect_layout_and_unknown_layout() -> None:
    assert detect_layout(["features.0.0.weight", "classifier.2.weight"]) == "torchvision"
    assert detect_layout(["convnextv2.embeddings.patch_embeddings.weight"]) == "hf-transformers-convnextv2"
    assert detect_layout(["downsample_layers.0.0.weight", "stages.0.0.grn.gamma"]) == "official-convnextv2"
    with pytest.raises(UserError, match="unrecognised weights layout in vit.pth"):
        detect_layout(["patch_embed.proj.weight", "blocks.0.attn.qkv.weight"], source="vit.pth")


def test_checkpoint_without_tensors_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no weights found in run.ckpt"):
        extract_state_dict({"epoch": 1, "hyper_parameters": {}}, source="run.ckpt")
