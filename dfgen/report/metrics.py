"""Measures of `dfgen report`: the deterministic pair sampler, intra-class LPIPS, teacher agreement,
penultimate-feature diversity, and how per-pair / per-class values are aggregated."""

from __future__ import annotations

import contextlib
import itertools
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfgen.errors import DfgenError
from dfgen.teachers import Teacher, classifier_of

LPIPS_NETS = ("alex", "vgg", "squeeze")
# lpips builds its backbone with torchvision's legacy `pretrained=True`, which torchvision maps to
# these weight enums; their URLs name the file torch.hub caches in $TORCH_HOME/hub/checkpoints/.
_BACKBONE_WEIGHTS = {
    "alex": ("AlexNet_Weights", "IMAGENET1K_V1"),
    "vgg": ("VGG16_Weights", "IMAGENET1K_V1"),
    "squeeze": ("SqueezeNet1_1_Weights", "IMAGENET1K_V1"),
}
LPIPS_MIN_SIDE = 64  # LPIPS's backbones need some spatial extent; small images are upsampled to this


# --------------------------------------------------------------------------- sampling and aggregation


def sample_pairs(n: int, pairs: int, seed: int, label: int) -> list[tuple[int, int]]:
    """`pairs` distinct unordered pairs (i < j) of `n` items, as a sorted list; all pairs when there
    are no more than that. Deterministic in (seed, label) and independent of the other classes."""
    if n < 2 or pairs <= 0:
        return []
    every = list(itertools.combinations(range(n), 2))
    if pairs >= len(every):
        return every
    rng = np.random.default_rng([seed, label])
    chosen = np.sort(rng.choice(len(every), size=pairs, replace=False))
    return [every[i] for i in chosen]


def aggregate(values_by_class: dict[int, Sequence[float]], class_names: Sequence[str]) -> dict:
    """{"mean", "per_class": {name: value}}: per class the mean of its values (None without values),
    and "mean" the mean over the classes that have a value (every class weighs the same, however many
    pairs or images it had). None when no class has a value."""
    per_class: dict[str, float | None] = {}
    for label, name in enumerate(class_names):
        values = values_by_class.get(label) or []
        per_class[name] = float(np.mean(values)) if len(values) else None
    present = [v for v in per_class.values() if v is not None]
    return {"mean": float(np.mean(present)) if present else None, "per_class": per_class}


def mean_pairwise_distance(features: torch.Tensor) -> float | None:
    """Mean Euclidean distance over all pairs of L2-normalized feature vectors (in [0, 2]), the same
    embedding geometry as the synthesis diversity losses; None for fewer than two vectors."""
    if features.shape[0] < 2:
        return None
    z = F.normalize(features.double().flatten(1), dim=1)
    return float(torch.pdist(z).mean())


# --------------------------------------------------------------------------- image tensors


def to_float(images: Sequence[np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(img)).float().div_(255.0) for img in images]


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, C, H, W): replicate grey to colour or average colour to grey."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    raise DfgenError(f"cannot feed {x.shape[1]}-channel images to a {channels}-channel model")


def stack_common(images: Sequence[torch.Tensor], fallback: tuple[int, int] | None = None) -> torch.Tensor:
    """Stack (C, H, W) images; mixed sizes are resized (bilinear) to `fallback` or the most common size."""
    shapes = Counter(tuple(img.shape[-2:]) for img in images)
    if len(shapes) == 1:
        return torch.stack(list(images))
    size = fallback or shapes.most_common(1)[0][0]
    return torch.stack([_resize(img[None], size)[0] for img in images])


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def lpips_size(height: int, width: int) -> tuple[int, int]:
    """Upsample so the shorter side is at least LPIPS_MIN_SIDE (aspect kept); larger images stay."""
    short = min(height, width)
    if short >= LPIPS_MIN_SIDE:
        return height, width
    scale = LPIPS_MIN_SIDE / short
    return max(LPIPS_MIN_SIDE, round(height * scale)), max(LPIPS_MIN_SIDE, round(width * scale))


# --------------------------------------------------------------------------- LPIPS


def backbone_file(net: str) -> tuple[str, Path]:
    """(URL, cache path) of the torchvision backbone that lpips.LPIPS(net=...) loads."""
    import torchvision

    enum_name, tag = _BACKBONE_WEIGHTS[net]
    url = getattr(torchvision.models, enum_name)[tag].url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def load_lpips(net: str, device: torch.device) -> nn.Module:
    """lpips.LPIPS(net=net, pretrained=True): linear layers from the lpips package, backbone from
    torchvision through torch.hub's cache. Without network and without the cached file, raise a
    DfgenError that names the exact file and directory to put it in."""
    if net not in LPIPS_NETS:
        raise DfgenError(f"--lpips-net must be one of {', '.join(LPIPS_NETS)} or none, got {net!r}")
    import lpips

    url, path = backbone_file(net)
    had_file = path.is_file()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's deprecation of `pretrained=`, used inside lpips
            model = lpips.LPIPS(net=net, pretrained=True, verbose=False)
    except Exception as exc:  # network, hub and unpickling errors come in many types
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        if had_file:
            raise DfgenError(
                f"the LPIPS backbone file {path} cannot be loaded ({reason}); replace it with a fresh download of "
                f"{url}"
            ) from exc
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)  # never leave a half-downloaded file where the next run would trust it
        raise DfgenError(
            f"the LPIPS backbone for --lpips-net {net} could not be downloaded ({reason}); on a machine without "
            f"network, download {url} elsewhere and put it at {path} (the directory is $TORCH_HOME/hub/checkpoints/, "
            "TORCH_HOME defaulting to ~/.cache/torch), or pass --lpips-net none to skip LPIPS"
        ) from exc
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def lpips_distances(
    model: nn.Module,
    images: Sequence[torch.Tensor],
    pairs: Sequence[tuple[int, int]],
    device: torch.device,
    chunk: int = 32,
) -> list[float]:
    """LPIPS distance of each pair: images (C, H, W) in [0, 1], grey replicated to 3 channels,
    resized (bilinear) so the shorter side is at least 64, scaled to [-1, 1]."""
    if not pairs:
        return []
    used = sorted({i for pair in pairs for i in pair})
    batch = stack_common([images[i] for i in used])
    batch = match_channels(batch, 3)
    batch = _resize(batch, lpips_size(*batch.shape[-2:])) * 2 - 1
    where = {image: row for row, image in enumerate(used)}
    out: list[float] = []
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        left = batch[[where[i] for i, _ in part]].to(device)
        right = batch[[where[j] for _, j in part]].to(device)
        out.extend(float(v) for v in model(left, right).flatten().cpu())
    return out


# --------------------------------------------------------------------------- teacher


@dataclass
class TeacherOutputs:
    predicted: torch.Tensor  # (N,) int64
    target_prob: torch.Tensor  # (N,) float, softmax probability of the image's label
    features: torch.Tensor  # (N, D) penultimate features (the classifier's input)


class TeacherRunner:
    """Runs a teacher on decoded images and captures its penultimate features (the input of its final
    linear layer) with a forward pre-hook. Inputs are normalized with the data config the dataset was
    made with."""

    def __init__(self, teacher: Teacher, mean: Sequence[float], std: Sequence[float], device: torch.device) -> None:
        self.teacher = teacher
        self.model = teacher.model.to(device).eval()
        self.device = device
        self.channels = teacher.in_chans
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        if self.mean.shape[1] not in (1, self.channels) or self.std.shape[1] not in (1, self.channels):
            raise DfgenError(
                f"the data config's mean/std have {self.mean.shape[1]} values but teacher {teacher.name} takes "
                f"{self.channels} channels"
            )
        self._captured: list[torch.Tensor] = []
        self._hook = classifier_of(self.model).register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple) -> None:
        self._captured.append(inputs[0].detach().flatten(1).float().cpu())

    def close(self) -> None:
        self._hook.remove()

    @torch.no_grad()
    def run(self, images: Sequence[torch.Tensor], labels: Iterable[int], batch_size: int = 64) -> TeacherOutputs:
        """Images (C, H, W) in [0, 1] at their own size (the teacher saw each synthesis stage at its
        resolution); mixed sizes are resized to the teacher's input size."""
        labels_t = torch.as_tensor(list(labels), dtype=torch.long)
        x = stack_common(images, fallback=tuple(self.teacher.input_size[1:]))
        x = (match_channels(x, self.channels) - self.mean) / self.std
        predicted, probs, features = [], [], []
        for start in range(0, x.shape[0], batch_size):
            self._captured.clear()
            logits = self.model(x[start : start + batch_size].to(self.device)).float().cpu()
            if not self._captured:
                raise DfgenError(f"teacher {self.teacher.name}: its final linear layer was not called; cannot read "
                                 "penultimate features")
            features.append(self._captured[-1])
            p = logits.softmax(dim=1)
            predicted.append(p.argmax(dim=1))
            probs.append(p.gather(1, labels_t[start : start + batch_size, None]).squeeze(1))
        return TeacherOutputs(torch.cat(predicted), torch.cat(probs), torch.cat(features))
