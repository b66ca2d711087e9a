"""Checkpoint I/O of `distill run`: files written so that a power loss leaves the old or the new one, never part
of one; checkpoints read with `weights_only=True`; what a run's checkpoint holds and where a resumed run starts; the
student a checkpoint describes; every rank's RNG state.

Checkpoints are plain dicts of tensors, numbers and JSON strings (config, model_args, pairs, bad_shards), in timm's
layout: the student's weights under `state_dict` (and `model`, the same tensors, stored once), its EMA under
`state_dict_ema`, so `timm.models.load_checkpoint(model, path, use_ema=...)` reads either. Files of the earlier
layout (`model`, EMA under `ema`) still load and resume: `load_checkpoint` gives both layouts as one.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfgen.atomic import TMP_MARK, write_atomic  # one writer for both tools: host/rank/PID/random temporaries
from distill.config import TrainConfig
from distill.distributed import DistEnv
from distill.errors import DistillError
from distill.identity import DATA_FIELDS
from distill.models import DearKD
from distill.student import create_student

CHECKPOINT_FORMAT = "distill-checkpoint-v2"  # v2: timm's keys (state_dict, state_dict_ema)
READABLE_FORMATS = ("distill-checkpoint-v1", CHECKPOINT_FORMAT)
# what best.pt keeps of last.pt: enough to evaluate or fine-tune the student, not to resume the run
BEST_KEYS = ("format", "config", "model_args", "pairs", "model", "ema", "epoch", "stage", "best_top1")


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    write_atomic(path, lambda handle: torch.save(obj, handle))


def remove_stale_temporaries(out: Path) -> int:
    """Delete the temporaries a killed run left in its run directory (only rank 0 writes there)."""
    if not out.is_dir():
        return 0
    stale = [p for p in out.iterdir() if TMP_MARK in p.name and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


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
    if not isinstance(ckpt, dict) or ckpt.get("format") not in READABLE_FORMATS:
        raise DistillError(f"{path} is not a distill checkpoint (made by `distill run`)")
    return from_file_layout(ckpt)


def to_file_layout(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint as written: the student under `state_dict` and `model` (one copy on disk: torch.save stores a
    tensor once however often it is named), the EMA under `state_dict_ema` (left out without one)."""
    state = dict(state)
    ema = state.pop("ema", None)
    if "model" in state:
        state["state_dict"] = state["model"]
    if ema is not None:
        state["state_dict_ema"] = ema
    return state


def from_file_layout(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint of either layout as the trainer reads it: the student under `model`, the EMA under `ema`."""
    ckpt = dict(ckpt)
    weights = ckpt.pop("state_dict", None)
    if weights is not None:
        ckpt["model"] = weights
    if "state_dict_ema" in ckpt:
        ckpt["ema"] = ckpt.pop("state_dict_ema")
    ckpt.setdefault("ema", None)
    return ckpt


# ------------------------------------------------------------------------------------------------ a run's checkpoints
def resume_point(cfg: TrainConfig, env: DistEnv, out: Path,
                 identity: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The checkpoint to continue from (None: a fresh run); refuses a run directory made with other settings. The
    data is compared by `identity` (distill.identity: content, not paths) where the checkpoint stores one, so data
    that moved resumes and different data is refused."""
    last_path = out / "last.pt"
    if env.main and remove_stale_temporaries(out):
        env.log(f"removed temporary files a killed run left in {out}")
    if not last_path.is_file():
        if cfg.resume:
            env.log(f"no checkpoint in {out}: starting from scratch")
        return None
    if not cfg.resume:
        raise DistillError(f"{out} already holds a run (last.pt); pass --resume to continue it or choose another --out")
    ckpt = load_checkpoint(last_path)
    try:
        saved = TrainConfig.from_json(ckpt["config"]).content()
    except (KeyError, TypeError, ValueError) as exc:
        raise DistillError(f"{last_path} holds no readable run settings ({exc}); it is damaged: start again in "
                           "another --out") from None
    changed = sorted(k for k in saved if saved[k] != cfg.content().get(k))
    moved = [k for k in changed if k in DATA_FIELDS]
    stored = _stored_identity(ckpt)
    if moved and stored is not None and identity is not None:
        if stored != identity:
            raise DistillError(f"--resume: {last_path} was made with other data ({', '.join(moved)} hold different "
                               "images); resume with the same data or use another --out")
        changed = [k for k in changed if k not in DATA_FIELDS]
        if not changed:
            env.log(f"the data moved ({', '.join(moved)}), with the same content: resuming on it")
    if changed:
        raise DistillError(f"--resume: {last_path} was made with different settings ({', '.join(changed)}); "
                           "resume with the same ones or use another --out")
    return ckpt


def _stored_identity(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return json.loads(ckpt["data_identity"])
    except (KeyError, TypeError, ValueError):  # a checkpoint from before identities were stored: paths decide
        return None


def save_epoch_checkpoints(out: Path, state: dict[str, Any], improved: bool) -> None:
    """last.pt every epoch; best.pt (its `BEST_KEYS`) when the validation top-1 improved; both in timm's layout."""
    save_checkpoint(to_file_layout(state), out / "last.pt")
    if improved:
        save_checkpoint(to_file_layout({k: state[k] for k in BEST_KEYS}), out / "best.pt")


# ------------------------------------------------------------------------------------------------ the student
def model_from_checkpoint(ckpt: dict[str, Any], ema: bool = False) -> DearKD:
    """Rebuild the student of a checkpoint, with its model_kwargs (EMA weights if asked and present)."""
    try:
        args = json.loads(ckpt["model_args"])
        name, num_classes, in_chans, img_size = (args[k] for k in ("name", "num_classes", "in_chans", "img_size"))
    except (KeyError, TypeError, ValueError) as exc:
        raise DistillError(f"the checkpoint's model_args are missing or malformed ({exc}); it was not written by "
                           "`distill run`") from None
    model = create_student(name, num_classes, in_chans, img_size, 0.0, args.get("model_kwargs"))
    state = ckpt.get("ema") if ema else ckpt.get("model")
    if state is None:
        raise DistillError("the checkpoint holds no EMA weights (the run had ema: false)" if ema else
                           "the checkpoint holds no model weights")
    load_weights(model, state, "the checkpoint's " + ("EMA weights" if ema else "weights"))
    return model


def load_weights(module: torch.nn.Module, state: Any, what: str) -> None:
    """`module.load_state_dict(state)`, with one line naming the missing, unexpected and misshapen keys instead of
    torch's many-line error."""
    if not isinstance(state, dict):
        raise DistillError(f"{what} are not a mapping of parameter names to tensors")
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = sorted(k for k in set(own) & set(state)
                       if not isinstance(state[k], torch.Tensor) or state[k].shape != own[k].shape)
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            problems.append(f"{label} {', '.join(keys[:4])}" + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""))
    if misshapen:
        shown = [f"{k} ({_shape(state[k])} stored, {_shape(own[k])} expected)" for k in misshapen[:3]]
        problems.append("wrong shape " + ", ".join(shown) + (f" (+{len(misshapen) - 3} more)"
                                                             if len(misshapen) > 3 else ""))
    if problems:
        raise DistillError(f"{what} do not fit the student they describe: {'; '.join(problems)}")
    module.load_state_dict(state)


def _shape(value: Any) -> str:
    return "x".join(str(d) for d in value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


# ------------------------------------------------------------------------------------------------ RNG states
def rng_state(device: torch.device) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def pack_rng(states: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
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


def restore_rng(packed: dict[str, torch.Tensor], rank: int, device: torch.device) -> None:
    torch.set_rng_state(packed["torch"][rank].clone())
    if device.type == "cuda" and "cuda" in packed:
        torch.cuda.set_rng_state(packed["cuda"][rank].clone(), device)
    pos, has_gauss = (int(v) for v in packed["numpy_pos"][rank])
    keys = packed["numpy_keys"][rank].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, pos, has_gauss, float(packed["numpy_gauss"][rank])))
    gauss = float(packed["python_gauss"][rank])
    random.setstate((3, tuple(int(v) for v in packed["python"][rank]), None if np.isnan(gauss) else gauss))


@contextlib.contextmanager
def kept_rng(device: torch.device) -> Iterator[None]:
    """Every generator (torch, CUDA, numpy, Python) as it was before the block, whatever the block drew."""
    state = pack_rng([rng_state(device)])
    try:
        yield
    finally:
        restore_rng(state, 0, device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
