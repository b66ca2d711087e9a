"""User-facing errors: the CLI prints their message on one line and exits non-zero, no traceback."""


class DfgenError(Exception):
    """A problem with the user's input or environment, with a message that says what to do."""


class SynthesisError(DfgenError):
    """The inversion itself failed (e.g. a batch whose loss stayed non-finite after a retry)."""
