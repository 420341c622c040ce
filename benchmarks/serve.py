"""``lit-convnext serve`` on the CPU under a loopback load from many clients, with bad uploads and a killed worker.

    python benchmarks/serve.py [--format onnx|ckpt] [--requests 600] [--concurrency 32] [--bad-share 0.2]
                               [--repeats 3] [--kill] [--plot docs/serve_latency.png]

Writes an untrained convnext_atto checkpoint at 224 px (and its ONNX export) and starts the server on a free
127.0.0.1 port. Then, ``--repeats`` times, alternating on the same server: ``--requests`` POSTs of a 640x480 JPEG
from ``--concurrency`` client threads, and the same load with ``--bad-share`` of the requests replaced by the bad
uploads of ``tests/bad_corpus.bad_uploads`` (not an image, truncated JPEG, huge dimensions, decompression bomb,
empty file, empty body, wrong field). Prints requests/s, the good requests' latency p50/p99, the statuses (no 5xx
allowed) and the batch sizes the server formed, each the median over the repeats. ``--kill`` then SIGKILLs the
model worker under the same load and prints how the requests were answered and how long the new worker took.
``--plot`` draws the latency histograms. The clients share the machine's cores with the server.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import photos  # noqa: F401  (puts the repository on sys.path)
import numpy as np
from inference import check_folder, make_checkpoint
from photos import REPO, photo_like

from lit_convnext.commands.export import export
from tests.bad_corpus import READY, bad_uploads, health, send_upload



def load(url: str, jobs: list[tuple[bytes | None, str]], concurrency: int) -> dict:
    """Send ``jobs`` (body, field) from ``concurrency`` threads: requests/s, and each answer's status and seconds."""

    def one(job: tuple[bytes | None, str]) -> tuple[int, float]:
        start = time.perf_counter()
        status, _body = send_upload(url + "/predict", job[0], field=job[1], timeout=120)
        return status, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(one, jobs))
    return {"per_s": len(jobs) / (time.perf_counter() - start), "answers": answers}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def kill_under_load(url: str, log: Path, photo: bytes, bad: list, concurrency: int, timeout: float) -> None:
    """SIGKILL the model worker after 3 s of load; print the answers and the time to a healthy server again."""
    (old_pid, *_) = [int(pid) for pid in READY.findall(log.read_text())][-1:]
    stop, results = threading.Event(), []

    def client(seed: int) -> None:
        i = seed
        while not stop.is_set():
            i += concurrency
            body, field = bad[i % len(bad)][:2] if i % 5 == 4 else (photo, "image")
            start = time.perf_counter()
            try:
                status, _ = send_upload(url + "/predict", body, field=field, timeout=timeout + 60)
            except Exception as err:  # noqa: BLE001  (a request without an HTTP answer is what is counted)
                status = type(err).__name__
            results.append((status, time.perf_counter() - start))

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    killed = time.perf_counter()
    os.kill(old_pid, signal.SIGKILL)
    seen = []
    while not (len(READY.findall(log.read_text())) > 1 and seen[-1:] == [200]):
        seen.append(health(url))
        time.sleep(0.5)
    recovered = time.perf_counter() - killed
    time.sleep(3)
    stop.set()
    for thread in threads:
        thread.join()
    statuses = Counter(status for status, _ in results)
    print(f"worker killed under load: healthy again after {recovered:.0f} s (/health 503 meanwhile: "
          f"{503 in seen}); {len(results)} requests answered {dict(sorted(statuses.items(), key=str))}, slowest "
          f"{max(s for _, s in results):.1f} s (--timeout {timeout:g})")


def plot(runs: dict[str, list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    top = max(max(v) for v in runs.values())
    bins = np.linspace(0, top * 1.02, 50)
    for (label, values), color in zip(runs.items(), ("tab:blue", "tab:orange")):
        ax.hist(values, bins=bins, alpha=0.55, label=label, color=color)
        for q, style in ((50, "-"), (99, "--")):
            ax.axvline(percentile(values, q), color=color, linestyle=style, linewidth=1)
    ax.set_xlabel("latency of a good request (s); solid line p50, dashed p99")
    ax.set_ylabel("requests")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=("onnx", "ckpt"), default="onnx")
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--bad-share", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout", type=float, default=0.01)
    parser.add_argument("--timeout", type=float, default=30.0, help="the server's --timeout")
    parser.add_argument("--kill", action="store_true", help="also SIGKILL the model worker under load")
    parser.add_argument("--plot", type=Path, help="PNG of the latency histograms")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lit-convnext-serve-"))
    model = make_checkpoint(work / "model.ckpt", "convnext_atto", 224)
    rng = np.random.default_rng(0)
    if args.format == "onnx":
        model = export(model, work / "model.onnx", check_dir=check_folder(work / "check", rng))
    buffer = io.BytesIO()
    photo_like(640, 480, rng).save(buffer, "JPEG", quality=90)
    photo = buffer.getvalue()
    bad = list(bad_uploads(photo).values())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log_path = work / "server.log"
    log = log_path.open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "lit_convnext", "serve", "--ckpt_path", str(model), "--port", str(port),
         "--accelerator", "cpu", "--max_batch_size", str(args.max_batch_size), "--batch_timeout",
         str(args.batch_timeout), "--timeout", str(args.timeout)],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {"good only": [], f"{args.bad_share:.0%} bad uploads": []}
    try:
        deadline = time.monotonic() + 300
        while health(url) != 200:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start:\n{log_path.read_text()[-2000:]}")
            time.sleep(1)
        send_upload(url + "/predict", photo)  # warm-up
        for _ in range(args.repeats):
            for label in runs:
                share = 0.0 if label == "good only" else args.bad_share
                jobs = [bad[int(rng.integers(len(bad)))][:2] if rng.random() < share else (photo, "image")
                        for _ in range(args.requests)]
                before = log_path.read_text().count("predicted a batch of")
                run = load(url, jobs, args.concurrency)
                sizes = [int(line.rsplit("batch of ", 1)[1].split()[0])
                         for line in log_path.read_text().splitlines() if "predicted a batch of" in line][before:]
                run["mean_batch"] = statistics.mean(sizes)
                runs[label].append(run)
        if args.kill:
            kill_under_load(url, log_path, photo, bad, args.concurrency, args.timeout)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
    print(f"{os.cpu_count()} cores, load average before {load_before:.1f}; {args.format}, convnext_atto at 224 px, "
          f"{args.requests} requests of a 640x480 JPEG from {args.concurrency} client threads, --max_batch_size "
          f"{args.max_batch_size} --batch_timeout {args.batch_timeout}; medians of {args.repeats} runs each")
    print("| load | requests/s | good p50 (ms) | good p99 (ms) | mean batch | statuses (all runs) |")
    print("|---|---|---|---|---|---|")
    latencies = {}
    for label, repeats in runs.items():
        good = [[s for status, s in run["answers"] if status == 200] for run in repeats]
        statuses = Counter(status for run in repeats for status, _ in run["answers"])
        assert not [s for s in statuses if s >= 500], statuses
        latencies[label] = [s for run in good for s in run]
        print(f"| {label} | {statistics.median(r['per_s'] for r in repeats):.1f} | "
              f"{statistics.median(percentile(g, 50) for g in good) * 1000:.0f} | "
              f"{statistics.median(percentile(g, 99) for g in good) * 1000:.0f} | "
              f"{statistics.median(r['mean_batch'] for r in repeats):.1f} | "
              f"{', '.join(f'{k}: {v}' for k, v in sorted(statuses.items()))} |")
    if args.plot:
        plot(latencies, args.plot, f"serve, {args.format} convnext_atto 224 px, {args.concurrency} clients, "
                                   f"{os.cpu_count()} shared cores (all {args.repeats} runs)")


if __name__ == "__main__":
    main()
