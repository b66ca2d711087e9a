"""`distill.train(config)`: two-stage DearKD training with DDP, checkpoints and exact resume.

Stage 1 (epochs [0, stage1_epochs)): DeiT distillation (hard or soft) from the CNN teacher, online or from the soft
labels dfgen stored, plus the hidden loss through the aligners (online, DearKD students only). Stage 2: the teacher
is dropped and freed, both heads learn the labels. One cosine schedule spans both. Any other timm model is a student
too, trained by plain KD (`distill.losses.kd_loss`; `distill.student`).

This module is the run's outline: set up (data, student, teacher, optimization, a resumed checkpoint), then the
epoch loop (train, evaluate, checkpoint, log). The parts live beside it: `distill.data` / `distill.pipeline` (the
data), `distill.student` (the model), `distill.teacher` (the stage-1 teacher), `distill.optim`, `distill.engine`
(one epoch), `distill.evaluation`, `distill.checkpoint`, `distill.distributed` and `distill.run_log`.

RUN_DIR holds last.pt (every epoch), best.pt (best val top-1), config.json, metrics.jsonl (one line per epoch) and
curves.png, all written atomically. Checkpoints load with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.data import resolve_data_config
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dfgen.folder_guard import Maker, hold_folder
from distill.checkpoint import (
    CHECKPOINT_FORMAT,
    kept_rng,
    load_weights,
    pack_rng,
    restore_rng,
    resume_point,
    rng_state,
    save_epoch_checkpoints,
    seed_everything,
)
from distill.config import TrainConfig, build_config, with_absolute_paths
from distill.data import (
    RunData,
    eval_loader,
    eval_transform,
    guarded,
    image_mode,
    loader_workers,
    open_run_data,
    probe_images,
    rank_batch_size,
    steps_per_epoch,
    train_transform,
    view_transform,
)
from distill.distributed import DistEnv, gather_objects, resolve_precision, setup_distributed
from distill.engine import EpochContext, StudentForward, train_one_epoch
from distill.errors import DistillError
from distill.evaluation import validate
from distill.identity import run_data_identity
from distill.input_size import resize_lines, resumed_size, student_input_size
from distill.losses import PairedMixup, label_criterion
from distill.models import average_attention_distance
from distill.optim import Optimization, Trainable, build_optimization, make_aligners
from distill.pipeline import ShardHealth, StreamSettings, train_loader
from distill.run_log import (
    open_tensorboard,
    plot_curves,
    read_metrics,
    startup_line,
    summary_line,
    write_config,
    write_metrics,
)
from distill.student import create_student, default_size, has_distillation_head, is_dearkd
from distill.student_weights import absolute_weight_paths, starting_weights
from distill.teacher import load_stage1_teacher
from distill.teacher_features import Pair, pairs_from_json, pairs_to_json

RUN_MAKER = Maker("distill", "run", "run", {})  # made_by.json of a run directory

__all__ = ["train"]


@dataclass
class Run:
    """A run once set up: what the epoch loop reads, and what it carries from one epoch to the next."""

    cfg: TrainConfig
    env: DistEnv
    data: RunData
    steps: int  # batches per epoch
    rank_batch: int
    model: nn.Module  # the bare student (a DearKD or any timm model)
    aligners: nn.ModuleDict
    pairs: list[Pair]
    opt: Optimization
    ctx: EpochContext
    health: ShardHealth
    transforms: tuple[Callable, Callable, Callable | None]  # training, evaluation, stored views' (or None)
    workers: int
    probe: torch.Tensor | None  # the attention-distance images (main rank only)
    start_epoch: int
    num_updates: int = 0
    best_top1: float | None = None
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl's lines so far
    identity: dict[str, Any] = field(default_factory=dict)  # the data's content identity (distill.identity)
    val_skipped: set[str] = field(default_factory=set)  # unreadable validation images met so far


def train(config: TrainConfig | None = None, **overrides: Any) -> dict[str, Any]:
    """Run (or resume) a two-stage DearKD training; returns a summary (last metrics, paths, best top-1).

    `train(build_config("configs/distill_digits.yaml", shards=[...], val=..., out=...))` or
    `train(shards=[...], model="dearkd_micro_patch4_32", teacher="digits", epochs=3, ...)`.
    Under torchrun every rank calls it; rank 0 logs and writes the run directory.
    """
    import torch.distributed as dist

    cfg = dataclasses.replace(config, **overrides) if config is not None else build_config(**overrides)
    env = setup_distributed(cfg.device)
    try:
        cfg = absolute_weight_paths(with_absolute_paths(cfg))
        # the run directory is refused if anything but a distill run made it, and held by this run until the end
        with hold_folder(Path(cfg.out), RUN_MAKER, env.rank, env.world_size, mark=env.main):
            return _train(cfg, env)
    finally:
        if env.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, env: DistEnv) -> dict[str, Any]:
    run = _set_up(cfg, env)
    board = open_tensorboard(Path(cfg.out)) if env.main else None  # None without the tensorboard package
    epochs_run, record = 0, run.records[-1] if run.records else None
    for epoch in range(run.start_epoch, cfg.epochs):
        stage = 1 if epoch < cfg.stage1_epochs else 2
        run.ctx.stage = stage
        if stage == 2 and run.ctx.teacher is not None:
            run.ctx.drop_teacher()
            env.log(f"stage 2 from epoch {epoch + 1}: teacher dropped")
        record = _train_epoch(run, epoch, stage)
        # the state the next epoch starts from, gathered from every rank (a collective call) before evaluation
        rng = gather_objects(rng_state(env.device), env.world_size)
        _save_epoch(run, record, rng, improved=False)  # a failing evaluation costs no trained epoch
        # Evaluating, probing attention and plotting cost ~20% of a small CPU run: every eval_every epochs and last.
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            with kept_rng(env.device):  # evaluation draws nothing the next epoch sees: resumed runs stay exact
                record.update(_measure(run))
            improved = record.get("val_top1") is not None and (run.best_top1 is None
                                                               or record["val_top1"] > run.best_top1)
            if improved:
                run.best_top1 = record["val_top1"]
            _save_epoch(run, record, rng, improved)
            if env.main:
                plot_curves(run.records, Path(cfg.out) / "curves.png", cfg.stage1_epochs)
        env.log(summary_line(record, cfg.epochs))
        if board is not None:
            board.add(record)
        epochs_run += 1
        if cfg.stop_after is not None and epochs_run >= cfg.stop_after and epoch + 1 < cfg.epochs:
            env.log(f"stopping after {epochs_run} epoch(s) as asked; continue with --resume")
            break
    if board is not None:
        board.close()
    for line in (run.health.summary(), _skipped_line(run.val_skipped)):
        if line:
            env.log(line)
    out = Path(cfg.out)
    best = out / "best.pt"
    return {"out": str(out), "last": str(out / "last.pt"), "best": str(best) if best.exists() else None,
            "epochs_run": epochs_run, "epoch": record["epoch"] if record else run.start_epoch,
            "best_top1": run.best_top1, "metrics": record, "rank": env.rank, "world_size": env.world_size}


# ------------------------------------------------------------------------------------------------ setting up
def _set_up(cfg: TrainConfig, env: DistEnv) -> Run:
    """Data, student, teacher, aligners and optimization, restored from last.pt on --resume. The random streams are
    set last (see the end), so that nothing drawn here changes a resumed run."""
    device, out = env.device, Path(cfg.out)
    data = open_run_data(cfg)
    rank_batch = rank_batch_size(cfg, env.world_size)
    steps = steps_per_epoch(data.infos, cfg.batch_size)
    identity = run_data_identity(data.infos, data.val)
    ckpt = resume_point(cfg, env, out, identity)
    start_epoch = int(ckpt["epoch"]) if ckpt else 0
    if start_epoch >= cfg.epochs:
        env.log(f"{out} is already trained for {cfg.epochs} epochs")

    # the student is initialised first after the seed, then the teacher is built, then the aligners: a fresh run's
    # initial weights depend on this order
    seed_everything(cfg.seed)
    size, size_from = student_input_size(cfg.img_size or cfg.model_kwargs.get("img_size"), data.infos,
                                         default_size(cfg.model, cfg.model_kwargs))
    if ckpt is not None:
        size, size_from = resumed_size(ckpt.get("model_args"), default_size(cfg.model)), "the resumed run's"
    model = create_student(cfg.model, data.num_classes, data.in_chans, size, cfg.drop_path, cfg.model_kwargs)
    notes = starting_weights(cfg, model) if ckpt is None else []  # a resumed run's weights are its checkpoint's
    model = model.to(device)
    if has_distillation_head(model):  # DeiT's two heads: the distillation head learns from the teacher
        model.set_distilled_training(True)
    data_config = resolve_data_config({}, model=model)
    stage1_left, stored = start_epoch < cfg.stage1_epochs, cfg.soft_labels == "stored"
    teacher, pairs, teacher_name = None, [], None
    if stage1_left and not stored:
        teacher, pairs, teacher_name = load_stage1_teacher(cfg, data.infos, model, device, data_config)
    if stage1_left and stored and cfg.hidden_weight > 0:
        env.log("note: with --soft-labels stored the hidden loss is off (it needs the teacher's feature maps)")
    if stage1_left and stored and cfg.distillation == "hard":
        env.log("note: --distillation hard learns only the stored logits' argmax, on synthetic images almost always "
                "the label; --distillation soft keeps what they say of the other classes")
    if stage1_left and stored and (cfg.aa or cfg.mixing):
        env.log("note: RandAugment, mixup and cutmix change the image but not its stored target; on small sets "
                "stored labels teach more without them (aa: null, mixup: 0, cutmix: 0 in the config; docs/design.md)")
    if ckpt is not None:
        pairs = pairs_from_json(ckpt["pairs"])  # aligners exist in stage 2 too (their optimizer state is saved)
    aligners = make_aligners(pairs, model).to(device)
    trainable = Trainable(model, aligners)
    amp_dtype = resolve_precision(cfg.precision, device)
    opt = build_optimization(cfg, trainable, steps, amp_dtype)
    health = ShardHealth(cfg.max_bad_shards, env.rank, json.loads(ckpt.get("bad_shards") or "{}") if ckpt else None,
                         image_limit=cfg.max_bad_images)

    ctx = EpochContext(student=_wrap_student(model, env), model=model, optimizer=opt.optimizer,
                       scheduler=opt.scheduler, criterion=label_criterion(cfg.mixing, cfg.smoothing), device=device,
                       amp_dtype=amp_dtype, scaler=opt.scaler, mixup=_mixup(cfg, data.num_classes), teacher=teacher,
                       distillation=cfg.distillation, tau=cfg.distill_tau, aligners=aligners if pairs else None,
                       pairs=tuple(pairs), hidden_weight=cfg.hidden_weight, clip_grad=cfg.clip_grad, ema=opt.ema,
                       world_size=env.world_size, health=health, num_sources=len(data.infos))
    t_eval = eval_transform(data_config)
    probe = None  # attention distances are DearKD's (MHSA/MHCA layers)
    if env.main and is_dearkd(model):
        probe = probe_images(data.val or data.infos[0], t_eval, data.in_chans, cfg.attn_images)
    views = stored and cfg.stored_views and any(i.soft_views for i in data.infos)
    transforms = (train_transform(cfg, data_config), t_eval, view_transform(cfg, data_config) if views else None)
    run = Run(cfg, env, data, steps, rank_batch, model, aligners, pairs, opt, ctx, health, transforms,
              loader_workers(cfg.workers, device), probe, start_epoch, identity=identity)
    if ckpt is not None:
        _restore(run, trainable, ckpt)
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, cfg)
        env.log(startup_line(cfg, model, data.infos, steps, env.world_size, device, opt.lr, teacher_name, pairs))
        grid = tuple(model.patch_embed.grid_size) if hasattr(getattr(model, "patch_embed", None), "grid_size") \
            else None
        teacher_size = (teacher_name, teacher.input_size) if teacher is not None and teacher.input_size else None
        for line in [*notes, *resize_lines(size, size_from, data.infos, data.val, teacher_size, grid)]:
            env.log(line)

    # the RNG goes last: nothing between here and the first epoch may draw from it, so a resumed run continues
    # the very same random streams
    if ckpt is not None and int(ckpt["world_size"]) == env.world_size:
        restore_rng(ckpt["rng"], env.rank, device)
    else:
        if ckpt is not None:
            env.log(f"the checkpoint was made by {ckpt['world_size']} process(es), not {env.world_size}: the random "
                    "streams are reseeded, so the result differs from an uninterrupted run")
        seed_everything(cfg.seed * 1000 + env.rank + 7919 * start_epoch)
    return run


def _wrap_student(model: nn.Module, env: DistEnv) -> nn.Module:
    """The student as the training step calls it: one forward for logits and block tokens, under DDP if several
    ranks (a DearKD student has no BatchNorm and the same relative-position buffers on every rank, hence no buffer
    broadcast; other students get DDP's default, rank 0's BatchNorm statistics)."""
    student: nn.Module = StudentForward(model)
    if env.world_size > 1:
        device = env.device
        student = DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None,
                                          broadcast_buffers=not is_dearkd(model))
    return student


def _mixup(cfg: TrainConfig, num_classes: int) -> PairedMixup | None:
    if not cfg.mixing:
        return None
    return PairedMixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                       switch_prob=cfg.mixup_switch_prob, mode="batch", label_smoothing=cfg.smoothing,
                       num_classes=num_classes)


def _restore(run: Run, trainable: Trainable, ckpt: dict[str, Any]) -> None:
    """The weights, optimizer, schedule, scaler, EMA, counters and metrics of a resumed run."""
    last = Path(run.cfg.out) / "last.pt"
    model, aligners = ckpt.get("model"), ckpt.get("aligners")
    if not isinstance(model, dict) or not isinstance(aligners, dict):
        raise DistillError(f"{last} holds no model or aligner weights; it is damaged: start again in another --out")
    load_weights(trainable, {**{f"model.{k}": v for k, v in model.items()},
                             **{f"aligners.{k}": v for k, v in aligners.items()}}, f"the weights in {last}")
    try:
        run.opt.load_state_dict(ckpt)
        run.num_updates = int(ckpt["num_updates"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise DistillError(f"{last}: the optimizer state does not fit this run ({first}); it is damaged: start "
                           "again in another --out") from None
    run.best_top1 = float(ckpt["best_top1"]) if ckpt.get("best_top1") is not None else None
    out = Path(run.cfg.out)
    run.records = [r for r in read_metrics(out / "metrics.jsonl") if r.get("epoch", 0) <= run.start_epoch]
    stage = 1 if run.start_epoch < run.cfg.stage1_epochs else 2
    run.env.log(f"resuming {out} after epoch {run.start_epoch} (stage {stage})")


# ------------------------------------------------------------------------------------------------ one epoch
def _train_epoch(run: Run, epoch: int, stage: int) -> dict[str, Any]:
    """Train one epoch on this rank's stream; the metrics record's training fields."""
    cfg, env, data = run.cfg, run.env, run.data
    settings = StreamSettings(seed=f"{cfg.seed}:{epoch}:rank{env.rank}", batch_size=run.rank_batch,
                              num_classes=data.num_classes, mode=image_mode(data.in_chans),
                              transform=run.transforms[0], shuffle_buffer=cfg.shuffle_buffer,
                              interleave=cfg.shard_interleave, repeats=cfg.repeats,
                              mix=tuple(cfg.mix) if cfg.mix else None,
                              soft=cfg.soft_labels == "stored" and stage == 1,
                              view_transform=run.transforms[2] if stage == 1 else None)
    loader = train_loader(data.infos, settings, run.steps, run.workers, set(run.health.bad))
    stats, run.num_updates = train_one_epoch(run.ctx, guarded(loader, "training"), run.steps, run.num_updates,
                                             desc=f"epoch {epoch + 1}/{cfg.epochs} stage {stage}",
                                             progress=env.main and not cfg.quiet)
    run.health.merge(gather_objects(run.health.bad, env.world_size))  # every rank stops together at the limit
    return {"epoch": epoch + 1, "stage": stage, **stats, "bad_shards": len(run.health.bad)}


def _measure(run: Run) -> dict[str, Any]:
    """Validation accuracy (student and EMA) and the attention distance of each block."""
    cfg, env, data = run.cfg, run.env, run.data
    record: dict[str, Any] = {}
    if data.val is not None:
        loader = eval_loader(data.val, run.transforms[1], data.in_chans, data.num_classes,
                             cfg.eval_batch_size or run.rank_batch, run.workers, env.rank, env.world_size)
        record.update(validate(run.model, run.opt.ema, loader, env.device, run.ctx.amp_dtype, env.world_size,
                               cfg.max_bad_images, progress=env.main and not cfg.quiet))
        run.val_skipped.update(record["val_skipped"])
        record["val_skipped"] = len(record["val_skipped"])
    if run.probe is not None:
        record["attn_distance"] = average_attention_distance(run.model, run.probe)
    return record


def _save_epoch(run: Run, record: dict[str, Any], rng: list[dict[str, Any]], improved: bool) -> None:
    """On the main rank: metrics.jsonl with the epoch's record (added once, rewritten when evaluation adds to it),
    last.pt, and best.pt if the validation top-1 improved."""
    if not run.env.main:
        return
    out = Path(run.cfg.out)
    if not run.records or run.records[-1] is not record:
        run.records.append(record)
    write_metrics(out / "metrics.jsonl", run.records)
    save_epoch_checkpoints(out, _checkpoint_state(run, record, rng), improved)


def _skipped_line(skipped: set[str]) -> str | None:
    if not skipped:
        return None
    return f"skipped in validation: {len(skipped)} unreadable image(s) ({', '.join(sorted(skipped))})"


def _checkpoint_state(run: Run, record: dict[str, Any], rng: list[dict[str, Any]]) -> dict[str, Any]:
    """last.pt: what resuming needs (plain tensors, numbers and JSON strings, so weights_only loading reads it)."""
    cfg, data = run.cfg, run.data
    size = run.model.pretrained_cfg["input_size"][1:]  # the size the student was built for (distill.student)
    model_args = {"name": cfg.model, "num_classes": data.num_classes, "in_chans": data.in_chans,
                  "img_size": list(size), "model_kwargs": cfg.model_kwargs}
    return {
        "format": CHECKPOINT_FORMAT,
        "config": cfg.to_json(),
        "model_args": json.dumps(model_args),
        "pairs": pairs_to_json(run.pairs),
        "model": run.model.state_dict(),
        "aligners": run.aligners.state_dict(),
        **run.opt.state_dict(),  # optimizer, scheduler, scaler, ema
        "epoch": record["epoch"],
        "stage": record["stage"],
        "num_updates": run.num_updates,
        "best_top1": run.best_top1,
        "world_size": run.env.world_size,
        "rng": pack_rng(rng),
        "bad_shards": json.dumps(run.health.bad),
        "data_identity": json.dumps(run.identity),
    }
