"""A checkpoint written by a real Lightning run with the app's EMA callback loads safely, EMA or raw."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import timm
import torch
from torch import nn

from lightning.pytorch.callbacks import ModelCheckpoint

from lit_convnext.callbacks.ema import EMA
from lit_convnext.weights import load_pretrained, read_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec")  # lightning-internal deprecation


class _TinyClassifier(L.LightningModule):
    """Stand-in for the app's LightningModule: the timm model lives in ``self.net``."""

    def __init__(self, model_name: str = "convnext_atto", num_classes: int = 3, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = timm.create_model(model_name, num_classes=num_classes)
        self.criterion = nn.CrossEntropyLoss(weight=torch.ones(num_classes))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        return self.criterion(self.net(images), labels)

    def configure_optimizers(self) -> dict[str, object]:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.hparams.lr, total_steps=4)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def test_real_lightning_checkpoint_with_ema(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,)))
    # checkpoint mid-training: at the end of fit, WeightAveraging copies the average into the model
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    trainer = L.Trainer(
        max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[EMA(decay=0.5, warmup=False), saver], default_root_dir=tmp_path,
    )
    trainer.fit(_TinyClassifier(), torch.utils.data.DataLoader(data, batch_size=2))
    path = tmp_path / "epoch=0-step=2.ckpt"

    ckpt = read_checkpoint(path)  # weights_only=True copes with everything Lightning stores
    ema = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    raw = {k[4:]: v for k, v in ckpt["current_model_state"].items() if k.startswith("net.")}
    assert not torch.equal(ema["stem.0.weight"], raw["stem.0.weight"])

    for use_ema, expected in ((True, ema), (False, raw)):
        model = timm.create_model("convnext_atto", num_classes=3)
        report = load_pretrained(model, path, use_ema=use_ema)
        assert report.ema_used is use_ema and report.ema_available and report.head == "kept"
        assert report.ignored == ["criterion.weight"]
        for key, value in model.state_dict().items():
            assert torch.equal(value, expected[key]), key
