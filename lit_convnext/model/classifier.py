"""The LightningModule: a timm ConvNeXt fine-tuned with the official recipe's training step."""


from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.utilities import rank_zero_info
from timm.data import Mixup, resolve_model_data_config

from lit_convnext.callbacks.linear_probe import LinearProbe
from lit_convnext.callbacks.run import missing_run_callbacks
from lit_convnext.data.datasets import measured_rows
from lit_convnext.data.unlabeled import split_training_batch
from lit_convnext.errors import UserError
from lit_convnext.evaluation.teacher_comparison import missing_teacher_comparison
from lit_convnext.model.backbone import build_convnext
from lit_convnext.model.distillation import Distillation, load_teacher
from lit_convnext.model.metrics import multiclass_metrics, multilabel_metrics
from lit_convnext.model.losses import ClassWeights, classification_loss, multilabel_loss, resolve_class_weights
from lit_convnext.model.postprocess import ClassifierOutputs
from lit_convnext.model.semi_supervised import PseudoLabeler, check_semi_supervised
from lit_convnext.model.optim import (
    EffectiveBatch,
    LayerDecayGrouping,
    build_optimizer,
    build_phased_scheduler,
    build_scheduler,
    fused_adamw_applies,
    warmup_steps_for,
)
from lit_convnext.ranges import (
    ImageSize,
    LayerDecay,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Probability,
    Rate,
)
from lit_convnext.model.tally import TrainingTally
from lit_convnext.text import preview

#: Where a checkpoint keeps the training step's tally (:class:`TrainingTally`).
TALLY_KEY = "training_tally"

PREPROCESSING_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")

#: Keyword arguments of ``torch.compile`` for ``--model.compile`` (tests swap in a fast backend).
COMPILE_OPTIONS: dict[str, Any] = {}


class ConvNeXtClassifier(ClassifierOutputs, LightningModule):
    """Fine-tune a timm ConvNeXt V1/V2 onto the classes of an image folder.

    Args:
        model_name: Any timm ``convnext_*`` / ``convnextv2_*`` name, optionally with a pretrained tag
            (``convnext_tiny.fb_in22k_ft_in1k``).
        pretrained: ``true`` for timm's hub weights of that tag, ``false`` for random init, or a path to a
            weights file.
        class_names: Class names in label order. Set from the data folder: the CLI links the DataModule's; in
            Python pass ``ImageFolderDataModule(...).class_names`` (known at construction), or ``num_classes``.
        num_classes: Number of classes when no names are given (names become ``"0"``, ``"1"``, ...), as in
            ``timm.create_model``; with ``class_names`` it must equal their count.
        image_size: Input resolution for training, evaluation and predict (a multiple of 32); ``None`` keeps the
            weights' pretrained size. Stored in the checkpoint with the rest of the preprocessing.
        drop_path_rate: Stochastic-depth rate at the last block; it rises linearly from 0 at the first block.
        layer_scale_init_value: Initial layer-scale gamma; ``None`` keeps the architecture's default
            (1e-6 for V1, none for V2). Pretrained gammas replace the init when weights are loaded.
        head_init_scale: Scale of a newly initialised classifier head (0.001 in the official fine-tuning recipe).
        lr: Peak learning rate for a batch of ``lr_reference_batch_size``; the run uses
            ``lr * effective_batch / lr_reference_batch_size``.
        lr_reference_batch_size: Batch size ``lr`` is given for (256 in the ConvNeXt-V2 recipes).
        min_lr: Learning rate at the end of the cosine decay.
        warmup_epochs: Linear warm-up length, in epochs (fractions allowed).
        weight_decay: AdamW weight decay (not applied to biases, norms, layer-scale and GRN parameters).
        layer_decay: Layer-wise lr decay per layer (the head gets ``lr``, each earlier layer ``layer_decay`` times
            the next); ``None`` turns it off.
        layer_decay_grouping: What a layer is: ``timm`` (one per block, the stem alone), ``single`` (official
            ConvNeXt-V2 per-block, the stem with the first block) or ``group`` (official V1 / V2 12 groups, made for
            3-3-27-3 depths). See ``lit_convnext.model.optim.LayerDecayGrouping``.
        betas: AdamW betas.
        label_smoothing: Label smoothing of the cross-entropy (also applied under Mixup/CutMix); multi-label:
            each binary target moves towards 0.5.
        mixup_alpha: Mixup beta-distribution alpha; 0 turns Mixup off.
        cutmix_alpha: CutMix alpha; 0 turns CutMix off.
        mixup_prob: Probability of applying Mixup or CutMix to a batch.
        mixup_switch_prob: Probability of CutMix instead of Mixup when both are on.
        pretrained_use_ema: When ``pretrained`` is a file that holds EMA weights, start from them.
        allow_missing_keys: Accept a weights file with missing or unused backbone tensors (reported).
        pretrained_head: For a ``pretrained`` file that names its classes (a checkpoint of this app, an export with
            its ``.json``): ``by_name`` keeps the head's row of every old class (in the folder's order) and adds
            fresh rows for the folder's new classes; a file with classes the folder lacks is refused. ``new``
            starts a new head on the file's backbone. See docs/new-classes.md.
        preprocessing: Mean, std, interpolation, crop and input size; resolved from the weights' pretrained
            config when ``None`` (a multi-label task evaluates the whole image: crop_pct 1) and stored in
            checkpoints, so evaluation and predict reuse it exactly.
        class_weights: Training-loss class weights: ``none``, ``auto`` (inverse training frequency, mean 1) or a
            mapping class name -> weight. Composes with label smoothing and Mixup/CutMix (see
            ``lit_convnext.model.losses``).
        class_counts: Training images per class, for ``class_weights: auto``: the DataModule's ``class_counts``
            (linked by the CLI; never typed by hand).
        channels_last: Keep weights and input batches in channels-last memory format (faster convolutions on
            recent GPUs, especially with bf16/fp16).
        compile: Run the network through ``torch.compile`` (first steps are slow while it compiles).
            Checkpoints are unaffected: they hold the plain network's weights.
        task: ``multiclass`` (one class per image, softmax) or ``multilabel`` (any number of classes per image:
            sigmoid per class, binary cross-entropy, per-class thresholds tuned on validation). The data owns it:
            the CLI links it from ``ImageFolderDataModule.task`` (``--data.task``, or a label file's ``labels``
            column); in Python pass the datamodule's ``task``. A model without classes (predict) takes the
            checkpoint's.
        batch_size: Images per device per step (>= 1), by which the learning rate is scaled and which Mixup/CutMix
            need even. The data owns it: the CLI links it from ``--data.batch_size``. In Python it may be left out:
            a fit with a datamodule reads the datamodule's ``batch_size`` (given here too, the two must agree);
            given here, an odd size under Mixup/CutMix is refused at construction, before any file is read.
        teacher: Distil from this model while fine-tuning: a checkpoint of this app, an exported ``.safetensors``
            (with its JSON sidecar), or any weights file ``pretrained`` reads (with ``teacher_model_name``). Its
            classes must be the folder's, by name and order. Loaded when ``fit`` starts, frozen, and never saved
            in this model's checkpoints (see ``lit_convnext.model.distillation``). ``None``: no distillation.
        teacher_model_name: The teacher's timm architecture, for weights that do not store it (plain weights
            files); ``None`` takes the one the teacher's checkpoint or sidecar names.
        distill_weight: Share of the distillation term in the training loss (the rest is the loss on the labels);
            1 learns from the teacher alone. 0.9 measured best on the digits folder, level with 1 and ahead of 0.5
            (docs/distillation.md).
        distill_temperature: Temperature that softens the teacher's and the student's class distributions in the
            distillation term.
        freeze_backbone: Linear probe: train the classifier head alone; every other tensor (stem, stages, the head's
            norm) stays exactly as loaded. With ``--data.augmentation.enabled false`` and no Mixup/CutMix the
            backbone runs once over the training images and the head trains on those features.
        linear_probe_epochs: LP-FT: train the head alone for this many epochs, then every layer with the normal
            schedule (its warm-up started again) for the remaining epochs; ``None``: no probe phase. Under DDP it
            needs ``--trainer.strategy ddp_find_unused_parameters_true`` (the probe leaves the backbone without
            gradients). Not together with ``freeze_backbone``.
        unlabeled_weight: Weight of the semi-supervised loss on unlabelled images (``--data.unlabeled_root``
            without a teacher; FixMatch's lambda) against the labelled images' loss.
        pseudo_label_threshold: Calibrated confidence (``softmax(logits / T)``, T from the latest validation) at or
            above which the model's own label of an unlabelled image's weak view is learnt from its strong view
            (see :mod:`lit_convnext.model.semi_supervised`). 0.8 measured ahead of FixMatch's 0.95 on the digits
            with 8 labels a class (docs/semi-supervised.md); the pseudo-labels it lets through were right 95-98% of
            the time there.
    """

    def __init__(
        self,
        model_name: str = "convnext_tiny.fb_in22k_ft_in1k",
        pretrained: bool | str = True,
        class_names: list[str] | None = None,
        num_classes: PositiveInt | None = None,
        image_size: ImageSize | None = None,
        drop_path_rate: Rate = 0.1,
        layer_scale_init_value: PositiveFloat | None = None,
        head_init_scale: PositiveFloat = 0.001,
        lr: PositiveFloat = 4e-4,
        lr_reference_batch_size: PositiveInt = 256,
        min_lr: NonNegativeFloat = 1e-6,
        warmup_epochs: NonNegativeFloat = 1.0,
        weight_decay: NonNegativeFloat = 0.05,
        layer_decay: LayerDecay | None = 0.9,
        layer_decay_grouping: LayerDecayGrouping = "timm",
        betas: tuple[Probability, Probability] = (0.9, 0.999),
        label_smoothing: Rate = 0.1,
        mixup_alpha: NonNegativeFloat = 0.0,
        cutmix_alpha: NonNegativeFloat = 0.0,
        mixup_prob: Probability = 1.0,
        mixup_switch_prob: Probability = 0.5,
        pretrained_use_ema: bool = True,
        allow_missing_keys: bool = False,
        pretrained_head: Literal["by_name", "new"] = "by_name",
        preprocessing: dict[str, Any] | None = None,
        class_weights: ClassWeights = "none",
        class_counts: list[int] | None = None,
        channels_last: bool = False,
        compile: bool = False,
        task: Literal["multiclass", "multilabel"] = "multiclass",
        batch_size: PositiveInt | None = None,
        teacher: str | None = None,
        teacher_model_name: str | None = None,
        distill_weight: Probability = 0.9,
        distill_temperature: PositiveFloat = 1.0,
        freeze_backbone: bool = False,
        linear_probe_epochs: PositiveInt | None = None,
        unlabeled_weight: PositiveFloat = 1.0,
        pseudo_label_threshold: Probability = 0.8,
    ) -> None:
        super().__init__()
        if freeze_backbone and linear_probe_epochs is not None:
            raise UserError(f"--model.freeze_backbone true trains the head alone for the whole run, and "
                            f"--model.linear_probe_epochs {linear_probe_epochs} unfreezes the backbone after "
                            f"{linear_probe_epochs} epoch(s): pass one of them")
        if batch_size is not None:
            check_mixup_batch(batch_size, mixup_alpha, cutmix_alpha)
        if teacher is not None and task == "multilabel":
            raise UserError(f"--model.teacher {teacher}: distillation is for multiclass folders (one class per "
                            "image); leave the teacher out for a multi-label run")
        self.save_hyperparameters()
        self.class_names = _class_names(class_names, num_classes)
        if self.class_names and not class_names:  # stored, so checkpoints and exports carry the names
            self.hparams["class_names"] = self.class_names
        self.net, load_report = build_convnext(
            model_name,
            num_classes=len(self.class_names) if self.class_names else 0,
            pretrained=pretrained,
            drop_path_rate=drop_path_rate,
            layer_scale_init_value=layer_scale_init_value,
            head_init_scale=head_init_scale,
            pretrained_use_ema=pretrained_use_ema,
            allow_missing_keys=allow_missing_keys,
            class_names=list(class_names) if class_names else None,  # numbered classes are not matched by name
            new_head=pretrained_head == "new",
        )
        self.load_report = load_report
        #: Fitted after training and kept in checkpoints (``checkpoint["calibration"]``): ``temperature`` scales the
        #: logits before softmax; evaluation, predict and exports apply it through :meth:`probabilities`.
        self.calibration: dict[str, Any] = {}
        #: Multi-label: one decision threshold for every class, overriding the tuned ``calibration["thresholds"]``
        #: (``--threshold`` of validate/test/predict, or set it in Python).
        self.threshold: float | None = None
        #: Test-time augmentation: average the probabilities of each image and its horizontal mirror. Set by the
        #: Trainer for one validate/test/predict run (``--tta true``), never during training.
        self.tta = False
        self.preprocessing = resolve_preprocessing(self.net, image_size, preprocessing)
        #: What the task decided for options left to it: multi-label evaluates the whole image (the weights'
        #: centre crop could cut a labelled object out). Said by the datamodule's notice when a fit starts.
        self.task_defaults: dict[str, Any] = {}
        if task == "multilabel" and not preprocessing and self.preprocessing.get("crop_pct", 1.0) != 1.0:
            self.preprocessing["crop_pct"] = self.task_defaults["crop_pct"] = 1.0
        self.hparams["preprocessing"] = self.preprocessing
        self.mixup = self._build_mixup() if self.class_names else None
        #: Semi-supervised learning from the training batches' unlabelled part (none without classes).
        self.pseudo_labeler = PseudoLabeler(pseudo_label_threshold) if self.class_names else None
        # Not saved in checkpoints: recomputed from the options, and absent when predicting.
        self.register_buffer("class_weight", resolve_class_weights(class_weights, self.class_names, class_counts),
                             persistent=False)
        self._training_tally = TrainingTally()
        self._measured_rows: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)  # see measured()
        self._build_metrics()
        #: The frozen teacher and its loss during a fit with ``teacher`` (loaded in :meth:`setup`), else ``None``.
        self.distillation: Distillation | None = None
        #: Set by the linear probe when it trains the head on cached backbone features (see ``forward``).
        self.train_on_features = False
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        if compile:
            # In place (nn.Module.compile): state_dict keys stay plain, and deep copies (EMA) run eagerly on
            # their own weights.
            self.net.compile(**COMPILE_OPTIONS)

    # ----------------------------------------------------------------------------------------- set-up
    @property
    def example_input_array(self) -> torch.Tensor:
        """One input of the model's size for Lightning's model summary, which measures FLOPs and sizes with it (the
        column shows zeros without one). In the weights' dtype: ``--trainer.precision bf16-true``, ``16-true`` and
        ``64-true`` convert the weights, and Lightning converts the batches but not this input."""
        dtype = next(self.net.parameters()).dtype
        return torch.zeros(1, *self.preprocessing["input_size"], dtype=dtype, device=self.device)

    def _build_mixup(self) -> Mixup | None:
        hp = self.hparams
        if hp.mixup_alpha <= 0 and hp.cutmix_alpha <= 0:
            return None
        return Mixup(
            mixup_alpha=hp.mixup_alpha,
            cutmix_alpha=hp.cutmix_alpha,
            prob=hp.mixup_prob,
            switch_prob=hp.mixup_switch_prob,
            label_smoothing=hp.label_smoothing,
            num_classes=len(self.class_names),
            multi_label=self.multilabel,  # mixes the multi-hot targets; smoothing towards 0.5
        )

    def _build_metrics(self) -> None:
        """The metric objects of each stage (:mod:`lit_convnext.model.metrics`), as attributes of the module so they
        move to its device and are synchronised across devices."""
        if not self.class_names:
            return
        n = len(self.class_names)
        for name, module in (multilabel_metrics(n) if self.multilabel else multiclass_metrics(n)).items():
            setattr(self, name, module)

    # ------------------------------------------------------------------------------------------ steps
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.train_on_features and self.training:  # training batches are the frozen backbone's features
            return self.net.get_classifier()(images)
        if self.hparams.get("channels_last"):
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor] | dict[str, Any], batch_idx: int
                      ) -> torch.Tensor:
        (images, targets), unlabeled = split_training_batch(batch)
        if self.multilabel:
            smoothing = self.hparams.label_smoothing
            if self.mixup is not None:  # timm's Mixup mixes the multi-hot targets and applies the smoothing
                images, targets = self.mixup(images, targets)
                smoothing = 0.0
            loss = multilabel_loss(self(images), targets, self.class_weight, smoothing)
        elif self.mixup is not None:
            images, soft_targets = self.mixup(images, targets)
            logits = self(images)
            loss = classification_loss(logits, soft_targets, self.class_weight)
        else:
            logits = self(images)
            loss = classification_loss(logits, targets, self.class_weight, self.hparams.label_smoothing)
            if self._training_tally.keep(logits, targets):
                self._update_training_metrics()
        if self.distillation is not None:  # the teacher sees the batch the student saw, Mixup/CutMix included
            loss = self.distillation.loss(loss, images, logits, self, unlabeled["strong"] if unlabeled else None)
        elif unlabeled is not None:  # without a teacher the unlabelled images are learnt semi-supervised
            loss = loss + self.hparams.unlabeled_weight * self.pseudo_labeler.loss(self, unlabeled, self.current_epoch)
        self._log_training_loss(loss, images.shape[0])
        return loss

    def _update_training_metrics(self) -> None:
        """Feed the kept logits of the last training batches to the training metrics (logged at the epoch's end).

        One update per :data:`TrainingTally.BATCHES` batches instead of one per batch: the metrics' Python (about
        0.8 ms a step on CPU, several kernel launches each on a GPU) is paid once for all of them; the values are
        the same, since the metrics sum per-image counts.
        """
        kept = self._training_tally.take_logits()
        if kept is not None:
            self.metrics["train_metrics"].update(*kept)

    def _log_training_loss(self, loss: torch.Tensor, images: int) -> None:
        """Log ``train/loss_step`` at the steps whose metrics Lightning writes (every ``log_every_n_steps``) as the
        mean loss of the images since the previous such step (and at each epoch's first step, for the progress bar);
        the epoch's mean, ``train/loss_epoch``, is logged in :meth:`on_train_epoch_end`.

        A ``self.log`` call at every step costs about 0.7 ms of Python on CPU, for values Lightning writes only
        every ``log_every_n_steps``; the running sums cost two tensor additions.
        """
        trainer = self.trainer
        step = trainer.global_step
        first = self._training_tally.add_loss(loss, images, step)
        every = trainer.log_every_n_steps
        written = every <= 0 or bool(trainer.fast_dev_run) or (step + 1) % every == 0
        if written or first:  # the first only for the bar: the window goes on to the step Lightning writes
            self.log("train/loss_step", self._training_tally.window_mean(step, end=written), prog_bar=True,
                     on_step=True, on_epoch=False)

    def on_train_epoch_end(self) -> None:
        """Log the epoch's mean training loss, and its training accuracy and F1 (over every image of the epoch,
        synchronised across devices).

        Logging the metric objects at every step, as Lightning allows, costs about 0.5 ms of Python per metric and
        step, more than updating them; the values logged are the same.
        """
        loss = self._training_tally.take_epoch_loss()
        if loss is not None:  # sync_dist: the mean over devices (each runs the same number of batches)
            self.log("train/loss_epoch", loss, sync_dist=True)
        metrics = getattr(self, "metrics", {})
        train = metrics["train_metrics"] if "train_metrics" in metrics else None
        if train is None:  # multi-label
            return
        self._update_training_metrics()
        if not next(iter(train.values())).update_called:  # Mixup/CutMix targets
            return
        # compute() has synchronised them already; sync_dist only spares DDP runs Lightning's advice to synchronise
        # (the mean over devices of one value is that value).
        self.log_dict(train.compute(), sync_dist=True)
        train.reset()

    def measured(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """An evaluation batch's rows that count: all of them, or those of images that were read (a stand-in for
        an unreadable file keeps its row in the batch, so per-image results stay in dataset order).

        Asking waits for the accelerator, as the loss metric's NaN check (torchmetrics) does at every batch anyway;
        the answer is kept for the batch's callbacks, which ask again with the same targets.
        """
        asked, keep = self._measured_rows
        if asked is not targets:
            keep = measured_rows(targets)
            keep = None if bool(keep.all()) else keep
            self._measured_rows = (targets, keep)
        return (logits, targets) if keep is None else (logits[keep], targets[keep])

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        images, targets = batch
        all_logits = self.evaluation_logits(images)
        logits, targets = self.measured(all_logits, targets)
        if not len(targets):  # only stand-ins
            return all_logits
        if self.multilabel:
            self._evaluate_multilabel(logits, targets, stage)
            return all_logits
        # A weighted torchmetrics mean: exact over all images even when devices hold different counts.
        self.eval_losses[stage].update(F.cross_entropy(logits, targets), weight=targets.numel())
        self.metrics[f"{stage}_metrics"].update(logits, targets)
        self.calibration_errors[stage].update(logits.float().softmax(dim=-1), targets)
        return all_logits  # for callbacks (per-class report, per-image results), a row per batch row

    def _evaluate_multilabel(self, logits: torch.Tensor, targets: torch.Tensor, stage: str) -> None:
        self.eval_losses[stage].update(F.binary_cross_entropy_with_logits(logits.float(), targets.float()),
                                       weight=targets.shape[0])
        probabilities, hits = self.probabilities(logits), targets.int()
        self.metrics[f"{stage}_metrics"].update(probabilities, hits)
        self.metrics[f"{stage}_decisions"].update(self.decide(probabilities).int(), hits)
        if stage == "val" and self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.threshold_curve.update(probabilities, hits)

    def _log_evaluation(self, stage: str) -> None:
        """Log a validation's or test's metrics once, at its end, computed over all its images (and synchronised
        across devices by ``compute()``), then start them again.

        Logging the five metric objects at every batch, as Lightning allows, costs about 0.5 ms of Python per
        metric and batch; the values logged are the same.
        """
        losses = getattr(self, "eval_losses", {})
        if stage not in losses or not losses[stage].update_called:  # no classes, or no batch ran
            return
        shown = {f"{stage}/loss": losses[stage].compute(), **self.metrics[f"{stage}_metrics"].compute()}
        other = (self.metrics[f"{stage}_decisions"].compute() if self.multilabel
                 else {f"{stage}/ece": self.calibration_errors[stage].compute()})
        # sync_dist: as in on_train_epoch_end, the values are synchronised already.
        self.log_dict(shown, prog_bar=stage == "val", sync_dist=True)
        self.log_dict(other, sync_dist=True)
        losses[stage].reset()
        self.metrics[f"{stage}_metrics"].reset()
        (self.metrics[f"{stage}_decisions"] if self.multilabel else self.calibration_errors[stage]).reset()

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def on_validation_epoch_end(self) -> None:
        """Log the validation's metrics; multi-label fit: then tune each class's threshold on this validation
        (max F1), so every checkpoint saved after it holds the thresholds that fit its weights. The metrics of this
        epoch used the previous ones."""
        self._log_evaluation("val")
        if not self.multilabel or not self.threshold_curve.update_called:
            return
        precision, recall, thresholds = self.threshold_curve.compute()  # synchronised across devices
        self.threshold_curve.reset()
        tuned = list(self.calibration.get("thresholds") or [0.5] * len(self.class_names))
        for c, (p, r, t) in enumerate(zip(precision, recall, thresholds)):
            t = t.reshape(-1)  # one distinct score gives a 0-d tensor
            f1 = (2 * p * r / (p + r)).nan_to_num()[: t.numel()]  # the last point (recall 0) has no threshold
            if f1.numel() and f1.max() > 0:  # else no positives in validation: keep the threshold
                tuned[c] = float(t[int(f1.argmax())])
        self.calibration["thresholds"] = tuned

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "test")

    # --------------------------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        hp, trainer = self.hparams, self.trainer
        total_steps = int(trainer.estimated_stepping_batches)
        per_device = self._per_device_batch()
        check_mixup_batch(per_device, hp.mixup_alpha, hp.cutmix_alpha)  # in Python the batch may be known only now
        batch = EffectiveBatch(per_device, trainer.world_size, trainer.accumulate_grad_batches)
        lr = batch.scaled_lr(hp.lr, hp.lr_reference_batch_size)
        mixed_precision = isinstance(trainer.precision_plugin, MixedPrecision)
        fused = fused_adamw_applies(self.net, clips_under_mixed_precision=mixed_precision and bool(trainer.gradient_clip_val))
        optimizer = build_optimizer(self.net, lr, hp.weight_decay, hp.layer_decay, tuple(hp.betas),
                                    hp.get("layer_decay_grouping", "timm"), fused=fused)
        warmup = warmup_steps_for(hp.warmup_epochs, total_steps, trainer.max_epochs,
                                  trainer.num_training_batches / trainer.accumulate_grad_batches)
        probe_epochs = hp.get("linear_probe_epochs")
        if probe_epochs:  # the probe's schedule, then the full fine-tune's, from its own warm-up
            switch = warmup_steps_for(probe_epochs, total_steps, trainer.max_epochs,
                                      trainer.num_training_batches / trainer.accumulate_grad_batches)
            scheduler = build_phased_scheduler(optimizer, total_steps, switch, warmup, hp.min_lr)
        else:
            scheduler = build_scheduler(optimizer, total_steps, warmup, hp.min_lr)
        decay = ("no layer decay" if hp.layer_decay is None
                 else f"layer decay {hp.layer_decay} ({hp.get('layer_decay_grouping', 'timm')} grouping)")
        rank_zero_info(
            f"Effective batch {batch.describe()}: lr {lr:.3g} (= {hp.lr:g} x {batch.size}/{hp.lr_reference_batch_size}), "
            f"{'fused ' if fused else ''}AdamW over {len(optimizer.param_groups)} parameter groups, {decay}, "
            f"{warmup} warm-up steps of {total_steps}."
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _per_device_batch(self) -> int:
        """Images per device per step: the attached datamodule's ``batch_size`` (the data owns it), else the model's
        own ``batch_size`` (linked from the data by the CLI, or given in Python)."""
        given = self.hparams.get("batch_size")
        data = getattr(self.trainer.datamodule, "batch_size", None)
        if isinstance(data, int) and given is not None and data != given:
            raise UserError(f"the model was given batch_size={given} but the datamodule's batch_size is {data}: "
                            "the learning rate is scaled by the batch the loader yields; pass the same value, or "
                            "leave the model's out")
        size = data if isinstance(data, int) else given
        if size is None:
            raise UserError("cannot tell the per-device batch size, by which the learning rate is scaled: pass "
                            "batch_size to ConvNeXtClassifier, or fit with a datamodule that has a batch_size")
        return int(size)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        # timm schedulers are stepped by update count; this also applies each group's layer-decay lr_scale.
        scheduler.step_update(num_updates=self.global_step)

    def setup(self, stage: str) -> None:
        """Refuse data of another task than the model's: multi-hot targets given to a softmax, or single labels to
        per-class sigmoids, would train or measure the wrong thing without an error (the CLI links the two)."""
        data_task = getattr(self.trainer.datamodule, "task", None)
        if stage != "predict" and data_task in ("multiclass", "multilabel") and data_task != self.hparams.task:
            raise UserError(f"the data is {data_task} but the model is {self.hparams.task}: build the model with "
                            f"task={data_task!r} (the datamodule's task), or use data of the model's task")
        if stage == "fit" and self.hparams.get("teacher"):  # before any training step; not for validate/predict
            teacher, name = load_teacher(self.hparams.teacher, self.class_names or [], self.preprocessing,
                                         self.hparams.get("teacher_model_name"))
            self.distillation = Distillation(teacher, self.hparams.distill_weight, self.hparams.distill_temperature,
                                             name).for_run(self.trainer.precision_plugin, self.trainer.strategy.root_device,
                                                       bool(self.hparams.get("channels_last")))
        elif stage == "fit":  # without a teacher the unlabelled images are learnt semi-supervised
            check_semi_supervised(self.hparams.task, getattr(self.trainer.datamodule, "unlabeled_root", None))

    def configure_callbacks(self) -> list[Callback]:
        """The app's callbacks that the Trainer does not hold yet: the loss guard, the per-image and per-class
        reports with the end-of-fit analysis, the data-wait check, the lr monitor, the app's checkpoints and the
        record of what ``pretrained`` loaded (see
        :func:`~lit_convnext.callbacks.run.missing_run_callbacks`). Lightning calls this hook, so
        ``Trainer(...).fit(model, datamodule=dm)`` runs what ``lit-convnext fit`` runs; instances given to the
        Trainer (the command line's ``--checkpoint.*``, ``--class_report.*``, ...) are kept. ``freeze_backbone`` and
        ``linear_probe_epochs`` add the :class:`~lit_convnext.callbacks.linear_probe.LinearProbe` that does them."""
        callbacks = missing_run_callbacks(self.trainer, "multilabel" if self.multilabel else "multiclass")
        hp = self.hparams
        if hp.get("teacher") and self.trainer.state.fn == "fit":
            callbacks += missing_teacher_comparison(self.trainer)
        if hp.get("freeze_backbone") or hp.get("linear_probe_epochs"):
            # Cached features stand for the images only when nothing else reads the images of a training step:
            # Mixup/CutMix mix them, a teacher labels them, unlabelled batches come beside them.
            unlabeled = getattr(self.trainer.datamodule, "unlabeled_root", None) is not None
            cache = self.mixup is None and not hp.get("teacher") and not unlabeled
            callbacks.append(LinearProbe(hp.get("linear_probe_epochs"), cache_features=cache))
        return callbacks

    # ---------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["calibration"] = dict(self.calibration)
        if self.load_report:  # a resumed fit reads no pretrained file: what it started from (classes added) is here
            checkpoint["pretrained_load_report"] = self.load_report
        checkpoint[TALLY_KEY] = self._training_tally.state_dict()  # a save inside an epoch: its loss so far

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adopt the checkpoint's calibration, and its classes and task when the model has no classes (predict); refuse
        a checkpoint trained on other classes or for another task (a checkpoint keeps its task)."""
        self.calibration = dict(checkpoint.get("calibration") or {})
        if checkpoint.get(TALLY_KEY) is not None:
            self._training_tally.load_state_dict(checkpoint[TALLY_KEY], self.device)
        if self.load_report is None and checkpoint.get("pretrained_load_report"):
            self.load_report = checkpoint["pretrained_load_report"]
        hparams = checkpoint.get("hyper_parameters", {})
        saved = list(hparams.get("class_names") or [])
        if not saved:
            return
        saved_task = hparams.get("task") or "multiclass"
        if self.class_names is None:  # nothing built for classes yet (no metrics, no Mixup): take the checkpoint's
            self.class_names = saved
            self.hparams["class_names"] = saved
            self.hparams["task"] = saved_task
            self.net.reset_classifier(len(saved))
        elif saved_task != self.hparams.task:
            other = "a 'label' column or class folders" if saved_task == "multiclass" else "--data.task multilabel"
            raise UserError(f"the checkpoint's model is {saved_task} but the data is {self.hparams.task}: use data of "
                            f"the checkpoint's task ({other}), or start a new fine-tune from these weights with "
                            "`fit --model.pretrained CHECKPOINT`")
        elif saved != self.class_names:
            raise UserError(
                f"the checkpoint was trained on classes {_short(saved)} but the data folder has "
                f"{_short(self.class_names)}: use data with the same class folders, or start a new fine-tune "
                "from these weights with `fit --model.pretrained CHECKPOINT`"
            )


def check_mixup_batch(batch_size: int, mixup_alpha: float, cutmix_alpha: float) -> None:
    """The one Mixup/CutMix batch rule: timm's ``Mixup`` pairs each image with the one mirrored across its batch, so
    the per-device batch must be even. Checked by the CLI when it parses, by the model when it is given a batch size,
    and when a fit starts."""
    if (mixup_alpha > 0 or cutmix_alpha > 0) and batch_size % 2:
        raise UserError(f"Mixup/CutMix pair images within a batch: use an even --data.batch_size, got {batch_size}")


def resolve_preprocessing(net: torch.nn.Module, image_size: int | None, stored: dict[str, Any] | None) -> dict[str, Any]:
    """Preprocessing from a checkpoint (``stored``) or from timm's pretrained config of ``net``."""
    if stored:
        config = {key: stored[key] for key in PREPROCESSING_KEYS if key in stored}
    else:
        resolved = resolve_model_data_config(net)
        config = {key: resolved[key] for key in PREPROCESSING_KEYS if key in resolved}
    config["input_size"] = list(config["input_size"])
    config["mean"] = [float(v) for v in config["mean"]]
    config["std"] = [float(v) for v in config["std"]]
    if image_size is not None:
        config["input_size"] = [config["input_size"][0], image_size, image_size]
    return config


def _class_names(class_names: list[str] | None, num_classes: int | None) -> list[str] | None:
    """One owner of the class count: the names when given (``num_classes`` must agree), else ``"0".."N-1"``."""
    if class_names:
        if num_classes is not None and num_classes != len(class_names):
            raise UserError(f"num_classes={num_classes} but {len(class_names)} class names were given "
                            f"({_short(list(class_names))}): pass one of them, or make them agree")
        return list(class_names)
    return [str(i) for i in range(num_classes)] if num_classes else None


def _short(names: list[str]) -> str:
    return f"[{preview(names, 6)}] ({len(names)} classes)"
