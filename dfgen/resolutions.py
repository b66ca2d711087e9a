"""Which input sizes a teacher accepts, and, when its forward pass fails, which layer failed and why.

Many small teachers only take their training size (LeNet-5's last 5x5 convolution needs a 5x5 map; a CIFAR net
that flattens into a Linear layer needs 32x32). Synthesis probes every stage's resolution before it starts and, for
a stage the teacher rejects, optimises the low-resolution image but shows the teacher an upsampled copy at its own
size ("upsample" multi-resolution; docs/design.md)."""

from __future__ import annotations

import torch
from torch import nn

from dfgen.config import AUTO
from dfgen.errors import DfgenError


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def failing_layer(model: nn.Module, x: torch.Tensor) -> tuple[str | None, BaseException | None]:
    """Run `model(x)` with hooks that track which module is running: (innermost module that raised, the error),
    or (None, None) if the forward pass succeeds. Only for diagnosis: the hooks cost time."""
    names = {module: name for name, module in model.named_modules()}
    stack: list[str] = []

    def enter(module: nn.Module, _inputs) -> None:
        stack.append(names.get(module, type(module).__name__))

    def leave(module: nn.Module, _inputs, _output) -> None:
        if stack:
            stack.pop()

    handles = [m.register_forward_pre_hook(enter) for m in names] + [m.register_forward_hook(leave) for m in names]
    try:
        with torch.no_grad():
            model(x)
        return None, None
    except Exception as exc:  # diagnosing the teacher's failure is the point: any error
        layer = stack[-1] if stack else None
        return (f"{layer} ({type(_module_by_name(model, layer)).__name__})" if layer else "the model"), exc
    finally:
        for handle in handles:
            handle.remove()


def _module_by_name(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules()).get(name, model)


def describe_failure(model: nn.Module, shape: tuple[int, ...], device: torch.device | str) -> str | None:
    """One line naming the failing layer for an input of `shape`, or None if the teacher runs at that shape."""
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    layer, exc = failing_layer(model, torch.zeros(*shape, device=device, dtype=dtype))
    if exc is None:
        return None
    return f"layer {layer}: {type(exc).__name__}: {_first_line(exc)}"


def accepted_resolutions(model: nn.Module, in_chans: int, sizes: list[int],
                         device: torch.device | str = "cpu") -> dict[int, str | None]:
    """size -> None if the teacher runs on a (1, in_chans, size, size) input, else why not (one line)."""
    return {size: describe_failure(model, (1, in_chans, size, size), device) for size in sorted(set(sizes))}


def resolve_multires(requested: str, schedule: list[tuple[int, int]], teacher_size: int,
                     accepted: dict[int, str | None], teacher_name: str) -> str:
    """"native" (each stage at its own size, the paper's) or "upsample" (the teacher always sees its own size).

    auto: native when the teacher accepts every stage's size, else upsample. An explicit "native" that the teacher
    cannot run, or a teacher that fails at its own input size, is an error that says what to do."""
    own = accepted.get(teacher_size)
    if own is not None:
        raise DfgenError(f"teacher {teacher_name} fails on its own input size {teacher_size}x{teacher_size} ({own}); "
                         "pass --image-size with the size it was trained at")
    rejected = {res: why for res, why in accepted.items() if why is not None and res in {r for r, _ in schedule}}
    if requested == "upsample" or (requested == AUTO and rejected):
        return "upsample"
    if rejected:  # native was asked for explicitly
        res, why = min(rejected.items())
        raise DfgenError(f"teacher {teacher_name} rejects the {res}x{res} stage of the schedule ({why}); use "
                         f"--multires upsample (or auto) to optimise at {res} and show the teacher {teacher_size}, or "
                         f"a --schedule of sizes it accepts")
    return "native"
