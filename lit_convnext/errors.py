"""The one exception type for mistakes a user can fix (bad paths, bad options, bad files).

The CLI turns a ``UserError`` into a one-line message and exit status 2 instead of a traceback,
so every message must say what was wrong, the offending path or value, and what to do. The app's own
warnings print as one line of the same kind (:func:`lit_convnext.terminal.show_warnings_as_one_line`).
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def out_of_memory_message(subcommand: str, batch_size: int, accumulation: int) -> str:
    """Advice for a CUDA OOM at ``batch_size``: halve it, and for ``fit`` keep the effective batch by accumulating."""
    smaller = max(1, batch_size // 2)
    if subcommand != "fit":
        return f"CUDA ran out of memory at --data.batch_size {batch_size}: try --data.batch_size {smaller}"
    if batch_size == 1:
        return ("CUDA ran out of memory at --data.batch_size 1: use a smaller --model.model_name or "
                "--data.image_size, or --trainer.precision bf16-mixed")
    return (
        f"CUDA ran out of memory at --data.batch_size {batch_size}: halve it and double the gradient accumulation "
        f"to keep the same effective batch and learning rate, e.g. --data.batch_size {smaller} "
        f"--trainer.accumulate_grad_batches {accumulation * batch_size // smaller}"
        " (or use --trainer.precision bf16-mixed)"
    )
