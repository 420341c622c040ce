"""Old import path of the EMA callback: ``config.yaml`` files saved before it moved name
``class_path: lit_convnext.ema.EMA``. New configs use ``lit_convnext.callbacks.ema.EMA``."""

from lit_convnext.callbacks.ema import EMA

__all__ = ["EMA"]
