"""Early stop of a pixel-mode stage (`--early-stop TOL`): a batch leaves a stage once its loss has settled, saving
the teacher passes of the stage's remaining iterations.

The decision reads only the batch's own total loss, averaged over consecutive windows of `window` iterations from
the stage's first: once a window's mean improves on the previous window's by less than `tolerance` (relative), the
stage ends (during the warm-up the loss falls fast, so in practice no stage ends there). So a batch's images stay a
function of its seed and the configuration, whatever the number of processes.
The loss is summed on the device and read once per window (one host sync per window, as the loop's logging)."""

from __future__ import annotations

from torch import Tensor

DEFAULT_WINDOW = 25  # iterations per window of --early-stop-window


class StageStop:
    """Follows one stage of one batch; `settled(it, total)` after each iteration says whether to stop there."""

    def __init__(self, tolerance: float, window: int) -> None:
        self.tolerance, self.window = tolerance, window
        self._sum: Tensor | None = None
        self._previous: float | None = None

    def settled(self, iteration: int, total: Tensor) -> bool:
        value = total.detach().float()
        self._sum = value if self._sum is None else self._sum + value
        if (iteration + 1) % self.window:
            return False
        mean = float(self._sum) / self.window  # the host sync: once per window
        self._sum = None
        previous, self._previous = self._previous, mean
        return previous is not None and previous - mean < self.tolerance * abs(previous)


def check_early_stop(tolerance: float | None, window: int, mode: str) -> tuple[float | None, int]:
    """The values as numbers, or one line for values that cannot work: a tolerance outside (0, 1), a window below
    2, another mode."""
    from dfgen.config import check_number
    from dfgen.errors import DfgenError

    window = check_number(window, "--early-stop-window", True, 2, None)
    if tolerance is None:
        return None, window
    tolerance = check_number(tolerance, "--early-stop", False, 0, 1, True)
    if tolerance >= 1:
        raise DfgenError(f"--early-stop must be a relative improvement below 1 (e.g. 0.01), got {tolerance}")
    if mode == "generator":
        raise DfgenError("--early-stop stops pixel-mode stages; --mode generator takes a fixed --gen-steps")
    return tolerance, window
