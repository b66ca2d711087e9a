"""dfgen report on any labelled image set beside synthetic ones: the same real digits as a dfgen export, an
ImageFolder and plain WebDataset shards give the same figures; a real set is measured with the synthetic set's
teacher; an agreement near chance is flagged; a folder that is no image set is one line."""

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

import dfgen
from dfgen.cli import cli
from dfgen.realdata import read_image_dataset
from dfgen.report import make_report
from dfgen.report.cli import report as report_command
from dfgen.report.html import _derived_flip

if "report" not in cli.commands:
    cli.add_command(report_command)

FAST = dict(lpips_net=None, device="cpu", quiet=True, images_per_class=16)  # 16 >= any class's count: all kept


def png(pixels) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels[0]).save(buffer, format="PNG")
    return buffer.getvalue()


def write_folder(root: Path, images, labels, shift: int = 0) -> Path:
    """An ImageFolder of the images; `shift` files class c under class (c + shift) % 10 (labels the teacher
    does not share)."""
    for i, (pixels, label) in enumerate(zip(images.numpy(), labels.tolist(), strict=True)):
        folder = root / str((label + shift) % 10)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{i:04d}.png").write_bytes(png(pixels))
    return root


def write_plain_shards(root: Path, images, labels, per_shard: int = 40) -> Path:
    """WebDataset shards as other tools write them: key.png + key.cls, no index, no sidecars."""
    root.mkdir(parents=True)
    for start in range(0, len(labels), per_shard):
        with tarfile.open(root / f"train-{start // per_shard:04d}.tar", "w") as tar:
            for i in range(start, min(start + per_shard, len(labels))):
                for ext, data in (("png", png(images[i].numpy())), ("cls", str(int(labels[i])).encode())):
                    member = tarfile.TarInfo(f"sample{i:05d}.{ext}")
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))
    return root


@pytest.fixture(scope="module")
def sets(digits, tmp_path_factory):
    """One synthetic set and the same 64 real digits three ways: dfgen export, ImageFolder, plain shards."""
    root = tmp_path_factory.mktemp("sets")
    dfgen.synthesize(teacher="digits", n=20, out=str(root / "syn"), schedule="8:3,16:3", classes_per_batch=5,
                     images_per_class=2, shard_size=20, warmup=1, quiet=True, flip=False)
    images, labels = read_image_dataset(digits / "train")
    return {"syn": root / "syn", "export": digits / "train", "folder": write_folder(root / "folder", images, labels),
            "shards": write_plain_shards(root / "shards", images, labels), "images": images, "labels": labels}


def test_real_sets_of_every_format_stand_beside_a_synthetic_one(sets, tmp_path):
    out = tmp_path / "r"
    result = make_report([sets["syn"], sets["export"], sets["folder"], sets["shards"]], out, **FAST)
    syn, export, folder, shards = result["datasets"]
    assert [d["source_format"] for d in result["datasets"]] == ["dfgen", "dfgen", "imagefolder", "webdataset"]
    counts = {str(c): sets["labels"].tolist().count(c) for c in range(10)}
    for real in (export, folder, shards):
        assert real["kind"] == "real" and real["images_scanned"] == 64 and real["class_counts"] == counts
        assert real["teacher"]["source"] == syn["teacher"]["source"] and "shared_from" in real["teacher"]
        assert real["teacher_agreement"]["images"] == 64 and real["teacher_agreement"]["top1"] >= 0.9
        assert not real["teacher_agreement"]["near_chance"]
    # the same images read three ways: the same figures
    for key in ("top1", "mean_target_prob"):
        assert folder["teacher_agreement"][key] == pytest.approx(export["teacher_agreement"][key], abs=1e-6)
        assert shards["teacher_agreement"][key] == pytest.approx(export["teacher_agreement"][key], abs=1e-6)
    assert folder["feature_diversity"]["mean"] == pytest.approx(export["feature_diversity"]["mean"], abs=1e-5)
    assert shards["feature_diversity"]["mean"] == pytest.approx(export["feature_diversity"]["mean"], abs=1e-5)
    assert export["shards"]["sha256_ok"] is True and folder["shards"]["sha256_ok"] is None
    assert shards["shards"] == {"count": 2, "checked": 2, "sha256_ok": None}
    for entry in result["datasets"]:  # a grid per class and set, side by side on the page
        assert all((out / path).is_file() for path in entry["grids"].values()) and len(entry["grids"]) >= 5
    html = (out / "report.html").read_text()
    assert "read as" in html and "imagefolder" in html and "webdataset" in html


def test_shards_by_pattern_or_file_and_a_folder_alone(sets, tmp_path):
    pattern = str(sets["shards"] / "train-{0000..0001}.tar")
    one = sets["shards"] / "train-0001.tar"
    result = make_report([pattern, one], tmp_path / "r", num_classes=10, **FAST)["datasets"]
    assert [d["images_scanned"] for d in result] == [64, 24] and result[0]["name"] == "train-{0000..0001}.tar"
    assert result[0]["teacher_agreement"] is None  # no synthetic set to share a teacher, none given
    alone = make_report([sets["folder"]], tmp_path / "r2", teacher="digits", **FAST)["datasets"][0]
    assert alone["classes"] == [str(c) for c in range(10)] and alone["teacher_agreement"]["top1"] >= 0.9
    assert "shared_from" not in alone["teacher"]


def test_folder_classes_follow_the_synthetic_sets_names(sets, tmp_path):
    """Folders named as the synthetic set's classes are numbered by it, not by sorted folder names."""
    names = [f"digit {c}" for c in range(10)]
    syn = tmp_path / "syn"
    dfgen.synthesize(teacher="digits", n=10, out=str(syn), schedule="8:2", classes_per_batch=5, images_per_class=2,
                     shard_size=10, warmup=0, quiet=True, flip=False, no_diversity=True,
                     class_names=list(reversed(names)))
    folder = tmp_path / "folder"
    for i, (pixels, label) in enumerate(zip(sets["images"][:30].numpy(), sets["labels"][:30].tolist(), strict=True)):
        (folder / f"digit {9 - label}").mkdir(parents=True, exist_ok=True)  # the synthetic set's name of the class
        (folder / f"digit {9 - label}" / f"{i}.png").write_bytes(png(pixels))
    entry = make_report([syn, folder], tmp_path / "r", **FAST)["datasets"][1]
    assert entry["classes"] == list(reversed(names))
    assert entry["teacher_agreement"]["top1"] >= 0.9  # numbered as the teacher's classes


def test_agreement_near_chance_is_red_with_a_warning(sets, tmp_path, dfgen_cli):
    images, labels = sets["images"], sets["labels"]
    wrong = write_folder(tmp_path / "wrong", images, labels, shift=1)  # every image filed under another class
    out = tmp_path / "r"
    code, stdout, err = dfgen_cli(["report", sets["syn"], wrong, "--out", out, "--lpips-net", "none", "--device",
                                   "cpu", "--images-per-class", "16", "--quiet"])
    assert code == 0, err
    entry = json.loads((out / "report.json").read_text())["datasets"][1]
    agreement = entry["teacher_agreement"]
    assert agreement["top1"] <= 0.1 and agreement["near_chance"] is True
    assert agreement["chance_bound"] == pytest.approx(0.1 + 3 * (0.09 / 64) ** 0.5)
    assert any("near chance" in w for w in entry["warnings"]) and "near chance" in err
    html = (out / "report.html").read_text()
    assert "<td class='num warn'" in html and "(near chance)</td>" in html
    assert "wrong: teacher top-1 agreement" in html
    assert "(near chance)" in stdout


def test_flip_fallback_reason_is_shown():
    derived = {"flip": {"requested": "auto", "value": False, "reason": "the probe's agreement 0.10 is near chance"},
               "probe": {"mirror_kept": 1.0}}
    assert _derived_flip(derived) == "off (asked: auto; the probe's agreement 0.10 is near chance)"
    del derived["flip"]["reason"]
    assert _derived_flip(derived) == "off (asked: auto, mirrored probe images kept their class 100%)"


def _flat(root: Path, sets) -> Path:
    root.mkdir()
    (root / "a.png").write_bytes(png(sets["images"][0].numpy()))
    return root


def _no_label(root: Path, sets) -> Path:
    root.mkdir()
    with tarfile.open(root / "x.tar", "w") as tar:
        data = png(sets["images"][0].numpy())
        member = tarfile.TarInfo("s0.png")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    return root


def _label_out_of_range(root: Path, sets) -> Path:
    return write_plain_shards(root, sets["images"][:3], sets["labels"][:3] * 0 + 12)


def _text_files(root: Path, sets) -> Path:
    root.mkdir()
    (root / "notes.txt").write_text("hello")
    return root


@pytest.mark.parametrize("make, alone, words", [
    (_flat, False, "holds images but no class folders"),
    (_no_label, False, "no label 'cls'"),
    (_label_out_of_range, False, "outside the dataset's 10 classes; pass --num-classes"),
    (_text_files, False, "is not a dfgen dataset"),
    (lambda root, sets: write_plain_shards(root, sets["images"][:3], sets["labels"][:3]), True, "--num-classes"),
])
def test_a_folder_that_is_no_image_set_is_one_line(dfgen_cli, sets, tmp_path, make, alone, words):
    target = make(tmp_path / "data", sets)
    given = [target] if alone else [sets["syn"], target]
    code, _, err = dfgen_cli(["report", *given, "--out", tmp_path / "r", "--lpips-net", "none", "--device", "cpu",
                              "--quiet"])
    assert code == 1 and err.startswith("Error: ") and words in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
