"""The training stream of one rank: resampled shards of every source, several read at once, mixed by weight,
repeated, shuffled, decoded, batched; and the corrupt-shard accounting that reaches the main process.

Per DataLoader worker: draw shards of each source (weighted by size, seeded by run seed, epoch, rank and worker, so
every rank draws its own, never runs dry and a resumed epoch draws the same), read `interleave` of them at once
taking samples from a random open one, pick each sample's source by the mix weights, repeat it `repeats` times
(repeated augmentation), pass it through a shuffle buffer, decode and augment it, and batch. A shard that fails to
read is reported in the next batch (`"bad"`), so the main process counts what every worker found.
"""

from __future__ import annotations

import io
import json
import math
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import get_worker_info

from dfgen.dataset import IMAGE_EXTS
from distill.errors import DistillError
from distill.sources import FOLDER_EXTS, Source

LOADER_TIMEOUT_S = 1800.0  # a loader worker that delivers no batch for this long is stuck (a dead mount, a lock)


# ------------------------------------------------------------------------------------------- corrupt shards
class BadShards:
    """A worker's record of the shards it found corrupt: never drawn again by it, and reported once each to the
    main process through the next batch."""

    def __init__(self, known: set[str] | None = None) -> None:
        self.known = set(known or ())
        self.pending: list[tuple[str, str]] = []
        self.last: tuple[str, str] | None = None  # the latest report, for the message when nothing is left

    def report(self, url: str, exc: BaseException | str) -> None:
        if url in self.known:
            return
        self.known.add(url)
        self.last = (url, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        self.pending.append(self.last)

    def take(self) -> list[tuple[str, str]]:
        pending, self.pending = self.pending, []
        return pending


def is_image_file(url: str) -> bool:
    """Whether a reported url is one image file (of an ImageFolder) rather than a shard."""
    return Path(url).suffix.lower() in FOLDER_EXTS


class ShardHealth:
    """The main process's count of corrupt shards and unreadable image files (all workers, and all ranks after
    `merge`): each is named in a warning once; more than `limit` shards or `image_limit` images stop the run (a
    dataset that bad needs fixing, not skipping)."""

    def __init__(self, limit: int, rank: int = 0, bad: dict[str, str] | None = None,
                 warn: Callable[[str], None] | None = None, image_limit: int | None = None) -> None:
        self.limit = limit
        self.image_limit = limit if image_limit is None else image_limit
        self.rank = rank
        self.bad: dict[str, str] = dict(bad or {})
        self.warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))

    def absorb(self, events: list[tuple[str, str]]) -> None:
        for url, reason in events:
            if url in self.bad:
                continue
            self.bad[url] = reason
            self.check(url)
            image = is_image_file(url)
            count = sum(is_image_file(u) == image for u in self.bad)
            self.warn(f"Warning: [rank {self.rank}] skipping {'unreadable image' if image else 'corrupt shard'} {url} "
                      f"({reason}); {count} of at most {self.image_limit if image else self.limit} skipped")

    def merge(self, every_rank: list[dict[str, str]]) -> None:
        """Take in the shards the other ranks found (the gathered `bad` of every rank), then check the limit."""
        for bad in every_rank:
            for url, reason in bad.items():
                self.bad.setdefault(url, reason)
        self.check()

    def check(self, last: str | None = None) -> None:
        tail = f"; last: {last}: {self.bad[last]}" if last else ""
        images = [u for u in self.bad if is_image_file(u)]
        if len(images) > self.image_limit:
            listed = ", ".join(images[:5]) + (" ..." if len(images) > 5 else "")
            raise DistillError(f"{len(images)} unreadable training images ({listed}), more than the "
                               f"{self.image_limit} allowed (max_bad_images){tail}. Fix or remove them")
        shards = [u for u in self.bad if not is_image_file(u)]
        if len(shards) <= self.limit:
            return
        listed = ", ".join(Path(u).name for u in shards)
        raise DistillError(f"{len(shards)} corrupt shards ({listed}), more than the {self.limit} allowed{tail}. "
                           "Check the data (`dfgen index DIR` for a dfgen dataset) and rerun what made it")

    def summary(self) -> str | None:
        """The line a run ends with when it skipped anything: how many, and which."""
        if not self.bad:
            return None
        images = sorted(u for u in self.bad if is_image_file(u))
        shards = sorted(Path(u).name for u in self.bad if not is_image_file(u))
        parts = [f"{len(shards)} corrupt shard(s) ({', '.join(shards)})" if shards else "",
                 f"{len(images)} unreadable image(s) ({', '.join(images)})" if images else ""]
        return "skipped in training: " + "; ".join(p for p in parts if p)


# ------------------------------------------------------------------------------------------- reading
@dataclass
class StreamSettings:
    """How a rank's stream is made (what `train_loader` passes to every worker)."""

    seed: str
    batch_size: int
    num_classes: int
    mode: str  # PIL mode: "L" or "RGB"
    transform: Callable
    shuffle_buffer: int = 8192
    interleave: int = 4
    repeats: int = 1
    mix: tuple[float, ...] | None = None  # per-source weights; None: by size
    soft: bool = False  # decode stored soft labels (dense logits, -inf outside the stored top-k)
    view_transform: Callable | None = None  # for samples with stored views: `transform` less its crop and flip


def worker_slot() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def shard_draws(info: Source, rng: random.Random, bad: BadShards) -> Iterator[int]:
    """Endless shard indices of one source, drawn with replacement, weighted by size; corrupt ones no longer."""
    known_bad = -1
    while True:
        if len(bad.known) != known_bad:
            known_bad = len(bad.known)
            good = [i for i, u in enumerate(info.urls) if u not in bad.known and not _chunk_lost(info, i, bad)]
            if not good:
                last = f" (last: {bad.last[0]}: {bad.last[1]})" if bad.last else ""
                if info.kind == "imagefolder":
                    raise DistillError(f"no image of the ImageFolder {info.name} can be read{last}; check its files")
                raise DistillError(f"every shard of {info.name} is corrupt{last}; rerun what made them")
            cum = list(np.cumsum([max(info.nsamples[i], 1) for i in good]))
        yield good[rng.choices(range(len(good)), cum_weights=cum)[0]]


def _chunk_lost(info: Source, k: int, bad: BadShards) -> bool:
    """An ImageFolder chunk none of whose files can be read (each reported)."""
    return info.kind == "imagefolder" and all(str(info.path / info.files[i]) in bad.known for i in info.chunks[k])


def read_shard(info: Source, k: int, bad: BadShards) -> Iterator[dict[str, Any]]:
    """Raw samples {"key", "url", "image" (bytes), "cls", "json"} of shard `k`; a failure is reported and ends it.
    An ImageFolder chunk reports the unreadable file alone and goes on."""
    url = info.urls[k]
    if info.kind == "imagefolder":
        for i in info.chunks[k]:
            path = info.path / info.files[i]
            if str(path) in bad.known:  # found unreadable before: not read again
                continue
            try:
                data = path.read_bytes()
            except OSError as exc:
                bad.report(str(path), exc)
                continue
            yield {"key": info.files[i], "url": str(path), "image": data, "cls": info.labels[i], "json": None}
        return
    try:
        for sample in wds.tariterators.tarfile_samples([{"url": url}]):
            key = info.image_key or next((e for e in sample if e.lower() in IMAGE_EXTS), None)
            yield {"key": sample.get("__key__"), "url": url, "image": sample.get(key) if key else None,
                   "cls": sample.get(info.label_key), "json": sample.get("json")}
    except Exception as exc:  # tarfile, OSError, ValueError...: any read failure means a damaged shard
        bad.report(url, exc)


def source_samples(info: Source, rng: random.Random, bad: BadShards, interleave: int) -> Iterator[dict]:
    """Endless samples of one source, taken at random from `interleave` shards open at once (one dfgen shard holds
    the images of a few synthesis batches: several open shards mix classes before the shuffle buffer)."""
    draws = shard_draws(info, rng, bad)
    open_shards = [read_shard(info, next(draws), bad) for _ in range(max(1, interleave))]
    while True:
        i = rng.randrange(len(open_shards))
        sample = next(open_shards[i], None)
        if sample is None:
            open_shards[i] = read_shard(info, next(draws), bad)
            continue
        yield sample


def mixed_samples(infos: list[Source], settings: StreamSettings, bad: BadShards) -> Iterator[dict]:
    """Every source's stream, each sample's source drawn by the mix weights (by size if none), repeated."""
    rng = random.Random(f"{settings.seed}:worker{worker_slot()[0]}")
    streams = [source_samples(info, random.Random(f"{settings.seed}:source{s}:worker{worker_slot()[0]}"), bad,
                              settings.interleave) for s, info in enumerate(infos)]
    weights = list(settings.mix) if settings.mix else [float(i.n) for i in infos]
    cum = list(np.cumsum(weights))
    while True:
        s = rng.choices(range(len(streams)), cum_weights=cum)[0] if len(streams) > 1 else 0
        sample = dict(next(streams[s]), source=s)
        for _ in range(settings.repeats):
            yield sample


def seeded_shuffle(src: Iterator[dict], bufsize: int, seed: str) -> Iterator[dict]:
    """webdataset's shuffle buffer with a reproducible per-worker generator."""
    rng = random.Random(f"{seed}:shuffle:worker{worker_slot()[0]}")
    return wds.filters.shuffle(bufsize, initial=bufsize, rng=rng)(src)


# ------------------------------------------------------------------------------------------- decoding
def decode_image(data: bytes | None, mode: str, what: str = "sample") -> Image.Image:
    if data is None:
        raise ValueError(f"{what} has no image ({', '.join(IMAGE_EXTS)})")
    with Image.open(io.BytesIO(data)) as image:
        return image.convert(mode)


class DataMismatch(ValueError):
    """A sample that reads but does not fit the run (a label past the class count, stored soft labels missing,
    misshapen or not finite): the data or the settings are wrong, not the file; the run stops and names it."""


def parse_label(value: Any, num_classes: int) -> int:
    label = int(value.decode() if isinstance(value, bytes) else value)
    if not 0 <= label < num_classes:
        raise DataMismatch(f"label {label} is outside the {num_classes} classes (0..{num_classes - 1}); check "
                           "--num-classes or the dataset's labels")
    return label


def stored_view(meta: dict[str, Any], image: Image.Image, rng: random.Random) -> tuple[Image.Image, dict] | None:
    """One of the sample's stored views (dfgen.soft_views), drawn by `rng` and replayed on its image: the crop
    resized back to the image's size (bilinear, as dfgen labelled it), mirrored if flagged, with its stored
    top-k logits ({"index", "logit"}); None where the sample stores no views."""
    views = meta.get("soft_views")
    if not views:
        return None
    boxes, index, logit = views.get("box"), views.get("index"), views.get("logit")
    if not (isinstance(boxes, list) and isinstance(index, list) and isinstance(logit, list)
            and len(boxes) == len(index) == len(logit) and boxes):
        raise DataMismatch("malformed stored views (\"soft_views\": box, index and logit must be lists of the same "
                           "length)")
    v = rng.randrange(len(boxes))
    if not isinstance(boxes[v], list) or len(boxes[v]) != 5:
        raise DataMismatch("malformed \"soft_views\" box (top, left, height, width, flip)")
    top, left, height, width, flip = (int(b) for b in boxes[v])
    if top < 0 or left < 0 or height < 1 or width < 1 or top + height > image.height or left + width > image.width:
        raise DataMismatch(f"stored view box {boxes[v]} outside the {image.width}x{image.height} image")
    view = image.crop((left, top, left + width, top + height))
    if view.size != image.size:
        view = view.resize(image.size, Image.Resampling.BILINEAR)
    if flip:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return view, {"index": index[v], "logit": logit[v]}


def dense_logits(soft: dict | None, label: int, num_classes: int, required: bool) -> torch.Tensor:
    """The distillation target of a sample as dense logits: its stored top-k teacher logits ({"index", "logit"}: the
    per-image JSON's "soft", or a stored view's) with -inf elsewhere, or, for a sample without them (real data), 0
    at its label and -inf elsewhere; an error where they are `required`."""
    logits = torch.full((num_classes,), float("-inf"))
    if soft is None:
        if required:
            raise DataMismatch("no stored soft labels (\"soft\") in its JSON, though its dataset.json says it stores "
                               "them; re-synthesize it, or use --soft-labels online")
        logits[label] = 0.0
        return logits
    index, values = soft.get("index"), soft.get("logit")
    if not isinstance(index, list) or not isinstance(values, list) or len(index) != len(values) or not index:
        sizes = [len(v) if isinstance(v, list) else 0 for v in (index, values)]
        raise DataMismatch(f"malformed, wrongly sized stored soft label (\"soft\": {sizes[0]} indices for {sizes[1]} "
                           "logits; they must be lists of the same length)")
    if not all(isinstance(i, int) and 0 <= i < num_classes for i in index):
        raise DataMismatch(f"stored soft label index outside 0..{num_classes - 1} (the {num_classes} classes)")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise DataMismatch(f"stored logits are not finite ({', '.join(str(v) for v in values[:5])}); re-synthesize "
                           "the dataset (its teacher diverged)")
    logits[torch.tensor(index, dtype=torch.long)] = torch.tensor(values, dtype=torch.float32)
    return logits


def decode_samples(src: Iterator[dict], infos: list[Source], settings: StreamSettings,
                   bad: BadShards) -> Iterator[tuple]:
    """(image, label, source, stored logits or None), augmented; a bad sample marks its shard (or file) corrupt.
    With stored views, the image is one of its stored crops (drawn per worker, seeded) under `view_transform`."""
    rng = random.Random(f"{settings.seed}:views:worker{worker_slot()[0]}")
    for sample in src:
        transform = settings.transform
        try:
            image = decode_image(sample["image"], settings.mode, f"sample {sample['key']}")
            label = parse_label(sample["cls"], settings.num_classes)
            soft = None
            if settings.soft:
                meta = json.loads(sample["json"]) if sample["json"] else {}
                entry = meta.get("soft")
                view = stored_view(meta, image, rng) if settings.view_transform is not None else None
                if view is not None:
                    (image, entry), transform = view, settings.view_transform
                required = infos[sample["source"]].soft_k is not None
                soft = dense_logits(entry, label, settings.num_classes, required)
        except DataMismatch as exc:
            raise DistillError(f"sample {sample['key']} of {sample['url']}: {exc}") from None
        except Exception as exc:
            bad.report(sample["url"], f"sample {sample['key']}: {exc}")
            continue
        yield transform(image), label, sample["source"], soft


def batches(src: Iterator[tuple], batch_size: int, bad: BadShards) -> Iterator[dict[str, Any]]:
    """Full batches as dicts: image, label, source (index of its --shards source), soft (stacked stored logits or
    None), bad (the corrupt-shard reports since the last batch)."""
    items: list[tuple] = []
    for item in src:
        items.append(item)
        if len(items) < batch_size:
            continue
        images, labels, sources, softs = zip(*items, strict=True)
        yield {"image": torch.stack(images), "label": torch.tensor(labels), "source": torch.tensor(sources),
               "soft": torch.stack(softs) if softs[0] is not None else None, "bad": bad.take()}
        items = []


def _seed_numpy(worker_id: int) -> None:
    # torch seeds `random` and itself per worker, not numpy (RandAugment and Mixup draw from numpy)
    np.random.seed(torch.initial_seed() % 2**32)


def train_loader(infos: list[Source], settings: StreamSettings, steps: int, workers: int,
                 known_bad: set[str]) -> wds.WebLoader:
    """One epoch of `steps` batches (this rank's share)."""
    bad = BadShards(known_bad)
    pipeline = wds.DataPipeline(
        partial(mixed_samples, infos, settings, bad),
        partial(seeded_shuffle, bufsize=max(1, settings.shuffle_buffer), seed=settings.seed),
        partial(decode_samples, infos=infos, settings=settings, bad=bad),
        partial(batches, batch_size=settings.batch_size, bad=bad),
    )
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=workers, worker_init_fn=_seed_numpy,
                           pin_memory=torch.cuda.is_available(), timeout=LOADER_TIMEOUT_S if workers else 0)
    return loader.with_epoch(steps)
