"""The student's input size, and the resizes a run makes, said at start-up.

Without --img-size the student takes the training data's size: the size a dfgen dataset records (synthetic sets,
exported real sets), else, for ImageFolders and plain shards, the one size of a few images sampled across them where
they agree and it is at most the model's default size (fixed-size images such as CIFAR's are not upsampled);
photos of varying or larger sizes are cropped to the model's default size as timm does. The teacher always sees its
own input size: the student's batch is resized for it (`distill.teacher_features.TeacherFeatures`).
"""

from __future__ import annotations

import io
import itertools
import json

import webdataset as wds
from PIL import Image

from dfgen.dataset import IMAGE_EXTS
from distill.sources import Source

Size = tuple[int, int]


def student_input_size(img_size: int | None, infos: list[Source], default: Size) -> tuple[Size, str]:
    """(H, W) of the student's input and where it came from."""
    if img_size:
        return (img_size, img_size), "--img-size"
    for info in infos:
        if info.dataset is not None and info.image_size is not None:
            return (info.image_size[1], info.image_size[2]), f"the size of {_name(info)}'s images"
    for info in infos:
        if info.image_size is None:
            continue
        sizes = sampled_sizes(info) or {(info.image_size[1], info.image_size[2])}
        if len(sizes) > 1:
            return default, f"the model's default; {_name(info)}'s images differ in size"
        size = sizes.pop()
        if size[0] <= default[0] and size[1] <= default[1]:
            return size, f"the size of {_name(info)}'s images"
        return default, f"the model's default; {_name(info)}'s images ({_fmt(size)}) are larger"
    return default, "the model's default"


def resumed_size(model_args: str | None, default: Size) -> Size:
    """The size a checkpoint's student was built at (its model_args JSON); a run from before the size followed the
    data recorded none or only --img-size: the model's default then."""
    try:
        built = json.loads(model_args or "{}").get("img_size")
    except (ValueError, AttributeError):
        return default
    if isinstance(built, list) and len(built) == 2:
        return int(built[0]), int(built[1])
    return (int(built), int(built)) if isinstance(built, int) else default


def sampled_sizes(info: Source, count: int = 8) -> set[Size]:
    """The (H, W) sizes of up to `count` images of a folder (strided over it) or of its first shard (unreadable
    images are the training loop's to report: left out here)."""
    if info.files:
        step = max(1, len(info.files) // count)
        blobs = ((info.path / name).read_bytes() for name in info.files[::step][:count])
    elif info.urls:
        samples = wds.tariterators.tarfile_samples([{"url": info.urls[0]}])
        keys = (info.image_key,) if info.image_key else IMAGE_EXTS
        blobs = (next((s[k] for k in keys if k in s), b"") for s in itertools.islice(samples, count))
    else:
        return set()
    sizes = set()
    try:
        for blob in blobs:
            try:
                with Image.open(io.BytesIO(blob)) as image:
                    sizes.add((image.height, image.width))
            except (OSError, ValueError, Image.DecompressionBombError):
                continue
    except Exception:  # a damaged shard: the size of its first image decides
        return sizes
    return sizes


def resize_lines(student: Size, reason: str, infos: list[Source], val: Source | None,
                 teacher: tuple[str, Size] | None, grid: Size | None) -> list[str]:
    """The start-up lines that say which inputs are resized (training and validation images for the student, the
    student's batch for the teacher), and a warning for a vision transformer left with a tiny patch grid."""
    lines = [f"student input {_fmt(student)} px ({reason})"]
    for info, what in [(i, "training") for i in infos] + ([(val, "validation")] if val is not None else []):
        if info.image_size is None:
            continue
        size = (info.image_size[1], info.image_size[2])
        if size != student:
            sizes = {size} if info.dataset is not None else sampled_sizes(info) or {size}
            shown = _fmt(size) if len(sizes) == 1 else "of several sizes"
            lines.append(f"resize: {what} images of {_name(info)} are {shown}, resized to {_fmt(student)} for the "
                         "student")
    if teacher is not None and teacher[1] != student:
        name, size = teacher
        lines.append(f"resize: the teacher {name} takes {_fmt(size)}: the student's {_fmt(student)} batches are "
                     f"resized to {_fmt(size)} for it")
    if grid is not None and grid[0] * grid[1] < 16:
        lines.append(f"note: at {_fmt(student)} px the student has a {_fmt(grid)} patch grid; --img-size (e.g. 224) "
                     "upsamples the images to a larger one")
    return lines


def _fmt(size: Size) -> str:
    return f"{size[0]}x{size[1]}"


def _name(info: Source) -> str:
    return info.name or str(info.path)
