"""`--dry-run` in the generator mode: its time comes from timed adaptation steps summed over the busiest rank's
chains (warm-up batches included), and stays close to a small real run."""

from __future__ import annotations

from dataclasses import replace

import torch

from dfgen.config import build_config
from dfgen.dry_run import describe_plan
from dfgen.dry_run_generator import GeneratorTiming, estimate_generator, time_generator
from dfgen.runplan import set_up

# batches of 2 classes x 2 images, shards of 4; flips and the diversity distances given: no start-up probe
TINY = dict(teacher="digits", batch_size=4, shard_size=4, flip="off", ep_reach=0.2, margin=0.34, mode="generator",
            gen_steps=3, gen_warmup_steps=7, gen_width=2, gen_latent=8, quiet=True)


def test_the_estimate_sums_each_ranks_chains(digits_teacher, tmp_path):
    config = build_config(None, n=20, out=str(tmp_path / "o"), gen_chains=2, world_size=2, rank=0, **TINY)
    run = set_up(config, digits_teacher, log=False, probe=False)
    timing = GeneratorTiming(batch=4, step_seconds=1.0, fixed_seconds=0.5)
    estimate = estimate_generator(run, 0.0, timing)
    # 5 shards of one batch each: rank 0 makes chain 0 (shards 0, 2, 4), rank 1 chain 1 (shards 1, 3); a chain's
    # first batch takes 7 steps, the others 3: rank 0 is the busiest, (7 + 3 + 3) steps + 3 fixed costs
    assert (estimate.busiest_batches, estimate.busiest_seconds) == (3, 13 + 1.5)
    assert estimate.seconds_per_batch == 3.5
    one_chain = estimate_generator(set_up(replace(config, world_size=1), digits_teacher, log=False, probe=False),
                                   0.25, timing)
    assert one_chain.busiest_batches == 5 and one_chain.busiest_seconds == 2 * 7 + 3 * 3 + 5 * 0.5 + 20 * 0.25


def test_dry_run_time_is_close_to_a_small_real_run(digits_teacher, tmp_path):
    """A factor of 2 under a test suite on a shared machine (the pixel mode's test says why)."""
    from dfgen.synthesize import synthesize

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = build_config(None, n=16, out=str(tmp_path / "o"), **TINY)
        run = set_up(config, digits_teacher, log=False, probe=False)
        estimate = estimate_generator(run, 0.0, time_generator(run))
        measured = min(synthesize(config, teacher=digits_teacher).seconds,
                       synthesize(replace(config, out=str(tmp_path / "o2")), teacher=digits_teacher).seconds)
    finally:
        torch.set_num_threads(threads)
    assert estimate.timing.batch == 4 and estimate.timing.step_seconds > 0
    assert 0.5 < measured / estimate.busiest_seconds < 2.0, (measured, estimate.busiest_seconds)
    text = describe_plan(config, digits_teacher)
    assert "timed for 1 and 5 adaptation steps" in text and "not timed" not in text
    assert "teacher passes" in text
