"""The one exception type for mistakes a user can fix (bad paths, bad options, bad files).

The CLI turns a ``UserError`` into a one-line message and exit status 2 instead of a traceback,
so every message must say what was wrong, the offending path or value, and what to do. The app's own
warnings print as one line of the same kind (:func:`lit_convnext.cli.terminal.show_warnings_as_one_line`).
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""
