"""User-facing errors of `distill`: the CLI prints the message on one line and exits 1, no traceback."""

from dfgen.errors import DfgenError


class DistillError(DfgenError):
    """A problem with the user's input (data, model name, options, checkpoint) with a message that says what to
    do. Subclasses `DfgenError`, so one `except` catches both tools' errors."""
