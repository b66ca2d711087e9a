"""`distill.train(config)`: two-stage DearKD training (SPEC section 5) with DDP, checkpoints and exact resume.

Stage 1 (epochs [0, stage1_epochs)): DeiT distillation (hard or soft) from the CNN teacher, online or from the soft
labels dfgen stored, plus the hidden loss through the aligners (online only). Stage 2: the teacher is dropped and
freed, both heads learn the labels. One cosine schedule spans both.

RUN_DIR holds last.pt (every epoch), best.pt (best val top-1), metrics.jsonl (one line per epoch) and curves.png,
all written atomically (`distill.checkpoint`). Checkpoints load with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.data import resolve_data_config
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distill.checkpoint import (
    CHECKPOINT_FORMAT,
    create_student,
    load_checkpoint,
    model_from_checkpoint,
    pack_rng,
    remove_stale_temporaries,
    restore_rng,
    rng_state,
    save_checkpoint,
    seed_everything,
    student_names,
    write_atomic,
)
from distill.config import TrainConfig, build_config
from distill.data import eval_loader, eval_transform, image_mode, probe_images, steps_per_epoch, train_transform
from distill.distributed import DistEnv, gather_objects, resolve_precision, setup_distributed
from distill.engine import EpochContext, StudentForward, evaluate, train_one_epoch
from distill.errors import DistillError
from distill.losses import PairedMixup, label_criterion
from distill.models import Aligner, DearKD, average_attention_distance
from distill.pipeline import ShardHealth, StreamSettings, train_loader
from distill.run_log import plot_curves, read_metrics, summary_line, write_metrics
from distill.sources import DatasetInfo, open_dataset, open_training_sets
from distill.teacher_features import Pair, Stage, TeacherFeatures, resolve_pairs, teacher_stages

__all__ = ["CHECKPOINT_FORMAT", "create_student", "evaluate_checkpoint", "load_checkpoint", "model_from_checkpoint",
           "student_names", "train"]


class Trainable(nn.Module):
    """Student plus aligners: what the optimizer updates and the checkpoint stores."""

    def __init__(self, model: DearKD, aligners: nn.ModuleDict) -> None:
        super().__init__()
        self.model = model
        self.aligners = aligners

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"model.{n}" for n in self.model.no_weight_decay()}


def make_aligners(pairs: list[Pair], model: DearKD) -> nn.ModuleDict:
    return nn.ModuleDict({p.key: Aligner(model.embed_dim, p.stage.channels, tuple(model.grid_size)) for p in pairs})


def _pairs_json(pairs: list[Pair]) -> str:
    return json.dumps([{"block": p.block, **dataclasses.asdict(p.stage)} for p in pairs])


def _pairs_from_json(text: str) -> list[Pair]:
    return [Pair(d["block"], Stage(d["index"], d["name"], d["channels"], tuple(d["hw"]))) for d in json.loads(text)]


def _log(env: DistEnv, message: str) -> None:
    if env.main:
        print(message, file=sys.stderr, flush=True)


def _absolute(cfg: TrainConfig) -> TrainConfig:
    """Local paths made absolute, so the configuration compared on --resume does not depend on the cwd (shard
    patterns and `a::b` lists part by part, without touching the braces)."""
    def local(path: str | None) -> str | None:
        if path is None:
            return None
        if "{" in path or "::" in path:
            return "::".join(os.path.abspath(part) for part in path.split("::"))
        return str(Path(path).resolve())

    return dataclasses.replace(cfg, shards=[local(s) for s in cfg.shards], val=local(cfg.val),
                               val_labels=local(cfg.val_labels), teacher_weights=local(cfg.teacher_weights))


def _load_teacher(cfg: TrainConfig, infos: list[DatasetInfo], model: DearKD, device: torch.device,
                  data_config: dict[str, Any]) -> tuple[TeacherFeatures, list[Pair], str]:
    from dfgen.teachers import load_recorded_teacher, load_teacher

    name = cfg.teacher
    recorded = [i.teacher for i in infos if i.teacher and i.teacher.get("name")]
    if name is not None and (Path(name) / "dataset.json").is_file():
        # --teacher DIR: the teacher that made the dfgen dataset DIR, e.g. to distill on real data from it
        entry = json.loads((Path(name) / "dataset.json").read_text()).get("teacher")
        if not isinstance(entry, dict) or not entry.get("name"):
            raise DistillError(f"{name}/dataset.json records no teacher; give a teacher name")
        recorded, name = [entry, *recorded], entry["name"]
    if name is None:
        if not recorded:
            raise DistillError("stage 1 needs a teacher: give --teacher NAME (the training data's dataset.json names "
                               "none), or --stage1-epochs 0 to train without one")
        name = recorded[0]["name"]
    entry = next((t for t in recorded if t["name"] == name), None)
    # The teacher that made the data is rebuilt from its recorded spec (own factory, class count, image size,
    # normalization, weights file); --teacher-weights replaces the recorded file.
    teacher = load_recorded_teacher(entry, cfg.teacher_weights, device=device) if entry is not None \
        else load_teacher(name, cfg.teacher_weights, device=device)
    made_by = {i.teacher.get("weights_sha256") for i in infos if i.teacher and i.teacher.get("name") == name} - {None}
    if made_by and teacher.weights_sha256 not in made_by:
        print(f"Warning: teacher {name} has other weights than the one that made the synthetic data "
              f"(sha256 {teacher.weights_sha256[:12]}... vs {', '.join(h[:12] for h in made_by)}...)",
              file=sys.stderr, flush=True)
    if teacher.num_classes != model.num_classes:
        raise DistillError(f"teacher {name} has {teacher.num_classes} classes, the student {model.num_classes}")
    in_chans = model.patch_embed.proj.in_channels
    if teacher.in_chans != in_chans:
        raise DistillError(f"teacher {name} takes {teacher.in_chans}-channel images, the student {in_chans}")
    stages = teacher_stages(teacher.model, (teacher.in_chans, *model.patch_embed.img_size))
    pairs = resolve_pairs(cfg.align, model, stages) if cfg.hidden_weight > 0 else []
    features = TeacherFeatures(teacher.model, teacher.mean, teacher.std, tuple(data_config["mean"]),
                               tuple(data_config["std"]), [p.stage.name for p in pairs])
    return features, pairs, name


@dataclass
class Data:
    """The opened training and validation data of a run."""

    infos: list[DatasetInfo]
    val: DatasetInfo | None
    num_classes: int
    in_chans: int


def _open_data(cfg: TrainConfig) -> Data:
    infos = open_training_sets(cfg.shards, cfg.num_classes, cfg.image_key, cfg.label_key, cfg.fraction)
    num_classes = cfg.num_classes or next((i.num_classes for i in infos if i.num_classes), None)
    if not num_classes:
        raise DistillError("the training data gives no class count (no dataset.json); pass --num-classes")
    in_chans = cfg.in_chans or next((i.in_chans for i in infos if i.in_chans), 3)
    classes = next((i.classes for i in infos if i.classes), None)
    val = None
    if cfg.val:
        val = open_dataset(cfg.val, num_classes=num_classes, image_key=cfg.image_key, label_key=cfg.label_key,
                           labels_file=cfg.val_labels, classes=classes)
        if val.num_classes not in (None, num_classes):
            raise DistillError(f"--val {val.name} has {val.num_classes} classes, the training data {num_classes}")
    if cfg.soft_labels == "stored" and cfg.stage1_epochs > 0:
        for info in infos:
            if info.synthetic and info.soft_k is None:
                raise DistillError(f"{info.name} holds no stored soft labels (its dataset.json has no soft_labels); "
                                   "re-synthesize it with a dfgen that stores them, or use --soft-labels online")
        if not any(i.soft_k for i in infos):
            raise DistillError(f"--soft-labels stored: none of {', '.join(i.name for i in infos)} holds stored soft "
                               "labels; give a synthetic dataset made with them, or use --soft-labels online")
    return Data(infos, val, int(num_classes), int(in_chans))


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
        return _train(_absolute(cfg), env)
    finally:
        if env.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _resume_point(cfg: TrainConfig, env: DistEnv, out: Path) -> dict[str, Any] | None:
    """The checkpoint to continue from (None: a fresh run); refuses a run directory made with other settings."""
    last_path = out / "last.pt"
    if env.main and remove_stale_temporaries(out):
        _log(env, f"removed temporary files a killed run left in {out}")
    if not last_path.is_file():
        if cfg.resume:
            _log(env, f"no checkpoint in {out}: starting from scratch")
        return None
    if not cfg.resume:
        raise DistillError(f"{out} already holds a run (last.pt); pass --resume to continue it or choose another --out")
    ckpt = load_checkpoint(last_path)
    saved = TrainConfig.from_json(ckpt["config"]).content()
    changed = sorted(k for k in saved if saved[k] != cfg.content().get(k))
    if changed:
        raise DistillError(f"--resume: {last_path} was made with different settings ({', '.join(changed)}); "
                           "resume with the same ones or use another --out")
    return ckpt


def _train(cfg: TrainConfig, env: DistEnv) -> dict[str, Any]:
    device = env.device
    amp_dtype = resolve_precision(cfg.precision, device)
    out = Path(cfg.out)
    last_path, best_path, metrics_path = out / "last.pt", out / "best.pt", out / "metrics.jsonl"

    data = _open_data(cfg)
    infos, val_info, num_classes, in_chans = data.infos, data.val, data.num_classes, data.in_chans
    if cfg.batch_size % env.world_size:
        raise DistillError(f"--batch-size {cfg.batch_size} is not divisible by the {env.world_size} processes")
    rank_batch = cfg.batch_size // env.world_size
    if cfg.mixing and rank_batch % 2:
        raise DistillError(f"mixup/cutmix need an even batch per process, got {rank_batch}")
    steps = steps_per_epoch(infos, cfg.batch_size)

    ckpt = _resume_point(cfg, env, out)
    start_epoch = int(ckpt["epoch"]) if ckpt else 0
    if start_epoch >= cfg.epochs:
        _log(env, f"{out} is already trained for {cfg.epochs} epochs")

    seed_everything(cfg.seed)
    model = create_student(cfg.model, num_classes, in_chans, cfg.img_size, cfg.drop_path, cfg.model_kwargs).to(device)
    model.set_distilled_training(True)
    data_config = resolve_data_config({}, model=model)
    stored = cfg.soft_labels == "stored"
    teacher, pairs, teacher_name = None, [], None
    if start_epoch < cfg.stage1_epochs and not stored:
        teacher, pairs, teacher_name = _load_teacher(cfg, infos, model, device, data_config)
    if stored and cfg.hidden_weight > 0 and start_epoch < cfg.stage1_epochs:
        _log(env, "note: with --soft-labels stored the hidden loss is off (it needs the teacher's feature maps)")
    if ckpt is not None:
        pairs = _pairs_from_json(ckpt["pairs"])  # aligners exist in stage 2 too (their optimizer state is saved)
    aligners = make_aligners(pairs, model).to(device)
    trainable = Trainable(model, aligners)

    lr = cfg.lr * cfg.batch_size / cfg.lr_base_size if cfg.lr_base_size else cfg.lr
    optimizer = create_optimizer_v2(trainable, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay, eps=cfg.opt_eps)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=cfg.epochs, min_lr=cfg.min_lr,
                                       warmup_lr=cfg.warmup_lr, warmup_epochs=cfg.warmup_epochs,
                                       step_on_epochs=False, updates_per_epoch=steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None
    num_updates, best_top1 = 0, None
    health = ShardHealth(cfg.max_bad_shards, env.rank, json.loads(ckpt.get("bad_shards") or "{}") if ckpt else None)
    if ckpt is not None:
        trainable.load_state_dict({**{f"model.{k}": v for k, v in ckpt["model"].items()},
                                   **{f"aligners.{k}": v for k, v in ckpt["aligners"].items()}})
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            ema.module.load_state_dict(ckpt["ema"])
        num_updates = int(ckpt["num_updates"])
        best_top1 = float(ckpt["best_top1"]) if ckpt.get("best_top1") is not None else None
        _log(env, f"resuming {out} after epoch {start_epoch} (stage {1 if start_epoch < cfg.stage1_epochs else 2})")

    student: nn.Module = StudentForward(model)
    if env.world_size > 1:
        # no BatchNorm in the student, and the relative-position buffers are the same on every rank
        student = DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None,
                                          broadcast_buffers=False)
    mixup = None
    if cfg.mixing:
        mixup = PairedMixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                            switch_prob=cfg.mixup_switch_prob, mode="batch", label_smoothing=cfg.smoothing,
                            num_classes=num_classes)
    ctx = EpochContext(student=student, model=model, optimizer=optimizer, scheduler=scheduler,
                       criterion=label_criterion(cfg.mixing, cfg.smoothing), device=device, amp_dtype=amp_dtype,
                       scaler=scaler, mixup=mixup, teacher=teacher, distillation=cfg.distillation,
                       tau=cfg.distill_tau, aligners=aligners if pairs else None, pairs=tuple(pairs),
                       hidden_weight=cfg.hidden_weight, clip_grad=cfg.clip_grad, ema=ema, world_size=env.world_size,
                       health=health, num_sources=len(infos))
    t_train, t_eval = train_transform(cfg, data_config), eval_transform(data_config)
    workers = cfg.workers if cfg.workers is not None else (
        min(8, max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))))
        if device.type == "cuda" else 0)
    eval_batch = cfg.eval_batch_size or rank_batch
    probe = probe_images(val_info or infos[0], t_eval, in_chans, cfg.attn_images) if env.main else None

    records = [r for r in read_metrics(metrics_path) if r.get("epoch", 0) <= start_epoch] if ckpt else []
    model_args = json.dumps({"name": cfg.model, "num_classes": num_classes, "in_chans": in_chans,
                             "img_size": cfg.img_size, "model_kwargs": cfg.model_kwargs})
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(dataclasses.asdict(cfg), indent=1, sort_keys=True) + "\n"
        write_atomic(out / "config.json", lambda handle: handle.write(text.encode()))
        sources = " + ".join(f"{i.name} ({i.kind}, {i.n})" for i in infos)
        _log(env, f"distill: {cfg.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
                  f"{in_chans}x{model.patch_embed.img_size[0]}x{model.patch_embed.img_size[1]}, {num_classes} classes)"
                  f" on {sources}" + (f" mixed {'/'.join(f'{m:g}' for m in cfg.mix)}" if cfg.mix else "")
                  + f", {steps} steps/epoch x {cfg.epochs} epochs (stage 1: {cfg.stage1_epochs}), batch "
                  f"{cfg.batch_size} on {env.world_size} process(es), {device}, lr {lr:.2e}"
                  + (f", teacher {teacher_name}" if teacher_name else "")
                  + (", stored soft labels" if stored and cfg.stage1_epochs else "")
                  + "".join(f", align block {p.block} <- {p.stage.name} ({p.stage.channels}x{p.stage.hw[0]}x"
                            f"{p.stage.hw[1]})" for p in pairs))

    # the RNG goes last: nothing between here and the first epoch may draw from it, so a resumed run continues
    # the very same random streams
    if ckpt is not None and int(ckpt["world_size"]) == env.world_size:
        restore_rng(ckpt["rng"], env.rank, device)
    else:
        if ckpt is not None:
            _log(env, f"the checkpoint was made by {ckpt['world_size']} process(es), not {env.world_size}: the random "
                      "streams are reseeded, so the result differs from an uninterrupted run")
        seed_everything(cfg.seed * 1000 + env.rank + 7919 * start_epoch)

    epochs_run, record = 0, records[-1] if records else None
    for epoch in range(start_epoch, cfg.epochs):
        stage = 1 if epoch < cfg.stage1_epochs else 2
        ctx.stage = stage
        if stage == 2 and ctx.teacher is not None:
            ctx.teacher.remove_hooks()
            ctx.teacher = teacher = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            _log(env, f"stage 2 from epoch {epoch + 1}: teacher dropped")
        settings = StreamSettings(seed=f"{cfg.seed}:{epoch}:rank{env.rank}", batch_size=rank_batch,
                                  num_classes=num_classes, mode=image_mode(in_chans), transform=t_train,
                                  shuffle_buffer=cfg.shuffle_buffer, interleave=cfg.shard_interleave,
                                  repeats=cfg.repeats, mix=tuple(cfg.mix) if cfg.mix else None,
                                  soft=stored and stage == 1)
        loader = train_loader(infos, settings, steps, workers, set(health.bad))
        stats, num_updates = train_one_epoch(ctx, loader, steps, num_updates,
                                             desc=f"epoch {epoch + 1}/{cfg.epochs} stage {stage}",
                                             progress=env.main and not cfg.quiet)
        health.merge(gather_objects(health.bad, env.world_size))  # every rank stops together at the limit
        record = {"epoch": epoch + 1, "stage": stage, **stats, "bad_shards": len(health.bad)}
        # Evaluating, probing attention and plotting cost ~20% of a small CPU run: every eval_every epochs and last.
        measured = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
        if val_info is not None and measured:
            loader = eval_loader(val_info, t_eval, in_chans, num_classes, eval_batch, workers, env.rank,
                                 env.world_size)
            models = {"model": model, **({"ema": ema.module} if ema is not None else {})}
            results = evaluate(models, loader, device, amp_dtype, env.world_size)
            record.update(val_top1=results["model"]["top1"], val_top5=results["model"]["top5"],
                          val_n=results["model"]["n"])
            if ema is not None:
                record.update(ema_val_top1=results["ema"]["top1"], ema_val_top5=results["ema"]["top5"])
        if probe is not None and measured:
            record["attn_distance"] = average_attention_distance(model, probe)
        rng = gather_objects(rng_state(device), env.world_size)
        improved = record.get("val_top1") is not None and (best_top1 is None or record["val_top1"] > best_top1)
        if improved:
            best_top1 = record["val_top1"]
        if env.main:
            records.append(record)
            write_metrics(metrics_path, records)
            state = {
                "format": CHECKPOINT_FORMAT,
                "config": cfg.to_json(),
                "model_args": model_args,
                "pairs": _pairs_json(pairs),
                "model": model.state_dict(),
                "aligners": aligners.state_dict(),
                "ema": ema.module.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch + 1,
                "stage": stage,
                "num_updates": num_updates,
                "best_top1": best_top1,
                "world_size": env.world_size,
                "rng": pack_rng(rng),
                "bad_shards": json.dumps(health.bad),
            }
            save_checkpoint(state, last_path)
            if improved:
                save_checkpoint({k: state[k] for k in ("format", "config", "model_args", "pairs", "model", "ema",
                                                       "epoch", "stage", "best_top1")}, best_path)
            if measured:
                plot_curves(records, out / "curves.png", cfg.stage1_epochs)
            _log(env, summary_line(record, cfg.epochs))
        epochs_run += 1
        if cfg.stop_after is not None and epochs_run >= cfg.stop_after and epoch + 1 < cfg.epochs:
            _log(env, f"stopping after {epochs_run} epoch(s) as asked; continue with --resume")
            break
    return {"out": str(out), "last": str(last_path), "best": str(best_path) if best_path.exists() else None,
            "epochs_run": epochs_run, "epoch": record["epoch"] if record else start_epoch, "best_top1": best_top1,
            "metrics": record, "rank": env.rank, "world_size": env.world_size}


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, device: str = "auto", batch_size: int = 256,
                        workers: int | None = None, ema: bool = False, labels_file: str | None = None,
                        image_key: str | None = None, label_key: str = "cls") -> dict[str, Any]:
    """Top-1/top-5 (percent) and image count of a checkpoint's student on a source (dfgen dataset, ImageFolder,
    .tar shards, or a flat directory with `labels_file`), with the student's own evaluation transform; inference
    averages the two heads."""
    ckpt = load_checkpoint(checkpoint)
    if device == "cuda" and not torch.cuda.is_available():
        raise DistillError("--device cuda was asked for, but no CUDA device is available; use --device cpu")
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    model = model_from_checkpoint(ckpt, ema=ema).to(dev)
    info = open_dataset(data, num_classes=model.num_classes, image_key=image_key, label_key=label_key,
                        labels_file=labels_file)
    if info.num_classes not in (None, model.num_classes):
        raise DistillError(f"{data} has {info.num_classes} classes, the checkpoint's student {model.num_classes}")
    in_chans = model.patch_embed.proj.in_channels
    if info.kind == "shards" and info.in_chans not in (None, in_chans):
        raise DistillError(f"{data} holds {info.in_chans}-channel images, the checkpoint's student takes {in_chans}")
    workers = workers if workers is not None else (8 if dev.type == "cuda" else 0)
    loader = eval_loader(info, eval_transform(resolve_data_config({}, model=model)), in_chans, model.num_classes,
                         batch_size, workers)
    amp_dtype = torch.bfloat16 if dev.type == "cuda" else None
    return evaluate({"model": model}, loader, dev, amp_dtype)["model"]
