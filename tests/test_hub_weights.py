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
from tests.helpers import make_folder
from safetensors.torch import save_file

REPO_ID = "timm/convnext_atto.d2_in1k"


@pytest.fixture
def hub_cache(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A Hugging Face cache holding 1000-class convnext_atto weights, laid out as huggingface_hub writes it."""
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in timm.create_model("convnext_atto", num_classes=1000).state_dict().items()}
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{REPO_ID.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file(state, str(snapshot / "model.safetensors"))
    return cache, state


def run_python(code: str, cache: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "hf_home")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_hub_weights_load_offline_and_a_new_class_count_resets_only_the_head(hub_cache, tmp_path: Path) -> None:
    cache, state = hub_cache
    torch.save(state, tmp_path / "expected.pt")
    result = run_python(
        """
        import torch
        from lit_convnext.backbone import build_convnext
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


def test_hub_weights_missing_offline_is_a_one_line_error(tmp_path: Path) -> None:
    root = tmp_path / "images"
    make_folder(root / "train", 2)
    make_folder(root / "val", 1)
    empty_cache = tmp_path / "empty_hub"
    empty_cache.mkdir()
    result = run_python(
        f"""
        from lit_convnext.cli import main
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
