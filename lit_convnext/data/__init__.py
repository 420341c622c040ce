"""Reading image folders: file discovery, decoding, transforms and the DataModule."""

from lit_convnext.data.datamodule import ImageFolderDataModule
from lit_convnext.data.transforms import TrainAugmentation

__all__ = ["ImageFolderDataModule", "TrainAugmentation"]
