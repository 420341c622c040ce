"""The Python API: load a checkpoint or an exported model once, then classify paths, images or folders.

The stored preprocessing (timm's evaluation transform, the same as ``validate``/``predict``) and calibration
are applied; nothing but the model file is needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from PIL import Image

from lit_convnext.data.folders import iter_images
from lit_convnext.data.datasets import decode_error
from lit_convnext.data.images import to_rgb
from lit_convnext.data.transforms import build_eval_transform, eval_decode_size
from lit_convnext.errors import UserError

#: What ``Predictor.predict`` accepts: a file path, a folder (all images below it, in natural order) or an image.
Item = Union[str, Path, Image.Image]

#: What a file that cannot be decoded raises (Pillow's errors, a missing file, a decompression bomb).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Prediction:
    """One input's result: its top classes with probabilities, best first, or the reason it has none."""

    #: The file path, or ``"<image N>"`` for the N-th (0-based) ``PIL.Image`` given.
    source: str
    top: list[tuple[str, float]] = field(default_factory=list)
    #: ``None`` when the item was classified; otherwise why not (e.g. an unreadable file).
    error: str | None = None

    # A prediction reads as its list of (class, probability) pairs: ``for name, p in prediction``, ``prediction[0]``.
    def __iter__(self) -> Iterator[tuple[str, float]]:
        return iter(self.top)

    def __len__(self) -> int:
        return len(self.top)

    def __getitem__(self, index: int) -> tuple[str, float]:
        return self.top[index]

    @property
    def label(self) -> str | None:
        """The most probable class (``None`` for an error entry)."""
        return self.top[0][0] if self.top else None


class Predictor:
    """A loaded model with its class names and preprocessing; see :func:`load_predictor`."""

    def __init__(self, model: Any, device: torch.device) -> None:
        self.model = model.eval()
        self.device = device
        self.class_names: list[str] = list(model.class_names)
        self.preprocessing: dict[str, Any] = dict(model.preprocessing)
        self.transform = build_eval_transform(self.preprocessing)
        #: Short side large JPEGs are decoded at (reduced DCT decoding), as `predict` does.
        self.decode_size = eval_decode_size(self.preprocessing)

    def predict(self, items: Item | Iterable[Item], top_k: int = 5, batch_size: int = 32) -> list[Prediction]:
        """Classify ``items`` and return one :class:`Prediction` per image, in input order.

        Args:
            items: A path, a folder (its images, recursively, in natural order), a ``PIL.Image``, or a list of these.
            top_k: Classes per image (at most the number of classes).
            batch_size: Images per forward pass.
        """
        if top_k < 1 or batch_size < 1:
            raise UserError(f"top_k and batch_size must be >= 1, got top_k={top_k}, batch_size={batch_size}")
        k = min(top_k, len(self.class_names))
        sources = list(_expand(items))
        results: list[Prediction] = []
        for start in range(0, len(sources), batch_size):
            results += self._predict_batch(sources[start:start + batch_size], start, k)
        return results

    def _predict_batch(self, sources: list[Item], offset: int, k: int) -> list[Prediction]:
        tensors: list[torch.Tensor] = []
        names: list[str] = []
        errors: list[str | None] = []
        for i, source in enumerate(sources):
            names.append(str(source) if not isinstance(source, Image.Image) else f"<image {offset + i}>")
            if isinstance(source, Image.Image):
                try:
                    image = to_rgb(source)
                except DECODE_ERRORS as err:
                    errors.append(f"cannot read image: {err}")
                    continue
            else:  # a file: whatever Pillow raises (it raises many types) is that file's reason, as in `predict`
                image, reason = decode_error(Path(source), self.decode_size)
                if image is None:
                    errors.append(f"cannot read image: {reason}")
                    continue
            tensors.append(self.transform(image))
            errors.append(None)
        top: Iterator[tuple[list[float], list[int]]] = iter(())
        if tensors:
            with torch.inference_mode():
                logits = self.model(torch.stack(tensors).to(self.device))
                probabilities, classes = self.model.probabilities(logits).topk(k, dim=-1)
            top = zip(probabilities.cpu().tolist(), classes.cpu().tolist())
        results = []
        for name, error in zip(names, errors):
            if error is not None:
                results.append(Prediction(name, error=error))
                continue
            probs, ids = next(top)
            results.append(Prediction(name, [(self.class_names[c], float(p)) for c, p in zip(ids, probs)]))
        return results


def _expand(items: Item | Iterable[Item]) -> Iterator[Item]:
    if isinstance(items, (str, Path, Image.Image)):
        items = [items]
    for item in items:
        if isinstance(item, (str, Path)) and Path(item).is_dir():
            yield from iter_images(Path(item))
        else:
            yield item


def load_predictor(path: str | Path, device: str = "cpu") -> Predictor:
    """Load a lit-convnext checkpoint (``.ckpt``) or an exported model (``.onnx``, OpenVINO ``.xml``, LiteRT
    ``.tflite``) for prediction.

    Args:
        path: The model file.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (ONNX models on CUDA need ``onnxruntime-gpu``; the other exported
            formats run on the CPU).
    """
    from lit_convnext.inference.exported import ExportedClassifier, is_exported

    path = Path(path).expanduser()
    if is_exported(path):
        return Predictor(ExportedClassifier(path, device), torch.device(device))
    return Predictor(load_checkpoint_model(path, device), torch.device(device))


def load_checkpoint_model(path: Path, device: str = "cpu") -> Any:
    """A ``ConvNeXtClassifier`` from a checkpoint, read without unpickling code and without downloading weights."""
    import pickle

    from lit_convnext.model.classifier import ConvNeXtClassifier

    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass the path of a .ckpt (or an exported .onnx, .xml or .tflite)")
    try:
        model = ConvNeXtClassifier.load_from_checkpoint(
            path, map_location=device, weights_only=True, pretrained=False, compile=False
        )
    except pickle.UnpicklingError as err:
        raise UserError(f"refusing to load {path}: it is not plain tensors and values "
                        f"({str(err).splitlines()[0]})") from err
    except (KeyError, RuntimeError) as err:
        raise UserError(f"{path} is not a lit-convnext checkpoint ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''})") from err
    if not model.class_names:
        raise UserError(f"{path} has no class names: it is not a trained lit-convnext checkpoint")
    return model.to(device)
