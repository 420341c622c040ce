"""``lit-convnext serve``: an HTTP endpoint for a checkpoint or an exported ONNX model, on LitServe."""

from pathlib import Path
from typing import Literal

from lit_convnext.errors import UserError
from lit_convnext.ranges import NonNegativeFloat, PositiveFloat, PositiveInt


def serve(
    *,
    ckpt_path: Path,
    port: PositiveInt = 8000,
    host: Literal["127.0.0.1", "0.0.0.0", "::"] = "127.0.0.1",
    top_k: PositiveInt = 5,
    max_batch_size: PositiveInt = 8,
    batch_timeout: NonNegativeFloat = 0.01,
    workers_per_device: PositiveInt = 1,
    accelerator: Literal["auto", "cpu", "cuda"] = "auto",
    max_upload_mb: PositiveFloat = 20.0,
    max_megapixels: PositiveFloat = 40.0,
    timeout: PositiveFloat = 30.0,
) -> None:
    """Serve ``POST /predict`` (multipart field ``image``) and ``GET /health`` until stopped.

    Args:
        ckpt_path: A ``.ckpt`` from ``lit-convnext fit`` or an exported ``.onnx``/``.xml``/``.tflite``.
        port: TCP port to listen on.
        host: ``127.0.0.1`` (this machine only), or ``0.0.0.0`` / ``::`` for every interface.
        top_k: Classes (with calibrated probabilities) per answer.
        max_batch_size: Most concurrent requests run in one forward pass.
        batch_timeout: Seconds a request waits for others to fill its batch.
        workers_per_device: Model worker processes per device.
        accelerator: Where the model runs.
        max_upload_mb: Largest request body accepted (413 above).
        max_megapixels: Largest image accepted, in millions of pixels (413 above; also stops decompression bombs).
        timeout: Seconds within which every request is answered: 504 after that (a busy server, or a model worker
            that died holding the request; LitServe starts a new worker, ``/health`` answers 503 until it is ready).
    """
    if not Path(ckpt_path).is_file():
        raise UserError(f"model {ckpt_path} does not exist: pass a .ckpt or an exported .onnx/.xml/.tflite with --ckpt_path")
    try:
        from lit_convnext.inference.server import build_server
    except ImportError as err:
        raise UserError(f'serving needs {err.name}: pip install "lit-convnext[serve]"') from err
    from lit_convnext.inference.predictor import load_predictor

    # Loaded here first so a bad model fails with one line, not inside a worker process.
    decode_size = load_predictor(ckpt_path).decode_size
    server = build_server(Path(ckpt_path), top_k=top_k, max_batch_size=max_batch_size, batch_timeout=batch_timeout,
                          workers_per_device=workers_per_device, accelerator=accelerator,
                          max_bytes=int(max_upload_mb * 1e6), max_pixels=int(max_megapixels * 1e6), timeout=timeout,
                          decode_size=decode_size)
    server.run(host=host, port=port, generate_client_file=False)
