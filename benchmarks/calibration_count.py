"""How many calibration images INT8 needs: accuracy drop and agreement against the number of images calibrated on.

    python benchmarks/calibration_count.py --ckpt RUN/checkpoints/best.ckpt --calib_dir data/digits/train \
        --counts 25 50 100 200 400 512 --seeds 0 1 --out /tmp/calib-count

The trained checkpoint is exported once to float32 ONNX and OpenVINO IR; then for each count and seed a random
draw of that many images from ``--calib_dir`` (by default other images than the checked ones, so the check is not
on the images the ranges were fitted to) calibrates ONNX Runtime's static QDQ and NNCF, each as the export command
does it, and the INT8 model is checked on the run's validation images: top-1, points lost against the checkpoint,
agreement with the checkpoint's top class, largest probability difference. Prints one table (median over seeds and
the worst seed) and saves every row to ``--out``/results.json. No timing here, so the machine's load does not enter.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from lit_convnext.commands.export import MAX_CALIBRATION_IMAGES, _network  # noqa: E402
from lit_convnext.inference import formats, verify  # noqa: E402
from lit_convnext.inference.images import folder_images, load_tensors, validation_images  # noqa: E402
from lit_convnext.inference.metadata import ModelCard  # noqa: E402
from lit_convnext.inference.onnx_export import Calibrated  # noqa: E402
from lit_convnext.weights import read_checkpoint  # noqa: E402


def run_of(path: Path):
    return formats.runtime(formats.format_of(path)).open_runner(path)[0]


def main(ckpt: Path, calib_dir: Path | None, counts: list[int], seeds: list[int], out: Path) -> list[dict]:
    from lit_convnext.inference import onnx_export, openvino_model, quantize

    hp = read_checkpoint(ckpt)["hyper_parameters"]
    net, _, _ = _network(ckpt, hp, True)
    card = ModelCard(hp["model_name"], list(hp["class_names"]), dict(hp["preprocessing"]))
    checks = validation_images(ckpt, card.class_names)
    images, targets = load_tensors(checks, card.preprocessing), torch.tensor(checks.targets)
    pool_set = folder_images(calib_dir, card.class_names, "calibration", labelled=False) if calib_dir else checks
    pool = images if pool_set is checks else load_tensors(pool_set, card.preprocessing)
    reference = Calibrated(net, 1.0).eval()

    def ref(x):
        with torch.inference_mode():
            return reference(torch.from_numpy(x)).numpy()

    ref_probs = verify.probabilities(ref, images)
    base = verify.make_row("PyTorch", ref_probs, ref_probs, targets, {}, None)
    print(f"{hp['model_name']} at {card.preprocessing['input_size'][1]} px: checkpoint top-1 {base.top1:.2f} on "
          f"{len(images)} images of {checks.source}; calibration drawn from {len(pool)} images of {pool_set.source}",
          flush=True)
    onnx_export.build(net, out / "m.onnx", card, "bench")
    openvino_model.build(net, out / "m.xml", card, "bench")
    rows = []
    for count in counts:
        n = min(count, len(pool), MAX_CALIBRATION_IMAGES)
        for seed in seeds:
            pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]
            calib = pool[pick]
            quantize.quantize_onnx(str(out / "m.onnx"), str(out / "q.onnx"), calib)
            openvino_model.build(net, out / "q.xml", card, "bench", calibration=calib)
            for tool, path in (("ONNX Runtime QDQ", out / "q.onnx"), ("OpenVINO NNCF", out / "q.xml")):
                probs = verify.probabilities(run_of(path), images)
                row = verify.make_row(tool, probs, ref_probs, targets, {}, None)
                rows.append({"tool": tool, "count": n, "seed": seed, "top1": row.top1, "drop": base.top1 - row.top1,
                             "agreement": row.agreement, "max_prob_diff": row.max_prob_diff})
                print(f"  {tool:<17} {n:>4} images, seed {seed}: top-1 {row.top1:.2f} (drop {rows[-1]['drop']:+.2f}),"
                      f" agree {row.agreement:.2f}, max |dp| {row.max_prob_diff:.3f}", flush=True)
            (out / "results.json").write_text(json.dumps({"checkpoint": str(ckpt), "base_top1": base.top1,
                                                          "rows": rows}, indent=2))
    print(f"\n{hp['model_name']}, checkpoint top-1 {base.top1:.2f}; per count: median over seeds {seeds} "
          "(worst seed in brackets)")
    print("| tool | calibration images | top-1 % | points lost | agree % | max \\|dp\\| |")
    print("|---|---|---|---|---|---|")
    for tool in ("ONNX Runtime QDQ", "OpenVINO NNCF"):
        for n in sorted({r["count"] for r in rows}):
            sel = [r for r in rows if r["tool"] == tool and r["count"] == n]
            med = {k: statistics.median(r[k] for r in sel) for k in ("top1", "drop", "agreement", "max_prob_diff")}
            print(f"| {tool} | {n} | {med['top1']:.2f} | {med['drop']:.2f} ({max(r['drop'] for r in sel):.2f}) | "
                  f"{med['agreement']:.2f} ({min(r['agreement'] for r in sel):.2f}) | {med['max_prob_diff']:.3f} "
                  f"({max(r['max_prob_diff'] for r in sel):.3f}) |")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="a trained checkpoint in its run folder")
    parser.add_argument("--calib_dir", type=Path, help="images to draw calibration sets from (default: the checked "
                                                       "validation images themselves, as the command's default)")
    parser.add_argument("--counts", type=int, nargs="+", default=[25, 50, 100, 200, 400, MAX_CALIBRATION_IMAGES])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("calibration-count"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    main(args.ckpt, args.calib_dir, args.counts, args.seeds, args.out)
