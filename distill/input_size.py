"""The student's input size, and the resizes a run makes, said at start-up.

Without --img-size the student takes the training data's size: the size a dfgen dataset records (synthetic sets,
exported real sets), else, for ImageFolders and plain shards, their first image's size where it is at most the
model's default size (small fixed-size images such as CIFAR's are not upsampled); larger photos are cropped to the
model's default size as timm does. The teacher always sees its own input size: the student's batch is resized for it
(`distill.teacher_features.TeacherFeatures`).
"""

from __future__ import annotations

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
        if info.image_size is not None:
            size = (info.image_size[1], info.image_size[2])
            if size[0] <= default[0] and size[1] <= default[1]:
                return size, f"the size of {_name(info)}'s first image"
            return default, f"the model's default; {_name(info)}'s images (first: {_fmt(size)}) are larger"
    return default, "the model's default"


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
            exact = "" if info.dataset is not None else " (first image; others may differ)"
            lines.append(f"resize: {what} images of {_name(info)} are {_fmt(size)}{exact}, resized to {_fmt(student)} "
                         "for the student")
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
