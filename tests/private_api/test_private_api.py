"""Canary: every private member and undocumented behaviour of another library that the package relies on is still
there, and every library whose internals or message wording it relies on has an upper bound in pyproject.toml.

A failure here names what an upgrade changed; fix ``lit_convnext/private_api`` (or ``cli/messages.py`` for
jsonargparse's wording), then move the bound.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
import torch
from annotated_types import Ge, Gt
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.utilities import rank_zero_info

from lit_convnext.cli.messages import option_error
from lit_convnext.private_api import (
    LIGHTNING_INFO_LOGGER,
    PRIVATE_MEMBERS,
    PrivateMember,
    pillow_accepts,
    timm_official_filter,
    uncompiled,
)

from tests.helpers import REPO  # noqa: E402

#: Instances whose attributes are private members (set in ``__init__``, so only an instance has them).
INSTANCES: dict[str, Any] = {
    "lightning.pytorch.cli.LightningArgumentParser": lambda: LightningArgumentParser(exit_on_error=False),
    "lightning.pytorch.callbacks.ModelCheckpoint": ModelCheckpoint,
    "lightning.pytorch.callbacks.WeightAveraging": WeightAveraging,
    "lightning.pytorch.loops.fit_loop._FitLoop": lambda: _trainer().fit_loop,
    "torch._dynamo.eval_frame.OptimizedModule": lambda: torch.compile(torch.nn.Linear(1, 1)),  # compiles when called
    # A tracking server's URL: the logger is built without a store on disk and without connecting.
    "lightning.pytorch.loggers.MLFlowLogger": lambda: _mlflow_logger("http://127.0.0.1:9"),
}


def _trainer() -> Any:
    from lightning.pytorch import Trainer

    return Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def _mlflow_logger(tracking_uri: str) -> Any:
    from lightning.pytorch.loggers import MLFlowLogger

    return MLFlowLogger(tracking_uri=tracking_uri)

#: Libraries whose private members or message wording the package relies on: each needs an upper bound.
PINNED = ("lightning", "timm", "torch", "jsonargparse", "pydantic", "pillow", "cleanlab")


def _owner(path: str) -> Any:
    """The module or class named by ``path`` (``package.module.Class``)."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            owner = getattr(owner, name)
        return owner
    raise ImportError(path)


@pytest.mark.parametrize("member", PRIVATE_MEMBERS, ids=lambda m: f"{m.owner}.{m.name}")
def test_each_private_member_still_exists_with_the_same_parameters(member: PrivateMember) -> None:
    owner = _owner(member.owner)
    if member.parameters is None:  # an attribute: of the module or class, else of an instance
        found = hasattr(owner, member.name) or (member.owner in INSTANCES
                                                and hasattr(INSTANCES[member.owner](), member.name))
        assert found, f"{member.owner} has no {member.name} any more (used by private_api.{member.used_by})"
        return
    function = getattr(owner, member.name, None)
    assert function is not None, f"{member.owner} has no {member.name} any more (used by private_api.{member.used_by})"
    parameters = tuple(inspect.signature(function).parameters)
    assert parameters == member.parameters, (f"{member.owner}.{member.name} now takes {parameters}, not "
                                             f"{member.parameters} (used by private_api.{member.used_by})")


def test_the_members_are_used_only_from_private_api() -> None:
    """No module outside lit_convnext/private_api reads, calls or overrides a listed member itself."""
    patterns = [rf"\.{re.escape(m.name)}\b|def {re.escape(m.name)}\(" for m in PRIVATE_MEMBERS if m.name.startswith("_")]
    patterns += [r"\bImage\.OPEN\b", r"lightning\.pytorch\.overrides\b"]
    package = REPO / "lit_convnext"
    offenders = [f"{path.relative_to(REPO)}: {match.group(0)}"
                 for path in package.rglob("*.py") if not path.is_relative_to(package / "private_api")
                 for pattern in patterns for match in re.finditer(pattern, path.read_text(encoding="utf-8"))]
    assert not offenders, offenders


def test_rank_zero_info_lines_go_to_the_logger_the_app_filters(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=LIGHTNING_INFO_LOGGER):
        rank_zero_info("canary line")
    assert [r.name for r in caplog.records if r.getMessage() == "canary line"] == [LIGHTNING_INFO_LOGGER]


def test_pillow_names_a_format_by_its_signature() -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
    assert pillow_accepts("PNG", png)
    assert not pillow_accepts("JPEG", png) and not pillow_accepts("NO_SUCH_FORMAT", png)


def test_timm_renames_official_keys_asking_the_model_only_for_shapes() -> None:
    fc1 = torch.zeros(8, 2)
    assert list(timm_official_filter("stages.0.0.pwconv1.weight", fc1, {"stages.0.blocks.0.mlp.fc1.weight": (8, 2)})
                ) == ["stages.0.blocks.0.mlp.fc1.weight"]
    as_conv = timm_official_filter("stages.0.0.pwconv1.weight", fc1, {"stages.0.blocks.0.mlp.fc1.weight": (8, 2, 1, 1)})
    assert as_conv["stages.0.blocks.0.mlp.fc1.weight"].shape == (8, 2, 1, 1)  # reshaped to the model's shape
    assert list(timm_official_filter("head.weight", torch.zeros(3, 8), {})) == ["head.fc.weight"]


def test_a_compiled_module_is_unwrapped_to_the_module_itself() -> None:
    module = torch.nn.Linear(1, 1)
    assert uncompiled(torch.compile(module)) is module and uncompiled(module) is module


def _parse_error(annotation: Any, value: str) -> str:
    """The one-line message for ``--x VALUE`` on an option of type ``annotation``, through jsonargparse."""
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_argument("--x", type=annotation)
    try:
        parser.parse_args(["--x", value])
    except Exception as err:  # jsonargparse's ArgumentError, raised from its TypeError and pydantic's error
        return option_error(str(err), err.__cause__ or err.__context__)
    raise AssertionError(f"{value} was accepted")


def test_jsonargparse_and_pydantic_still_say_which_option_and_value_failed() -> None:
    """The one-line option errors read jsonargparse's message (the key, the accepted types) and pydantic's errors."""
    assert _parse_error(Annotated[float, Gt(0)], "0") == "--x 0: must be greater than 0"
    assert _parse_error(Annotated[int, Ge(1)], "x") == "--x x: must be an integer"
    assert _parse_error(Annotated[float, Gt(0)] | None, "-1") == "--x -1: must be a number > 0, or null"
    assert _parse_error(Literal["shuffle", "balanced"], "random") == "--x random: must be one of shuffle, balanced"


def test_every_library_relied_on_has_an_upper_bound() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    dependencies = [*project["dependencies"], *(d for extra in project["optional-dependencies"].values() for d in extra)]
    for name in PINNED:
        requirement = next((d for d in dependencies if re.match(rf"{name}\b", d, re.IGNORECASE)), None)
        assert requirement is not None and "<" in requirement, f"pin an upper bound on {name}: {requirement}"
