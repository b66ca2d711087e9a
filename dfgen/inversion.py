"""The inversion engine: optimise one batch of images against a frozen teacher through the
multi-resolution schedule. One batch in, uint8 images and per-image facts out; no I/O here."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfgen import losses as L
from dfgen.config import JITTER_FRACTION, LR, UPSAMPLE, WARMUP, LossWeights
from dfgen.cost import watch_teacher
from dfgen.early_stop import DEFAULT_WINDOW, StageStop
from dfgen.errors import SynthesisError
from dfgen.jitter import draw_stage_jitter
from dfgen.resolutions import describe_failure
from dfgen.soft_views import draw_view_boxes, view_logits
from dfgen.teachers import check_running_statistics, classifier_of


@dataclass
class EngineSettings:
    schedule: list[tuple[int, int]]
    weights: LossWeights  # resolved: no "auto" left (dfgen.probe)
    teacher_resolution: int | None = None  # the teacher's input size; None: the last stage's
    lr: float = LR
    warmup: int = WARMUP
    upsample: str = UPSAMPLE
    jitter_fraction: float = JITTER_FRACTION
    flip: bool = True  # resolved: the paper's jitter flips (`dfgen synthesize` decides "auto" with a probe)
    multires: str = "native"  # "upsample": stages below the teacher's size are shown to it upsampled
    crop_min_scale: float | None = None  # random-resized crops in the loop (None: off)
    early_stop: float | None = None  # a stage's relative loss improvement per window below which it ends (None: off)
    early_stop_window: int = DEFAULT_WINDOW
    precision: str = "fp32"  # resolved: fp32, bf16 or fp16
    log_every: int = 50
    channels_last: bool = False
    compile: bool = False  # torch.compile the teacher + loss (pays for small teachers; see README)
    output_resolution: int | None = None  # written size; None: the last stage's (upsampled if larger)
    soft_topk: int = 0  # teacher logits kept per image (top-k; 0: none)
    soft_views: int = 0  # augmented views per image labelled by the teacher too (dfgen.soft_views; 0: none)
    soft_view_min_scale: float = 0.25  # smallest area fraction of a view's crop
    bn_noise_levels: list[float] | None = None  # normalized form: each BN layer's loss on noise (None: measured)


@dataclass
class BatchResult:
    images: Tensor  # uint8 (B, C, H, W) on the CPU
    target_prob: Tensor  # teacher probability of the target label on the quantised images
    predicted: Tensor  # teacher top-1 on the quantised images
    losses: dict[str, float]  # the last logged loss terms of the last stage
    lr_scale: float  # 1.0, or the lowered scale of a retry after a non-finite loss
    soft_index: Tensor | None = None  # (B, k) classes of the teacher's top-k logits on the written images
    soft_logit: Tensor | None = None  # (B, k) those logits
    view_boxes: Tensor | None = None  # (B, K, 5) each image's stored views (top, left, height, width, flip)
    view_index: Tensor | None = None  # (B, K, k) classes of the teacher's top-k logits on each view
    view_logit: Tensor | None = None  # (B, K, k) those logits


class TeacherProbe(nn.Module):
    """Runs the teacher once and returns logits, the penultimate embedding and the per-layer
    BatchNorm statistic losses, collected by hooks (no activations are kept). A context manager:
    leaving it removes the hooks."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        check_running_statistics(model, type(model).__name__)
        self.model = model
        self.bn_layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        self._bn_losses: list[Tensor] = []
        self._embedding: Tensor | None = None
        self.recording = False
        self._handles = [m.register_forward_hook(self._bn_hook) for m in self.bn_layers]
        self._handles.append(classifier_of(model).register_forward_pre_hook(self._embedding_hook))
        self._handles.append(watch_teacher(model))  # every image through the teacher is counted (dfgen.cost)

    def _bn_hook(self, module: nn.BatchNorm2d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if self.recording:
            mean, var = L.channel_stats(inputs[0])
            self._bn_losses.append(L.bn_layer_loss(mean, var, module.running_mean, module.running_var))

    def _embedding_hook(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        if self.recording:
            self._embedding = inputs[0].flatten(1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        self._bn_losses, self._embedding = [], None
        self.recording = True
        try:
            logits = self.model(x)
        finally:
            self.recording = False
        return logits, self._embedding, self._bn_losses

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> TeacherProbe:
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()


NOISE_IMAGES = 16  # the noise batch that measures each BN layer's loss on noise


def bn_noise_levels(probe: TeacherProbe, in_chans: int, size: int, device: torch.device) -> list[float]:
    """Each BN layer's statistics loss on a fixed batch of Gaussian noise at the teacher's size (what every
    inversion starts from), in fp32: the unit of the normalized BN term. Layers whose noise statistics already match
    are floored at 1% of the median level, so no layer's term is blown up."""
    noise = torch.randn(NOISE_IMAGES, in_chans, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        with torch.no_grad():
            _, _, layer_losses = probe(noise)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # the user's teacher can raise anything
        if is_out_of_memory(exc):
            raise
        raise teacher_failure(probe.model, noise, exc, f"on the start-up noise batch ({NOISE_IMAGES} images "
                              f"{size}x{size}, the unit of the normalized BN loss)") from None
    levels = torch.stack([v.float() for v in layer_losses]).cpu()
    levels = levels.clamp_min(0.01 * float(levels.median()) + 1e-12)
    return [float(f"{v:.6g}") for v in levels.tolist()]


def teacher_failure(model: nn.Module, batch: Tensor, exc: Exception, when: str) -> SynthesisError:
    """One line for a failure of the user's teacher: when it happened and the innermost failing layer (found by
    rerunning one image of the batch's shape; if one image runs, the layer is unknown and the error is quoted)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    where = describe_failure(model, tuple(batch.shape), batch.device) or f"{type(exc).__name__}: {first}"
    return SynthesisError(f"the teacher failed {when} at {where}; "
                          "`dfgen teachers --check NAME` lists the sizes it accepts")


def lr_at(iteration: int, iterations: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up over `warmup` iterations, then cosine to 0 at the end of the stage."""
    warmup = min(warmup, iterations // 2)
    if iteration < warmup:
        return base_lr * (iteration + 1) / warmup
    progress = (iteration - warmup) / max(1, iterations - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def objective(
    logits: Tensor,
    embedding: Tensor,
    bn_layer_losses: list[Tensor],
    jittered: Tensor,
    labels: Tensor,
    weights: LossWeights,
    noise_levels: Tensor | None = None,
    competitor: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """All terms of eq. 8 and their weighted total (fp32), plus the diversity terms' activity shares. The
    normalized form needs each BN layer's loss on noise (`noise_levels`, see bn_noise_levels); the competition
    term (DeepInversion's ADI) needs a `competitor` (logits of a view) and a `weights.competition`."""
    normalized = weights.form == "normalized"
    if normalized and noise_levels is None:
        raise ValueError("the normalized objective needs the BN layers' noise levels")
    terms = {
        "ce": F.cross_entropy(logits.float(), labels),
        "bn": L.bn_loss(bn_layer_losses, weights.first_bn_multiplier, noise_levels if normalized else None),
        "tv_l2": L.tv_l2(jittered, per_element=normalized) if weights.tv_l2 else None,
        "tv_l1": L.tv_l1(jittered) if weights.tv_l1 else None,
        "l2": L.l2_prior(jittered, per_element=normalized) if weights.l2 else None,
    }
    if weights.competition and competitor is None:
        raise ValueError("the competition term needs a competitor")
    activity = {}
    if weights.ep or weights.triplet:
        diversity = L.diversity_terms(embedding, labels, weights.ep_reach, weights.margin)
        terms["ep"], terms["triplet"] = diversity["ep"], diversity["triplet"]
        activity = {"ep_active": diversity["ep_active"], "triplet_active": diversity["triplet_active"]}
    terms = {k: v for k, v in terms.items() if v is not None}
    total = terms["ce"]
    for key, value in terms.items():
        if key != "ce":  # every other term has a weight of the same name
            total = total + getattr(weights, key) * value.float()
    if weights.competition:  # the competitor runs last: the other terms are computed exactly as without it
        terms["competition"] = L.competition_loss(logits, competitor(jittered))
        total = total + weights.competition * terms["competition"].float()
    return {**terms, **activity, "total": total}


class InversionEngine:
    """Inverts batches for one teacher. Random draws come only from the batch seed (CPU generator),
    so a batch's images do not depend on the device index, the rank or the order of batches.
    A context manager: leaving it removes the hooks from the teacher."""

    def __init__(
        self,
        model: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        settings: EngineSettings,
        device: torch.device,
        competitor: nn.Module | None = None,
    ) -> None:
        if bool(settings.weights.competition) != (competitor is not None):
            raise ValueError("a competitor and a competition weight go together")
        self.settings = settings
        self.device = device
        model = model.to(device).eval().requires_grad_(False)
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.probe = TeacherProbe(model)
        if competitor is not None:  # ADI's student, frozen: it only shapes the images (dfgen.competitor)
            competitor = competitor.to(device).eval().requires_grad_(False)
            if settings.channels_last:  # it sees the teacher's view, in the teacher's layout
                competitor = competitor.to(memory_format=torch.channels_last)
        self.competitor = competitor
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.low, self.high = (0 - self.mean) / self.std, (1 - self.mean) / self.std  # valid pixel range
        self.in_chans = len(mean)
        self._stage = (settings.schedule[0][0], self.teacher_view_size(settings.schedule[0][0]))  # for messages
        self.noise_levels = None
        if settings.weights.form == "normalized":
            size = settings.teacher_resolution or settings.schedule[-1][0]
            try:
                levels = settings.bn_noise_levels or bn_noise_levels(self.probe, self.in_chans, size, device)
            except BaseException:
                self.close()  # not entered yet: leave the teacher without our hooks
                raise
            self.noise_levels = torch.tensor(levels, device=device)
        # One graph for teacher forward, hooks and loss terms; the jitter stays outside so that the
        # graph's input shape is fixed per stage (one compilation per resolution).
        self._loss_terms = torch.compile(self._forward_loss) if settings.compile else self._forward_loss

    def __enter__(self) -> InversionEngine:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.probe.remove()

    def _forward_loss(self, jittered: Tensor, labels: Tensor) -> dict[str, Tensor]:
        with self._autocast():
            logits, embedding, bn_terms = self.probe(jittered)
        competitor = self._competitor_logits if self.competitor is not None else None
        return objective(logits, embedding, bn_terms, jittered, labels, self.settings.weights, self.noise_levels,
                         competitor)

    def _competitor_logits(self, view: Tensor) -> Tensor:
        with self._autocast():
            return self.competitor(view)

    def _autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.settings.precision)
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def invert(
        self,
        labels: Tensor,
        seed: int,
        on_log: Callable[[str, int, int, dict[str, float]], None] | None = None,
    ) -> BatchResult:
        """Optimise a batch for `labels`; retry once with a 10x lower lr if the loss goes non-finite. Running out of
        memory is one line that names the batch layout and what to lower (OutOfMemory)."""
        try:
            try:
                return self._invert(labels, seed, 1.0, on_log)
            except _NonFinite:
                try:
                    return self._invert(labels, seed, 0.1, on_log)
                except _NonFinite as exc:
                    raise SynthesisError(
                        f"the loss of the batch with seed {seed} became non-finite ({exc}) and again after a retry "
                        "with a 10x lower learning rate; lower --lr or the loss weights"
                    ) from None
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            resolution, view = self._stage
            seen = f" (the teacher sees {view}px)" if view != resolution else ""
            where = (f"out of memory on {self.device} inverting a batch of {labels.shape[0]} images in the "
                     f"{resolution}px stage{seen}, {self.settings.precision}")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # the caller may retry with a smaller batch
        raise OutOfMemory(where)

    def teacher_view_size(self, resolution: int) -> int:
        """The size the teacher sees during a stage optimised at `resolution`."""
        s = self.settings
        return (s.teacher_resolution or s.schedule[-1][0]) if s.multires == "upsample" else resolution

    def _invert(self, labels: Tensor, seed: int, lr_scale: float, on_log) -> BatchResult:
        s = self.settings
        generator = torch.Generator().manual_seed(seed)
        labels = labels.to(self.device)
        batch = labels.shape[0]
        first_res = s.schedule[0][0]
        x = torch.randn(batch, self.in_chans, first_res, first_res, generator=generator).to(self.device)
        scaler = torch.amp.GradScaler(self.device.type) if s.precision == "fp16" else None
        logged: dict[str, float] = {}
        for resolution, iterations in s.schedule:
            self._stage = (resolution, self.teacher_view_size(resolution))
            if x.shape[-1] != resolution:
                x = self._resize(x, resolution).clamp_(self.low, self.high)
            if s.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            x = x.detach().requires_grad_(True)
            optimizer = torch.optim.Adam([x], lr=s.lr * lr_scale, betas=(0.5, 0.9), eps=1e-8, fused=True)
            view_size = self.teacher_view_size(resolution)
            jitter = draw_stage_jitter(generator, iterations, view_size, s.jitter_fraction, s.flip, s.crop_min_scale)
            stop = StageStop(s.early_stop, s.early_stop_window) if s.early_stop else None
            for it in range(iterations):
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(it, iterations, s.lr * lr_scale, s.warmup)
                shown = x if view_size == resolution else self._resize(x, view_size)
                view = jitter.view(shown, it, view_size)
                terms = self._teacher_terms(view, labels, resolution)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(terms["total"]).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    terms["total"].backward()
                    optimizer.step()
                with torch.no_grad():
                    x.clamp_(self.low, self.high)  # in place: no temporaries per iteration
                settled = stop is not None and stop.settled(it, terms["total"])
                last = it == iterations - 1 or settled
                if last or (s.log_every and (it + 1) % s.log_every == 0):
                    # The only host sync of the loop, every log_every iterations (and --early-stop's windows).
                    logged = {k: float(v.detach()) for k, v in terms.items()}
                    if not math.isfinite(logged["total"]):
                        raise _NonFinite(f"stage {resolution}px iteration {it + 1}: total={logged['total']}")
                    if on_log is not None:
                        on_log(f"{resolution}px", it + 1, iterations, logged)
                if settled:
                    break
        if not torch.isfinite(x).all():
            raise _NonFinite("non-finite pixels")
        x = x.detach()
        if s.output_resolution and s.output_resolution != x.shape[-1]:
            x = self._resize(x.float(), s.output_resolution)
        return self._finish(x, labels, logged, lr_scale, generator)

    def _teacher_terms(self, view: Tensor, labels: Tensor, resolution: int) -> dict[str, Tensor]:
        """The loss terms; a failure of the teacher's forward pass becomes one line naming stage and layer."""
        try:
            return self._loss_terms(view, labels)
        except (SynthesisError, KeyboardInterrupt):
            raise
        except Exception as exc:  # the user's teacher can raise anything
            if is_out_of_memory(exc):
                raise
            size = view.shape[-1]
            raise teacher_failure(self.probe.model, view, exc,
                                  f"in the {resolution}px stage (input {size}x{size})") from None

    def _resize(self, x: Tensor, resolution: int) -> Tensor:
        """Stage change, teacher view and output size. Enlarging uses the `upsample` mode; shrinking (a last stage
        larger than the written size) is always bilinear with antialiasing, so no detail is aliased into the image."""
        if resolution < x.shape[-1]:
            return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                                 antialias=True)
        if self.settings.upsample == "nearest":
            return F.interpolate(x, size=(resolution, resolution), mode="nearest")
        return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def _finish(self, x: Tensor, labels: Tensor, logged: dict[str, float], lr_scale: float,
                generator: torch.Generator) -> BatchResult:
        """Quantise to uint8 and re-run the teacher on exactly the pixels that will be written (and on their stored
        views, drawn last from the batch's generator)."""
        images = ((x.float() * self.std + self.mean).clamp(0, 1) * 255).round().to(torch.uint8)
        normalised = (images.float() / 255 - self.mean) / self.std
        with self._autocast():
            logits = self.probe.model(normalised).float()
        probs = logits.softmax(dim=1)
        target_prob = probs.gather(1, labels[:, None]).squeeze(1)
        soft_index = soft_logit = None
        if self.settings.soft_topk:
            top = logits.topk(min(self.settings.soft_topk, logits.shape[1]), dim=1)
            soft_index, soft_logit = top.indices.cpu(), top.values.cpu()
        result = BatchResult(images.cpu().contiguous(), target_prob.cpu(), probs.argmax(dim=1).cpu(), logged,
                             lr_scale, soft_index, soft_logit)
        if self.settings.soft_topk and self.settings.soft_views:
            boxes = draw_view_boxes(generator, len(images), self.settings.soft_views, images.shape[-1],
                                    self.settings.soft_view_min_scale, self.settings.flip)
            with self._autocast():
                views = view_logits(self.probe.model, normalised, boxes.to(normalised.device))
            top = views.float().topk(min(self.settings.soft_topk, views.shape[-1]), dim=-1)
            result.view_boxes, result.view_index, result.view_logit = boxes, top.indices.cpu(), top.values.cpu()
        return result


class _NonFinite(Exception):
    pass


class OutOfMemory(SynthesisError, torch.OutOfMemoryError):
    """The device ran out of memory. `where` says in which batch and stage; the message adds what to do (the
    pipeline replaces it with the run's batch layout: dfgen.runplan.explain_out_of_memory). Still a
    torch.OutOfMemoryError, so callers that catch CUDA's error (a benchmark looking for the largest batch that
    fits) keep working."""

    def __init__(self, where: str, advice: str = "use a smaller batch") -> None:
        super().__init__(f"{where}; {advice}")
        self.where = where


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's failure (a RuntimeError), or Python's MemoryError."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
