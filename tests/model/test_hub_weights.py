"""``--model.pretrained true`` through timm's real Hugging Face hub code, offline, on a cache made here."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from tests.helpers import REPO, make_folder
from safetensors.torch import save_file

REPO_ID = "timm/convnext_atto.d2_in1k"


def write_hub_repo(cache: Path, repo_id: str, state: dict[str, torch.Tensor]) -> None:
    """``state`` as ``model.safetensors`` of ``repo_id`` in ``cache``, laid out as huggingface_hub writes it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))


@pytest.fixture
def hub_cache(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A Hugging Face cache holding 1000-class convnext_atto weights."""
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in timm.create_model("convnext_atto", num_classes=1000).state_dict().items()}
    cache = tmp_path / "hub"
    write_hub_repo(cache, REPO_ID, state)
    return cache, state


def run_python(code: str, cache: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "hf_home"),
           "PYTHONPATH": str(REPO)}  # this checkout's lit_convnext, whatever is installed
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_hub_weights_load_offline_and_a_new_class_count_resets_only_the_head(hub_cache, tmp_path: Path) -> None:
    cache, state = hub_cache
    torch.save(state, tmp_path / "expected.pt")
    result = run_python(
        """
        import torch
        from lit_convnext.model.backbone import build_convnext
        net, _ = build_convnext("convnext_atto.d2_in1k", num_classes=7, pretrained=True, drop_path_rate=0.1,
                                layer_scale_init_value=None, head_init_scale=0.001)
        expected = torch.load("expected.pt", weights_only=True)
        got = net.state_dict()
        backbone = [k for k in expected if not k.startswith("head.fc.")]
        assert all(torch.equal(got[k], expected[k]) for k in backbone), "backbone changed"
        assert got["head.fc.weight"].shape == (7, 320)
        assert got["head.fc.weight"].abs().max() < 0.01  # fresh head, scaled by head_init_scale
        print("OK", len(backbone))
        """,
        cache,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "OK" in result.stdout


@pytest.mark.slow
def test_hub_weights_missing_offline_is_a_one_line_error(tmp_path: Path) -> None:
    root = tmp_path / "images"
    make_folder(root / "train", 2)
    make_folder(root / "val", 1)
    empty_cache = tmp_path / "empty_hub"
    empty_cache.mkdir()
    result = run_python(
        f"""
        from lit_convnext.cli.entry import main
        main(["fit", "--model.model_name", "convnext_atto.d2_in1k", "--model.pretrained", "true",
              "--data.root", {str(root)!r}, "--data.num_workers", "0", "--trainer.max_steps", "1"])
        """,
        empty_cache,
        tmp_path,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lit-convnext: error:") and "convnext_atto.d2_in1k" in last and "--model.pretrained PATH" in last
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_hub_weights_that_lack_tensors_are_refused_like_a_file(tmp_path: Path) -> None:
    """convnextv2 weights have no layer-scale gammas: asking for them must not load the rest silently."""
    cache = tmp_path / "hub"
    write_hub_repo(cache, "timm/convnextv2_atto.fcmae_ft_in1k", timm.create_model("convnextv2_atto").state_dict())
    result = run_python(
        """
        from lit_convnext.model.backbone import build_convnext
        from lit_convnext.errors import UserError
        try:
            build_convnext("convnextv2_atto.fcmae_ft_in1k", num_classes=3, pretrained=True, drop_path_rate=0.0,
                           layer_scale_init_value=1e-6, head_init_scale=1.0)
        except UserError as err:
            print("REFUSED", err)
        net, report = build_convnext("convnextv2_atto.fcmae_ft_in1k", num_classes=3, pretrained=True,
                                     drop_path_rate=0.0, layer_scale_init_value=None, head_init_scale=1.0)
        print("REPORT", report["head"], "hub" in report["source"])
        """,
        cache,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    refused = next(line for line in result.stdout.splitlines() if line.startswith("REFUSED"))
    assert "gamma" in refused and "allow_missing" in refused
    assert "REPORT" in result.stdout and "True" in result.stdout.split("REPORT")[1]


def test_cached_hub_weights_are_used_without_asking_the_hub(hub_cache, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network round trip (and no retries on a machine without one) when the weights are in the cache."""
    import huggingface_hub

    from lit_convnext.model.backbone import hub_weights_file

    cache, _ = hub_cache
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("the hub was asked"))
    path = hub_weights_file("convnext_atto.d2_in1k")
    assert path.name == "model.safetensors" and path.is_relative_to(cache)


def test_a_download_says_first_how_to_skip_it_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """huggingface_hub retries an unreachable hub for about a minute: the line before it says what is fetched and
    how to fail at once; the failure is one line of the app's."""
    import logging

    import huggingface_hub

    from lit_convnext.errors import UserError
    from lit_convnext.model.backbone import hub_weights_file

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def unreachable(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with caplog.at_level(logging.INFO), pytest.raises(UserError, match="not in the local cache"):
        hub_weights_file("convnext_atto.d2_in1k")
    said = [r.getMessage() for r in caplog.records if "Downloading the pretrained weights" in r.getMessage()]
    assert len(said) == 1 and "convnext_atto.d2_in1k" in said[0] and "HF_HUB_OFFLINE=1" in said[0]
