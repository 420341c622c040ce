"""The command line's one-line messages: option errors in the user's words, the out-of-memory advice, and the
printer that ends a command with one error line."""

from __future__ import annotations

import re
import sys
from typing import NoReturn


def fail(message: str) -> NoReturn:
    """Print ``message`` as the one error line and exit with status 2."""
    # Errors raised inside DataLoader workers arrive wrapped with the worker's traceback: keep our line.
    if "Original Traceback" in message:
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    print(f"lit-convnext: error: {message}", file=sys.stderr)
    raise SystemExit(2)


_BOUNDS = {"Gt": ">", "Ge": ">=", "Lt": "<", "Le": "<=", "MultipleOf": "a multiple of"}


def option_error(message: str) -> str:
    """``--model.lr 0: must be > 0`` from jsonargparse's and pydantic's multi-line message."""
    key = re.search(r'Parser key "([^"]+)"', message)
    nested = re.search(r"--([\w.]+) (\S+): must be (.+?)(?= - |\n|$)", message)  # a nested parser's own line
    if key and nested:  # e.g. a callback's init argument inside --trainer.callbacks
        return f"--{key.group(1)}.{nested.group(1)} {nested.group(2)}: must be {nested.group(3).strip()}"
    value = re.search(r"input_value=('[^']*'|[^,\]]+)[,\]]", message) or re.search(r"Given value: (.+)", message)
    shown = f" {value.group(1).strip(chr(39))}" if value else ""
    subtypes = re.search(r"Subtypes: \[(.*)\]\n", message)
    reason = re.search(r"Input should be ([^\[\n]+)", message)
    if key and subtypes:  # an Optional or Union option: say every accepted form
        return f"--{key.group(1)}{shown}: must be " + ", or ".join(_describe(t) for t in _split_top(subtypes.group(1)))
    expected = re.search(r"Expected a (.+?)\. Got value: (.+)", message)
    if key and expected:
        return f"--{key.group(1)} {expected.group(2).strip()}: must be {_describe(expected.group(1))}"
    if key and reason:
        return f"--{key.group(1)}{shown}: must be {reason.group(1).strip()}"
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


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
