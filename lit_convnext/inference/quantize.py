"""INT8 post-training quantization of ConvNeXt: ONNX Runtime static QDQ for ``.onnx``, NNCF for OpenVINO IR.

Which operations stay in float is a measured choice for ConvNeXt (docs/deployment.md, "INT8 and ConvNeXt"):
"""

from __future__ import annotations

from typing import Any

import torch


def quantize_openvino(model: Any, images: torch.Tensor) -> Any:
    """``model`` (an ``openvino.Model``) quantized to INT8 by NNCF, calibrated on ``images``."""
    import nncf

    dataset = nncf.Dataset([images[i:i + 1].numpy() for i in range(len(images))])
    return nncf.quantize(model, dataset, subset_size=len(images), model_type=nncf.ModelType.TRANSFORMER)


#: ONNX operator types quantized by ONNX Runtime: the convolutions (stem, downsampling, depthwise 7x7) and the
#: point-wise MLP's matrix products. LayerNormalization, Gelu, Add and Mul stay float: ORT's CPU kernels for them
#: have no INT8 form, and wrapping them in Q/DQ only adds (de)quantization work.
ORT_OP_TYPES = ["Conv", "MatMul", "Gemm"]


def quantize_onnx(source: str, output: str, images: torch.Tensor, keep_float: list[str] | None = None) -> None:
    """Quantize the float32 ONNX model ``source`` to ``output`` (static QDQ, per-channel INT8 weights, UINT8
    activations calibrated with MinMax on ``images``), leaving the nodes named in ``keep_float`` in float."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([images[i:i + 16].numpy() for i in range(0, len(images), 16)])

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    prepared = output + ".prep.onnx"
    try:
        quant_pre_process(source, prepared, skip_symbolic_shape=True)
        quantize_static(prepared, output, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=ORT_OP_TYPES, nodes_to_exclude=keep_float or [],
                        calibrate_method=CalibrationMethod.MinMax)
    finally:
        import os

        if os.path.exists(prepared):
            os.remove(prepared)


def onnx_nodes(path: str, part: str) -> list[str]:
    """Names of a ConvNeXt ONNX graph's nodes of one ``part``: ``depthwise`` (the 7x7 convolutions), ``head``
    (the classifier's Gemm/MatMul) or ``stem`` (the first convolution); what ``keep_float`` takes."""
    import onnx

    nodes = [n for n in onnx.load(path, load_external_data=False).graph.node if n.op_type in ORT_OP_TYPES]
    if part == "depthwise":
        return [n.name for n in nodes
                if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    if part == "head":
        return [n.name for n in nodes[-1:] if n.op_type in ("Gemm", "MatMul")]
    if part == "stem":
        return [n.name for n in nodes[:1]]
    raise ValueError(f"unknown part {part!r}")
