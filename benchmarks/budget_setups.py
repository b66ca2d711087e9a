"""What the budget benchmark (benchmarks/budget.py) measures on: a teacher, `n` real train images as the reference
row (a student taught by KD on as many real images as synthetic ones), the real test split, and the students.

Two kinds of teacher: the published benchmarks' LeNet-5-BN on MNIST or Fashion-MNIST (benchmarks/published.py: its
training recipe, synthesis options and LeNet-5-half's KD recipe), and the transfer matrix's four teachers
(benchmarks/transfer.py: digits CNN, ResNet-18 on digits, LeNet-5-BN and VGG-BN on MNIST, handed to dfgen with only
what a user must give). Students: `lenet5_half` (published.py's KD recipe; 28 px), `small_cnn` (transfer.py's KD
recipe) and `dearkd_micro` (through `distill run`, the presets those benchmarks use for ~1,000 images)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import published, transfer
from benchmarks.phases import NETS, cached, dataset_size, since

STUDENTS = ("lenet5_half", "small_cnn", "dearkd_micro")


@dataclass
class Setup:
    tag: str  # in the cache's names ("" for MNIST's published teacher: earlier runs' files keep their names)
    title: str
    kind: str  # "published" or "transfer"
    data: str  # the real data set: mnist, fashion-mnist or digits
    teacher: dict[str, Any]  # weights, mean, std, test_acc, and the `teacher` spec and `image_size` dfgen takes
    real_n: str  # n real train images: the reference row
    test: str

    def synthesis(self, n: int, overrides: dict[str, Any]) -> dict[str, Any]:
        """dfgen.build_config keywords of a point: the teacher's defaults as a user gives them, and the point's."""
        if self.kind == "transfer":
            return transfer.synthesis_options(self.teacher, n, overrides)
        return {"teacher": self.teacher["teacher"], "teacher_weights": self.teacher["weights"], "image_size": 28,
                "mean": self.teacher["mean"], "std": self.teacher["std"], "n": n, **overrides}


def published_setup(dataset: str, n: int, out: Path, results: Path, limit: int | None,
                    epochs: int | None) -> Setup:
    """published.py's teacher for `dataset`, its real test split and n of its real train images."""
    settings = published.SETTINGS[dataset]
    tag = "" if dataset == "mnist" else f"{dataset}-"
    first = "" if not limit else f"-first{limit}"
    trained = cached(results / f"{tag}teacher{first}.json", published.train_teacher_job, settings["teacher"], dataset,
                     epochs or settings["teacher_epochs"], out / "teachers", limit)
    real = cached(results / f"{tag}real{first}.json", published.export_job, dataset, out / f"{tag}real{first}", limit)
    subset = cached(results / f"{tag}real{first}-n{n}.json", real_subset_job, dataset, real["train"], n,
                    out / f"{tag}real{first}-n{n}", limit)
    teacher = {**trained, "teacher": f"{NETS}:{settings['teacher']}", "image_size": 28}
    return Setup(tag, f"{dataset}, {settings['teacher']} teacher", "published", dataset, teacher, subset["train"],
                 real["test"])


def transfer_setup(key: str, n: int, out: Path, results: Path, toy: bool) -> Setup:
    """The transfer matrix's teacher `key`, its real test split and n of its real train images."""
    data = transfer.TEACHERS[key]["data"]
    teacher = cached(results / f"{key}-teacher{'-toy' if toy else ''}.json", transfer.teacher_job, key,
                     out / "teachers", transfer.TOY["teacher_epochs"] if toy else None)
    real = cached(results / f"{key}-real.json", transfer.export_job, data, out / "real" / data)
    subset = cached(results / f"{data}-real-n{n}.json", real_subset_job, data, real["train"], n,
                    out / "real" / f"{data}-n{n}")
    return Setup(f"{key}-", f"{key} teacher", "transfer", data, teacher, subset["train"], real["test"])


def real_subset_job(data: str, full_train: str, n: int, out: Path, limit: int | None = None) -> dict[str, Any]:
    """n real train images: a stratified seeded share of MNIST's or Fashion-MNIST's train split (dfgen export-real
    --train-fraction), or the first n of the digits' train split (already shuffled and stratified)."""
    start = time.perf_counter()
    if data == "digits":
        from dfgen.realdata import read_image_dataset, write_image_dataset

        images, labels = read_image_dataset(Path(full_train), limit=n)
        train = write_image_dataset(out / "train", images, labels,
                                    {"source": f"the first {n} images of {full_train}", "num_classes": 10})
        return {"train": str(train), "n": len(labels), "seconds": since(start)}
    from dfgen.realdata import export_real

    fraction = min(1.0, n / dataset_size(full_train))
    export_real(data, out, train_fraction=fraction, limit=limit)
    return {"train": str(out / "train"), "n": dataset_size(out / "train"), "seconds": since(start)}


def student_job(setup: Setup, student: str, train: str, synthetic: str, out: Path, kd_steps: int,
                distill_epochs: int | None, toy: bool) -> tuple[str, tuple[Any, ...]]:
    """The recipe's key (for the cache's file name) and the job with its arguments that teach `student` on `train`;
    DearKD takes the teacher that the synthetic set `synthetic` records."""
    if student == "lenet5_half":
        return f"{published.KD_RECIPE}{kd_steps}", (published.kd_job, setup.teacher, train, setup.test, kd_steps)
    if student == "small_cnn":
        steps = transfer.TOY["kd_steps"] if toy else transfer.KD_STEPS
        return f"cutmix{steps}", (transfer.kd_job, setup.teacher, train, setup.test, steps)
    if setup.kind == "transfer":  # the digits or MNIST preset for ~1,000 images (transfer.py's cells)
        key = f"dearkd{transfer.DISTILL[setup.data][2]}{'-toy' if toy else ''}"
        return key, (transfer.distill_job, out, setup.data, train, setup.test, synthetic, None, toy)
    key = f"dearkd-e{distill_epochs}-{published.SOFT_KEY}"
    return key, (published.distill_job, out, train, setup.test, synthetic, distill_epochs)
