"""Images/s and accuracy of every export format, float32 and INT8, and the per-operation INT8 findings.

    python benchmarks/export_formats.py --ckpt RUN/checkpoints/best.ckpt --out /tmp/export-bench [--plot]

Two parts, each printed as a table and saved to ``--out``/results.json:

* accuracy: the trained checkpoint ``--ckpt`` (e.g. convnext_atto fit on data/digits) exported to every format
  this machine runs, float32 and INT8 (with the INT8 variants that keep parts of ConvNeXt in float), checked on
  the run's validation images: top-1, agreement with the checkpoint, ECE.
* speed: randomly initialised ``--models`` at ``--image_size`` (speed does not depend on the weights' values),
  images/s at batch 1 and 32 for PyTorch, ONNX Runtime fp32/INT8, OpenVINO fp32/INT8, LiteRT fp32 and (where
  ai-edge-quantizer is installed) LiteRT INT8.

``--plot`` draws docs/export_speed.png (a grouped bar chart). Timings are medians of repeated runs on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from lit_convnext.commands.export import _network  # noqa: E402
from lit_convnext.inference import formats, verify  # noqa: E402
from lit_convnext.inference.images import load_tensors, validation_images  # noqa: E402
from lit_convnext.inference.metadata import ModelCard  # noqa: E402
from lit_convnext.inference.onnx_export import Calibrated  # noqa: E402
from lit_convnext.weights import read_checkpoint  # noqa: E402


def builds(net: torch.nn.Module, card: ModelCard, calib: torch.Tensor, work: Path, variants: bool):
    """(label, path) of every export built for ``net``; INT8 variants keep parts of ConvNeXt in float."""
    from lit_convnext.inference import onnx_export, openvino_model, quantize

    fp32 = work / "m.onnx"
    onnx_export.build(net, fp32, card, "bench")
    yield "ONNX Runtime fp32", fp32
    kept = {"all quantized": []}
    if variants:
        kept |= {part + " kept float": quantize.onnx_nodes(str(fp32), part) for part in ("depthwise", "head")}
        kept["stem+head kept float"] = quantize.onnx_nodes(str(fp32), "stem") + quantize.onnx_nodes(str(fp32), "head")
    for i, (what, nodes) in enumerate(kept.items()):
        out = work / f"q{i}.onnx"
        quantize.quantize_onnx(str(fp32), str(out), calib, keep_float=nodes)
        yield f"ONNX Runtime INT8 ({what})", out
    openvino_model.build(net, work / "m.xml", card, "bench")
    yield "OpenVINO fp32", work / "m.xml"
    openvino_model.build(net, work / "q.xml", card, "bench", calibration=calib)
    yield "OpenVINO INT8 (NNCF, transformer preset)", work / "q.xml"
    if variants:
        import nncf
        import openvino as ov

        from lit_convnext.inference.metadata import INPUT_NAME

        model = ov.Core().read_model(str(work / "m.xml"))
        data = nncf.Dataset([calib[i:i + 1].numpy() for i in range(len(calib))])
        plain = nncf.quantize(model, data, subset_size=len(calib))  # CNN defaults: LayerNorm/GELU inputs quantized
        plain.inputs[0].get_tensor().set_names({INPUT_NAME})
        for key, value in card.to_props("bench").items():
            plain.set_rt_info(value, ["lit_convnext", key])
        ov.save_model(plain, str(work / "q_plain.xml"), compress_to_fp16=False)
        yield "OpenVINO INT8 (NNCF, CNN defaults)", work / "q_plain.xml"
    if formats.FORMATS[".tflite"].export_needs and all(
            __import__("importlib").util.find_spec(m) for m in formats.FORMATS[".tflite"].export_needs):
        from lit_convnext.inference import litert_model

        litert_model.build(net, work / "m.tflite", card, "bench")
        yield "LiteRT fp32", work / "m.tflite"
        if __import__("importlib").util.find_spec("ai_edge_quantizer"):
            litert_model.build(net, work / "q.tflite", card, "bench", calibration=calib)
            yield "LiteRT INT8 (AI Edge Quantizer)", work / "q.tflite"


def runner(path: Path):
    return formats.runtime(formats.format_of(path)).open_runner(path)[0]


def accuracy(ckpt: Path, work: Path, variants: bool = True) -> list[dict]:
    hp = read_checkpoint(ckpt)["hyper_parameters"]
    net, _, _ = _network(ckpt, hp, True)
    card = ModelCard(hp["model_name"], list(hp["class_names"]), dict(hp["preprocessing"]))
    checks = validation_images(ckpt, card.class_names)
    images, targets = load_tensors(checks, card.preprocessing), torch.tensor(checks.targets)
    ref_model = Calibrated(net, 1.0).eval()

    def ref(x):
        with torch.inference_mode():
            return ref_model(torch.from_numpy(x)).numpy()

    ref_probs = verify.probabilities(ref, images)
    rows = [verify.make_row("PyTorch", ref_probs, ref_probs, targets, {}, None)]
    built = builds(net, card, images[:verify_calib], work, variants=variants)
    while True:
        try:
            label, path = next(built)
            probs = verify.probabilities(runner(path), images)
        except StopIteration:
            break
        except Exception as err:  # a tool chain that fails on this model is a finding: keep the rows so far
            print(f"  FAILED: {type(err).__name__}: {str(err).splitlines()[0][:300]}", flush=True)
            break
        rows.append(verify.make_row(label, probs, ref_probs, targets, {}, verify.size_mb(path)))
        print(f"  {verify.table([rows[-1]]).splitlines()[1]}", flush=True)
    print(f"\nAccuracy: {hp['model_name']} at {card.preprocessing['input_size'][1]} px, {len(images)} images of "
          f"{checks.source} (INT8 calibrated on {min(verify_calib, len(images))} of them)")
    print(verify.table(rows))
    return [r.__dict__ for r in rows]


def speed(model_name: str, size: int, work: Path, seconds: float) -> list[dict]:
    import timm

    net = timm.create_model(model_name, num_classes=10).eval()
    card = ModelCard(model_name, [str(i) for i in range(10)], {"input_size": [3, size, size]})
    calib = torch.randn(32, 3, size, size, generator=torch.Generator().manual_seed(0))
    ref_model = Calibrated(net, 1.0).eval()

    def ref(x):
        with torch.inference_mode():
            return ref_model(torch.from_numpy(x)).numpy()

    results = [{"model": "PyTorch fp32", **verify.images_per_second(ref, (3, size, size), seconds=seconds)}]
    ref_probs = verify.probabilities(ref, calib)
    for label, path in builds(net, card, calib, work, variants=False):
        run = runner(path)
        agree = float((verify.probabilities(run, calib).argmax(-1) == ref_probs.argmax(-1)).float().mean()) * 100
        results.append({"model": label, "agreement_random_inputs": agree,
                        **verify.images_per_second(run, (3, size, size), seconds=seconds)})
        print(f"  {model_name} {label}: {results[-1]}", flush=True)
    print(f"\nSpeed: {model_name} at {size} px, random init, images/s (median)")
    for r in results:
        print(f"  {r['model']:<42} b1 {r['batch_1']:8.1f}   b32 {r['batch_32']:8.1f}")
    return results


def plot(speeds: dict[str, list[dict]], path: Path, machine: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(speeds), figsize=(6 * len(speeds), 4.5), squeeze=False)
    for ax, (name, rows) in zip(axes[0], speeds.items()):
        labels = [r["model"].replace(" (NNCF, transformer preset)", "").replace(" (all quantized)", "")
                  for r in rows]
        y = range(len(rows))
        ax.barh([i - 0.2 for i in y], [r["batch_1"] for r in rows], height=0.4, label="batch 1")
        ax.barh([i + 0.2 for i in y], [r["batch_32"] for r in rows], height=0.4, label="batch 32")
        ax.set_yticks(list(y), labels)
        ax.invert_yaxis()
        ax.set_xlabel("images/s (higher is better)")
        ax.set_title(name)
        ax.legend(loc="upper right")
    fig.suptitle(f"Export formats, {machine}\n(a shared machine: compare bars, not absolute speeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


verify_calib = 300

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, help="a trained checkpoint for the accuracy part (skipped if absent)")
    parser.add_argument("--models", nargs="*", default=["convnext_atto", "convnext_tiny"],
                        help="models of the speed part (none: accuracy part only)")
    parser.add_argument("--no_variants", action="store_true",
                        help="accuracy part: only each tool's default INT8, no keep-in-float variants")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed window per batch size")
    parser.add_argument("--out", type=Path, default=Path("export-bench"))
    parser.add_argument("--plot", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch threads " \
              f"{torch.get_num_threads()}"
    results: dict = {"machine": machine, "started": time.strftime("%Y-%m-%d %H:%M")}
    if args.ckpt:
        (args.out / "acc").mkdir(exist_ok=True)
        results["accuracy"] = accuracy(args.ckpt, args.out / "acc", variants=not args.no_variants)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    results["speed"] = {}
    for name in args.models:
        (args.out / name).mkdir(exist_ok=True)
        results["speed"][name] = speed(name, args.image_size, args.out / name, args.seconds)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
        if args.plot:
            plot({f"{k} @ {args.image_size} px" : v for k, v in results["speed"].items()},
                 Path(__file__).resolve().parents[1] / "docs" / "export_speed.png", machine)
    print(f"saved {args.out / 'results.json'}")
