"""lit-convnext: fine-tune ConvNeXt (V1 and V2) on a folder of images with timm and PyTorch Lightning."""

__version__ = "0.1.0"
