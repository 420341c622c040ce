"""Resume after SIGKILL or SIGTERM mid-epoch with ``fit --ckpt_path last``: the same weights, steps, lr and
checkpoints as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from lit_convnext.cli.entry import main
from lit_convnext.evaluation.end_of_fit import EvaluationReport
from tests.helpers import REPO, TINY_MODEL



def fit_args(root: Path) -> list[str]:
    # 24 training images / batch 8 = 3 optimizer steps per epoch, 6 in all; last.ckpt every 2 steps (first at 2).
    return ["fit", "--model.model_name", TINY_MODEL, "--model.pretrained", "false", "--data.root", str(root),
            "--model.image_size", "32", "--data.batch_size", "8", "--data.num_workers", "0",
            "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu", "--progress_bar.refresh_rate", "0",
            "--checkpoint.every_n_train_steps", "2", "--checkpoint.save_top_k", "2"]


def fit_and_record(args: list[str], monkeypatch: pytest.MonkeyPatch) -> dict:
    """Run ``main(args)`` and return the trainer's final state (the end-of-fit analysis left out)."""
    seen: dict = {}
    monkeypatch.setattr(EvaluationReport, "on_fit_end", lambda self, trainer, module: seen.update(trainer=trainer))
    main(args)
    trainer = seen["trainer"]
    checkpoint = trainer.checkpoint_callback
    return {
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "lr": [group["lr"] for group in trainer.optimizers[0].param_groups],
        "best_k": sorted(Path(p).name for p in checkpoint.best_k_models),
        "best_score": float(checkpoint.best_model_score),
        "best_path": Path(checkpoint.best_model_path).name,
        "best_exists": Path(checkpoint.best_model_path).is_file(),
        "files": sorted(p.name for p in Path(checkpoint.dirpath).iterdir()),
        "best_k_exist": all(Path(p).is_file() for p in checkpoint.best_k_models),
    }


#: What makes a training batch random: loader workers, RandAugment (the default), Mixup/CutMix and the EMA.
EXACT = ["--data.num_workers", "2", "--model.mixup_alpha", "0.8", "--model.cutmix_alpha", "1.0",
         "--trainer.callbacks+=lit_convnext.callbacks.ema.EMA", "--trainer.callbacks.decay", "0.9"]
LAST = Path("runs/convnext/version_0/checkpoints/last.ckpt")


def start_fit(args: list[str]) -> subprocess.Popen:
    """``python -m lit_convnext fit`` in a process group of its own, as a job's processes are."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "lit_convnext", *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def saved_step(path: Path) -> int:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["global_step"]
    except Exception:  # noqa: BLE001 - read while being replaced: try again
        return -1


def kill_at_step(args: list[str], step: int, marker: Path) -> None:
    """Run ``lit_convnext fit`` in a subprocess and SIGKILL it (and its loader workers) right after optimizer step
    ``step``, once that step's last.ckpt is written."""
    proc = start_fit([*args, "--trainer.callbacks+=tests.callbacks.pause.PauseAtStep", "--trainer.callbacks.step",
                      str(step), "--trainer.callbacks.marker", str(marker)])
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    assert saved_step(LAST) == step, err.decode()[-2000:]


def final_weights() -> dict[str, torch.Tensor]:
    """The weights in last.ckpt: the EMA average (``state_dict``) and the raw weights."""
    saved = torch.load(LAST, map_location="cpu", weights_only=True)
    return {**{f"ema.{k}": v for k, v in saved["state_dict"].items()},
            **{f"raw.{k}": v for k, v in saved["current_model_state"].items()}}


def assert_same_weights(resumed: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert resumed.keys() == reference.keys()
    differ = [name for name in reference if not torch.equal(resumed[name], reference[name])]
    assert not differ, f"{len(differ)} of {len(reference)} tensors differ, e.g. {differ[:3]}"


def reference_run(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, dict]:
    """The same fit, never interrupted, in a directory of its own: its final state and weights."""
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    monkeypatch.chdir(reference_dir)
    return fit_and_record(args, monkeypatch), final_weights()


@pytest.mark.slow
def test_fit_killed_mid_epoch_resumes_to_the_same_weights(image_root: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL inside the first epoch (at its first step checkpoint, made before any validation), then
    ``--ckpt_path last``: the same images in the same order, augmented alike in every loader worker, the same
    Mixup/CutMix draws, EMA, lr schedule and best-k bookkeeping: bit-identical final weights."""
    args = [*fit_args(image_root), *EXACT]
    kill_at_step(args, 2, tmp_path / "at_step_2")  # step 2 of 3: before the first validation
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        resumed = fit_and_record([*args, "--ckpt_path", "last"], monkeypatch)
    assert sorted(p.name for p in Path("runs/convnext").iterdir()) == ["version_0"]  # logged into the same run
    assert not [w for w in shown if "dataloader is not resumable" in str(w.message)]
    resumed_weights = final_weights()

    reference, reference_weights = reference_run(args, tmp_path, monkeypatch)
    assert resumed["global_step"] == reference["global_step"] == 6
    assert resumed["epoch"] == reference["epoch"]
    assert resumed["lr"] == reference["lr"]
    # The same best-k bookkeeping: the monitored val/acc1 of the last validation is part of the checkpoint.
    for key in ("best_k", "best_score", "best_path", "files"):
        assert resumed[key] == reference[key], key
    assert len(reference["best_k"]) == 2 and resumed["best_exists"] and resumed["best_k_exist"]
    assert_same_weights(resumed_weights, reference_weights)


@pytest.mark.slow
def test_sigterm_saves_last_ckpt_exits_cleanly_and_resumes_exactly(image_root: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM to the whole job (main process and loader workers) after step 4, inside the second epoch: the batch
    in progress ends, ``last.ckpt`` is written at step 5 (no step checkpoints here: the epoch's own is at step 3),
    the process exits with status 0, and ``--ckpt_path last`` ends with the uninterrupted run's weights."""
    args = [*fit_args(image_root)[:-4], *EXACT]  # checkpoints at epoch ends only
    marker = tmp_path / "at_step_4"
    proc = start_fit([*args, "--trainer.callbacks+=tests.callbacks.pause.PauseAtStep", "--trainer.callbacks.step", "4",
                      "--trainer.callbacks.marker", str(marker)])
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert saved_step(LAST) == 5, err.decode()[-2000:]  # inside the second epoch: written on SIGTERM
    assert f"SIGTERM received: {LAST} holds step 5" in err.decode()

    fit_and_record([*args, "--ckpt_path", "last"], monkeypatch)
    resumed_weights = final_weights()
    reference, reference_weights = reference_run(args, tmp_path, monkeypatch)
    assert reference["global_step"] == saved_step(tmp_path / "cwd" / LAST) == 6
    assert_same_weights(resumed_weights, reference_weights)


def test_ckpt_path_last_without_a_previous_run_says_so(capsys, image_root: Path) -> None:
    with pytest.raises(SystemExit):
        main([*fit_args(image_root), "--ckpt_path", "last"])
    assert "no run under runs/convnext has checkpoints/last.ckpt" in capsys.readouterr().err


@pytest.mark.slow  # a few seconds: kept out of the quick tier
def test_runs_without_a_logger_get_a_directory_each_and_last_resumes_the_newest(image_root: Path,
                                                                               tmp_path: Path) -> None:
    """``--trainer.logger false`` twice into one root stopped at the first run's config.yaml (Lightning's
    RuntimeError); each run now gets ``<root>/version_N`` as a logger's runs do, and ``--ckpt_path last`` goes on
    with the newest of them in place."""
    root = tmp_path / "out"
    args = [*fit_args(image_root)[:-4], "--trainer.max_epochs", "1", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(root)]
    main(args)
    first = (root / "version_0" / "config.yaml").read_bytes()
    main(args)
    assert sorted(p.name for p in root.iterdir()) == ["version_0", "version_1"]
    for run in ("version_0", "version_1"):
        assert (root / run / "config.yaml").is_file() and (root / run / "checkpoints" / "last.ckpt").is_file()
    assert (root / "version_0" / "config.yaml").read_bytes() == first  # nothing of the first run overwritten
    main([*args[:-4], "--trainer.max_epochs", "2", *args[-4:], "--ckpt_path", "last"])
    assert sorted(p.name for p in root.iterdir()) == ["version_0", "version_1"]
    resumed = torch.load(root / "version_1" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 6  # two epochs of 3 steps: the second one was added to the newest run
    assert torch.load(root / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)["global_step"] == 3


def test_last_ckpt_holds_the_latest_epoch_when_the_best_does_not_improve(image_root: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning 2.6 rewrote last.ckpt only together with a new best checkpoint: monitoring ``epoch`` in ``min``
    mode, only epoch 0 is ever the best, and last.ckpt stayed at epoch 0. It must hold the end of epoch 2, and
    ``--ckpt_path last`` must go on from there."""
    args = [*fit_args(image_root)[:-4], "--trainer.max_epochs", "3", "--checkpoint.monitor", "epoch",
            "--checkpoint.mode", "min"]  # no step-triggered saves: only the end-of-epoch ones
    state = fit_and_record(args, monkeypatch)
    folder = Path("runs/convnext/version_0/checkpoints")
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    best = torch.load(folder / state["best_path"], map_location="cpu", weights_only=True)
    assert best["epoch"] == 0 and best["global_step"] == 3
    assert last["epoch"] == 2 and last["global_step"] == state["global_step"] == 9
    resumed = fit_and_record([*args, "--trainer.max_epochs", "4", "--ckpt_path", "last"], monkeypatch)
    assert resumed["global_step"] == 12  # one more epoch from step 9, not two from step 3
    assert torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 12


@pytest.mark.slow
def test_last_ckpt_is_a_hard_link_to_a_best_checkpoint_of_the_same_step(image_root: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Monitoring ``epoch`` in ``max`` mode, every epoch is a new best: each epoch's last.ckpt is that best file
    linked (written once), with the content a second write would have had; the next best's rotation
    leaves last.ckpt whole."""
    args = [*fit_args(image_root)[:-4], "--trainer.max_epochs", "2", "--checkpoint.monitor", "epoch",
            "--checkpoint.mode", "max"]
    state = fit_and_record(args, monkeypatch)
    folder = Path("runs/convnext/version_0/checkpoints")
    last, best = folder / "last.ckpt", folder / state["best_path"]
    assert state["files"] == sorted([best.name, "last.ckpt"])  # epoch 0's best was removed by the rotation
    assert os.path.samefile(last, best)
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 6 and saved["epoch"] == 1
    recorded = saved["callbacks"][next(k for k in saved["callbacks"] if k.startswith("ModelCheckpoint"))]
    assert Path(recorded["last_model_path"]).resolve() == last.resolve()  # what a second write would have held
    # A resumed run goes on from it and replaces the link with its own last.ckpt.
    resumed = fit_and_record([*args, "--trainer.max_epochs", "3", "--ckpt_path", "last"], monkeypatch)
    assert resumed["global_step"] == 9 and resumed["files"] == sorted([resumed["best_path"], "last.ckpt"])
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 9


def test_the_first_last_ckpt_is_linked_too(image_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The best-k file of the first save records last.ckpt's path before last.ckpt exists, so last.ckpt is linked
    to it then as well, instead of written a second time (it was: the best-k file recorded no path yet)."""
    from lit_convnext.callbacks.checkpointing import AtomicCheckpointIO

    written: list[str] = []
    save = AtomicCheckpointIO.save_checkpoint

    def counted(self, checkpoint, path, *args, **kwargs):
        written.append(Path(path).name)
        return save(self, checkpoint, path, *args, **kwargs)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", counted)
    state = fit_and_record([*fit_args(image_root)[:-4], "--trainer.max_epochs", "1", "--checkpoint.monitor", "epoch",
                            "--checkpoint.mode", "max"], monkeypatch)
    folder = Path("runs/convnext/version_0/checkpoints")
    last, best = folder / "last.ckpt", folder / state["best_path"]
    assert written == [best.name] and os.path.samefile(last, best)
    saved = torch.load(last, map_location="cpu", weights_only=True)
    recorded = saved["callbacks"][next(k for k in saved["callbacks"] if k.startswith("ModelCheckpoint"))]
    assert Path(recorded["last_model_path"]).resolve() == last.resolve() and saved["global_step"] == 3


def test_last_ckpt_is_a_copy_where_the_filesystem_has_no_hard_links(image_root: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(*_: object) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    state = fit_and_record([*fit_args(image_root)[:-4], "--checkpoint.monitor", "epoch", "--checkpoint.mode", "max"],
                           monkeypatch)
    folder = Path("runs/convnext/version_0/checkpoints")
    last, best = folder / "last.ckpt", folder / state["best_path"]
    assert not os.path.samefile(last, best) and last.read_bytes() == best.read_bytes()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_rewriting_a_linked_best_checkpoint_leaves_last_ckpt_as_it_was(tmp_path: Path) -> None:
    """The end-of-fit analysis adds the temperature to the best file: the atomic write replaces that file, so
    a last.ckpt linked to it keeps its own content."""
    from lit_convnext.callbacks.checkpointing import AtomicCheckpointIO, link_or_copy

    best, last = tmp_path / "best.ckpt", tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, best)
    link_or_copy(best, last)
    AtomicCheckpointIO().save_checkpoint({"step": 1, "calibration": {"temperature": 1.5}}, best)
    assert torch.load(last, weights_only=True) == {"step": 1}
    assert torch.load(best, weights_only=True)["calibration"] == {"temperature": 1.5}


def test_save_last_link_gives_the_latest_epoch_too(image_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning's ``save_last="link"`` pointed last.ckpt at the newest saved file, the epoch-0 best here."""
    args = [*fit_args(image_root)[:-4], "--trainer.max_epochs", "3", "--checkpoint.monitor", "epoch",
            "--checkpoint.mode", "min", "--checkpoint.save_last", "link"]
    with pytest.warns(UserWarning, match="'link' works as true"):
        fit_and_record(args, monkeypatch)
    last = Path("runs/convnext/version_0/checkpoints/last.ckpt")
    assert not last.is_symlink() and torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 2


@pytest.mark.slow
def test_resuming_with_other_loader_workers_says_which_inside_an_epoch_and_goes_on_at_its_end(
        image_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """torchdata restores a loader's position only with the worker count it was saved with."""
    inside = [*fit_args(image_root)[:-4], "--trainer.max_epochs", "1", "--checkpoint.every_n_train_steps", "2"]
    main(inside)  # last.ckpt at step 2 of 3 (the deferred best-k save of step 2 is Lightning's to make)
    assert saved_step(LAST) == 2
    with pytest.raises(SystemExit):
        main([*inside, "--data.num_workers", "1", "--ckpt_path", "last"])
    assert ("the checkpoint was saved inside epoch 0 (2 of its 3 batches done) by a training loader with 0 workers, "
            "and this run has 1: resume with --data.num_workers 0") in capsys.readouterr().err

    monkeypatch.chdir(Path.cwd().parent)
    at_end = [*fit_args(image_root)[:-4], "--trainer.max_epochs", "1"]
    main(at_end)
    assert saved_step(LAST) == 3
    fit_and_record([*at_end, "--trainer.max_epochs", "2", "--data.num_workers", "1", "--ckpt_path", "last"],
                   monkeypatch)
    assert saved_step(LAST) == 6  # from an epoch's end: the next epoch starts whole, with 1 worker


@pytest.mark.slow
def test_a_time_interval_writes_last_ckpt_inside_the_first_epoch(image_root: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``train_time_interval`` (here 0: due at every step) before the first validation: Lightning defers the whole
    save to the validation; last.ckpt is written at the step instead, except where a validation follows at once."""
    from lit_convnext.callbacks.checkpointing import AtomicCheckpointIO

    saved: list[tuple[str, int]] = []
    save = AtomicCheckpointIO.save_checkpoint

    def recorded(self, checkpoint, path, *args, **kwargs):
        saved.append((Path(path).name, checkpoint["global_step"]))
        return save(self, checkpoint, path, *args, **kwargs)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", recorded)
    monkeypatch.setattr(EvaluationReport, "on_fit_end", lambda *_: None)
    main([*fit_args(image_root)[:-4], "--trainer.max_epochs", "1", "--checkpoint.train_time_interval", "0:00:00"])
    assert saved[:2] == [("last.ckpt", 1), ("last.ckpt", 2)]


@pytest.mark.slow
def test_a_ddp_run_killed_mid_epoch_resumes_to_the_same_weights(image_root: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Two CPU processes under DDP, each with its loader workers, RandAugment, Mixup/CutMix and the EMA: SIGKILL to
    the whole job at the step checkpoint inside the first epoch, then ``--ckpt_path last`` (both ranks restore the
    loader's position from the one checkpoint): the final weights equal those of the job never interrupted."""
    # 24 training images over 2 ranks in batches of 4: 3 steps an epoch, 6 in all; last.ckpt at step 2.
    args = [*fit_args(image_root), *EXACT, "--data.batch_size", "4", "--trainer.devices", "2",
            "--trainer.strategy", "ddp"]
    kill_at_step(args, 2, tmp_path / "at_step_2")
    resumed = start_fit([*args, "--ckpt_path", "last"])
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err.decode()[-3000:]
    assert saved_step(LAST) == 6
    resumed_weights = final_weights()

    (tmp_path / "reference").mkdir()
    monkeypatch.chdir(tmp_path / "reference")
    reference = start_fit(args)
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err.decode()[-3000:]
    assert_same_weights(resumed_weights, final_weights())
