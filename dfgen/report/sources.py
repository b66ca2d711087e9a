"""The sets a report reads: dfgen datasets (synthetic, or real ones from `dfgen export-*`), checked against their
sidecars, and any other labelled image set: plain WebDataset .tar shards (an image and an integer label per sample,
no dfgen index) or an ImageFolder (one sub-folder of images per class). The other sets are opened by the reader
`distill` trains from (distill.sources), so the report and training agree on what a folder holds and how its classes
are numbered; the report then describes each as a DatasetInfo (dataset.json's fields, from what was read)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dfgen.dataset import DATASET_FILE, INDEX_FILE, DatasetInfo, ShardInfo, open_dataset, with_sidecar_figures
from dfgen.errors import DfgenError
from dfgen.report.data import ScanResult, scan_files, scan_shards

SOURCE_FORMATS = ("dfgen", "webdataset", "imagefolder")


@dataclass(frozen=True)
class ReportSet:
    """One set of a report: what it is (`info`), how it is read (`source_format`) and, for an ImageFolder, its
    files with their labels."""

    info: DatasetInfo
    source_format: str  # one of SOURCE_FORMATS
    files: list[tuple[Path, int]] = field(default_factory=list)
    image_key: str | None = None
    label_key: str = "cls"

    @property
    def verified(self) -> bool:
        """Whether its shards carry checksums that the scan verifies (dfgen sets only)."""
        return self.source_format == "dfgen"

    def scan(self, images_per_class: int, seed: int) -> ScanResult:
        if self.source_format == "imagefolder":
            return scan_files(self.files, self.info.num_classes, images_per_class, seed)
        return scan_shards(self.info, images_per_class, seed, image_key=self.image_key, label_key=self.label_key)


def is_dfgen_dataset(spec: str | Path) -> bool:
    path = Path(spec)
    return path.is_dir() and ((path / DATASET_FILE).is_file() or (path / INDEX_FILE).is_file())


def open_report_sets(specs: list[str | Path], num_classes: int | None = None, image_key: str | None = None,
                     label_key: str = "cls") -> list[ReportSet]:
    """Open every set of a report, in order. The dfgen sets are opened first: their class names number an
    ImageFolder's classes (folders named as they are; sorted folder names otherwise) and their class count is a
    plain WebDataset's where `num_classes` is not given. One-line DfgenError for anything that is none of these."""
    opened: dict[int, ReportSet] = {}
    for i, spec in enumerate(specs):
        if is_dfgen_dataset(spec):
            opened[i] = ReportSet(with_sidecar_figures(open_dataset(spec)), "dfgen")
    references = [s.info for s in opened.values()]
    classes = references[0].class_names if references else None
    counts = {info.num_classes for info in references}
    shard_classes = num_classes or (counts.pop() if len(counts) == 1 else None)
    for i, spec in enumerate(specs):
        if i not in opened:
            opened[i] = _open_other(spec, shard_classes, classes, image_key, label_key)
    return [opened[i] for i in range(len(specs))]


def _open_other(spec: str | Path, num_classes: int | None, classes: list[str] | None, image_key: str | None,
                label_key: str) -> ReportSet:
    from distill.sources import FOLDER_EXTS, open_source, scan_dir

    path = Path(spec)
    if path.is_dir():
        entries = scan_dir(path)
        if not any(e.is_dir() and not e.name.startswith(".") for e in entries) and not any(
                e.name.endswith(".tar") for e in entries) and any(
                Path(e.name).suffix.lower() in FOLDER_EXTS for e in entries):
            raise DfgenError(f"{path} holds images but no class folders: dfgen report reads an ImageFolder (one "
                             "sub-folder of images per class), WebDataset .tar shards or a dfgen dataset")
    source = open_source(str(spec), num_classes=num_classes, image_key=image_key, label_key=label_key,
                         classes=classes)
    if source.kind == "imagefolder":
        named = bool(classes) and all(name in classes for name in source.classes)
        names = list(classes) if named else sorted(source.classes)
        files = [(source.path / name, label) for name, label in zip(source.files, source.labels, strict=True)]
        suffixes = Counter(Path(name).suffix.lstrip(".").lower() for name in source.files)
        shards: list[ShardInfo] = []
        image_format = suffixes.most_common(1)[0][0]
    else:  # "webdataset": plain shards, read with the keys given
        names = list(classes) if classes and len(classes) == source.num_classes else None
        files = []
        shards = [ShardInfo(Path(url), count, None, None) for url, count in zip(source.urls, source.nsamples,
                                                                                strict=True)]
        image_format = image_key
    # no image_size: the files of such a set may differ in size (the report counts the decoded sizes)
    description = {"kind": "real", "source_format": source.kind, "num_classes": len(names) if names else
                   source.num_classes, "in_chans": source.in_chans, "format": image_format}
    if names:
        description["classes"] = names
    name = path.resolve().name if path.is_dir() else path.name
    info = DatasetInfo(source.path, name, description, shards)
    return ReportSet(info, source.kind, files, image_key, label_key)
