"""``lit-convnext serve`` for real: a server process on a free loopback port, good, bad and concurrent requests.

Starting the server (LitServe spawns an HTTP and a model worker process, each importing torch) takes tens of
seconds on a shared 2-core machine, so one server is shared by the tests of this module; those that need it are
marked ``slow``.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lit_convnext
from lit_convnext.inference.client import post_image
from tests.bad_corpus import BAD, health, write_awkward_files, write_bad_files, write_warned_files
from tests.helpers import REPO, one_line_error

STARTUP_S = 240  # generous: the machine may be busy; a healthy start is ~30 s


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_process(options: list[str], log_path: Path, env: dict[str, str] | None = None
                  ) -> Iterator[tuple[str, subprocess.Popen]]:
    """``lit-convnext serve OPTIONS`` on a free port of 127.0.0.1, its URL and process once ``/health`` says 200;
    stopped with its workers (one process group) when the block ends."""
    port = _free_port()
    with log_path.open("w") as log:  # the child keeps its own handle
        process = subprocess.Popen([sys.executable, "-m", "lit_convnext", "serve", *options, "--port", str(port)],
                                   cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while health(url) != 200:
            assert process.poll() is None, f"server exited early:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"server not up after {STARTUP_S} s:\n{log_path.read_text()[-3000:]}"
            time.sleep(1)
        yield url, process
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the HTTP and model workers are in the same process group
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(fitted: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    with serve_process(["--ckpt_path", str(fitted["best"]), "--accelerator", "cpu", "--max_batch_size", "4",
                        "--batch_timeout", "0.3", "--top_k", "2", "--max_megapixels", "1", "--max_upload_mb", "0.5"],
                       log_path) as (url, _):
        yield {"url": url, "log": log_path, "ckpt": fitted["best"], "root": fitted["root"]}


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_missing_model_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(capsys, ["serve", "--ckpt_path", str(tmp_path / "missing.ckpt")])
    assert "missing.ckpt does not exist" in line


@pytest.mark.slow
def test_health_and_a_good_image(server: dict) -> None:
    with urllib.request.urlopen(server["url"] + "/health", timeout=10) as response:
        assert response.status == 200
    image = next((server["root"] / "val" / "red").iterdir())
    status, body = post_image(server["url"] + "/predict", image)
    assert status == 200
    answer = body["predictions"]
    assert len(answer) == 2 and answer[0]["probability"] >= answer[1]["probability"]
    # the same classes and calibrated probabilities as the Python API on the same checkpoint
    (expected,) = lit_convnext.load_predictor(server["ckpt"]).predict(image, top_k=2)
    assert [a["class"] for a in answer] == [c for c, _ in expected.top]
    assert np.allclose([a["probability"] for a in answer], [p for _, p in expected.top], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(("payload", "field", "status", "message"), [
    (b"plain text, not an image", "image", 400, "not an image file"),
    (_png((64, 64))[:60], "image", 400, "not a readable image"),  # truncated PNG
    (_png((64, 64)), "file", 400, "field named 'image'"),
    (_png((1200, 1000), "L"), "image", 413, "1200x1000 = 1200000 pixels"),  # over --max_megapixels 1
    (np.random.default_rng(0).bytes(600_000), "image", 413, "500000 bytes"),  # over --max_upload_mb 0.5
], ids=["not-an-image", "truncated", "wrong-field", "too-many-pixels", "too-large"])
def test_bad_requests_get_a_json_4xx_and_the_server_keeps_serving(server: dict, payload: bytes, field: str,
                                                                  status: int, message: str) -> None:
    got, body = post_image(server["url"] + "/predict", payload, field=field)
    assert got == status and message in body["detail"]
    good, _ = post_image(server["url"] + "/predict", next((server["root"] / "val" / "blue").iterdir()))
    assert good == 200


@pytest.mark.slow
def test_images_pillow_warns_about_are_answered_without_warnings_in_the_log(server: dict, tmp_path: Path) -> None:
    for path in write_warned_files(tmp_path).values():  # corrupt EXIF, an APNG with 0 frames: both decode
        got, body = post_image(server["url"] + "/predict", path)
        assert got == 200 and len(body["predictions"]) == 2
    time.sleep(1)  # the log is written by the server's processes
    log = server["log"].read_text()
    assert "Corrupt EXIF" not in log and "Invalid APNG" not in log and "UserWarning" not in log


@pytest.mark.slow
def test_concurrent_requests_are_batched_and_bad_ones_do_not_fail_their_neighbours(server: dict) -> None:
    images = sorted((server["root"] / "val").rglob("*.png"))[:12]
    payloads = [path.read_bytes() for path in images] + [b"broken"] * 4
    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        answers = list(pool.map(lambda data: post_image(server["url"] + "/predict", data, timeout=120), payloads))
    assert [status for status, _ in answers] == [200] * 12 + [400] * 4
    assert all(len(body["predictions"]) == 2 for _, body in answers[:12])
    sizes = [int(line.rsplit("batch of ", 1)[1].split()[0])
             for line in server["log"].read_text().splitlines() if "predicted a batch of" in line]
    assert max(sizes) > 1, sizes  # concurrent requests shared a forward pass
    assert max(sizes) <= 4  # --max_batch_size


def test_uploads_are_decoded_as_the_commands_decode_files(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Every file of the bad-file corpus is refused with a 4xx and its reason, never another exception (Pillow
    raises many types); a corrupt TIFF is refused, as `predict` refuses it, instead of predicted on libtiff's
    noise; the files that decode give the pictures `load_rgb` gives."""
    from fastapi import HTTPException

    from lit_convnext.data.images import load_rgb
    from lit_convnext.inference.server import open_upload

    write_bad_files(tmp_path / "bad")
    for name, word in BAD.items():
        with pytest.raises(HTTPException) as refused:
            open_upload((tmp_path / "bad" / name).read_bytes(), max_pixels=1_000_000)
        assert refused.value.status_code in (400, 413), name
    with pytest.raises(HTTPException, match="corrupt TIFF data"):
        open_upload((tmp_path / "bad" / "tiff_corrupt_fax.tif").read_bytes(), max_pixels=1_000_000)
    with pytest.raises(HTTPException, match="a TIFF file that Pillow cannot open: More samples per pixel"):
        open_upload((tmp_path / "bad" / "tiff_samples_per_pixel.tif").read_bytes(), max_pixels=1_000_000)
    for path in write_awkward_files(tmp_path / "good").values():
        decoded = open_upload(path.read_bytes(), max_pixels=1_000_000)
        assert np.array_equal(np.asarray(decoded), np.asarray(load_rgb(path))), path.name
    out, err = capfd.readouterr()
    assert "Fax4Decode" not in out + err
