"""``--data.batch_size auto``: the largest per-device batch that fits in the GPU's memory, found before the run's
optimizer is built, so the learning rate is scaled by the batch the run uses (``model/optim.py``).

Lightning's ``BatchSizeFinder`` (through its ``Tuner``, binary search) does the search; Lightning refuses it under
DDP (#20994) and runs it inside ``fit`` after the optimizer exists. So :class:`AutoBatchSize` runs it in its
``setup`` hook, on a one-device probe Trainer of this process's device with a fresh copy of the model. Under DDP each
rank probes its own device (the probe's metrics do not synchronise: the ranks' searches try different sizes) and the
ranks take the smallest batch found. Without a CUDA device there is no out-of-memory error to search for: the batch
is :data:`CPU_BATCH_SIZE`, said in one line.
"""

from __future__ import annotations

import copy
import tempfile

import lightning.pytorch as pl
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.tuner import Tuner
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import Metric

from lit_convnext.errors import UserError
from lit_convnext.ranges import PositiveInt

#: The batch ``auto`` gives without a GPU: ``ImageFolderDataModule``'s and ``configs/finetune.yaml``'s default.
CPU_BATCH_SIZE = 32
AUTO = "auto"


def searches_memory(trainer: pl.Trainer) -> bool:
    """Whether the run's device reports running out of memory (CUDA), which the search needs."""
    return isinstance(trainer.accelerator, CUDAAccelerator)


def _not_distributed() -> bool:
    return False


class AutoBatchSize(Callback):
    """Replace the datamodule's ``batch_size = "auto"`` by a number when a fit is set up (inert otherwise).

    Args:
        steps_per_trial: Training steps run at each tried batch size.
        max_batch_size: The largest batch tried.
    """

    def __init__(self, steps_per_trial: PositiveInt = 3, max_batch_size: PositiveInt = 4096) -> None:
        self.steps_per_trial = steps_per_trial
        self.max_batch_size = max_batch_size

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        data = trainer.datamodule
        if stage != "fit" or getattr(data, "batch_size", None) != AUTO:
            return
        if not searches_memory(trainer):
            data.batch_size = CPU_BATCH_SIZE
            rank_zero_info(f"--data.batch_size auto: no CUDA device to measure, so the default batch "
                           f"{CPU_BATCH_SIZE} is used (pass a number to choose another).")
            return
        found = self._probe(trainer, pl_module, data)
        if trainer.world_size > 1:
            # Every rank probed its own device; all ranks run the same batch, so the smallest device decides.
            found = int(trainer.strategy.reduce(torch.tensor(float(found), device=trainer.strategy.root_device),
                                                reduce_op="min"))
        hparams = pl_module.hparams
        if (hparams.get("mixup_alpha", 0) > 0 or hparams.get("cutmix_alpha", 0) > 0) and found % 2:
            found -= 1  # Mixup/CutMix pair images within the batch
        if found < 1:
            raise UserError("--data.batch_size auto: not even one image per step fits in the GPU's memory: lower "
                            "--model.image_size, use --trainer.precision bf16-mixed or a smaller --model.model_name")
        data.batch_size = found
        where = f" on the fullest of the {trainer.world_size} devices" if trainer.world_size > 1 else ""
        rank_zero_info(f"--data.batch_size auto: {found} images per device, the largest batch that trained "
                       f"{self.steps_per_trial} steps without running out of memory{where} (Lightning's "
                       "BatchSizeFinder, binary search); the learning rate is scaled by it.")

    def _probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, data: pl.LightningDataModule) -> int:
        """Lightning's binary search on this process's device, with copies of the model and datamodule (the run's
        own stay attached to the run's Trainer; the copy's weights do not matter, only their memory)."""
        # Mixup off: it would refuse the odd sizes the search tries (the result is made even), and costs no memory.
        # LightningCLI adds its own ``_instantiator`` / ``_class_path`` to hparams: no constructor arguments.
        arguments = {k: v for k, v in pl_module.hparams.items() if not k.startswith("_")}
        model = type(pl_module)(**{**arguments, "pretrained": False, "mixup_alpha": 0.0, "cutmix_alpha": 0.0})
        for metric in model.modules():
            if isinstance(metric, Metric):
                # Under DDP the world's process group is initialised, and torchmetrics would gather the probe's
                # metrics across ranks whose searches try different sizes: mismatched collectives, a hang. Each
                # rank's probe is its own.
                metric.distributed_available_fn = _not_distributed
        probe_data = copy.copy(data)
        probe_data.batch_size = 2
        device = trainer.strategy.root_device
        with tempfile.TemporaryDirectory() as scratch:
            probe = pl.Trainer(accelerator=trainer.accelerator, devices=[device.index] if device.index is not None
                               else 1, precision=trainer.precision, logger=False, enable_checkpointing=False,
                               enable_progress_bar=False, enable_model_summary=False, default_root_dir=scratch,
                               max_epochs=1)
            found = Tuner(probe).scale_batch_size(model, datamodule=probe_data, mode="binsearch",
                                                  steps_per_trial=self.steps_per_trial, init_val=2,
                                                  max_val=self.max_batch_size)
        del model, probe
        torch.cuda.empty_cache()
        return int(found or 0)
