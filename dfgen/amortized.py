"""The amortized synthesis mode (`--mode generator`): instead of optimising every batch's pixels from noise for
hundreds of iterations, a small image generator (dfgen.generator) starts each batch from meta-learned weights and
takes a few adaptation steps on the batch's losses (the same objective as the pixel mode: BN statistics, priors,
cross-entropy, DearKD's easy-positive and triplet terms), then emits the batch's images; a Reptile update moves the
meta-weights toward the adapted ones (after Fast, Fang et al., AAAI 2022).

The meta-weights are state carried from batch to batch, so they are organised to keep the output a function of the
configuration and seed alone: a fixed number of independent *chains*; shard k belongs to chain k % chains, a chain
makes its shards in order, and its meta-weights are checkpointed atomically (shards/chains/) before each of its shards
is written. Rank r of W makes the chains c with c % W == r, whole. A resume continues each chain from the checkpoint
of its last done shard (replaying, without writing, any shards whose checkpoint is missing)."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from dfgen.amortized_settings import AmortizedSettings
from dfgen.atomic import TMP_MARK, write_atomic
from dfgen.cost import count_generator, measure_flops
from dfgen.errors import SynthesisError
from dfgen.generator import build_generator
from dfgen.inversion import BatchResult, InversionEngine
from dfgen.jitter import draw_stage_jitter
from dfgen.plan import LabelPlan, derive_seed

_STREAM_CHAIN = 7  # plan.derive_seed stream of each chain's initial generator
CHAIN_DIR = "chains"  # under shards/: --overwrite removes it with the shards
State = dict[str, Tensor]


class AmortizedEngine:
    """Makes batches with a generator adapted from given meta-weights; the teacher side (probe, objective, noise
    levels, quantising and the final teacher pass) is the pixel mode's engine's."""

    def __init__(self, inversion: InversionEngine, num_classes: int, settings: AmortizedSettings, seed: int,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.inversion = inversion
        self.settings = settings
        self.seed = seed
        self.resolution = inversion.settings.teacher_resolution or inversion.settings.schedule[-1][0]
        self.num_classes = num_classes
        self.net = build_generator(0, num_classes, inversion.in_chans, self.resolution, mean, std, settings.latent,
                                   settings.width).to(inversion.device)
        self.step_flops, self.emit_flops = self._flops_per_image()
        self.parameters = sum(p.numel() for p in self.net.parameters())

    def _flops_per_image(self) -> tuple[int, int]:
        """Generator FLOPs per image: an adaptation step (forward, backward to weights and latents, Adam's update
        spread over the batch is left out) and the emitting forward; measured on two images."""
        z = torch.zeros(2, self.settings.latent, device=self.inversion.device,
                        requires_grad=self.settings.latent_lr > 0)
        labels = torch.zeros(2, dtype=torch.long, device=self.inversion.device)
        step = measure_flops(lambda: self.net(z, labels), backward=True)
        emit = measure_flops(lambda: self.net(z, labels), backward=False)
        self.net.zero_grad(set_to_none=True)
        return step // 2, emit // 2

    def initial_state(self, chain: int) -> State:
        net = build_generator(derive_seed(self.seed, _STREAM_CHAIN, chain), self.num_classes, self.inversion.in_chans,
                              self.resolution, tuple(self.net.mean.flatten().tolist()),
                              tuple(self.net.std.flatten().tolist()), self.settings.latent, self.settings.width)
        return {k: v.detach().clone().to(self.inversion.device) for k, v in net.state_dict().items()}

    def adapt(self, labels: Tensor, seed: int, meta: State, steps: int,
              on_log: Callable[[str, int, int, dict[str, float]], None] | None = None) -> tuple[BatchResult, State]:
        """Adapt a copy of `meta` for `steps` steps on the batch's losses; returns the emitted batch and the adapted
        weights. A non-finite loss is retried once at a 10x lower learning rate."""
        try:
            return self._adapt(labels, seed, meta, steps, 1.0, on_log)
        except _NonFinite:
            try:
                return self._adapt(labels, seed, meta, steps, 0.1, on_log)
            except _NonFinite as exc:
                raise SynthesisError(f"the loss of the batch with seed {seed} became non-finite ({exc}) and again "
                                     "after a retry with a 10x lower learning rate; lower --gen-lr") from None

    def _adapt(self, labels: Tensor, seed: int, meta: State, steps: int, lr_scale: float,
               on_log) -> tuple[BatchResult, State]:
        s, inv = self.settings, self.inversion
        generator = torch.Generator().manual_seed(seed)
        labels = labels.to(inv.device)
        batch = labels.shape[0]
        z = torch.randn(batch, s.latent, generator=generator).to(inv.device)
        jitter = draw_stage_jitter(generator, steps, self.resolution, inv.settings.jitter_fraction, inv.settings.flip,
                                   inv.settings.crop_min_scale)
        self.net.load_state_dict(meta)
        groups = [{"params": list(self.net.parameters()), "lr": s.lr * lr_scale}]
        if s.latent_lr:
            z.requires_grad_(True)
            groups.append({"params": [z], "lr": s.latent_lr * lr_scale})
        optimizer = torch.optim.Adam(groups, betas=(0.5, 0.999))
        logged: dict[str, float] = {}
        where = f"{self.resolution}px"
        for it in range(steps):
            images = self.net(z, labels)
            terms = inv._teacher_terms(jitter.view(images, it, self.resolution), labels, self.resolution)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            count_generator(batch * self.step_flops)
            last = it == steps - 1
            if last or (inv.settings.log_every and (it + 1) % inv.settings.log_every == 0):
                logged = {k: float(v.detach()) for k, v in terms.items()}
                if not math.isfinite(logged["total"]):
                    raise _NonFinite(f"adaptation step {it + 1}: total={logged['total']}")
                if on_log is not None:
                    on_log(where, it + 1, steps, logged)
        with torch.no_grad():
            images = self.net(z.detach(), labels)
        count_generator(batch * self.emit_flops)
        if not torch.isfinite(images).all():
            raise _NonFinite("non-finite pixels")
        adapted = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        return inv._finish(images, labels, logged, lr_scale, generator), adapted


class ChainRunner:
    """One chain's meta-weights, driven batch by batch: what _shard_samples calls as its engine."""

    def __init__(self, engine: AmortizedEngine, meta: State, batches: int) -> None:
        self.engine, self.meta, self.batches = engine, meta, batches

    def invert(self, labels: Tensor, seed: int, on_log=None) -> BatchResult:
        s = self.engine.settings
        first = self.batches == 0
        result, adapted = self.engine.adapt(labels, seed, self.meta, s.warmup_steps if first else s.steps, on_log)
        step = 1.0 if first else s.meta_step  # the warm-up batch's weights become the first meta-weights
        with torch.no_grad():
            self.meta = {k: v + step * (adapted[k] - v) if v.is_floating_point() else adapted[k].clone()
                         for k, v in self.meta.items()}
        count_generator(3 * self.engine.parameters)  # the meta update: a subtract, a multiply, an add per weight
        self.batches += 1
        return result


def chain_of(shard: int, chains: int) -> int:
    return shard % chains


def chain_shards(plan: LabelPlan, chains: int, chain: int) -> list[int]:
    return list(range(chain, plan.num_shards, chains))


def shards_for_rank(plan: LabelPlan, chains: int, rank: int, world_size: int) -> list[int]:
    """The shards of the chains this rank makes (c % world_size == rank), in shard order."""
    return [k for k in range(plan.num_shards) if chain_of(k, chains) % world_size == rank]


def checkpoint_path(out: Path, chain: int, shard: int) -> Path:
    return Path(out) / "shards" / CHAIN_DIR / f"chain-{chain:04d}-shard-{shard:06d}.pt"


def save_checkpoint(out: Path, chain: int, shard: int, runner: ChainRunner, fingerprint: str) -> None:
    """The chain's meta-weights after `shard`, written atomically."""
    path = checkpoint_path(out, chain, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"meta": {k: v.detach().cpu() for k, v in runner.meta.items()}, "batches": runner.batches,
                "chain": chain, "shard": shard, "fingerprint": fingerprint}, buffer)
    write_atomic(path, lambda handle: handle.write(buffer.getvalue()))


def load_checkpoint(out: Path, chain: int, shard: int, fingerprint: str, device: torch.device) -> dict | None:
    """A chain's checkpoint after `shard`, or None where it is missing, unreadable or of another configuration."""
    path = checkpoint_path(out, chain, shard)
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location=device, weights_only=True)
    except Exception:  # a damaged file is as good as none: the chain is replayed from an earlier point
        return None
    if not isinstance(data, dict) or data.get("fingerprint") != fingerprint or data.get("chain") != chain \
            or data.get("shard") != shard:
        return None
    return data


def remove_chain_leftovers(out: Path, chains: list[int], keep: dict[int, int]) -> None:
    """Remove the temporaries a killed run left in shards/chains/ for `chains`, and their checkpoints older than
    the shard `keep[chain]` (those are no longer needed to resume)."""
    folder = Path(out) / "shards" / CHAIN_DIR
    if not folder.is_dir():
        return
    pattern = re.compile(r"chain-(\d+)-shard-(\d+)\.pt")
    for path in folder.iterdir():
        match = pattern.match(path.name)
        if not match or int(match.group(1)) not in chains:
            continue
        chain, shard = int(match.group(1)), int(match.group(2))
        if TMP_MARK in path.name or (chain in keep and shard < keep[chain]):
            path.unlink(missing_ok=True)


def make_chains(out: Path, plan: LabelPlan, engine: AmortizedEngine, chains: list[int], fingerprint: str,
                is_done: Callable[[int], bool], make_shard: Callable[[ChainRunner, int, Callable[[], None]], None],
                replay_shard: Callable[[ChainRunner, int], None]) -> None:
    """Drive each of `chains` through its shards in order. A chain resumes from the checkpoint after its last
    shard that precedes the first one not done; shards between that checkpoint and the first one to make are
    replayed (`replay_shard`: run, not written). `make_shard(runner, shard, before_write)` makes and writes one
    shard, calling `before_write` (which checkpoints the chain) before the shard is written."""
    s = engine.settings
    remove_chain_leftovers(out, chains, {})
    for chain in chains:
        shards = chain_shards(plan, s.chains, chain)
        done = [is_done(k) for k in shards]
        if all(done):
            continue
        first_todo = done.index(False)
        runner, start = ChainRunner(engine, engine.initial_state(chain), 0), 0
        for j in range(first_todo - 1, -1, -1):  # the newest usable checkpoint before the first shard to make
            data = load_checkpoint(out, chain, shards[j], fingerprint, engine.inversion.device)
            if data is not None:
                runner, start = ChainRunner(engine, data["meta"], int(data["batches"])), j + 1
                break
        for j in range(start, len(shards)):
            shard = shards[j]
            if j < first_todo or (done[j] and j > first_todo):  # done: run only for the state it leads to
                replay_shard(runner, shard)
                if j >= first_todo:
                    save_checkpoint(out, chain, shard, runner, fingerprint)
            else:
                make_shard(runner, shard, lambda c=chain, k=shard, r=runner: save_checkpoint(out, c, k, r, fingerprint))
            remove_chain_leftovers(out, [chain], {chain: shard})


class _NonFinite(Exception):
    pass


def make_run_chains(run, inversion: InversionEngine, make_shard, replay_shard) -> None:
    """make_chains for a resolved run (dfgen.runplan.RunPlan) of this rank, on the pixel mode's engine."""
    from dfgen.config import config_fingerprint
    from dfgen.shards import shard_done

    config, plan = run.config, run.plan
    engine = AmortizedEngine(inversion, run.teacher.num_classes, config.generator, config.seed,
                             tuple(run.teacher.mean), tuple(run.teacher.std))
    mine = [c for c in range(min(config.generator.chains, plan.num_shards)) if c % run.world_size == run.rank]
    make_chains(run.out, plan, engine, mine, config_fingerprint(run.content()),
                lambda k: shard_done(run.out, k, len(plan.shard_range(k))) is not None, make_shard, replay_shard)
