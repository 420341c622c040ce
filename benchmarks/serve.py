"""Requests/s of ``lit-convnext serve`` on the CPU under a bounded loopback load (127.0.0.1 only).

    python benchmarks/serve.py [--format onnx|ckpt] [--requests 120] [--concurrency 8] [--max-batch-size 8]

Writes an untrained convnext_atto checkpoint at 224 px (and its ONNX export), starts the server on a free
loopback port, sends ``--requests`` POSTs of a 640x480 JPEG from ``--concurrency`` client threads, and prints
requests/s, median and 95th-percentile latency and the batch sizes the server formed; then stops the server.
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
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import photos  # noqa: F401  (puts the repository on sys.path)
import numpy as np
from inference import make_checkpoint
from photos import REPO, photo_like

from lit_convnext.commands.export import export
from lit_convnext.inference.client import post_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=("onnx", "ckpt"), default="onnx")
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout", type=float, default=0.01)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lit-convnext-serve-"))
    model = make_checkpoint(work / "model.ckpt", "convnext_atto", 224)
    if args.format == "onnx":
        model = export(model, work / "model.onnx")
    buffer = io.BytesIO()
    photo_like(640, 480, np.random.default_rng(0)).save(buffer, "JPEG", quality=90)
    photo = buffer.getvalue()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = (work / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "lit_convnext", "serve", "--ckpt_path", str(model), "--port", str(port),
         "--accelerator", "cpu", "--max_batch_size", str(args.max_batch_size), "--batch_timeout",
         str(args.batch_timeout)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start:\n{(work / 'server.log').read_text()[-2000:]}")
                time.sleep(1)
        post_image(url + "/predict", photo)  # warm-up

        def one(_: int) -> float:
            start = time.perf_counter()
            status, _body = post_image(url + "/predict", photo, timeout=120)
            assert status == 200, status
            return time.perf_counter() - start

        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            latencies = sorted(pool.map(one, range(args.requests)))
        elapsed = time.perf_counter() - start
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
    sizes = [int(line.rsplit("batch of ", 1)[1].split()[0])
             for line in (work / "server.log").read_text().splitlines() if "predicted a batch of" in line]
    print(f"{os.cpu_count()} cores, load average before {os.getloadavg()[0]:.1f}; {args.format}, convnext_atto at "
          f"224 px, {args.requests} requests of a 640x480 JPEG from {args.concurrency} client threads, "
          f"--max_batch_size {args.max_batch_size} --batch_timeout {args.batch_timeout}")
    print(f"{args.requests / elapsed:.1f} requests/s; latency median {statistics.median(latencies) * 1000:.0f} ms, "
          f"p95 {latencies[int(0.95 * (len(latencies) - 1))] * 1000:.0f} ms; mean batch "
          f"{statistics.mean(sizes[1:]):.1f} (largest {max(sizes)})")


if __name__ == "__main__":
    main()
