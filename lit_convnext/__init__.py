"""lit-convnext: fine-tune ConvNeXt (V1 and V2) on a folder of images with timm and PyTorch Lightning."""

from lit_convnext._legacy import install_legacy_module_aliases

__version__ = "0.1.0"

install_legacy_module_aliases()
