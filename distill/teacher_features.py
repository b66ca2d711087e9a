"""The teacher side of stage 1: its logits and intermediate stage maps from one forward pass, and which student
block is aligned with which teacher stage (the Aligner's targets).

Stages are the teacher's `feature_info` modules (timm models and the bundled digits CNN describe them), or, for
models without it (torchvision), its top-level children that output a 4-D map. Maps are taken with forward hooks,
so the teacher's own forward (and its logits) is used unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.task.distillation import DistillationTeacher
from torch import nn

from distill.errors import DistillError
from distill.models import DearKD


@dataclass(frozen=True)
class Stage:
    """One teacher stage: its module name, channel count and spatial size at the student's input size."""

    index: int
    name: str
    channels: int
    hw: tuple[int, int]


@dataclass(frozen=True)
class Pair:
    """Student block `block` (0-based, as `DearKD.forward_intermediates`) is aligned with teacher stage `stage`."""

    block: int
    stage: Stage

    @property
    def key(self) -> str:
        return f"b{self.block}_{self.stage.name.replace('.', '_')}"


def pairs_to_json(pairs: list[Pair]) -> str:
    """The pairs as a checkpoint stores them (the aligners they size outlive the teacher)."""
    return json.dumps([{"block": p.block, **dataclasses.asdict(p.stage)} for p in pairs])


def pairs_from_json(text: str) -> list[Pair]:
    return [Pair(d["block"], Stage(d["index"], d["name"], d["channels"], tuple(d["hw"]))) for d in json.loads(text)]


def _candidate_modules(model: nn.Module) -> list[str]:
    info = getattr(model, "feature_info", None)
    if info is not None:
        dicts = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
        names = [d["module"] for d in dicts if isinstance(d, dict) and d.get("module")]
        if names:
            return names
    return [name for name, _ in model.named_children()]


def _probe_outputs(model: nn.Module, names: list[str], input_size: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """The outputs of the named modules on one zero image, in the order the forward pass produced them."""
    outputs, hooks = {}, []
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        hooks.append(module.register_forward_hook(lambda m, i, o, name=name: outputs.setdefault(name, o)))
    param = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=param.device, dtype=param.dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def _maps(outputs: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    return [(name, out) for name, out in outputs.items() if isinstance(out, torch.Tensor) and out.dim() == 4]


def teacher_stages(model: nn.Module, input_size: tuple[int, int, int]) -> list[Stage]:
    """The hookable stages of `model` with their output channels and sizes for a `(C, H, W)` input (one probe
    forward pass of a zero image): timm's feature_info modules, else the top-level children; for a model whose
    children give no feature map (a network wrapped in one Sequential, a user's model file) the last module at
    each spatial size, in forward order."""
    maps = _maps(_probe_outputs(model, _candidate_modules(model), input_size))
    if not maps:
        every = [name for name, _ in model.named_modules() if name]
        by_size: dict[tuple[int, int], tuple[str, torch.Tensor]] = {}
        for name, out in _maps(_probe_outputs(model, every, input_size)):
            by_size.pop(tuple(out.shape[2:]), None)  # re-insert: the size's entry moves to its latest module
            by_size[tuple(out.shape[2:])] = (name, out)
        maps = list(by_size.values())
    stages = [Stage(i, name, int(out.shape[1]), (int(out.shape[2]), int(out.shape[3])))
              for i, (name, out) in enumerate(maps)]
    if not stages:
        raise DistillError("could not find any intermediate feature map of the teacher to align with")
    return stages


def parse_align(text: str) -> list[tuple[int, str]]:
    """`"4:s3,2:stage2"` -> [(4, "s3"), (2, "stage2")]: student block index : teacher stage (name or index)."""
    pairs = []
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(-?\d+)\s*:\s*([\w.\-]+)\s*", part)
        if not match:
            raise DistillError(f"--align must look like BLOCK:STAGE[,BLOCK:STAGE...] (e.g. 4:s3), got {text!r}")
        pairs.append((int(match.group(1)), match.group(2)))
    return pairs


def default_block(student: DearKD) -> int:
    """A middle block of the early (MHCA) part; for a student without MHCA the same position (first 2/3)."""
    depth = len(student.blocks)
    early = student.num_mhca_blocks or max(1, round(depth * 2 / 3))
    return early // 2


def nearest_stage(stages: list[Stage], grid: tuple[int, int]) -> Stage:
    """The stage whose map has the student's patch-grid size (the deepest such), else the closest in size."""
    def distance(s: Stage) -> float:
        return abs(math.log(s.hw[0] / grid[0])) + abs(math.log(s.hw[1] / grid[1]))

    return min(reversed(stages), key=distance)


def resolve_pairs(align: str | None, student: DearKD, stages: list[Stage]) -> list[Pair]:
    """The block/stage pairs in force: `--align` if given, else one default pair."""
    depth = len(student.blocks)
    if not align:
        return [Pair(default_block(student), nearest_stage(stages, tuple(student.grid_size)))]
    by_name = {s.name: s for s in stages}
    pairs = []
    for block, stage_ref in parse_align(align):
        if not -depth <= block < depth:
            raise DistillError(f"--align block {block} is out of range: the student has blocks 0..{depth - 1}")
        stage = by_name.get(stage_ref)
        if stage is None and re.fullmatch(r"-?\d+", stage_ref) and -len(stages) <= int(stage_ref) < len(stages):
            stage = stages[int(stage_ref)]
        if stage is None:
            listed = ", ".join(f"{s.index}:{s.name} ({s.channels}x{s.hw[0]}x{s.hw[1]})" for s in stages)
            raise DistillError(f"--align: the teacher has no stage {stage_ref!r}; its stages are {listed}")
        pairs.append(Pair(block % depth, stage))
    return pairs


def match_size(feature_map: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Resize a teacher map to the student grid: area pooling when larger, bilinear when smaller."""
    if tuple(feature_map.shape[-2:]) == tuple(hw):
        return feature_map
    if feature_map.shape[-2] >= hw[0] and feature_map.shape[-1] >= hw[1]:
        return F.adaptive_avg_pool2d(feature_map, hw)
    return F.interpolate(feature_map, size=hw, mode="bilinear", align_corners=False)


class TeacherFeatures(nn.Module):
    """Frozen teacher returning `(logits, {stage name: map})` for a batch normalized for the *student*.

    Wraps the model in timm's `DistillationTeacher` (eval mode; it re-normalizes the student's input to the
    teacher's mean/std). With `input_size` (H, W), a batch of another size is resized to it first (the teacher sees
    the size it was trained at; `interpolation`: "bilinear" or "bicubic", antialiased). Runs without gradients, in
    bf16 autocast on CUDA; maps come back as float32.
    """

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...],
                 student_mean: tuple[float, ...], student_std: tuple[float, ...], stage_names: list[str],
                 input_size: tuple[int, int] | None = None, interpolation: str = "bilinear") -> None:
        super().__init__()
        self.input_size = tuple(input_size) if input_size is not None else None
        self.interpolation = "bicubic" if interpolation == "bicubic" else "bilinear"
        device = next(model.parameters()).device
        self.kd = DistillationTeacher(model, device=device)
        # the Teacher's data config is authoritative (torchvision models carry no pretrained_cfg)
        self.kd.mean_kd = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.kd.std_kd = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.register_buffer("student_mean", torch.tensor(student_mean, device=device).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("student_std", torch.tensor(student_std, device=device).view(1, -1, 1, 1),
                             persistent=False)
        self.stage_names = list(dict.fromkeys(stage_names))
        self._maps: dict[str, torch.Tensor] = {}
        self._hooks = [
            model.get_submodule(name).register_forward_hook(
                lambda m, i, o, name=name: self._maps.__setitem__(name, o))
            for name in self.stage_names
        ]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.kd.eval()
        self._maps.clear()
        x = self.kd.normalize_input(x, self.student_mean, self.student_std)
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode=self.interpolation, align_corners=False, antialias=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            logits = self.kd(x)
        maps = {name: self._maps[name].float() for name in self.stage_names}
        self._maps.clear()
        return logits.float(), maps

    def remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
