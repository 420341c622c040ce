"""Knowledge distillation: a frozen teacher (a larger model fine-tuned on the same classes) guides the student.

The teacher is read from a checkpoint of this app, an exported ``.safetensors`` with its JSON sidecar, or any
weights file ``--model.pretrained`` reads (then ``--model.teacher_model_name`` names its architecture). Its classes
must be the folder's, by name and order: its outputs are the student's targets, class by class.

"Consistent teaching" (Beyer et al., CVPR 2022, "Knowledge distillation: A good teacher is patient and
consistent"): the teacher sees exactly the batch the student sees, after the loader's augmentation and after
Mixup/CutMix, so the student matches the teacher's function on every image it trains on. The teacher's raw logits
are used: a temperature fitted to calibrate it (``checkpoint["calibration"]``) is left out, and
``distill_temperature`` alone softens both sides.

The loss is ``(1 - w) * task_loss + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))`` with
``w = distill_weight`` and ``T = distill_temperature`` (Hinton et al., 2015; ``T^2`` keeps the gradient's scale
as ``T`` changes). Unlabelled images (``--data.unlabeled_root``) enter the distillation term only: the teacher
labels them.

The teacher is kept out of the student's ``state_dict`` (checkpoints stay the student's size and load without it)
and out of the optimizer; it is loaded when a ``fit`` starts, so ``validate``, ``predict`` and
``load_from_checkpoint`` of a distilled student never read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from timm.data import resolve_model_data_config
from torch import nn

from lit_convnext.errors import UserError
from lit_convnext.model.backbone import check_model_name
from lit_convnext.text import preview


@dataclass(frozen=True)
class TeacherSource:
    """What a teacher file says about itself: its architecture, classes and normalisation (``None`` when the file
    does not carry it)."""

    path: Path
    model_name: str | None
    class_names: list[str] | None
    mean: list[float] | None
    std: list[float] | None


def describe_teacher(source: str | Path) -> TeacherSource:
    """Read what a teacher file stores beside its tensors: the app's checkpoint its hyperparameters, an exported
    ``.safetensors`` its JSON sidecar; other weights nothing. Raises :class:`UserError` for a file that cannot be
    read (prefixed with the option's name)."""
    from lit_convnext.weights import read_checkpoint, sidecar_path

    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"--model.teacher {path} does not exist: pass a checkpoint of this app, an exported "
                        ".safetensors, or a weights file with --model.teacher_model_name")
    try:
        if path.suffix == ".safetensors":  # its tensors are read (and refused if foreign) when the teacher loads
            sidecar = sidecar_path(path)
            stored = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else {}
            cfg = stored.get("pretrained_cfg") or {}
        else:
            stored = read_checkpoint(path).get("hyper_parameters") or {}
            cfg = stored.get("preprocessing") or {}
    except UserError as err:
        raise UserError(f"--model.teacher: {err}") from err
    except (OSError, ValueError) as err:  # an unreadable sidecar (JSON errors are ValueErrors)
        raise UserError(f"--model.teacher: cannot read the sidecar of {path} ({err}); export the teacher again "
                        "with `lit-convnext export`") from err
    names = stored.get("class_names")
    return TeacherSource(
        path=path,
        model_name=stored.get("model_name") if isinstance(stored.get("model_name"), str) else None,
        class_names=[str(name) for name in names] if isinstance(names, list) else None,
        mean=[float(v) for v in cfg["mean"]] if cfg.get("mean") else None,
        std=[float(v) for v in cfg["std"]] if cfg.get("std") else None,
    )


def check_teacher_classes(teacher: list[str], student: list[str], path: Path) -> None:
    """The teacher's outputs must be the folder's classes, by name and in order; one line naming both lists."""
    if teacher != student:
        differ = "in another order" if sorted(teacher) == sorted(student) else "other classes"
        raise UserError(f"the teacher {path} was trained on {differ}: [{preview(teacher, 8)}] "
                        f"({len(teacher)} classes), but the data folder has [{preview(student, 8)}] "
                        f"({len(student)} classes); distil from a model fine-tuned on this folder's classes")


class Teacher(nn.Module):
    """A frozen classifier: always in eval mode, no parameter wants a gradient. Its input is the student's batch,
    normalised with the student's mean and std; ``renormalise`` converts it to the teacher's when they differ (e.g. a
    CLIP-normalised teacher and an ImageNet-normalised student)."""

    def __init__(self, net: nn.Module, student_mean: list[float], student_std: list[float],
                 teacher_mean: list[float], teacher_std: list[float]) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.renormalise = (student_mean, student_std) != (teacher_mean, teacher_std)
        # x_teacher = (x_student * std_s + mean_s - mean_t) / std_t, as a per-channel scale and shift.
        scale = torch.tensor(student_std) / torch.tensor(teacher_std)
        shift = (torch.tensor(student_mean) - torch.tensor(teacher_mean)) / torch.tensor(teacher_std)
        self.register_buffer("scale", scale.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> Teacher:
        """Stays in eval mode: the teacher's dropout, stochastic depth and normalisation statistics never train."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.renormalise:
            images = images * self.scale.to(images.dtype) + self.shift.to(images.dtype)
        return self.net(images)


def load_teacher(source: str | Path, class_names: list[str], student_preprocessing: dict[str, Any],
                 model_name: str | None = None) -> tuple[Teacher, str]:
    """The frozen teacher in ``source`` for a student of ``class_names``, and its architecture's name.

    The architecture is ``model_name`` when given, else the one the file stores (app checkpoint, exported sidecar).
    EMA weights are preferred when the file holds them (as the app's own validation used them). The file's classifier
    must fit the folder's classes: a teacher with a fresh head would teach noise.
    """
    from lit_convnext.weights import load_pretrained

    described = describe_teacher(source)
    path = described.path
    name = model_name or described.model_name
    if not name:
        raise UserError(f"--model.teacher {path} does not say which architecture it is (plain weights): pass "
                        "--model.teacher_model_name, e.g. convnext_nano")
    check_model_name(name)
    if described.class_names is not None:
        check_teacher_classes(described.class_names, list(class_names), path)
    net = timm.create_model(name, pretrained=False, num_classes=len(class_names))
    try:
        report = load_pretrained(net, path, use_ema=True)
    except UserError as err:
        raise UserError(f"--model.teacher: {err}") from err
    if report.head != "kept":
        raise UserError(f"the teacher {path} has no classifier for the folder's {len(class_names)} classes "
                        f"({report.head_reason}); distil from a model fine-tuned on this folder")
    if described.class_names is None:
        # Plain weights (timm, official, torchvision layouts) carry no names: the head's size was checked as they
        # loaded, their order cannot be; said once, not assumed silently.
        rank_zero_warn(f"--model.teacher {path} stores no class names: its {len(class_names)} outputs are taken to "
                       f"be the folder's classes in the folder's order ({preview(list(class_names), 6)})")
    data_config = resolve_model_data_config(net)
    teacher = Teacher(net, student_preprocessing["mean"], student_preprocessing["std"],
                      described.mean or [float(v) for v in data_config["mean"]],
                      described.std or [float(v) for v in data_config["std"]])
    rank_zero_info(f"Teacher: {name} from {path} ({parameter_count(net) / 1e6:.1f} M parameters, "
                   f"{report.tensors_loaded} tensors{', EMA weights' if report.ema_used else ''}), frozen")
    return teacher, name


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over images, in float32."""
    t = float(temperature)
    student = F.log_softmax(student_logits.float() / t, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * (t * t)


class Distillation:
    """The teacher of one fit and the loss it adds to the student's; held by the LightningModule as a plain
    attribute, not a submodule, so it is neither saved, nor optimised, nor copied with the module.

    Args:
        teacher: The frozen teacher.
        weight: Share of the distillation term in the loss (``distill_weight``).
        temperature: Softening temperature of both distributions (``distill_temperature``).
        name: The teacher's architecture (for the report).
    """

    def __init__(self, teacher: Teacher, weight: float, temperature: float, name: str = "") -> None:
        self.teacher = teacher
        self.weight = weight
        self.temperature = temperature
        self.name = name

    def __deepcopy__(self, memo: dict[int, Any]) -> Distillation:
        # A copy of the student (the EMA callback's average) shares the frozen teacher instead of doubling it.
        return self

    def for_run(self, precision_plugin: Any, device: torch.device, channels_last: bool) -> Distillation:
        """Put the teacher in the run's precision and on its device: Lightning's precision plugin converts it as it
        converts the student (``bf16-true``, ``16-true``, ``64-true``); under mixed precision the training step's
        autocast covers the teacher's forward pass as the student's."""
        teacher = precision_plugin.convert_module(self.teacher).to(device)
        if channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
        self.teacher = teacher
        return self

    def loss(self, task_loss: torch.Tensor, images: torch.Tensor, logits: torch.Tensor,
             student: nn.Module, unlabeled: torch.Tensor | None = None) -> torch.Tensor:
        """Blend the student's ``task_loss`` on the labelled ``images`` (its ``logits``) with the distillation term
        over these images and the ``unlabeled`` ones (the student's forward pass on those is ``student``'s)."""
        student_logits, teacher_logits = [logits], [self.teacher(images)]
        if unlabeled is not None and len(unlabeled):
            student_logits.append(student(unlabeled))
            teacher_logits.append(self.teacher(unlabeled))
        term = distillation_loss(torch.cat(student_logits), torch.cat(teacher_logits), self.temperature)
        return (1.0 - self.weight) * task_loss + self.weight * term
