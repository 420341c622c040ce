"""Linear probe (``--model.freeze_backbone``) and LP-FT (``--model.linear_probe_epochs``)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import timm
import torch
from lightning.pytorch.callbacks import Callback

from lit_convnext.callbacks.ema import EMA
from lit_convnext.data.transforms import TrainAugmentation
from lit_convnext.errors import UserError
from lit_convnext.model.linear_probe import FeatureDataset, backbone_state, set_probing
from lit_convnext.model.optim import build_phased_scheduler
from tests.helpers import TINY_MODEL, fit_args, lightning_info_lines, make_folder, one_line_error


@pytest.mark.slow  # about 1.3 s (the command line builds the parser)
def test_freeze_backbone_with_linear_probe_epochs_is_a_one_line_error(capsys, image_root: Path) -> None:
    line = one_line_error(capsys, fit_args(image_root, "--model.freeze_backbone", "true",
                                           "--model.linear_probe_epochs", "2"))
    assert "--model.freeze_backbone" in line and "--model.linear_probe_epochs 2" in line


@pytest.mark.slow  # about 1 s (a command-line fit up to its setup)
def test_probe_epochs_that_leave_no_full_epoch_are_a_one_line_error(capsys, image_root: Path) -> None:
    line = one_line_error(capsys, fit_args(image_root, "--model.linear_probe_epochs", "1"))  # max_epochs 1
    assert "--model.linear_probe_epochs 1" in line and "--trainer.max_epochs 1" in line


def test_probing_freezes_all_but_the_classifier_and_puts_the_rest_in_eval_mode() -> None:
    net = timm.create_model(TINY_MODEL, num_classes=3, drop_path_rate=0.1)
    set_probing(net, probing=True)
    assert {n for n, p in net.named_parameters() if p.requires_grad} == {"head.fc.weight", "head.fc.bias"}
    block = net.stages[0].blocks[0]
    assert not block.drop_path.training and not block.norm.training and not net.head.norm.training
    assert net.head.fc.training
    assert "head.norm.weight" in backbone_state(net) and "head.fc.weight" not in backbone_state(net)
    set_probing(net, probing=False)
    assert all(p.requires_grad for p in net.parameters()) and block.drop_path.training


def test_the_phased_schedule_warms_up_again_at_the_switch() -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = build_phased_scheduler(optimizer, total_steps=20, switch_step=8, warmup_steps=2, min_lr=0.0)
    lrs = []
    for step in range(20):
        schedule.step_update(step)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[2] == pytest.approx(1.0) and lrs[7] < 0.1  # the probe's warm-up and cosine
    assert lrs[8] < 1e-6 and lrs[10] == pytest.approx(1.0) and lrs[19] < 0.1  # then again for the full phase


def test_feature_dataset_batches_like_a_dataset_of_pairs() -> None:
    data = FeatureDataset(torch.arange(12.0).reshape(6, 2), torch.tensor([0, 1, 2, 0, 1, 2]))
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=4)))
    assert torch.equal(batch[0], torch.arange(8.0).reshape(4, 2)) and batch[1].tolist() == [0, 1, 2, 0]


# ------------------------------------------------------------------------------------------- whole runs
class BackboneAtEpochEnd(Callback):
    """The backbone's tensors at the end of each training epoch (the raw weights, before any EMA swap)."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.states.append(backbone_state(pl_module.net))


class StopAtEpoch(Callback):
    """Kill the run when epoch ``epoch`` starts (after the previous epoch's checkpoint)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("killed")


def _data(root: Path, augmentation: bool = True, **options):
    from lit_convnext import ImageFolderDataModule

    return ImageFolderDataModule(root=root, batch_size=8, num_workers=0,
                                 augmentation=TrainAugmentation(enabled=augmentation), **options)


def _model(dm, **options):
    from lit_convnext import ConvNeXtClassifier

    pl.seed_everything(0)
    options = {"weight_decay": 0.5, "layer_decay": 0.8, "lr": 0.05, "warmup_epochs": 0.0, **options}
    return ConvNeXtClassifier(TINY_MODEL, pretrained=False, image_size=32, class_names=dm.class_names,
                              task=dm.task, **options)


def _fit(model, dm, root: Path, epochs: int, *callbacks: Callback, ckpt_path: str | None = None) -> pl.Trainer:
    trainer = pl.Trainer(default_root_dir=root, max_epochs=epochs, accelerator="cpu", enable_progress_bar=False,
                         logger=False, callbacks=list(callbacks), enable_model_summary=False)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return trainer


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _checkpoint_backbone(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("net."): v for k, v in state.items()
            if k.startswith("net.") and not k.startswith("net.head.fc.")}


@pytest.mark.slow
@pytest.mark.parametrize("augmentation", [True, False], ids=["images", "cached-features"])
def test_a_frozen_run_leaves_every_backbone_tensor_bit_identical(image_root: Path, tmp_path: Path,
                                                                 augmentation: bool) -> None:
    """Weight decay, layer decay, drop path and EMA on: none of them may touch a frozen tensor."""
    dm = _data(image_root, augmentation)
    model = _model(dm, freeze_backbone=True, drop_path_rate=0.2)
    start, head = backbone_state(model.net), model.net.head.fc.weight.detach().clone()
    with lightning_info_lines() as lines:
        trainer = _fit(model, dm, tmp_path / "run", 2, EMA(decay=0.5))
    assert _same(backbone_state(model.net), start)
    assert not torch.equal(model.net.head.fc.weight, head)
    assert _same(_checkpoint_backbone(Path(trainer.checkpoint_callback.last_model_path)), start)  # the EMA weights
    cached = any("cached features" in line for line in lines)
    assert cached is not augmentation and isinstance(dm.datasets["train"], FeatureDataset) is cached
    assert any((tmp_path / "run").rglob("train_batch_mosaic.png")) is not cached  # no images to draw
    assert trainer.callback_metrics["val/acc1"] > 0.5


@pytest.mark.slow
def test_a_cached_probe_learns_what_the_uncached_one_learns(image_root: Path, tmp_path: Path) -> None:
    """Same features (the frozen layers in eval mode either way), same head after one epoch up to float noise."""
    heads = []
    for cache in (True, False):
        dm = _data(image_root, augmentation=False, sampler="shuffle")
        model = _model(dm, freeze_backbone=True, drop_path_rate=0.2, mixup_alpha=0.0)
        if not cache:  # the same run, with the features recomputed at every step
            model.configure_callbacks = _without_cache(model.configure_callbacks)
        _fit(model, dm, tmp_path / f"run{cache}", 1, SeedAtEpochStart())
        heads.append(model.net.head.fc.weight.detach().clone())
    torch.testing.assert_close(heads[0], heads[1], rtol=1e-4, atol=1e-5)


class SeedAtEpochStart(Callback):
    """The same shuffle in both runs: the cached run's pass over the images drew from the global generator."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.manual_seed(1)


def _without_cache(configure_callbacks):
    def wrapped():
        callbacks = configure_callbacks()
        for callback in callbacks:
            if hasattr(callback, "cache_features"):
                callback.cache_features = False
        return callbacks
    return wrapped


@pytest.mark.slow
def test_lp_ft_changes_the_backbone_only_after_the_probe_epochs(image_root: Path, tmp_path: Path) -> None:
    dm = _data(image_root)
    model = _model(dm, linear_probe_epochs=1, warmup_epochs=0.5)
    start = backbone_state(model.net)
    seen = BackboneAtEpochEnd()
    with lightning_info_lines() as lines:
        _fit(model, dm, tmp_path / "run", 2, EMA(decay=0.5), seen)
    assert _same(seen.states[0], start)
    assert not torch.equal(seen.states[1]["stages.0.blocks.0.conv_dw.weight"], start["stages.0.blocks.0.conv_dw.weight"])
    assert all(p.requires_grad for p in model.net.parameters())
    assert any("Linear probe done after 1 epoch(s)" in line for line in lines)


@pytest.mark.slow
@pytest.mark.parametrize("killed_at, probing_after_resume", [(1, True), (2, False)], ids=["probing", "full"])
def test_lp_ft_resumes_in_the_phase_it_was_killed_in(image_root: Path, tmp_path: Path, killed_at: int,
                                                     probing_after_resume: bool) -> None:
    """Probe 2 of 3 epochs: killed before the switch it goes on probing, killed after it fine-tunes every layer;
    and the learning rate goes on exactly as in a run that was never killed."""
    run = tmp_path / "run"
    dm = _data(image_root)
    model = _model(dm, linear_probe_epochs=2)
    with pytest.raises(RuntimeError, match="killed"):
        _fit(model, dm, run, 3, StopAtEpoch(killed_at))
    [last] = run.rglob("last.ckpt")
    saved = _checkpoint_backbone(last)

    dm = _data(image_root)
    resumed = _model(dm, linear_probe_epochs=2)
    seen = BackboneAtEpochEnd()
    lr = LearningRates()
    _fit(resumed, dm, tmp_path / "resumed", 3, seen, lr, ckpt_path=str(last))
    assert _same(seen.states[0], saved) is probing_after_resume

    dm = _data(image_root)
    whole = LearningRates()
    _fit(_model(dm, linear_probe_epochs=2), dm, tmp_path / "whole", 3, whole)
    assert lr.rates == whole.rates[-len(lr.rates):]


class LearningRates(Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.slow
def test_a_multilabel_probe_on_cached_features(tmp_path: Path) -> None:
    root = tmp_path / "images"
    make_folder(root / "img", 8)
    rows = ["path,labels,split"] + [f"img/{c}/img{i}.png,{c},{'val' if i < 3 else 'train'}"
                                    for c in ("red", "green", "blue") for i in range(8)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    dm = _data(root, augmentation=False, labels=root / "labels.csv")
    model = _model(dm, freeze_backbone=True)
    start = backbone_state(model.net)
    trainer = _fit(model, dm, tmp_path / "run", 1)
    assert isinstance(dm.datasets["train"], FeatureDataset) and dm.datasets["train"].targets.shape[1] == 3
    assert _same(backbone_state(model.net), start) and "val/map" in trainer.callback_metrics


def test_the_model_refuses_both_modes_in_python() -> None:
    from lit_convnext import ConvNeXtClassifier

    with pytest.raises(UserError, match="pass one of them"):
        ConvNeXtClassifier(TINY_MODEL, pretrained=False, num_classes=2, freeze_backbone=True, linear_probe_epochs=1)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [["--model.freeze_backbone", "true", "--data.augmentation.enabled", "false"],
                                  ["--model.linear_probe_epochs", "1", "--trainer.strategy",
                                   "ddp_find_unused_parameters_true"]], ids=["cached-probe", "lp-ft"])
def test_under_ddp(tmp_path: Path, mode: list[str]) -> None:
    """Two CPU processes: a cached probe leaves the loaded backbone as it was; LP-FT then trains it (its probe
    epochs leave the backbone without gradients, which DDP accepts with find_unused_parameters)."""
    from safetensors.torch import save_file

    from tests.data.test_distributed import COMMON, DDP, run_cli

    root = tmp_path / "images"
    make_folder(root / "train", 6)
    make_folder(root / "val", 2, seed=500)
    state = {k: v.contiguous() for k, v in timm.create_model(TINY_MODEL, num_classes=3).state_dict().items()}
    save_file(state, str(tmp_path / "start.safetensors"))
    ddp = DDP if "--trainer.strategy" not in mode else [a for a in DDP if a not in ("--trainer.strategy", "ddp")]
    run_cli("fit", "--model.model_name", TINY_MODEL, "--model.pretrained", str(tmp_path / "start.safetensors"),
            "--data.root", str(root), "--trainer.max_epochs", "2", *COMMON, *ddp, *mode,
            "--trainer.default_root_dir", str(tmp_path / "runs"))
    [last] = (tmp_path / "runs").rglob("last.ckpt")
    backbone = {k: v for k, v in state.items() if not k.startswith("head.fc.")}
    assert _same(_checkpoint_backbone(last), backbone) is ("--model.freeze_backbone" in mode)
