"""The command line's one-line messages: option errors in the user's words, the out-of-memory advice, and the
printer that ends a command with one error line."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

from lit_convnext.errors import UserError


def fail(message: str) -> NoReturn:
    """Print ``message`` as the one error line and exit with status 2."""
    # Errors raised inside DataLoader workers arrive wrapped with the worker's traceback: keep our line.
    if "Original Traceback" in message:
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    print(f"lit-convnext: error: {message}", file=sys.stderr)
    raise SystemExit(2)


_BOUNDS = {"Gt": ">", "Ge": ">=", "Lt": "<", "Le": "<=", "MultipleOf": "a multiple of"}

# jsonargparse says which option failed only in its message's words (its exceptions carry no key), pinned in
# pyproject.toml and checked by tests/test_private_api.py: 'Parser key "model.lr":', and for a Union or Literal
# option the accepted types and the value given.
_JSONARGPARSE_KEY = re.compile(r'Parser key "([^"]+)"')
_JSONARGPARSE_SUBTYPES = re.compile(r"Subtypes: \[(.*)\]\n")
_JSONARGPARSE_EXPECTED = re.compile(r"Expected a (.+?)\. Got value: (.+)")
_JSONARGPARSE_VALUE = re.compile(r"(?:Given|Got) value: (.+)")

#: pydantic's error types (a documented, stable list) in the words of the one-line message; ``{}`` is the bound.
_PYDANTIC_REASONS = {
    "greater_than": ("gt", "greater than {}"),
    "greater_than_equal": ("ge", "greater than or equal to {}"),
    "less_than": ("lt", "less than {}"),
    "less_than_equal": ("le", "less than or equal to {}"),
    "multiple_of": ("multiple_of", "a multiple of {}"),
    "int_parsing": ("", "an integer"),
    "int_from_float": ("", "an integer"),
    "float_parsing": ("", "a number"),
    "bool_parsing": ("", "true or false"),
}


def option_error(message: str, error: BaseException | None = None) -> str:
    """``--model.lr 0: must be greater than 0`` from jsonargparse's multi-line ``message`` and the exceptions behind
    it (``error``: pydantic's ``ValidationError`` says what was wrong and with which value)."""
    key = _JSONARGPARSE_KEY.search(message)
    if key is None:
        return " ".join(line.strip() for line in message.splitlines() if line.strip())
    option = f"--{key.group(1)}"
    causes = list(_causes(error))
    nested = next((str(e) for e in causes if isinstance(e, UserError) and str(e).startswith("--")), None)
    if nested is not None:  # a nested parser's own line, e.g. a callback's init argument inside --trainer.callbacks
        return f"{option}.{nested[2:]}"
    invalid = _validation_error(causes)
    given = _JSONARGPARSE_VALUE.search(message)
    value = str(invalid["input"]) if invalid else given.group(1).strip() if given else ""
    shown = f" {value}" if value else ""
    subtypes = _JSONARGPARSE_SUBTYPES.search(message)
    if subtypes:  # an Optional or Union option: say every accepted form
        return f"{option}{shown}: must be " + ", or ".join(_describe(t) for t in _split_top(subtypes.group(1)))
    expected = _JSONARGPARSE_EXPECTED.search(message)
    if expected:
        return f"{option} {expected.group(2).strip()}: must be {_describe(expected.group(1))}"
    if invalid:
        return f"{option}{shown}: must be {_reason(invalid)}"
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def _causes(error: BaseException | None) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from, outermost first."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _validation_error(causes: list[BaseException]) -> dict[str, Any] | None:
    """The first error of the first pydantic ``ValidationError`` among ``causes`` (type, input, ctx)."""
    try:
        from pydantic import ValidationError
    except ImportError:  # pydantic validates the ranges; without it there is none to read
        return None
    found = next((e for e in causes if isinstance(e, ValidationError)), None)
    errors = found.errors(include_url=False) if found is not None else []
    return errors[0] if errors else None


def _reason(invalid: dict[str, Any]) -> str:
    """What the value must be, from a pydantic error's type and context (its message as a fallback)."""
    bound, words = _PYDANTIC_REASONS.get(invalid.get("type", ""), ("", ""))
    if words:
        return words.format(_number((invalid.get("ctx") or {}).get(bound))) if bound else words
    return str(invalid.get("msg", "valid")).removeprefix("Input should be ")


def _number(value: Any) -> str:
    """``1`` for 1.0, ``0.001`` for 1e-3: a bound as a user would write it."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _describe(annotation: str) -> str:
    """Words for one type as jsonargparse prints it: ``Annotated[float, Gt(gt=0)]`` -> ``a number > 0``."""
    annotation = annotation.replace("typing.", "").strip()
    if "NoneType" in annotation:
        return "null"
    if annotation.startswith("Literal["):
        return "one of " + ", ".join(v.strip(" '") for v in _split_top(annotation[8:-1]))
    if annotation.startswith("dict["):
        key_type, value_type = _split_top(annotation[5:-1])
        return f"a mapping name -> {_describe(value_type)}"
    bounds = re.findall(r"\b(Gt|Ge|Lt|Le|MultipleOf)\(\w+=([^)]+)\)", annotation)
    kind = "an integer" if "int" in annotation.split(",")[0] else "a number"
    if bounds:
        return f"{kind} " + " and ".join(f"{_BOUNDS[name]} {bound}" for name, bound in bounds)
    return annotation.removeprefix("<class '").removesuffix("'>")


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[(" and 1 or 0
        depth -= char in "])" and 1 or 0
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [*parts, current.strip()] if current.strip() else parts


def out_of_memory_message(subcommand: str, batch_size: int, accumulation: int) -> str:
    """Advice for a CUDA OOM at ``batch_size``: halve it, and for ``fit`` keep the effective batch by accumulating."""
    smaller = max(1, batch_size // 2)
    if subcommand != "fit":
        return f"CUDA ran out of memory at --data.batch_size {batch_size}: try --data.batch_size {smaller}"
    if batch_size == 1:
        return ("CUDA ran out of memory at --data.batch_size 1: use a smaller --model.model_name or "
                "--model.image_size, or --trainer.precision bf16-mixed")
    return (
        f"CUDA ran out of memory at --data.batch_size {batch_size}: halve it and double the gradient accumulation "
        f"to keep the same effective batch and learning rate, e.g. --data.batch_size {smaller} "
        f"--trainer.accumulate_grad_batches {accumulation * batch_size // smaller}"
        " (or use --trainer.precision bf16-mixed)"
    )
