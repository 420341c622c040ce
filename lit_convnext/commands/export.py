"""``lit-convnext export``: a checkpoint's fine-tuned model as timm ``.safetensors`` (+ JSON) or as a deployable
model (ONNX, OpenVINO IR, LiteRT, Core ML), optionally INT8, checked on the user's labelled images first.

The format follows the output's suffix (:mod:`lit_convnext.inference.formats`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from lit_convnext.errors import UserError
from lit_convnext.ranges import NonNegativeFloat
from lit_convnext.weights import export_timm_weights, load_pretrained, read_checkpoint, sidecar_path

#: Below this many calibration images the command warns. Measured (docs/deployment.md, "How many calibration
#: images"; benchmarks/calibration_count.py, convnext_atto on the digits): top-1 held with 25 to 512 images for
#: ONNX Runtime and NNCF alike, but the largest probability difference from the checkpoint was about twice as large
#: at 25 images (0.03-0.04) as from 100 on (0.013-0.019, where it stops shrinking), and NNCF's still 0.025-0.030 at 50.
MIN_CALIBRATION_IMAGES = 100
#: At most this many calibration images are used: calibration time grows with the count.
MAX_CALIBRATION_IMAGES = 512


def export(ckpt_path: Path, output: Path, use_ema: bool = True, fp16: bool = False, int8: bool = False,
           calibration_dir: Path | None = None, check_dir: Path | None = None,
           max_accuracy_drop: NonNegativeFloat = 1.0) -> Path:
    """Write the model of a lit-convnext checkpoint for use without this app.

    Args:
        ckpt_path: A ``.ckpt`` written by ``lit-convnext fit``.
        output: ``.safetensors``: the weights in timm layout, with ``<stem>.json`` beside it (model name, class
            names, preprocessing). ``.onnx`` (extra ``onnx``), ``.xml`` (OpenVINO IR, extra ``openvino``),
            ``.tflite`` (LiteRT, extra ``litert``), ``.mlpackage`` (Core ML, extra ``coreml``): the model with the
            calibration temperature applied and class names, preprocessing and app version in its metadata,
            checked on labelled images before it is written (table printed, ``export_report.json`` beside it).
        use_ema: Export the EMA weights when the run had EMA on (they are what was validated); ``false`` exports
            the raw weights.
        fp16: ONNX only: store the weights in float16 (half the file; inputs and outputs stay float32).
        int8: Post-training INT8 quantization (``.onnx``: ONNX Runtime static QDQ; ``.xml``: NNCF; ``.tflite``:
            AI Edge Quantizer's static INT8 recipe).
        calibration_dir: Images INT8 is calibrated on (class sub-folders or plain images); default: the run's
            validation images.
        check_dir: Labelled images (class sub-folders) every export is checked on; default: the run's validation
            images (the only choice for a multi-label model: class folders cannot hold its label sets).
        max_accuracy_drop: An INT8 export losing more top-1 accuracy (multi-label: mAP) than this many points
            (against the checkpoint, on the check images) is not written.
    """
    from lit_convnext.inference import formats

    output = Path(output).expanduser()
    if output.suffix == ".safetensors":
        for flag, value in (("--int8", int8), ("--calibration_dir", calibration_dir), ("--check_dir", check_dir)):
            if value:
                raise UserError(f"{flag} applies to model exports ({formats.SUPPORTED}); {output} is timm weights")
        if fp16:
            raise UserError(f"--fp16 applies to ONNX exports only; {output} is a .safetensors file")
    else:
        fmt = formats.FORMATS.get(output.suffix.lower())
        if fmt is None:
            raise UserError(f"cannot tell the export format of {output}: name it .safetensors (timm weights) or "
                            f"one of {formats.SUPPORTED} (ONNX, OpenVINO IR, LiteRT, Core ML)")
        if fp16 and fmt.suffix != ".onnx":
            raise UserError(f"--fp16 applies to ONNX exports only; {output} is {fmt.name}")
        if int8 and (fp16 or not fmt.int8):
            raise UserError(f"--int8 applies to .onnx, .xml and .tflite exports without --fp16; got {output}"
                            f"{' with --fp16' if fp16 else ''}")
        if calibration_dir is not None and not int8:
            raise UserError("--calibration_dir is for --int8 true exports; add --int8 true or leave it out")
        formats.require(fmt, fmt.export_needs + (fmt.int8_needs if int8 else ()), "writing")
    checkpoint = read_checkpoint(ckpt_path)
    hparams = checkpoint.get("hyper_parameters") or {}
    class_names = hparams.get("class_names")
    if not hparams.get("model_name") or not class_names:
        raise UserError(f"{ckpt_path} is not a lit-convnext checkpoint (no model name and class names in it)")
    calibration = dict(checkpoint.get("calibration") or {})
    if output.suffix == ".safetensors":
        net, ema_used, tensors = _network(ckpt_path, hparams, use_ema)
        path = export_timm_weights(net, output, model_name=hparams["model_name"], class_names=list(class_names),
                                   pretrained_cfg=dict(hparams.get("preprocessing") or {}))
        print(f"Wrote {tensors} tensors ({'EMA' if ema_used else 'raw'} weights) to {path}, class names and "
              f"preprocessing to {sidecar_path(path)}")
        return path
    # Every image folder is resolved and read before the (slow) conversion starts.
    from lit_convnext.inference.images import folder_images, load_tensors, validation_images

    names = list(class_names)
    if check_dir and hparams.get("task") == "multilabel":
        # Class folders hold one label per image, so they cannot say which other labels an image lacks.
        raise UserError(f"--check_dir takes class folders (one label per image), but {ckpt_path} is a multi-label "
                        "model: leave --check_dir out to check it on its run's validation images (its label file)")
    checks = folder_images(check_dir, names, "check") if check_dir else validation_images(ckpt_path, names)
    calib = None
    if int8:
        calib = (folder_images(calibration_dir, names, "calibration", labelled=False) if calibration_dir
                 else checks)
        if len(calib.paths) < MIN_CALIBRATION_IMAGES:
            warnings.warn(f"calibrating INT8 on {len(calib.paths)} images from {calib.source}: fewer than "
                          f"{MIN_CALIBRATION_IMAGES} may miss activation ranges (docs/deployment.md, how many "
                          "calibration images); pass --calibration_dir with more if the check shows a drop")
    net, ema_used, _ = _network(ckpt_path, hparams, use_ema)
    return _export_model(fmt, net, output, hparams, calibration, fp16, "EMA" if ema_used else "raw", checks, calib,
                         max_accuracy_drop, load_tensors)


def _network(ckpt_path: Path, hparams: dict[str, Any], use_ema: bool) -> tuple[nn.Module, bool, int]:
    """The plain timm network with the checkpoint's (EMA) weights."""
    options = {}
    if hparams.get("layer_scale_init_value") is not None:
        options["ls_init_value"] = hparams["layer_scale_init_value"]
    net = timm.create_model(hparams["model_name"], pretrained=False, num_classes=len(hparams["class_names"]),
                            **options)
    report = load_pretrained(net, ckpt_path, use_ema=use_ema)
    return net.eval(), report.ema_used, report.tensors_loaded


def _export_model(fmt: Any, net: nn.Module, output: Path, hparams: dict[str, Any], calibration: dict[str, Any],
                  fp16: bool, kind: str, checks: Any, calib: Any, max_drop: float, load_tensors: Any) -> Path:
    """Build the file in a temporary folder beside ``output``, check it on the labelled images, then move it."""
    from lit_convnext import __version__
    from lit_convnext.inference import formats, verify
    from lit_convnext.inference.metadata import ModelCard
    from lit_convnext.inference.onnx_export import Calibrated

    temperature = float(calibration.pop("temperature", 1.0))
    card = ModelCard(model_name=hparams["model_name"], class_names=list(hparams["class_names"]),
                     preprocessing=dict(hparams["preprocessing"]), temperature=temperature,
                     task=hparams.get("task", "multiclass"), calibration=calibration)
    preprocessing = card.preprocessing
    images = load_tensors(checks, preprocessing)
    targets = torch.tensor(checks.targets)
    multilabel = card.task == "multilabel"
    thresholds = card.calibration.get("thresholds") if multilabel else None
    calib_images = None
    if calib is not None:
        calib_images = images if calib is checks else load_tensors(calib, preprocessing)
        calib_images = calib_images[:MAX_CALIBRATION_IMAGES]
    reference_model = Calibrated(net, temperature).eval()

    def reference(x: Any) -> Any:
        with torch.inference_mode():
            return reference_model(torch.from_numpy(x)).numpy()

    shape = tuple(preprocessing["input_size"])
    reference_probs = verify.probabilities(reference, images, multilabel=multilabel)
    rows = [verify.make_row("PyTorch checkpoint", reference_probs, reference_probs, targets,
                            verify.images_per_second(reference, shape), None, thresholds)]
    rows[0].verdict = "reference"
    label = f"{fmt.name} {'INT8' if calib_images is not None else 'fp16' if fp16 else 'fp32'}"
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as scratch:
        candidate = Path(scratch) / output.name
        built = _build(fmt, net, candidate, card, __version__, calib_images, fp16)
        if built is not None:  # ONNX: the graph's own check against PyTorch on random inputs
            print(f"ONNX Runtime matches PyTorch: max logit difference {built.max_abs_diff:.2g} <= "
                  f"{built.tolerance:.2g}{' (fp16)' if fp16 else ''}")
        if fmt.runtime is None:
            rows.append(verify.Row(label, float("nan"), float("nan"), float("nan"), float("nan"),
                                   verify.size_mb(candidate), {}, "written (runs only on Apple devices: unchecked)"))
        else:
            run, _ = formats.runtime(fmt).open_runner(candidate)
            probs = verify.probabilities(run, images, multilabel=multilabel)
            rows.append(verify.make_row(label, probs, reference_probs, targets, verify.images_per_second(run, shape),
                                        verify.size_mb(candidate), thresholds))
            drop = rows[0].score - rows[1].score
            rows[1].verdict = ("written" if drop <= max_drop else f"NOT written: {rows[1].metric} {drop:.2f} points "
                               f"lower > --max_accuracy_drop {max_drop:g}")
        details = {"export": str(output), "format": fmt.name, "weights": kind, "temperature": temperature,
                   "check_images": checks.source, "check_count": len(checks.paths),
                   "calibration_images": None if calib is None else calib.source,
                   "calibration_count": None if calib_images is None else len(calib_images),
                   "max_accuracy_drop": max_drop}
        print(f"Checked on {len(checks.paths)} labelled images from {checks.source}"
              + ("" if calib_images is None else f"; INT8 calibrated on {len(calib_images)} images from {calib.source}"))
        print(verify.table(rows))
        report = verify.write_report(output.with_name(verify.REPORT_NAME), rows, details)
        if rows[1].verdict.startswith("NOT"):
            raise UserError(f"{output} was not written: {rows[1].verdict.removeprefix('NOT written: ')} (see "
                            f"{report}); raise --max_accuracy_drop, calibrate on more images, or export float32")
        for item in Path(scratch).iterdir():  # the model and any companion file (OpenVINO's .bin)
            target = output.parent / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    print(f"Wrote {output} ({kind} weights{', temperature %g applied' % temperature if temperature != 1.0 else ''})"
          f" and {report}")
    return output


def _build(fmt: Any, net: nn.Module, candidate: Path, card: Any, version: str, calib_images: Any,
           fp16: bool) -> Any:
    from lit_convnext.inference import formats

    module = formats.exporter(fmt)
    if fmt.suffix == ".onnx":
        return module.build(net, candidate, card, version, calib_images, fp16=fp16)
    return module.build(net, candidate, card, version, calib_images)
