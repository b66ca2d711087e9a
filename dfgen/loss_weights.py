"""The inversion objective's weights: the paper's form and the normalized default, the
competition weight, and what of them enters a configuration's content."""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import Any

from dfgen.errors import DfgenError

AUTO = "auto"  # a value derived from the teacher at start-up (dfgen.probe): see docs/design.md
# The paper's objective: sums whose size depends on the teacher, the batch and the image size.
PAPER_WEIGHTS = {"tv_l2": 1e-4, "tv_l1": 0.0, "l2": 1e-5, "bn": 5e-2, "first_bn_multiplier": 10.0, "ep": 50.0,
                 "triplet": 0.5}
# The normalized objective (the default): BN term relative to its value on noise, priors per element. The priors'
# weights are the paper's times the square root of the elements they were tuned on (a batch of 128 RGB images at
# 224 px for TV, one such image for L2), so they weigh the same at the paper's setting and at any other.
NORMALIZED_WEIGHTS = {"tv_l2": round(1e-4 * math.sqrt(128 * 3 * 224 * 224), 3),
                      "tv_l1": 0.0, "l2": round(1e-5 * math.sqrt(3 * 224 * 224), 5), "bn": 100.0,
                      "first_bn_multiplier": 10.0, "ep": 50.0, "triplet": 0.5}
FORMS = {"normalized": NORMALIZED_WEIGHTS, "paper": PAPER_WEIGHTS}
COMPETITION = 10.0  # the competition weight with a competitor: the one value measured (docs/design.md)


@dataclass
class LossWeights:
    """DF-DearKD objective weights. `form` "paper" is the paper's objective with its weights;
    the default "normalized" form makes one set of weights mean the same for any teacher, batch and image size
    (docs/design.md gives the mapping). A weight left at None takes its form's default."""

    tv_l2: float | None = None
    tv_l1: float | None = None
    l2: float | None = None
    bn: float | None = None
    first_bn_multiplier: float | None = None
    ep: float | None = None
    triplet: float | None = None
    margin: float | str = 0.5  # "auto": a fraction of the teacher's own inter-class distance
    ep_reach: float | str | None = 0.3  # "auto": as margin; None: the unbounded -d(a, ep) form (docs/design.md)
    form: str = "normalized"
    # DeepInversion's competition (ADI) against SynthesisConfig.competitor; None: off without one, else COMPETITION
    competition: float | None = None

    def __post_init__(self) -> None:
        if self.competition is not None and self.competition < 0:
            raise DfgenError(f"--competition must be >= 0, got {self.competition}")
        if self.form not in FORMS:
            raise DfgenError(f"the loss form must be one of {', '.join(FORMS)}, got {self.form!r}")
        for name, default in FORMS[self.form].items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        self.ep_reach = _distance_or_auto(self.ep_reach, "--ep-reach", allow_none=True)
        self.margin = _distance_or_auto(self.margin, "--margin", allow_none=False)
        if self.ep_reach is not None and self.ep_reach != AUTO and self.ep_reach <= 0:
            raise DfgenError(f"--ep-reach must be in (0, 2] or auto (to turn the easy-positive term off use --ep 0), "
                             f"got {self.ep_reach}")
        if self.margin != AUTO and self.margin < 0:
            raise DfgenError(f"--margin must be >= 0 or auto, got {self.margin}")

    @classmethod
    def paper(cls, **changes: Any) -> LossWeights:
        """The paper's objective and weights (DF-DearKD, eq. 8)."""
        return cls(form="paper", **changes)


def _distance_or_auto(value: Any, what: str, allow_none: bool) -> float | str | None:
    """A distance between L2-normalised embeddings (at most 2), "auto", or (where allowed) None."""
    if value is None and allow_none:
        return None
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise DfgenError(f"{what} must be a number or auto, got {value!r}") from None
    if value > 2.0:  # distances between normalised embeddings are at most 2: any larger value acts as 2
        print(f"note: {what} {value:g} is above 2, the largest distance between normalised embeddings; using 2",
              file=sys.stderr)
        value = 2.0
    return value


def losses_content(weights: LossWeights) -> dict[str, Any]:
    """The weights as they enter a configuration's content; no competition entry without a competitor, so
    directories made before it existed keep their fingerprint."""
    data = dataclasses.asdict(weights)
    if data["competition"] is None:
        data.pop("competition")
    return data


def synthesis_losses(**weights: Any) -> LossWeights:
    """The loss weights of `dfgen synthesize`: LossWeights' defaults, except that the reach and the margin are
    derived from the teacher (auto) unless given."""
    return LossWeights(**{"ep_reach": AUTO, "margin": AUTO, **weights})
