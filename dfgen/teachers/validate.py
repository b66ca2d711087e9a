"""What inversion needs from a teacher: BatchNorm layers with running statistics, a linear classifier (its input
is the embedding), a first convolution, and class and channel counts that agree with what was asked for."""

from __future__ import annotations

from torch import nn

from dfgen.errors import DfgenError


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


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next((name for name, m in model.named_modules() if m is module), "")


def check_running_statistics(model: nn.Module, name: str) -> None:
    """Refuse a teacher whose BatchNorm layers keep no running statistics (`track_running_stats=False`): the BN
    loss matches the batch's statistics to them, so there is nothing to match."""
    missing = [layer for layer, m in model.named_modules()
               if isinstance(m, nn.BatchNorm2d) and (m.running_mean is None or m.running_var is None)]
    if missing:
        listed = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise DfgenError(f"teacher {name}: BatchNorm layer(s) {listed} keep no running statistics "
                         "(track_running_stats=False), which DeepInversion matches; use a teacher built with "
                         "track_running_stats=True and weights trained that way")


def check_teacher(model: nn.Module, name: str, library: str, num_classes: int | None, in_chans: int | None,
                  require_batchnorm: bool) -> tuple[int, int]:
    """Check a built model against what inversion needs and what was asked for: (class count, input channels)."""
    if require_batchnorm and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        raise DfgenError(
            f"teacher {name} has no BatchNorm2d layers; DeepInversion matches BatchNorm statistics, so it needs a "
            "CNN with BatchNorm (e.g. a ResNet or RegNet)"
        )
    if require_batchnorm:
        check_running_statistics(model, name)
    classifier = classifier_of(model)
    count = getattr(model, "num_classes", None)
    model_classes = int(count) if isinstance(count, int) and count > 0 else int(classifier.out_features)
    if num_classes is not None and num_classes != model_classes:
        hint = " (pass it to your factory with --teacher-kwargs)" if library == "factory" else ""
        raise DfgenError(f"teacher {name} has {model_classes} classes but --num-classes {num_classes}{hint}")
    conv = first_conv(model)
    if conv is None:
        raise DfgenError(f"teacher {name} has no Conv2d layer; dfgen inverts convolutional image classifiers")
    channels = conv.in_channels  # the truth for every source, whatever a data config says
    if in_chans is not None and in_chans != channels:
        hint = " (pass it to your factory with --teacher-kwargs)" if library == "factory" else ""
        raise DfgenError(f"teacher {name}'s first convolution takes {channels} channels but --in-chans {in_chans}"
                         f"{hint}")
    return model_classes, channels
