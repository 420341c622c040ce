"""``lit-convnext optimize`` and ``fit --data.root`` from its litdata dataset: a local directory and an S3-compatible
server (moto) on 127.0.0.1; the one-line errors of bad input."""

from __future__ import annotations

import csv
import datetime
import ipaddress
import json
import os
import re
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lit_convnext.data.datamodule import ImageFolderDataModule
from lit_convnext.data.folders import read_folder_splits
from lit_convnext.errors import UserError
from lit_convnext.data.streaming import METADATA_NAME, OptimizedDataset, is_optimized, remote_url, write_optimized
from tests.helpers import REPO, fit_args, lightning_info_lines, make_folder, one_line_error

pytest.importorskip("litdata", reason="the `stream` extra (in the `test` extra): pip install 'lit-convnext[stream]'")


def _best_accuracy(run: Path) -> float:
    """val/acc1 of the best checkpoint, from its file name (``best-epoch001-acc0.9167.ckpt``)."""
    name = next((run / "checkpoints").glob("best-*.ckpt")).name
    return float(re.search(r"-acc([0-9.]+)\.ckpt$", name).group(1))


def _val_paths(run: Path) -> list[str]:
    with (run / "val_predictions.csv").open(newline="") as handle:
        return sorted(row["path"] for row in csv.DictReader(handle))


def test_roots_that_name_an_optimized_dataset(tmp_path: Path) -> None:
    assert remote_url(Path("s3://bucket/prefix")) == "s3://bucket/prefix"  # a Path keeps one slash of s3://
    assert remote_url("s3://bucket/prefix/") == "s3://bucket/prefix"
    assert remote_url(tmp_path) is None
    assert not is_optimized(tmp_path) and is_optimized("s3://bucket/x")
    (tmp_path / METADATA_NAME).write_text("{}")
    assert is_optimized(tmp_path)


@pytest.mark.slow  # litdata's writer processes: ~3 s
def test_both_storages_keep_pixels_paths_and_split_order(tmp_path: Path) -> None:
    """``encoded`` keeps the PNG's bytes, ``decoded`` its pixels (no reduction below ``short_side``); the evaluation
    split reads back in the metadata's order, each image with its own path and class."""
    root = make_folder(tmp_path / "data", 5)
    splits = read_folder_splits(root, 0.4, 0)
    to_array = lambda image: torch.from_numpy(np.asarray(image).copy())  # noqa: E731
    for storage in ("encoded", "decoded"):
        out = tmp_path / storage
        write_optimized(splits, "multiclass", str(out), storage, 256, 1, {})
        val = OptimizedDataset.open(out).eval_dataset("val", to_array)
        assert val.paths == [s.path for s in splits.val]
        for index in range(len(val)):
            pixels, target = val[index]
            original = np.asarray(Image.open(val.paths[index]).convert("RGB"))
            assert np.array_equal(pixels.numpy(), original)
            assert splits.class_names[target] == val.paths[index].parent.name


def test_pixels_stored_smaller_than_the_model_takes_are_refused() -> None:
    stored = OptimizedDataset("optimized", {"storage": "decoded", "short_side": 64})
    stored.check_resolution(64)
    with pytest.raises(UserError, match="reduced to a short side of 64 px, but this model's transforms take 73 px"):
        stored.check_resolution(73)
    OptimizedDataset("optimized", {"storage": "encoded", "short_side": None}).check_resolution(512)


def test_optimize_refuses_an_out_that_holds_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_folder(tmp_path / "data", 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "something").write_text("x")
    line = one_line_error(capsys, ["optimize", str(root), str(out)])
    assert f"{out} already exists and is not empty" in line


def test_optimize_without_litdata_says_which_extra(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "litdata" else find_spec(name, *a))
    line = one_line_error(capsys, ["optimize", str(make_folder(tmp_path / "data", 2)), str(tmp_path / "out")])
    assert "needs litdata" in line and "pip install 'lit-convnext[stream]'" in line


def test_a_dataset_of_another_format_version(tmp_path: Path) -> None:
    root = tmp_path / "optimized"
    root.mkdir()
    (root / METADATA_NAME).write_text(json.dumps({"format_version": 0}))
    with pytest.raises(UserError, match="format version 0, but this lit-convnext reads version 1: write it again"):
        ImageFolderDataModule(root=root).class_names  # what the CLI reads first, to link the classes to the model


def test_an_s3_root_without_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role lookup on this machine
    with pytest.raises(UserError, match="s3://bucket/digits is on S3 but no AWS credentials were found: set AWS_"):
        ImageFolderDataModule(root=Path("s3://bucket/digits")).class_names


@pytest.mark.slow  # two fits and litdata's writer processes: ~12 s
def test_a_streaming_run_trains_as_well_as_the_folder_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lit_convnext.cli.entry import main

    root = make_folder(tmp_path / "data", 16)
    with pytest.raises(SystemExit) as done:
        main(["optimize", str(root), str(tmp_path / "optimized"), "--workers", "1"])
    assert done.value.code == 0 and "Wrote" in capsys.readouterr().out
    main(fit_args(root, "--trainer.max_epochs", "2"))
    main(fit_args(tmp_path / "optimized", "--trainer.max_epochs", "2"))
    folder_run, stream_run = (Path("runs/convnext") / f"version_{i}" for i in (0, 1))
    assert _val_paths(stream_run) == _val_paths(folder_run)  # the same split, the original file names
    folder_acc, stream_acc = _best_accuracy(folder_run), _best_accuracy(stream_run)
    assert stream_acc >= 0.8 and abs(stream_acc - folder_acc) <= 0.2, (folder_acc, stream_acc)


@pytest.mark.slow  # two fits: ~7 s
def test_a_stream_resumes_inside_an_epoch_where_it_stopped(tmp_path: Path) -> None:
    """The checkpoint saved mid-epoch holds litdata's loader position; the resumed run finishes that epoch (3 more
    steps of 6) from there, without the folder loader's 'new shuffle' message."""
    from lit_convnext.cli.entry import main

    root = make_folder(tmp_path / "data", 20)  # 48 training images: 6 batches of 8
    write_optimized(read_folder_splits(root), "multiclass", str(tmp_path / "optimized"), "encoded", 256, 1, {})
    main(fit_args(tmp_path / "optimized", "--trainer.max_steps", "3", "--trainer.val_check_interval", "3"))
    last = Path("runs/convnext/version_0/checkpoints/last.ckpt")
    state = torch.load(last, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert state["num_samples_yielded"] == 24
    with lightning_info_lines() as lines:
        main(fit_args(tmp_path / "optimized", "--ckpt_path", "last"))
    assert not any("new shuffle" in line for line in lines)
    assert torch.load(last, weights_only=True)["global_step"] == 6


# ----------------------------------------------------------------------------------- an S3-compatible server
def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a certificate for 127.0.0.1 signed by it: litdata downloads chunks with obstore, which
    refuses plain-http endpoints, so the local server speaks TLS and the clients trust this CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject: str, issuer: str, public_key, signing_key, ca: bool):
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(certificate("test CA", "test CA", ca_key.public_key(), ca_key, True)
                         .public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(certificate("127.0.0.1", "test CA", key.public_key(), ca_key, False)
                         .public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest.fixture
def s3_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """moto's S3 on 127.0.0.1 (TLS, a free port) with a bucket ``data``; yields the environment a client process
    needs (endpoint, test credentials, the CA), which the tests give their subprocesses only."""
    pytest.importorskip("moto", reason="moto[server] is in the `test` extra")
    import boto3
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    ca, cert, key = _certificates(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = make_server("127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded=True,
                         ssl_context=context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {"AWS_ENDPOINT_URL": f"https://127.0.0.1:{server.server_port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CA_BUNDLE": str(ca),  # boto3
           "SSL_CERT_FILE": str(ca)}  # obstore (litdata's chunk transfers)
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1", verify=str(ca)).create_bucket(Bucket="data")
    try:
        yield env
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.mark.slow  # a server and two CLI processes: ~40 s
def test_optimize_to_and_train_from_an_s3_compatible_server(tmp_path: Path, s3_server: dict[str, str]) -> None:
    root = make_folder(tmp_path / "data", 12)
    env = {**os.environ, **s3_server, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lit_convnext", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=400)

    written = cli("optimize", str(root), "s3://data/colours", "--workers", "1")
    assert written.returncode == 0, written.stderr[-3000:]
    fit = cli(*fit_args(Path("s3://data/colours"), "--trainer.max_epochs", "2", "--data.stream_cache_dir",
                        str(tmp_path / "chunks"), "--trainer.default_root_dir", str(tmp_path / "runs")))
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert any((tmp_path / "chunks" / "train").rglob("*.bin"))  # chunks cached where asked
    run = tmp_path / "runs" / "convnext" / "version_0"
    assert _best_accuracy(run) >= 0.8
    expected = sorted(str(s.path) for s in read_folder_splits(root).val)
    assert _val_paths(run) == expected


@pytest.mark.slow  # two DDP processes on CPU: ~30 s
def test_under_ddp_each_rank_streams_its_own_share(tmp_path: Path) -> None:
    """24 training images, 2 ranks, 4 per batch: each rank reads its own 12 (3 steps an epoch, not 6), and the
    validation images are each measured once, gathered from both ranks."""
    root = tmp_path / "images"
    make_folder(root / "train", 8)
    make_folder(root / "val", 3, seed=500)
    write_optimized(read_folder_splits(root), "multiclass", str(tmp_path / "optimized"), "encoded", 256, 1, {})
    args = fit_args(tmp_path / "optimized", "--data.batch_size", "4", "--trainer.strategy", "ddp",
                    "--trainer.devices", "2")
    done = subprocess.run([sys.executable, "-m", "lit_convnext", *args], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = Path("runs/convnext/version_0")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert _val_paths(run) == sorted(str(s.path) for s in read_folder_splits(root).val)
