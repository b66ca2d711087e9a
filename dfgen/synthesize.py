"""`dfgen.synthesize(config)`: the pipeline prepare -> check the folder -> probe -> claim -> invert -> write ->
finalize.

Work is divided by shard: rank r of W makes the shards k with k % W == r. A shard is a pure function
of (configuration, seed, k), so the dataset does not depend on W, on which rank made what, or on
interruptions; whoever finds every shard done writes index.json and dataset.json.

The steps live beside it: dfgen.runplan (prepare: teacher, batch layout, rank, device; decide: what the teacher
decides by the start-up probe, into a frozen RunPlan), dfgen.outdir (check, claim and finalize the output
directory); --dry-run's plan and estimates are dfgen.dry_run's."""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dfgen import amortized
from dfgen.atomic import set_process_rank
from dfgen.config import SynthesisConfig, build_config
from dfgen.cost import counting, record_startup
from dfgen.inversion import InversionEngine
from dfgen.outdir import (
    check_claim_before_probe,
    check_out_dir,
    claim_out_dir,
    claimed_mode,
    completion_note,
    finalize,
    recorded_derivation,
)
from dfgen.runplan import RunPlan, decide, engine_for, explain_out_of_memory, prepare
from dfgen.shards import Sample, encode_image, image_key, remove_temporaries, shard_done, write_shard
from dfgen.teachers import Teacher


def _shard_samples(run: RunPlan, engine: InversionEngine, shard: int, progress: tqdm | None) -> tuple:
    """Invert every batch of one shard; returns (samples, stats)."""
    plan = run.plan
    samples: list[Sample] = []
    totals, target_probs, agreements, retries = [], [], [], 0
    activity: dict[str, list[float]] = {"ep_active": [], "triplet_active": []}
    for batch in plan.shard_batches(shard):
        indices = plan.batch_range(batch)
        labels = torch.as_tensor(plan.labels(indices))
        seed = plan.batch_seed(batch)

        def on_log(stage: str, it: int, iters: int, terms: dict[str, float], batch=batch) -> None:
            if progress is not None:
                progress.set_postfix_str(f"batch {batch} {stage} it {it}/{iters} loss {terms['total']:.3g}")

        result = engine.invert(labels, seed, on_log)
        retries += result.lr_scale != 1.0
        losses = {k: round(v, 6) for k, v in result.losses.items()}
        totals.append(result.losses["total"])
        for key, values in activity.items():
            if key in result.losses:
                values.append(result.losses[key])
        for j, index in enumerate(indices):
            label = int(labels[j])
            prob = float(result.target_prob[j])
            predicted = int(result.predicted[j])
            target_probs.append(prob)
            agreements.append(predicted == label)
            meta = {"index": index, "label": label, "batch": batch, "seed": seed, "target_prob": round(prob, 6),
                    "predicted": predicted, "losses": losses}
            if result.soft_index is not None:  # the teacher's top-k logits on the written image
                meta["soft"] = {"index": result.soft_index[j].tolist(),
                                "logit": [round(float(v), 4) for v in result.soft_logit[j]]}
            if result.view_boxes is not None:  # and on each stored view (dfgen.soft_views)
                meta["soft_views"] = {"box": result.view_boxes[j].tolist(), "index": result.view_index[j].tolist(),
                                      "logit": [[round(float(v), 4) for v in row] for row in result.view_logit[j]]}
            image = encode_image(result.images[j].numpy(), run.config.format, run.config.quality)
            samples.append(Sample(key=image_key(index), image=image, label=label, meta=meta))
        if progress is not None:
            progress.update(len(indices))
    stats = {
        "first_index": plan.shard_range(shard).start,
        "last_index": plan.shard_range(shard).stop - 1,
        "loss": {
            "final_total_mean": float(np.mean(totals)),
            "target_prob_mean": float(np.mean(target_probs)),
            "agreement": float(np.mean(agreements)),
            "retried_batches": int(retries),
            # share of anchors on which each diversity term pushed or pulled, at each batch's last log
            **{key: float(np.mean(values)) for key, values in activity.items() if values},
        },
    }
    return samples, stats


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class SynthesisResult:
    out: Path
    shards_made: list[int]
    shards_skipped: list[int]
    complete: bool
    seconds: float


def synthesize(
    config: SynthesisConfig | None = None, teacher: Teacher | str | None = None, **overrides: Any
) -> SynthesisResult:
    """Make (or continue) the synthetic dataset described by `config` (or keyword overrides of the
    defaults, e.g. `synthesize(teacher="digits", n=200, out="out")`). Returns what this process did."""
    if isinstance(teacher, str):  # synthesize(teacher="digits", ...): a name, not a loaded Teacher
        overrides["teacher"], teacher = teacher, None
    if config is None:
        config = build_config(None, **overrides)  # flat loss and --gen-* names, as on the CLI
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    start = time.perf_counter()
    request = prepare(config, teacher, resumed_mode=claimed_mode(Path(config.out), config.overwrite))
    set_process_rank(request.rank)
    check_out_dir(request)  # before the probe: a folder of other data is refused at once,
    check_claim_before_probe(request)  # and a dataset made with another configuration
    with counting() as startup:  # the start-up's teacher passes (noise levels, probe) count too (dfgen.cost)
        run = decide(request, recorded_derivation(request.out))
    with claim_out_dir(run):  # held until the end (one lock per rank)
        record_startup(run.out, startup)
        return _make_shards(run, start)


def _make_shards(run: RunPlan, start: float) -> SynthesisResult:
    """Make this process's missing shards in the claimed folder, then finish the dataset if it is complete."""
    config, out = run.config, run.out
    generator_mode = config.mode == "generator"
    mine = amortized.shards_for_rank(run.plan, config.generator.chains, run.rank, run.world_size) \
        if generator_mode else run.my_shards()
    remove_temporaries(out, mine)
    todo, skipped = [], []
    for shard in mine:
        (skipped if shard_done(out, shard, len(run.plan.shard_range(shard))) else todo).append(shard)
    prefix = run.log_prefix
    if not todo:
        _log(f"{prefix}all {len(mine)} shard(s) of this process are already done in {out}; nothing to do")
    else:
        if skipped:
            _log(f"{prefix}resuming: {len(skipped)} shard(s) already done, {len(todo)} to make")
        total = sum(len(run.plan.shard_range(k)) for k in todo)
        progress = tqdm(total=total, unit="img", desc=f"{prefix}synthesize", disable=config.quiet, dynamic_ncols=True)
        shown = None if config.quiet else progress

        def make_shard(engine, shard: int, before_write=None) -> None:
            with counting() as cost:
                samples, stats = _shard_samples(run, engine, shard, shown)
            stats["seconds"] = round(cost.seconds, 3)
            stats["cost"] = cost.record(len(samples))
            if before_write is not None:
                before_write()
            sidecar = write_shard(out, shard, samples, config.format, stats)
            if config.quiet:
                _log(f"{prefix}shard {shard} done: {sidecar['count']} images, "
                     f"agreement {stats['loss']['agreement']:.3f}, {stats['seconds']:.1f}s")

        with explain_out_of_memory(run), engine_for(run) as engine, progress:
            if generator_mode:
                amortized.make_run_chains(run, engine, make_shard,
                                          lambda runner, k: _shard_samples(run, runner, k, None))
            else:
                for shard in todo:
                    make_shard(engine, shard)
    complete = finalize(out)
    if complete and todo:
        _log(f"{prefix}dataset complete: {run.plan.n} images in {run.plan.num_shards} shard(s) at {out}")
    elif not complete:
        _log(prefix + completion_note(run))
    return SynthesisResult(out, todo, skipped, complete, time.perf_counter() - start)


