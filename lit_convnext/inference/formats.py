"""The export formats, chosen by the output's suffix: what each is, which extra it needs, where it runs.

One entry per format; the command, the predictor and ``predict`` look a file's format up here, so adding a format
is one entry plus its module (``export`` and, where this machine can run it, ``open_runner``).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from lit_convnext.errors import UserError


@dataclass(frozen=True)
class Format:
    """One export format."""

    suffix: str
    #: What the docs and messages call it.
    name: str
    #: ``pip install "lit-convnext[extra]"`` installs what it needs.
    extra: str
    #: The modules its exporter needs (checked before any work, so a missing extra is one line up front).
    export_needs: tuple[str, ...]
    #: The modules its runtime needs (empty: it cannot run on this kind of machine, e.g. Core ML off Apple).
    run_needs: tuple[str, ...]
    #: The lit_convnext module with its ``export(...)``.
    exporter: str
    #: The lit_convnext module with its ``open_runner(path, device)`` (``None``: cannot run here).
    runtime: str | None
    #: INT8 post-training quantization is supported.
    int8: bool
    #: The modules INT8 quantization needs besides ``export_needs``.
    int8_needs: tuple[str, ...] = ()


FORMATS: dict[str, Format] = {f.suffix: f for f in (
    Format(".onnx", "ONNX", "onnx", ("onnx", "onnxscript", "onnxruntime"), ("onnxruntime",),
           "lit_convnext.inference.onnx_export",
           "lit_convnext.inference.onnx_model", int8=True),
    Format(".xml", "OpenVINO IR", "openvino", ("openvino",), ("openvino",),
           "lit_convnext.inference.openvino_model",
           "lit_convnext.inference.openvino_model", int8=True),
    Format(".tflite", "LiteRT", "litert", ("litert_torch", "ai_edge_litert"), ("ai_edge_litert",),
           "lit_convnext.inference.litert_model",
           "lit_convnext.inference.litert_model", int8=True, int8_needs=("ai_edge_quantizer",)),
    Format(".mlpackage", "Core ML", "coreml", ("coremltools",), (),
           "lit_convnext.inference.coreml_model", None,
           int8=False),
)}

#: What a model file's suffix can be: the exported formats, plus timm weights (``export`` only).
SUPPORTED = ", ".join(FORMATS)


def format_of(path: Path, purpose: str = "export") -> Format:
    """The format of ``path`` from its suffix; a ``UserError`` listing the supported ones otherwise."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UserError(f"cannot tell the {purpose} format of {path}: name it with one of {SUPPORTED}")
    return fmt


def require(fmt: Format, modules: tuple[str, ...], what: str) -> None:
    """Check that ``modules`` are installed (without importing them); one line naming the extra otherwise."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"{what} a {fmt.name} model ({fmt.suffix}) needs {', '.join(missing)}: "
                        f"pip install \"lit-convnext[{fmt.extra}]\"")


def exporter(fmt: Format) -> ModuleType:
    """The format's export module (imported on use: its libraries are optional)."""
    require(fmt, fmt.export_needs, "writing")
    return importlib.import_module(fmt.exporter)


def runtime(fmt: Format) -> ModuleType:
    """The format's runtime module; a ``UserError`` when the format cannot run on this machine or lacks its extra."""
    if fmt.runtime is None:
        raise UserError(f"{fmt.name} models ({fmt.suffix}) run only on Apple devices (Core ML); run the .onnx, "
                        ".xml or .tflite export of the same checkpoint here")
    require(fmt, fmt.run_needs, "running")
    return importlib.import_module(fmt.runtime)
