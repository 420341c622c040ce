"""Layer-wise lr decay groupings: per-parameter lr scales equal the official ConvNeXt / ConvNeXt-V2 assignments.

The expected tables below were written out by hand from the official assignment functions
(facebookresearch/ConvNeXt ``optim_factory.get_num_layer_for_convnext`` with ``num_layers = 12``;
facebookresearch/ConvNeXt-V2 ``get_num_layer_for_convnext_single`` with ``num_layers = sum(depths)``; scale of
layer ``i`` = ``layer_decay ** (num_layers + 1 - i)``), under the name mapping official ``downsample_layers.0`` =
timm ``stem``, ``downsample_layers.S`` = ``stages.S.downsample``, ``stages.S.B`` = ``stages.S.blocks.B``. Each table
gives the exponent of ``layer_decay`` per module prefix. Large models are built on the meta device: no memory,
no weights, nothing run.
"""

from __future__ import annotations

import pytest
import timm
import torch

from lit_convnext.model.optim import build_optimizer

# convnext_base / convnext_large (depths 3-3-27-3), official V1 12 groups (V2 "group").
GROUP_27 = {
    "stem": 13,
    **{f"stages.0.blocks.{b}": 12 for b in range(3)},
    "stages.1.downsample": 11, **{f"stages.1.blocks.{b}": 11 for b in range(3)},
    "stages.2.downsample": 10,
    "stages.2.blocks.0": 10, "stages.2.blocks.1": 10, "stages.2.blocks.2": 10,
    "stages.2.blocks.3": 9, "stages.2.blocks.4": 9, "stages.2.blocks.5": 9,
    "stages.2.blocks.6": 8, "stages.2.blocks.7": 8, "stages.2.blocks.8": 8,
    "stages.2.blocks.9": 7, "stages.2.blocks.10": 7, "stages.2.blocks.11": 7,
    "stages.2.blocks.12": 6, "stages.2.blocks.13": 6, "stages.2.blocks.14": 6,
    "stages.2.blocks.15": 5, "stages.2.blocks.16": 5, "stages.2.blocks.17": 5,
    "stages.2.blocks.18": 4, "stages.2.blocks.19": 4, "stages.2.blocks.20": 4,
    "stages.2.blocks.21": 3, "stages.2.blocks.22": 3, "stages.2.blocks.23": 3,
    "stages.2.blocks.24": 2, "stages.2.blocks.25": 2, "stages.2.blocks.26": 2,
    "stages.3.downsample": 1, **{f"stages.3.blocks.{b}": 1 for b in range(3)},
    "head": 0,
}

# convnextv2_atto (depths 2-2-6-2, 12 blocks), official V2 "single": the stem shares block 0's layer.
SINGLE_ATTO = {
    "stem": 12, "stages.0.blocks.0": 12, "stages.0.blocks.1": 11,
    "stages.1.downsample": 10, "stages.1.blocks.0": 10, "stages.1.blocks.1": 9,
    "stages.2.downsample": 8, "stages.2.blocks.0": 8, "stages.2.blocks.1": 7, "stages.2.blocks.2": 6,
    "stages.2.blocks.3": 5, "stages.2.blocks.4": 4, "stages.2.blocks.5": 3,
    "stages.3.downsample": 2, "stages.3.blocks.0": 2, "stages.3.blocks.1": 1,
    "head": 0,
}

# convnextv2_base (depths 3-3-27-3, 36 blocks), official V2 "single": a few rows of the 36-layer table.
SINGLE_BASE_ROWS = {
    "stem": 36, "stages.0.blocks.0": 36, "stages.0.blocks.2": 34, "stages.1.downsample": 33,
    "stages.2.downsample": 30, "stages.2.blocks.26": 4, "stages.3.downsample": 3, "stages.3.blocks.2": 1, "head": 0,
}

# timm's grouping on convnextv2_atto: the stem one layer below block 0 (13 trunk layers + head).
TIMM_ATTO_ROWS = {"stem": 13, "stages.0.blocks.0": 12, "stages.1.downsample": 10, "stages.3.blocks.1": 1, "head": 0}


def build(name: str) -> torch.nn.Module:
    with torch.device("meta"):  # shapes and names only
        return timm.create_model(name, pretrained=False, num_classes=10)


def lr_scales(net: torch.nn.Module, layer_decay: float, grouping: str, weight_decay: float = 0.05) -> dict:
    optimizer = build_optimizer(net, lr=1.0, weight_decay=weight_decay, layer_decay=layer_decay, grouping=grouping)
    names = {id(p): n for n, p in net.named_parameters()}
    scales = {names[id(p)]: g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    assert sorted(scales) == sorted(names.values())  # every parameter optimised exactly once
    return scales


def exponent_of(name: str, table: dict[str, int]) -> int:
    prefixes = [p for p in table if name == p or name.startswith(p + ".")]
    assert len(prefixes) == 1, f"{name} matches {prefixes}"
    return table[prefixes[0]]


@pytest.mark.parametrize(
    ("model_name", "layer_decay", "grouping", "table"),
    [
        ("convnext_base", 0.8, "group", GROUP_27),  # official V1 IN-22k -> 1k fine-tune
        ("convnext_large", 0.8, "group", GROUP_27),
        ("convnextv2_base", 0.6, "group", GROUP_27),  # official V2 base fine-tune
        ("convnextv2_atto", 0.9, "single", SINGLE_ATTO),  # official V2 atto fine-tune
    ],
)
def test_every_parameter_gets_the_official_lr_scale(model_name: str, layer_decay: float, grouping: str,
                                                    table: dict[str, int]) -> None:
    scales = lr_scales(build(model_name), layer_decay, grouping)
    for name, scale in scales.items():
        expected = layer_decay ** exponent_of(name, table)
        assert abs(scale - expected) <= 1e-5 * expected, name


@pytest.mark.parametrize(("model_name", "grouping", "rows"), [
    ("convnextv2_base", "single", SINGLE_BASE_ROWS),
    ("convnextv2_atto", "timm", TIMM_ATTO_ROWS),
])
def test_table_rows_for_other_groupings(model_name: str, grouping: str, rows: dict[str, int]) -> None:
    scales = lr_scales(build(model_name), 0.9, grouping)
    for prefix, exponent in rows.items():
        owned = [s for n, s in scales.items() if n.startswith(prefix + ".")]
        assert owned and all(s == pytest.approx(0.9 ** exponent, rel=1e-5) for s in owned), prefix


def test_single_differs_from_timm_only_at_the_stem() -> None:
    net = build("convnext_tiny")
    single, per_block = lr_scales(net, 0.9, "single"), lr_scales(net, 0.9, "timm")
    differing = sorted({n.split(".")[0] for n in single if single[n] != pytest.approx(per_block[n], rel=1e-9)})
    assert differing == ["stem"]
    assert single["stem.0.weight"] == pytest.approx(per_block["stem.0.weight"] / 0.9)


@pytest.mark.parametrize("model_name", ["convnext_atto", "convnext_xxlarge", "convnextv2_huge"])
@pytest.mark.parametrize("grouping", ["single", "group"])
@pytest.mark.filterwarnings("ignore:layer_decay_grouping 'group'")
def test_groupings_work_for_every_depth_with_scales_rising_towards_the_head(model_name: str, grouping: str) -> None:
    net = build(model_name)
    scales = lr_scales(net, 0.8, grouping)
    order = [n for n, _ in net.named_parameters() if n.endswith("weight")]
    # Parameters come in network order: the lr scale never falls from the stem to the head.
    values = [scales[n] for n in order]
    assert values == sorted(values)
    assert scales["head.fc.weight"] == 1.0
    assert 0 < min(values) < 1


def test_weight_decay_exclusions_are_the_same_in_every_grouping() -> None:
    net = build("convnextv2_atto")
    names = {id(p): n for n, p in net.named_parameters()}
    undecayed = {}
    for grouping in ("timm", "single", "group"):
        optimizer = build_optimizer(net, lr=1.0, weight_decay=0.05, layer_decay=0.9, grouping=grouping)
        undecayed[grouping] = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0
                               for p in g["params"]}
    assert undecayed["single"] == undecayed["group"] == undecayed["timm"]
    # Biases, norm weights and GRN's gamma/beta: every 1-D tensor, as the official code (and no matrix or kernel).
    assert undecayed["single"] == {n for n, p in net.named_parameters() if p.ndim == 1}
    assert "stages.0.blocks.0.mlp.grn.weight" in undecayed["single"]


def test_group_on_other_depths_warns_and_keeps_the_official_assignment() -> None:
    with pytest.warns(UserWarning, match=r"depths are \[3, 3, 9, 3\]"):
        scales = lr_scales(build("convnext_tiny"), 0.8, "group")
    # The official function on a 9-block third stage: blocks 6-8 in layer 5, the last stage in layer 12.
    assert scales["stages.2.blocks.8.conv_dw.weight"] == pytest.approx(0.8 ** 8)
    assert scales["stages.3.blocks.0.conv_dw.weight"] == pytest.approx(0.8 ** 1)


def test_no_layer_decay_means_one_scale_whatever_the_grouping() -> None:
    optimizer = build_optimizer(build("convnext_atto"), lr=1.0, weight_decay=0.05, layer_decay=None, grouping="group")
    assert {g.get("lr_scale", 1.0) for g in optimizer.param_groups} == {1.0}


def test_the_model_option_reaches_the_optimizer_of_a_fit(image_root, caplog) -> None:
    from lightning.pytorch import Trainer

    from lit_convnext.data import ImageFolderDataModule
    from lit_convnext.model.classifier import ConvNeXtClassifier
    from tests.helpers import TINY_MODEL

    model = ConvNeXtClassifier(model_name=TINY_MODEL, pretrained=False, class_names=["blue", "green", "red"],
                               image_size=32, layer_decay=0.5, layer_decay_grouping="single")
    trainer = Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, ImageFolderDataModule(image_root, batch_size=8, num_workers=0))
    names = {id(p): n for n, p in model.net.named_parameters()}
    scale_of = {names[id(p)]: g["lr_scale"] for g in trainer.optimizers[0].param_groups for p in g["params"]}
    # convnext_atto: 2-2-6-2 = 12 blocks; "single" puts the stem with block 0 in layer 1 -> 0.5 ** 12.
    assert scale_of["stem.0.weight"] == scale_of["stages.0.blocks.0.conv_dw.weight"] == pytest.approx(0.5 ** 12)
    assert "layer decay 0.5 (single grouping)" in caplog.text


# ------------------------------------------------------------------------------------------------ fused AdamW
def _trained(fused: bool, steps: int = 5) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = timm.create_model("convnext_atto", num_classes=4)
    images, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    optimizer = build_optimizer(net, lr=1e-3, weight_decay=0.05, layer_decay=0.8, fused=fused)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(images), targets).backward()
        optimizer.step()
    return net, optimizer


def test_fused_adamw_applies_only_where_torch_has_the_kernel_and_lightning_allows_it() -> None:
    from lit_convnext.model.optim import fused_adamw_applies

    assert fused_adamw_applies(torch.nn.Linear(2, 2), clips_under_mixed_precision=False)
    assert not fused_adamw_applies(torch.nn.Linear(2, 2), clips_under_mixed_precision=True)
    assert not fused_adamw_applies(torch.nn.Linear(2, 2, device="meta"), clips_under_mixed_precision=False)
    assert not fused_adamw_applies(torch.nn.Identity(), clips_under_mixed_precision=False)


@pytest.mark.parametrize("saved_fused", [True, False])
def test_a_resumed_optimizer_keeps_this_runs_implementation(saved_fused: bool) -> None:
    """A checkpoint's groups say fused or not; the resuming run's choice (its device, clipping) stands."""
    _, saved = _trained(fused=saved_fused, steps=2)
    net, resumed = _trained(fused=not saved_fused, steps=1)
    before = {k: v for k, v in saved.state_dict()["param_groups"][5].items() if k not in ("fused", "foreach")}
    resumed.load_state_dict(saved.state_dict())
    assert all(bool(group["fused"]) is (not saved_fused) for group in resumed.param_groups)
    assert {k: v for k, v in resumed.state_dict()["param_groups"][5].items() if k not in ("fused", "foreach")} == before
    assert int(resumed.state_dict()["state"][0]["step"]) == 2  # the moments and step count are the checkpoint's
    # Under a gradient scaler (16-mixed on a GPU) a fused optimizer is handed the scale; with the saved unfused
    # implementation restored, that step raised.
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(torch.nn.functional.cross_entropy(net(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1]))).backward()
    scaler.step(resumed)
    scaler.update()
    assert int(resumed.state_dict()["state"][0]["step"]) == 3
