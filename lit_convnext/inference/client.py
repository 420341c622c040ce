"""A dependency-free client for ``lit-convnext serve`` (standard library only), for scripts and smoke tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any


def post_image(url: str, image: bytes | str | Path, field: str = "image", timeout: float = 30.0) -> tuple[int, Any]:
    """POST ``image`` (bytes or a file path) as multipart field ``field``; return the HTTP status and the JSON body.

    Error statuses are returned, not raised, so callers can check a 4xx answer like a 200.
    """
    data = Path(image).read_bytes() if isinstance(image, (str, Path)) else image
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="upload"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")
