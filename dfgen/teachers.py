"""Teachers: resolve a name (alias, timm, torchvision or the bundled digits CNN) to a frozen model
with its data config, checking what inversion needs (BatchNorm layers, a linear classifier)."""

from __future__ import annotations

import difflib
import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfgen.errors import DfgenError

# Short names users type -> "library:model". regnety_16gf is the DeiT/DearKD teacher (83.0% top-1).
ALIASES = {
    "regnety_16gf": "timm:regnety_160.deit_in1k",
    "digits": "dfgen:digits",
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Teacher:
    """A frozen classifier plus what the rest of the pipeline needs to know about it."""

    model: nn.Module
    name: str  # as the user gave it
    source: str  # "timm:<name>", "torchvision:<name>" or "dfgen:digits"
    input_size: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    weights_sha256: str
    interpolation: str = "bilinear"

    @property
    def in_chans(self) -> int:
        return self.input_size[0]

    @property
    def resolution(self) -> int:
        return self.input_size[1]

    def describe(self) -> dict[str, Any]:
        """The teacher's entry in dataset.json."""
        return {
            "name": self.name,
            "source": self.source,
            "weights_sha256": self.weights_sha256,
            "num_classes": self.num_classes,
            "data_config": {
                "input_size": list(self.input_size),
                "mean": list(self.mean),
                "std": list(self.std),
                "interpolation": self.interpolation,
            },
        }


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over parameter/buffer names and raw bytes: the same weights give the same value
    whatever file format (timm or torchvision keys, wrapped or not) they came from."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        data = tensor.detach().cpu().contiguous().reshape(-1)
        if data.dtype == torch.bool:
            data = data.to(torch.uint8)
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict with torch.load(weights_only=True): a pickle with code in it is refused."""
    path = Path(path)
    if not path.is_file():
        raise DfgenError(f"teacher weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DfgenError(
            f"{path} holds pickled code or objects, not only tensors; refused (loaded with weights_only=True). "
            "Re-save it as a plain state dict: torch.save(model.state_dict(), FILE)"
        ) from exc
    except Exception as exc:  # torch raises many types for files that are not checkpoints
        raise DfgenError(f"{path} is not a PyTorch checkpoint ({str(exc).splitlines()[0][:120]})") from exc
    if isinstance(obj, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DfgenError(f"{path} is a checkpoint but not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def known_names() -> list[str]:
    import timm
    import torchvision

    return sorted(
        set(ALIASES)
        | set(timm.list_models())
        | set(timm.list_models(pretrained=True))
        | set(torchvision.models.list_models(module=torchvision.models))
    )


def suggest(name: str, limit: int = 5) -> list[str]:
    return difflib.get_close_matches(name, known_names(), n=limit, cutoff=0.5)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _load_timm(name: str, weights: Path | None, pretrained: bool) -> nn.Module:
    import timm

    try:
        if weights is not None:
            read_checkpoint(weights)  # validate first: clear errors, weights_only refusal
            # timm loads the file (weights_only=True) and applies the model's key filter, which
            # also converts torchvision key names for the models timm ported from torchvision.
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
        return timm.create_model(name, pretrained=pretrained)
    except DfgenError:
        raise
    except RuntimeError as exc:
        if weights is not None:
            raise DfgenError(f"weights in {weights} do not fit timm model {name}: {_first_line(exc)}") from exc
        raise _download_error(name, exc) from exc
    except Exception as exc:  # network and hub errors come in many types
        raise _download_error(name, exc) from exc


def _download_error(name: str, exc: BaseException) -> DfgenError:
    return DfgenError(
        f"could not get pretrained weights for {name} ({_first_line(exc)}); without network, download them on a "
        "connected machine and pass --teacher-weights FILE"
    )


def _load_torchvision(name: str, weights: Path | None, pretrained: bool) -> tuple[nn.Module, int]:
    import torchvision

    model_weights = torchvision.models.get_model_weights(name).DEFAULT if pretrained else None
    crop = int(model_weights.transforms().crop_size[0]) if model_weights is not None else 224
    if weights is not None:
        model = torchvision.models.get_model(name, weights=None)
        state = read_checkpoint(weights)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise DfgenError(f"weights in {weights} do not fit torchvision model {name}: {_first_line(exc)}") from exc
        return model, crop
    try:
        return torchvision.models.get_model(name, weights=model_weights), crop
    except Exception as exc:
        raise _download_error(name, exc) from exc


def classifier_of(model: nn.Module) -> nn.Module:
    """The final linear layer; its input is the penultimate embedding the diversity losses use."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Linear):
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise DfgenError("the teacher has no linear classifier layer; dfgen needs one for the embedding")
    return linears[-1]


def load_teacher(
    name: str,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    pretrained: bool = True,
) -> Teacher:
    """Resolve `name` and return the frozen teacher in eval mode on `device`.

    `pretrained=False` builds random weights (for speed benchmarks and tests only)."""
    weights_path = Path(weights) if weights is not None else None
    source = ALIASES.get(name, name)
    library, _, model_name = source.rpartition(":")
    interpolation = "bilinear"
    if library == "dfgen" and model_name == "digits":
        from dfgen.zoo.digits import load_digits_teacher

        if weights_path is not None:
            read_checkpoint(weights_path)
        model = load_digits_teacher(weights_path) if pretrained or weights_path else _random_digits()
    elif library in ("", "timm") and _is_timm(model_name):
        library = "timm"
        model = _load_timm(model_name, weights_path, pretrained)
    elif library in ("", "torchvision", "tv") and _is_torchvision(model_name):
        library = "torchvision"
        model, crop = _load_torchvision(model_name, weights_path, pretrained)
    else:
        close = suggest(name)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DfgenError(f"unknown teacher {name!r}{hint} (timm or torchvision model names, or: digits, regnety_16gf)")

    model.eval().requires_grad_(False)
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        raise DfgenError(
            f"teacher {name} has no BatchNorm2d layers; DeepInversion matches BatchNorm statistics, so it needs a "
            "CNN with BatchNorm (e.g. a ResNet or RegNet)"
        )
    classifier = classifier_of(model)
    if library == "torchvision":
        in_chans = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
        input_size, mean, std = (in_chans, crop, crop), IMAGENET_MEAN, IMAGENET_STD
    else:
        from timm.data import resolve_model_data_config

        cfg = resolve_model_data_config(model)
        input_size = tuple(int(v) for v in cfg["input_size"])
        mean = tuple(float(v) for v in cfg["mean"])
        std = tuple(float(v) for v in cfg["std"])
        interpolation = cfg.get("interpolation", "bilinear")
    num_classes = int(getattr(model, "num_classes", 0) or classifier.out_features)
    sha = state_dict_sha256(model)
    return Teacher(
        model=model.to(device),
        name=name,
        source=f"{library}:{model_name}",
        input_size=input_size,
        mean=mean,
        std=std,
        num_classes=num_classes,
        weights_sha256=sha,
        interpolation=interpolation,
    )


def _random_digits() -> nn.Module:
    from dfgen.zoo.digits import DigitsNet

    return DigitsNet()


def _is_timm(name: str) -> bool:
    import timm

    return bool(name) and timm.is_model(name)


def _is_torchvision(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)
