"""The HTTP server: a LitServe ``LitAPI`` around the predictor, with uploads checked before they are batched.

LitServe batches concurrent requests (``max_batch_size``, ``batch_timeout``), runs the model in worker processes
and answers ``GET /health``. Uploads are checked in the HTTP process by :class:`UploadCheck` first: LitServe fails
a whole batch when one request in it raises, so a bad image must be refused before it can join a batch.

A model worker that dies (killed, out of memory) is replaced by LitServe (``restart_workers``); ``/health`` answers
503 until the new one has loaded the model. The requests the dead worker had taken are never answered by LitServe
(its monitor fails them in the main process, while they wait in the HTTP process), so :class:`Deadline` answers
every request 504 after ``timeout`` seconds at the latest: no client waits forever. (LitServe keeps its buffer
entry for each request answered this way, a few hundred bytes, for the life of the HTTP process.)
"""

import asyncio
import io
import os
import logging
import warnings
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import HTTPException
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lit_convnext.data.images import (DamagedImageError, failure_reason, hide_pillow_file_warnings, load_pixels,
                                      open_image, to_rgb)

log = logging.getLogger(__name__)

#: The multipart form field that carries the image.
FIELD = "image"


def open_upload(data: bytes, max_pixels: int, min_size: int | None = None) -> Image.Image:
    """Decode uploaded bytes to upright RGB as every command decodes files (:mod:`lit_convnext.data.images`: a
    corrupt TIFF is refused, not predicted on libtiff's noise); ``HTTPException`` 413 for too many pixels, 400 with
    the reason for anything Pillow cannot decode (it raises many exception types). Pillow's warnings about a file
    that still decodes are left out (one bare line per request otherwise), for this call only."""
    try:
        with warnings.catch_warnings():
            hide_pillow_file_warnings()
            with open_image(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > max_pixels:  # refused from the header, before any pixel is decoded
                    raise HTTPException(413, f"image is {width}x{height} = {width * height} pixels, over the "
                                             f"server's limit of {max_pixels}; send a smaller image")
                load_pixels(img, min_size)
                return to_rgb(img)
    except HTTPException:
        raise
    except Image.DecompressionBombError as err:
        raise HTTPException(413, f"image refused as a decompression bomb: {err}") from err
    except Exception as err:  # OSError, ValueError, SyntaxError, NotImplementedError, struct.error, ...
        if isinstance(err, UnidentifiedImageError) and not isinstance(err, DamagedImageError):
            raise HTTPException(400, f"the {FIELD!r} field is not an image file Pillow can read") from err
        raise HTTPException(400, f"the {FIELD!r} field is not a readable image: {failure_reason(err)}") from err


class UploadCheck:
    """ASGI middleware: refuse an oversize request, a missing ``image`` field or an unreadable image with a JSON 4xx.

    Args:
        app: The wrapped application.
        path: The prediction route.
        max_bytes: Largest request body accepted.
        max_pixels: Largest image (width x height) accepted.
        decode_size: Short side large JPEGs are decoded at while checking (the model's, see ``Predictor``).
    """

    def __init__(self, app: ASGIApp, path: str = "/predict", max_bytes: int = 20_000_000,
                 max_pixels: int = 40_000_000, decode_size: int | None = None) -> None:
        self.app, self.path, self.max_bytes, self.max_pixels = app, path, max_bytes, max_pixels
        self.decode_size = decode_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await _error(413, f"request is over the server's limit of {self.max_bytes} bytes; send a smaller "
                                  "image", scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replay = _replay(bytes(body))
        try:
            form = await Request(scope, replay).form()
            upload = form.get(FIELD)
            if not isinstance(upload, UploadFile):
                raise HTTPException(400, f"send the image as a multipart/form-data file field named {FIELD!r}")
            open_upload(await upload.read(), self.max_pixels, self.decode_size)
            await form.close()
        except HTTPException as err:
            await _error(err.status_code, str(err.detail), scope, receive, send)
            return
        except Exception as err:  # python-multipart's parse errors and the like: a malformed request
            await _error(400, f"malformed multipart request: {err}", scope, receive, send)
            return
        await self.app(scope, _replay(bytes(body)), send)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class Deadline:
    """ASGI middleware: answer a ``POST`` to ``path`` with a JSON 504 when the app has not started its answer within
    ``seconds`` (a busy server, or a model worker that died with the request while LitServe replaces it).

    Args:
        app: The wrapped application.
        path: The prediction route.
        seconds: Longest a request waits for its answer.
    """

    def __init__(self, app: ASGIApp, path: str = "/predict", seconds: float = 30.0) -> None:
        self.app, self.path, self.seconds = app, path, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_and_note(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, send_and_note), self.seconds)
        except asyncio.TimeoutError:
            if started:  # an answer is half sent: the connection is closed, no second status line can follow
                raise
            await _error(504, f"no answer within the server's --timeout of {self.seconds:g} s (busy, or its model "
                              "worker was restarted); retry", scope, receive, send)


async def _error(status: int, message: str, scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse({"detail": message}, status_code=status)(scope, receive, send)


class ClassifierAPI(ls.LitAPI):
    """``POST /predict`` with a multipart ``image`` -> ``{"predictions": [{"class", "probability"}, ...]}``.

    Args:
        model_path: A ``.ckpt`` or an exported ``.onnx``, ``.xml`` or ``.tflite``.
        top_k: Classes per answer.
        max_pixels: Largest image accepted (also checked in the worker).
        max_batch_size: Most requests run in one forward pass.
        batch_timeout: Seconds to wait for more requests to fill a batch.
    """

    def __init__(self, model_path: Path, top_k: int = 5, max_pixels: int = 40_000_000, max_batch_size: int = 8,
                 batch_timeout: float = 0.01) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.model_path, self.top_k, self.max_pixels = Path(model_path), top_k, max_pixels

    def setup(self, device: str) -> None:
        from lit_convnext.inference.predictor import load_predictor

        if not log.handlers:  # workers are fresh processes: the batch log line goes to stderr
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO)
        self.predictor = load_predictor(self.model_path, device=device)
        log.info("model worker ready on %s (pid %d)", device, os.getpid())

    # Annotated with ``Request`` (no postponed annotations in this module): LitServe then hands over the parsed form.
    def decode_request(self, request: Request) -> Image.Image:
        upload = request[FIELD]
        data = upload.file.read() if hasattr(upload, "file") else bytes(upload)
        return open_upload(data, self.max_pixels, self.predictor.decode_size)

    def batch(self, inputs: list[Image.Image]) -> list[Image.Image]:
        return list(inputs)

    def predict(self, images: list[Image.Image]) -> list[Any]:
        log.info("predicted a batch of %d image(s)", len(images))
        with warnings.catch_warnings():  # the images' EXIF is read again: its warnings were the upload check's
            hide_pillow_file_warnings()
            return self.predictor.predict(images, top_k=self.top_k, batch_size=len(images))

    def unbatch(self, output: list[Any]) -> list[Any]:
        return list(output)

    def encode_response(self, prediction: Any) -> dict[str, Any]:
        if prediction.error:  # cannot happen after UploadCheck; kept so no answer is ever a bare 200 without classes
            raise HTTPException(400, prediction.error)
        return {"predictions": [{"class": name, "probability": round(p, 6)} for name, p in prediction.top]}


def build_server(model_path: Path, *, top_k: int = 5, max_batch_size: int = 8, batch_timeout: float = 0.01,
                 workers_per_device: int = 1, accelerator: str = "auto", max_bytes: int = 20_000_000,
                 max_pixels: int = 40_000_000, timeout: float = 30.0,
                 decode_size: int | None = None) -> ls.LitServer:
    """The LitServer for ``model_path`` with the upload check and the answer deadline in front of ``/predict``, and
    dead model workers replaced."""
    api = ClassifierAPI(model_path, top_k=top_k, max_pixels=max_pixels, max_batch_size=max_batch_size,
                        batch_timeout=batch_timeout)
    # Starlette runs the last middleware added outermost: the deadline also covers the upload check.
    return ls.LitServer(
        api, accelerator=accelerator, workers_per_device=workers_per_device, timeout=timeout, restart_workers=True,
        middlewares=[(UploadCheck, {"path": api.api_path, "max_bytes": max_bytes, "max_pixels": max_pixels,
                                    "decode_size": decode_size}),
                     (Deadline, {"path": api.api_path, "seconds": timeout})],
    )
