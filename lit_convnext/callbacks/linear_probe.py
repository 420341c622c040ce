"""Linear probe (the classifier alone on a frozen backbone) and LP-FT (probe, then every layer).

Lightning's ``BaseFinetuning`` freezes and unfreezes by adding the unfrozen layers to the optimizer as new
parameter groups. Here every parameter is in the optimizer from the start, in its layer-decay group with the
``lr_scale`` timm's scheduler reads; a frozen tensor simply has no gradient, which AdamW skips (no step, no weight
decay). So the callback uses ``BaseFinetuning``'s freezing helpers (through :mod:`lit_convnext.model.linear_probe`)
but not its parameter-group bookkeeping, and whether the backbone is frozen follows from the epoch alone: a run
resumed with ``--ckpt_path last`` continues in the phase it stopped in.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BaseFinetuning, Callback
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from lit_convnext.errors import UserError
from lit_convnext.model.linear_probe import backbone_modules, compute_features, set_probing


class LinearProbe(Callback):
    """Train the classifier head alone, for the whole fit or its first ``epochs`` epochs (then every layer).

    The model adds it itself (``--model.freeze_backbone``, ``--model.linear_probe_epochs``); it is not an option of
    its own.

    Args:
        epochs: Epochs of head-only training before every layer trains; ``None`` keeps the backbone frozen for the
            whole fit.
        cache_features: For a whole-fit probe whose training images are transformed the same way every epoch
            (``--data.augmentation.enabled false``, no Mixup/CutMix): run the backbone once over the training set
            before the first epoch and train the head on those features.
    """

    def __init__(self, epochs: int | None = None, cache_features: bool = False) -> None:
        self.epochs = epochs
        self.cache_features = cache_features and epochs is None

    def probing(self, epoch: int) -> bool:
        return self.epochs is None or epoch < self.epochs

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        pl_module.train_on_features = False  # until this fit's features are cached
        max_epochs = trainer.max_epochs
        if self.epochs is not None and max_epochs is not None and 0 <= max_epochs <= self.epochs:
            raise UserError(f"--model.linear_probe_epochs {self.epochs} leaves no epoch to fine-tune every layer in "
                            f"--trainer.max_epochs {max_epochs}: probe for fewer epochs, train for more, or use "
                            "--model.freeze_backbone true for a probe alone")
        if self.epochs is None:
            # Before the strategy wraps the model: under DDP only the head's gradients are then synchronised, and
            # the optimizer holds the head alone. (Eval mode waits for the first epoch: Lightning warns about modules
            # in eval mode when the fit loop starts.)
            BaseFinetuning.freeze(backbone_modules(pl_module.net), train_bn=False)
            if self.cache_features and _deterministic_training_images(trainer.datamodule):
                self._cache(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        set_probing(pl_module.net, self.probing(trainer.current_epoch))
        if self.epochs is not None and trainer.current_epoch == self.epochs:
            rank_zero_info(f"Linear probe done after {self.epochs} epoch(s): every layer trains from now on, with "
                           "the learning-rate warm-up started again")

    def _cache(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Put the training images' backbone features in place of the images in the datamodule's training set."""
        datamodule = trainer.datamodule
        images = datamodule.datasets["train"]
        loader = DataLoader(images, batch_size=datamodule.batch_size, num_workers=datamodule.num_workers)
        device = trainer.strategy.root_device
        pl_module.to(device)  # the strategy moves it there next anyway
        with trainer.precision_plugin.forward_context():
            datamodule.datasets["train"] = compute_features(pl_module.net, loader, device)
        pl_module.train_on_features = True
        rank_zero_info(f"Linear probe on cached features: the frozen backbone ran once over the {len(images)} "
                       "training images; each epoch trains the head on their features")


def _deterministic_training_images(datamodule: object) -> bool:
    """Whether ``datamodule`` is the app's and transforms its training images the same way every epoch."""
    from lit_convnext.data.datamodule import ImageFolderDataModule

    return isinstance(datamodule, ImageFolderDataModule) and not datamodule.augmentation.enabled
