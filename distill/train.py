"""`distill.train(config)`: two-stage DearKD training (SPEC section 5) with DDP, checkpoints and exact resume.

Stage 1 (epochs [0, stage1_epochs)): DeiT hard distillation from the CNN teacher plus the hidden loss through the
aligners. Stage 2: the teacher is dropped and freed, both heads learn the labels. One cosine schedule spans both.

RUN_DIR holds last.pt (every epoch, atomic), best.pt (best val top-1), metrics.jsonl (one line per epoch) and
curves.png. Checkpoints are plain dicts of tensors and numbers (config as a JSON string) and load with
`torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import dataclasses
import difflib
import gc
import json
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.distributed as dist
from timm.data import Mixup, resolve_data_config
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, world_info_from_env
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distill.config import TrainConfig, build_config
from distill.data import (
    DatasetInfo,
    ShardHealth,
    eval_loader,
    eval_transform,
    open_dataset,
    open_training_sets,
    probe_images,
    steps_per_epoch,
    train_loader,
    train_transform,
)
from distill.engine import EpochContext, StudentForward, evaluate, train_one_epoch
from distill.errors import DistillError
from distill.losses import label_criterion
from distill.models import Aligner, DearKD, average_attention_distance
from distill.teacher_features import Pair, Stage, TeacherFeatures, resolve_pairs, teacher_stages

CHECKPOINT_FORMAT = "distill-checkpoint-v1"


# ------------------------------------------------------------------------------------------------ environment
@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> DistEnv:
    """Rank and world from torchrun's (or SLURM's) environment; a process group when there are several ranks
    (NCCL on GPUs, gloo on CPU)."""
    local_rank, rank, world_size = world_info_from_env()
    if device == "cuda" and not torch.cuda.is_available():
        raise DistillError("--device cuda was asked for, but no CUDA device is available; use --device cpu")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    env = DistEnv(rank, world_size, local_rank, dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
        env.owns_group = True
    return env


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision in ("bf16", "fp16") and device.type != "cuda":
        raise DistillError(f"--precision {precision} needs a CUDA device; use fp32 (or auto) on CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# ------------------------------------------------------------------------------------------------ RNG states
def _rng_state(device: torch.device) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _pack_rng(states: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Every rank's generator states as tensors (row r = rank r), so weights_only loading can read them."""
    packed = {
        "torch": torch.stack([s["torch"] for s in states]),
        "numpy_keys": torch.from_numpy(np.stack([s["numpy"][1] for s in states]).astype(np.int64)),
        "numpy_pos": torch.tensor([[s["numpy"][2], s["numpy"][3]] for s in states], dtype=torch.int64),
        "numpy_gauss": torch.tensor([s["numpy"][4] for s in states], dtype=torch.float64),
        "python": torch.tensor([list(s["python"][1]) for s in states], dtype=torch.int64),
        "python_gauss": torch.tensor([float("nan") if s["python"][2] is None else s["python"][2] for s in states],
                                     dtype=torch.float64),
    }
    if states[0]["cuda"] is not None:
        packed["cuda"] = torch.stack([s["cuda"] for s in states])
    return packed


def _restore_rng(packed: dict[str, torch.Tensor], rank: int, device: torch.device) -> None:
    torch.set_rng_state(packed["torch"][rank].clone())
    if device.type == "cuda" and "cuda" in packed:
        torch.cuda.set_rng_state(packed["cuda"][rank].clone(), device)
    pos, has_gauss = (int(v) for v in packed["numpy_pos"][rank])
    keys = packed["numpy_keys"][rank].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, pos, has_gauss, float(packed["numpy_gauss"][rank])))
    gauss = float(packed["python_gauss"][rank])
    random.setstate((3, tuple(int(v) for v in packed["python"][rank]), None if np.isnan(gauss) else gauss))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------ model
def create_student(name: str, num_classes: int, in_chans: int, img_size: int | None, drop_path: float) -> DearKD:
    """A registered DearKD student (`dearkd_*`, `deit_micro_patch4_32`) built through timm."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DistillError(f"unknown student model {name!r}{hint} (students: {', '.join(student_names())})")
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans, "drop_path_rate": drop_path}
    if img_size:
        kwargs["img_size"] = img_size
    model = timm.create_model(name, pretrained=False, **kwargs) if _is_student(name) else None
    if not isinstance(model, DearKD):
        raise DistillError(f"{name} is not a DearKD student; use one of {', '.join(student_names())}")
    return model


def student_names() -> list[str]:
    return sorted(n for n in timm.list_models() if _is_student(n))


def _is_student(name: str) -> bool:
    return name in timm.list_models(module="dearkd")


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


# ------------------------------------------------------------------------------------------------ checkpoints
def _save_atomic(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a distill checkpoint with `weights_only=True` (a file carrying code is refused)."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for files that are not (safe) checkpoints
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise DistillError(f"{path} is not a distill checkpoint that loads with weights_only=True ({first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise DistillError(f"{path} is not a distill checkpoint (made by `distill run`)")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], ema: bool = False) -> DearKD:
    """Rebuild the student of a checkpoint (EMA weights if asked and present)."""
    args = json.loads(ckpt["model_args"])
    model = create_student(args["name"], args["num_classes"], args["in_chans"], args["img_size"], 0.0)
    state = ckpt.get("ema") if ema else ckpt["model"]
    if state is None:
        raise DistillError("the checkpoint holds no EMA weights (the run had ema: false)")
    model.load_state_dict(state)
    return model


# ------------------------------------------------------------------------------------------------ logging
def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def plot_curves(records: list[dict[str, Any]], path: Path, stage1_epochs: int) -> None:
    """curves.png: loss terms, accuracy and the per-block attention distance over epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in ("loss", "loss_cls", "loss_dist", "loss_hidden"):
        points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
        if points:
            axes[0].plot(*zip(*points, strict=True), marker=".", label=key)
    axes[0].set_title("training loss")
    for key in ("val_top1", "val_top5", "ema_val_top1"):
        points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
        if points:
            axes[1].plot(*zip(*points, strict=True), marker=".", label=key)
    axes[1].set_title("validation accuracy (%)")
    dists = [r.get("attn_distance") for r in records]
    if dists and all(dists):
        for block in range(len(dists[0])):
            axes[2].plot(epochs, [d[block] for d in dists], label=f"block {block}")
    axes[2].set_title("average attention distance (px)")
    for ax in axes:
        ax.set_xlabel("epoch")
        if 0 < stage1_epochs < max(epochs, default=0):
            ax.axvline(stage1_epochs + 0.5, color="grey", linestyle=":", linewidth=1)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f"tmp-{os.getpid()}-{path.name}")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def _log(env: DistEnv, message: str) -> None:
    if env.main:
        print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ training
def _absolute(cfg: TrainConfig) -> TrainConfig:
    """Data paths made absolute, so the configuration compared on --resume does not depend on the cwd."""
    return dataclasses.replace(
        cfg,
        shards=[str(Path(s).resolve()) for s in cfg.shards],
        val=str(Path(cfg.val).resolve()) if cfg.val else None,
        teacher_weights=str(Path(cfg.teacher_weights).resolve()) if cfg.teacher_weights else None,
    )


def _load_teacher(cfg: TrainConfig, infos: list[DatasetInfo], model: DearKD, device: torch.device,
                  data_config: dict[str, Any]) -> tuple[TeacherFeatures, list[Pair], str]:
    from dfgen.teachers import load_recorded_teacher, load_teacher

    name = cfg.teacher
    recorded = [i.teacher for i in infos if i.teacher and i.teacher.get("name")]
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


def train(config: TrainConfig | None = None, **overrides: Any) -> dict[str, Any]:
    """Run (or resume) a two-stage DearKD training; returns a summary (last metrics, paths, best top-1).

    `train(build_config("configs/distill_digits.yaml", shards=[...], val=..., out=...))` or
    `train(shards=[...], model="dearkd_micro_patch4_32", teacher="digits", epochs=3, ...)`.
    Under torchrun every rank calls it; rank 0 logs and writes the run directory.
    """
    cfg = dataclasses.replace(config, **overrides) if config is not None else build_config(**overrides)
    env = setup_distributed(cfg.device)
    try:
        return _train(_absolute(cfg), env)
    finally:
        if env.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, env: DistEnv) -> dict[str, Any]:
    device = env.device
    amp_dtype = resolve_precision(cfg.precision, device)
    out = Path(cfg.out)
    last_path, best_path, metrics_path = out / "last.pt", out / "best.pt", out / "metrics.jsonl"

    # data
    infos = open_training_sets(cfg.shards)
    val_info = open_dataset(cfg.val) if cfg.val else None
    num_classes = cfg.num_classes or infos[0].num_classes
    if not num_classes:
        raise DistillError("the training data's dataset.json gives no num_classes; pass --num-classes")
    in_chans = cfg.in_chans or infos[0].in_chans or 3
    if val_info is not None and val_info.num_classes not in (None, num_classes):
        raise DistillError(f"--val {val_info.path} has {val_info.num_classes} classes, the training data {num_classes}")
    if cfg.batch_size % env.world_size:
        raise DistillError(f"--batch-size {cfg.batch_size} is not divisible by the {env.world_size} processes")
    rank_batch = cfg.batch_size // env.world_size
    if cfg.mixing and rank_batch % 2:
        raise DistillError(f"mixup/cutmix need an even batch per process, got {rank_batch}")
    steps = steps_per_epoch(infos, cfg.batch_size)

    # resume or start
    ckpt = None
    if last_path.is_file():
        if not cfg.resume:
            raise DistillError(f"{out} already holds a run (last.pt); pass --resume to continue it or choose another "
                               "--out")
        ckpt = load_checkpoint(last_path)
        saved = TrainConfig.from_json(ckpt["config"]).content()
        changed = sorted(k for k in saved if saved[k] != cfg.content().get(k))
        if changed:
            raise DistillError(f"--resume: {last_path} was made with different settings ({', '.join(changed)}); "
                               "resume with the same ones or use another --out")
    elif cfg.resume:
        _log(env, f"no checkpoint in {out}: starting from scratch")
    start_epoch = int(ckpt["epoch"]) if ckpt else 0
    if start_epoch >= cfg.epochs:
        _log(env, f"{out} is already trained for {cfg.epochs} epochs")

    _seed_everything(cfg.seed)
    model = create_student(cfg.model, num_classes, in_chans, cfg.img_size, cfg.drop_path).to(device)
    data_config = resolve_data_config({}, model=model)
    needs_teacher = start_epoch < cfg.stage1_epochs
    teacher, pairs, teacher_name = None, [], None
    if needs_teacher:
        teacher, pairs, teacher_name = _load_teacher(cfg, infos, model, device, data_config)
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
    if ckpt is not None:
        trainable.load_state_dict({**{f"model.{k}": v for k, v in ckpt["model"].items()},
                                   **{f"aligners.{k}": v for k, v in ckpt["aligners"].items()}})
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            ema.module.load_state_dict(ckpt["ema"])
        num_updates = int(ckpt["num_updates"])
        best_top1 = ckpt.get("best_top1")
        best_top1 = float(best_top1) if best_top1 is not None else None
        _log(env, f"resuming {out} after epoch {start_epoch} (stage {1 if needs_teacher else 2})")

    student: nn.Module = StudentForward(model)
    if env.world_size > 1:
        student = DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)
    mixup = None
    if cfg.mixing:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                      switch_prob=cfg.mixup_switch_prob, mode="batch", label_smoothing=cfg.smoothing,
                      num_classes=num_classes)
    ctx = EpochContext(student=student, model=model, optimizer=optimizer, scheduler=scheduler,
                       criterion=label_criterion(cfg.mixing, cfg.smoothing), device=device, amp_dtype=amp_dtype,
                       scaler=scaler, mixup=mixup, teacher=teacher, aligners=aligners if pairs else None,
                       pairs=tuple(pairs), hidden_weight=cfg.hidden_weight, clip_grad=cfg.clip_grad, ema=ema,
                       world_size=env.world_size)
    t_train, t_eval = train_transform(cfg, data_config), eval_transform(data_config)
    workers = cfg.workers if cfg.workers is not None else (
        min(8, max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))))
        if device.type == "cuda" else 0)
    eval_batch = cfg.eval_batch_size or rank_batch
    probe = probe_images(val_info or infos[0], t_eval, in_chans, cfg.attn_images) if env.main else None
    health = ShardHealth(cfg.max_bad_shards, env.rank)

    records = [r for r in _read_metrics(metrics_path) if r.get("epoch", 0) <= start_epoch] if ckpt else []
    model_args = json.dumps({"name": cfg.model, "num_classes": num_classes, "in_chans": in_chans,
                             "img_size": cfg.img_size})
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1, sort_keys=True) + "\n")
        _log(env, f"distill: {cfg.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
                  f"{in_chans}x{model.patch_embed.img_size[0]}x{model.patch_embed.img_size[1]}, {num_classes} classes)"
                  f" on {sum(i.n for i in infos)} images, {steps} steps/epoch x {cfg.epochs} epochs "
                  f"(stage 1: {cfg.stage1_epochs}), batch {cfg.batch_size} on {env.world_size} process(es), "
                  f"{device}, lr {lr:.2e}" + (f", teacher {teacher_name}" if teacher_name else "")
                  + "".join(f", align block {p.block} <- {p.stage.name} ({p.stage.channels}x{p.stage.hw[0]}x"
                            f"{p.stage.hw[1]})" for p in pairs))

    # the RNG goes last: nothing between here and the first epoch may draw from it, so a resumed run continues
    # the very same random streams
    if ckpt is not None and int(ckpt["world_size"]) == env.world_size:
        _restore_rng(ckpt["rng"], env.rank, device)
    else:
        if ckpt is not None:
            _log(env, f"the checkpoint was made by {ckpt['world_size']} process(es), not {env.world_size}: the random "
                      "streams are reseeded, so the result differs from an uninterrupted run")
        _seed_everything(cfg.seed * 1000 + env.rank + 7919 * start_epoch)

    epochs_run, record = 0, records[-1] if records else None
    for epoch in range(start_epoch, cfg.epochs):
        stage = 1 if epoch < cfg.stage1_epochs else 2
        if stage == 2 and ctx.teacher is not None:
            ctx.teacher.remove_hooks()
            ctx.teacher = teacher = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            _log(env, f"stage 2 from epoch {epoch + 1}: teacher dropped")
        loader = train_loader(infos, t_train, in_chans, num_classes, rank_batch, steps,
                              f"{cfg.seed}:{epoch}:rank{env.rank}", cfg.shuffle_buffer, workers, health)
        stats, num_updates = train_one_epoch(ctx, loader, steps, num_updates,
                                             desc=f"epoch {epoch + 1}/{cfg.epochs} stage {stage}",
                                             progress=env.main and not cfg.quiet)
        record = {"epoch": epoch + 1, "stage": stage, **stats, "bad_shards": len(health.bad)}
        # Evaluating, probing attention and plotting cost ~20% of a small CPU run: every eval_every epochs and last.
        measured = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
        if val_info is not None and measured:
            loader = eval_loader(val_info, t_eval, in_chans, eval_batch, workers, env.rank, env.world_size)
            result = evaluate(model, loader, device, amp_dtype, env.world_size)
            record.update(val_top1=result["top1"], val_top5=result["top5"], val_n=result["n"])
            if ema is not None:
                loader = eval_loader(val_info, t_eval, in_chans, eval_batch, workers, env.rank, env.world_size)
                record["ema_val_top1"] = evaluate(ema.module, loader, device, amp_dtype, env.world_size)["top1"]
        if probe is not None and measured:
            record["attn_distance"] = average_attention_distance(model, probe)
        rng = [_rng_state(device)]
        if env.world_size > 1:
            rng = [None] * env.world_size
            dist.all_gather_object(rng, _rng_state(device))
        improved = record.get("val_top1") is not None and (best_top1 is None or record["val_top1"] > best_top1)
        if improved:
            best_top1 = record["val_top1"]
        if env.main:
            records.append(record)
            _write_metrics(metrics_path, records)
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
                "rng": _pack_rng(rng),
            }
            _save_atomic(state, last_path)
            if improved:
                _save_atomic({k: state[k] for k in ("format", "config", "model_args", "pairs", "model", "ema",
                                                    "epoch", "stage", "best_top1")}, best_path)
            if measured:
                plot_curves(records, out / "curves.png", cfg.stage1_epochs)
            _log(env, _summary_line(record, cfg.epochs))
        epochs_run += 1
        if cfg.stop_after is not None and epochs_run >= cfg.stop_after and epoch + 1 < cfg.epochs:
            _log(env, f"stopping after {epochs_run} epoch(s) as asked; continue with --resume")
            break
    return {"out": str(out), "last": str(last_path), "best": str(best_path) if best_path.exists() else None,
            "epochs_run": epochs_run, "epoch": record["epoch"] if record else start_epoch, "best_top1": best_top1,
            "metrics": record, "rank": env.rank, "world_size": env.world_size}


def _summary_line(r: dict[str, Any], epochs: int) -> str:
    terms = " ".join(f"{k.removeprefix('loss_')} {r[k]:.4f}" for k in ("loss_cls", "loss_dist", "loss_hidden")
                     if k in r)
    text = (f"epoch {r['epoch']}/{epochs} stage {r['stage']}: loss {r['loss']:.4f} ({terms}) lr {r['lr']:.2e} "
            f"{r['images_per_s']:.0f} img/s")
    if "val_top1" in r:
        text += f" val top1 {r['val_top1']:.2f}% top5 {r['val_top5']:.2f}%"
    if "attn_distance" in r:
        text += " attn " + "/".join(f"{d:.1f}" for d in r["attn_distance"])
    return text


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, device: str = "auto", batch_size: int = 256,
                        workers: int | None = None, ema: bool = False) -> dict[str, Any]:
    """Top-1/top-5 (percent) and image count of a checkpoint's student on a dataset (dfgen format or ImageFolder),
    with the student's own evaluation transform; inference averages the two heads."""
    ckpt = load_checkpoint(checkpoint)
    if device == "cuda" and not torch.cuda.is_available():
        raise DistillError("--device cuda was asked for, but no CUDA device is available; use --device cpu")
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    model = model_from_checkpoint(ckpt, ema=ema).to(dev)
    info = open_dataset(data)
    if info.num_classes not in (None, model.num_classes):
        raise DistillError(f"{data} has {info.num_classes} classes, the checkpoint's student {model.num_classes}")
    in_chans = model.patch_embed.proj.in_channels
    if info.in_chans not in (None, in_chans):
        raise DistillError(f"{data} holds {info.in_chans}-channel images, the checkpoint's student takes {in_chans}")
    workers = workers if workers is not None else (8 if dev.type == "cuda" else 0)
    loader = eval_loader(info, eval_transform(resolve_data_config({}, model=model)), in_chans, batch_size, workers)
    amp_dtype = torch.bfloat16 if dev.type == "cuda" else None
    return evaluate(model, loader, dev, amp_dtype)
