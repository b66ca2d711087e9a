"""Settings derived from the teacher before synthesis: each BN layer's loss on noise (the unit of the normalized
BN term) and what the start-up probe decides (flips, easy-positive reach, triplet margin; dfgen.calibration).
Recorded in config.json, so a resume or another rank reuses them instead of probing again."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from dfgen.calibration import apply_probe, describe_probe, figures_from_record, needs_probe, run_probe
from dfgen.config import config_fingerprint, format_schedule
from dfgen.inversion import TeacherProbe, bn_noise_levels
from dfgen.runplan import RunPlan, engine_settings


def derive_settings(run: RunPlan, recorded: dict[str, Any] | None = None, log: bool = True) -> RunPlan:
    """Fill in what is derived from the teacher (flips, reach, margin) with the probe (dfgen.calibration). A probe
    `recorded` in config.json for the same requested content is reused, not run again."""
    key = config_fingerprint(run.requested_content())
    if run.config.effective_losses.form == "normalized":
        run.noise_levels = teacher_noise_levels(run)
    figures, probed = None, False
    if needs_probe(run.config.flip, run.config.effective_losses):
        if recorded and recorded.get("key") == key:
            figures = figures_from_record(recorded.get("probe"))
        if figures is None:
            figures, probed = run_probe(run.teacher.model, run.teacher.mean, run.teacher.std,
                                        engine_settings(run, run.config.effective_losses, flip=False), run.plan,
                                        run.device, run.competitor.model if run.competitor else None), True
    run.flip, run.weights = apply_probe(run.config.flip, run.config.effective_losses, figures)
    run.probe = figures
    if probed and log:
        print(run.log_prefix + describe_probe(figures, run.flip, run.weights), file=sys.stderr, flush=True)
    return run


def teacher_noise_levels(run: RunPlan) -> list[float]:
    """Each BN layer's loss on noise at the teacher's size: the units of the normalized BN term."""
    with TeacherProbe(run.teacher.model.to(run.device).eval()) as probe:
        return bn_noise_levels(probe, run.teacher.in_chans, run.teacher.resolution, run.device)


def derived_record(run: RunPlan) -> dict[str, Any]:
    """config.json's "derived" entry: what was decided from the teacher, and from which request."""
    return {
        "key": config_fingerprint(run.requested_content()),
        "schedule": {"requested": format_schedule(run.config.schedule) if run.config.schedule else None,
                     "value": format_schedule(run.schedule)},
        "multires": run.multires,
        "accepted_resolutions": {str(k): v or "ok" for k, v in sorted(run.accepted.items())},
        "flip": {"requested": run.config.flip, "value": run.flip},
        "ep_reach": {"requested": run.config.losses.ep_reach, "value": run.weights.ep_reach},
        "margin": {"requested": run.config.losses.margin, "value": run.weights.margin},
        "probe": dataclasses.asdict(run.probe) if run.probe is not None else None,
        "bn_noise_levels": run.noise_levels,
    }
