"""``lit-convnext serve`` under load and faults, for real: a server process on a free loopback port, 32 client
threads with a share of bad uploads, then its model worker killed with SIGKILL in the middle of the load.

One server is shared by the two tests (starting it takes tens of seconds on a busy 2-core machine); the kill test
runs last. Every request has a client timeout, and the server is killed in a ``finally``.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lit_convnext
from tests.bad_corpus import READY, bad_uploads, health, send_upload
from tests.inference.test_serve import STARTUP_S, serve_process

CLIENTS = 32
TIMEOUT_S = 8  # the server's --timeout: no request may wait longer for its answer


def _worker_pids(log: Path) -> list[int]:
    return [int(pid) for pid in READY.findall(log.read_text())]


@pytest.fixture(scope="module")
def server(fitted: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    log_path = tmp_path_factory.mktemp("serve-load") / "server.log"
    with serve_process(["--ckpt_path", str(fitted["best"]), "--accelerator", "cpu", "--max_batch_size", "8",
                        "--top_k", "2", "--max_megapixels", "1", "--max_upload_mb", "0.5", "--timeout", str(TIMEOUT_S)],
                       log_path, env={**os.environ, "OMP_NUM_THREADS": "1"}) as (url, process):
        yield {"url": url, "log": log_path, "process": process, "ckpt": fitted["best"], "root": fitted["root"]}


@pytest.fixture(scope="module")
def uploads(server: dict) -> dict:
    """The good images with the answer the Python API gives for each, and the bad uploads."""
    images = sorted((server["root"] / "val").rglob("*.png"))
    expected = lit_convnext.load_predictor(server["ckpt"]).predict(images, top_k=2)
    buffer = io.BytesIO()
    Image.open(images[0]).convert("RGB").resize((256, 256)).save(buffer, "JPEG", quality=90)  # cut in half below
    good = [(path.read_bytes(), dict(prediction.top)) for path, prediction in zip(images, expected)]
    return {"good": good, "bad": bad_uploads(buffer.getvalue())}


def _check_answer(status: int, body: dict, expected: dict[str, float]) -> None:
    assert status == 200, (status, body)
    answer = {a["class"]: a["probability"] for a in body["predictions"]}
    assert answer.keys() == expected.keys()
    assert np.allclose([answer[c] for c in expected], list(expected.values()), atol=1e-4)


@pytest.mark.slow
def test_many_concurrent_requests_with_bad_uploads_get_no_5xx(server: dict, uploads: dict) -> None:
    """1600 requests from 32 clients, one in four a bad upload of each kind: every good one answered as the Python
    API answers it, every bad one a 4xx whose detail is one line naming the problem."""
    bad = list(uploads["bad"].items())
    jobs = [("bad", i % len(bad)) if i % 4 == 3 else ("good", i % len(uploads["good"])) for i in range(1600)]

    def one(job: tuple[str, int]) -> tuple[str, int, int, object]:
        kind, index = job
        if kind == "good":
            status, body = send_upload(server["url"] + "/predict", uploads["good"][index][0], timeout=60)
        else:
            payload, field, _status, _message = bad[index][1]
            status, body = send_upload(server["url"] + "/predict", payload, field=field, timeout=60)
        return kind, index, status, body

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(one, jobs))
    assert not [a for a in answers if a[2] >= 500], Counter(a[2] for a in answers)
    for kind, index, status, body in answers:
        if kind == "good":
            _check_answer(status, body, uploads["good"][index][1])
        else:
            name, (_payload, _field, expected_status, message) = bad[index]
            assert status == expected_status and message in body["detail"], (name, status, body)
            assert "\n" not in body["detail"], name
    assert Counter(kind for kind, *_ in answers) == {"good": 1200, "bad": 400}


@pytest.mark.slow
def test_a_killed_model_worker_is_replaced_and_no_request_hangs(server: dict, uploads: dict) -> None:
    """SIGKILL the model worker under load from 32 clients: every request is answered within the server's
    --timeout (200, its 4xx, or 504 for those the dead worker held or that waited for the new one), /health says
    503 until a new worker has loaded the model, and the server keeps running and answers correctly again."""
    (old_pid,) = _worker_pids(server["log"])
    url = server["url"] + "/predict"
    stop = threading.Event()
    results: list[tuple[str, object, float]] = []
    bad = list(uploads["bad"].values())

    def client(seed: int) -> None:
        i = seed
        while not stop.is_set():
            i += CLIENTS
            kind = "bad" if i % 4 == 3 else "good"
            payload, field = (bad[i % len(bad)][:2] if kind == "bad" else (uploads["good"][i % len(uploads["good"])][0],
                                                                          "image"))
            start = time.monotonic()
            try:  # a client timeout well past the server's: a request that hangs shows as an exception
                status, _ = send_upload(url, payload, field=field, timeout=TIMEOUT_S + 20)
            except Exception as err:  # noqa: BLE001  (any failure to get an HTTP answer is what is tested)
                status = repr(err)
            results.append((kind, status, time.monotonic() - start))

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(CLIENTS)]
    for thread in threads:
        thread.start()
    health_seen: list[int | str] = []
    try:
        time.sleep(2)
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + STARTUP_S
        while not (len(_worker_pids(server["log"])) == 2 and health_seen[-1:] == [200]):
            assert time.monotonic() < deadline, f"no new worker:\n{server['log'].read_text()[-3000:]}"
            assert server["process"].poll() is None, f"server exited:\n{server['log'].read_text()[-3000:]}"
            health_seen.append(health(server["url"]))
            time.sleep(0.5)
        time.sleep(2)  # load on the new worker
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=TIMEOUT_S + 30)
    assert not any(thread.is_alive() for thread in threads)
    statuses = Counter(status for _, status, _ in results)
    assert set(statuses) <= {200, 400, 413, 504}, statuses  # no dropped connection, no client timeout, no 500
    assert max(seconds for *_, seconds in results) < TIMEOUT_S + 10, statuses
    assert statuses[504] > 0  # the requests the killed worker held (answered by the deadline, not hanging)
    assert 503 in health_seen and health_seen[-1] == 200, health_seen
    assert _worker_pids(server["log"])[-1] != old_pid
    assert server["process"].poll() is None  # replaced, not exited
    payload, expected = uploads["good"][0]
    _check_answer(*send_upload(url, payload, timeout=TIMEOUT_S + 20), expected)


def test_the_deadline_answers_504_for_an_app_that_never_answers() -> None:
    """In process, without a server: a request the app never answers (a dead worker's) gets a JSON 504 after the
    deadline; one it answers in time passes through untouched, and other routes are not timed."""
    import asyncio
    import json

    from lit_convnext.inference.server import Deadline

    async def never(scope, receive, send) -> None:
        await asyncio.Event().wait()

    async def quick(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    def call(app, path: str = "/predict", limit: float = 5.0) -> list[dict]:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "path": path, "method": "POST", "headers": []}
        asyncio.run(asyncio.wait_for(Deadline(app, seconds=0.05)(scope, receive, send), limit))
        return sent

    start = time.monotonic()
    answer = call(never)
    assert time.monotonic() - start < 2
    assert answer[0]["status"] == 504
    assert "no answer within the server's --timeout of 0.05 s" in json.loads(answer[1]["body"])["detail"]
    assert [m.get("status") for m in call(quick)] == [200, None]
    with pytest.raises(asyncio.TimeoutError):  # only the prediction route is timed
        call(never, "/other", limit=0.3)
