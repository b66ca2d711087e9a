"""dfgen report: pair sampler, aggregation, reservoir sampling, the report
files, teacher agreement plumbing, offline LPIPS errors, bad shards, and the page in headless Chromium.

LPIPS here runs with a *random-weight* SqueezeNet backbone file placed in a temporary
$TORCH_HOME/hub/checkpoints/: this checks the plumbing (the real lpips loading path, offline), not the
figures; LPIPS values are only meaningful with torchvision's ImageNet backbone."""

import io
import json
import shutil
import subprocess
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import dfgen
from dfgen.cli import cli
from dfgen.dataset import open_dataset, sha256_file
from dfgen.errors import DfgenError
from dfgen.report import make_report
from dfgen.report.cli import report as report_command
from dfgen.report.data import Reservoir, scan_shards
from dfgen.report.metrics import aggregate, backbone_file, mean_pairwise_distance, sample_pairs
from dfgen.teachers import load_teacher

if "report" not in cli.commands:  # dfgen/cli.py registers it; make the tests independent of that
    cli.add_command(report_command)

TINY = dict(teacher="digits", schedule="8:3,16:3", classes_per_batch=5, images_per_class=2, shard_size=20,
            warmup=1, quiet=True)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A TORCH_HOME holding a random-weight SqueezeNet 1.1 under the exact name torchvision caches the
    ImageNet weights as, so lpips.LPIPS(net="squeeze", pretrained=True) loads offline (plumbing only)."""
    home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(home))
        _, path = backbone_file("squeeze")
        assert path.parent == home / "hub" / "checkpoints" and path.name == "squeezenet1_1-b8a52dc0.pth"
        path.parent.mkdir(parents=True)
        torch.manual_seed(0)
        torch.save(torchvision.models.squeezenet1_1().state_dict(), path)
        yield home


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two tiny synthetic digits sets from the same seed and budget: with and without diversity losses."""
    root = tmp_path_factory.mktemp("datasets")
    for name, plain in (("div", False), ("plain", True)):
        dfgen.synthesize(dfgen.SynthesisConfig(n=40, out=str(root / name), no_diversity=plain, **TINY))
    return root / "div", root / "plain"


@pytest.fixture(scope="module")
def two_report(pair, torch_home, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(torch_home))
        result = make_report(list(pair), out, pairs_per_class=3, images_per_class=3, lpips_net="squeeze",
                             device="cpu", seed=0, quiet=True)
    return out, result


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_sidecar_and_index(dataset: Path, shard: str) -> None:
    """Make the sidecar and the index agree with a shard's present bytes (so the tar check is what fails)."""
    tar = dataset / "shards" / f"{shard}.tar"
    sidecar_path = tar.with_suffix(".json")
    sidecar = json.loads(sidecar_path.read_text())
    sidecar.update(sha256=sha256_file(tar), bytes=tar.stat().st_size)
    sidecar_path.write_text(json.dumps(sidecar))
    index = json.loads((dataset / "index.json").read_text())
    for entry in index["shardlist"]:
        if entry["url"].endswith(f"{shard}.tar"):
            entry.update(sha256=sidecar["sha256"], filesize=sidecar["bytes"])
    (dataset / "index.json").write_text(json.dumps(index))


# --------------------------------------------------------------------------- units


def test_pair_sampler_is_deterministic_distinct_and_complete_when_small():
    assert sample_pairs(3, 5, seed=0, label=0) == [(0, 1), (0, 2), (1, 2)]  # fewer than asked: all of them
    assert sample_pairs(1, 5, 0, 0) == [] and sample_pairs(4, 0, 0, 0) == []
    pairs = sample_pairs(10, 20, seed=7, label=3)
    assert len(pairs) == len(set(pairs)) == 20 and all(i < j < 10 for i, j in pairs) and pairs == sorted(pairs)
    assert sample_pairs(10, 20, seed=7, label=3) == pairs  # same (seed, class): same pairs
    assert sample_pairs(10, 20, seed=8, label=3) != pairs
    assert sample_pairs(10, 20, seed=7, label=4) != pairs  # classes draw independently


def test_aggregation_hand_computed():
    result = aggregate({0: [0.1, 0.3], 1: [0.5]}, ["zero", "one", "two"])
    assert result["per_class"] == {"zero": pytest.approx(0.2), "one": 0.5, "two": None}
    assert result["mean"] == pytest.approx(0.35)  # mean over classes with a value: (0.2 + 0.5) / 2
    assert aggregate({}, ["a"]) == {"mean": None, "per_class": {"a": None}}
    # Unit vectors (1,0), (0,1), (-1,0): distances sqrt2, 2, sqrt2; scale does not matter (normalized).
    features = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    assert mean_pairwise_distance(features) == pytest.approx((2 * 2**0.5 + 2) / 3)
    assert mean_pairwise_distance(features[:1]) is None


def test_reservoir_keeps_at_most_k_per_class_deterministically():
    def run(seed):
        reservoir = Reservoir(k=3, seed=seed)
        for i in range(100):
            reservoir.offer(i % 4, i)
        return reservoir

    a, b, c = run(0), run(0), run(1)
    assert a.kept == b.kept and a.kept != c.kept
    assert a.seen == {0: 25, 1: 25, 2: 25, 3: 25}
    assert all(len(v) == 3 and all(i % 4 == label for i in v) for label, v in a.kept.items())
    small = Reservoir(k=5, seed=0)
    for i in range(3):
        small.offer(0, i)
    assert small.kept == {0: [0, 1, 2]}
    # uniform: over many seeds every item of a 10-item stream is kept about k/n = 30% of the time
    hits = np.zeros(10)
    for seed in range(2000):
        r = Reservoir(k=3, seed=seed)
        for i in range(10):
            r.offer(0, i)
        hits[r.kept[0]] += 1
    assert np.allclose(hits / 2000, 0.3, atol=0.05)


def test_scan_verifies_shards_and_samples_by_seed(pair):
    info = open_dataset(pair[0])
    first = scan_shards(info, images_per_class=2, seed=0)
    assert first.images_scanned == 40 and first.shards_checked == 2 and first.class_counts == [4] * 10
    assert all(len(refs) == 2 for refs in first.samples.values())
    assert scan_shards(info, 2, seed=0).samples == first.samples
    assert scan_shards(info, 2, seed=1).samples != first.samples


# --------------------------------------------------------------------------- the report


def test_report_files_and_figures(two_report, pair):
    out, result = two_report
    assert (out / "report.html").is_file() and (out / "report.json").is_file()
    assert json.loads((out / "report.json").read_text())["datasets"][0]["name"] == "div"
    for name in ("class_counts", "lpips_per_class", "feature_diversity_per_class", "teacher_target_prob"):
        assert (out / result["plots"][name]).is_file()
    div, plain = result["datasets"]
    assert [div["name"], plain["name"]] == ["div", "plain"] and (div["diversity"], plain["diversity"]) == (True, False)
    for d in (div, plain):
        assert d["images_scanned"] == 40 and d["images_decoded"] == 30 and d["shards"]["checked"] == 2
        assert d["class_counts"] == {str(c): 4 for c in range(10)} and d["image_size"] == "1x32x32"
        assert d["format"] == "png" and d["bytes_on_disk"] > 0
        lp = d["lpips_intra_class"]
        assert set(lp["per_class"]) == {str(c) for c in range(10)} and lp["pairs"] == 30
        assert lp["mean"] == pytest.approx(np.mean(list(lp["per_class"].values())))
        agreement = d["teacher_agreement"]
        assert 0 <= agreement["top1"] <= 1 and 0 <= agreement["mean_target_prob"] <= 1 and agreement["images"] == 30
        assert d["teacher"]["weights_match"] is True
        # three iterations a stage leave noise: an agreement near chance is the only warning, and it says so
        assert agreement["near_chance"] == (agreement["top1"] <= agreement["chance_bound"])
        assert [w for w in d["warnings"] if "near chance" not in w] == []
        assert bool(d["warnings"]) == agreement["near_chance"]
        assert 0 <= d["feature_diversity"]["mean"] <= 2
        assert d["timings"]["estimate_s_per_1000_classes"] > 0
        assert len(d["grids"]) == 10 and all((out / p).is_file() for p in d["grids"].values())
    assert set(result["comparison"]["lpips_intra_class"]) == {"div", "plain"}
    page = (out / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 4 + 2 * 10  # plots + grids, all embedded
    assert "http://" not in page and "https://" not in page  # opens offline
    assert "Comparison" in page


def test_same_seed_same_figures(pair, torch_home, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    kwargs = dict(pairs_per_class=3, images_per_class=3, lpips_net="squeeze", device="cpu", quiet=True)
    a = make_report([pair[0]], tmp_path / "a", seed=5, **kwargs)["datasets"][0]
    b = make_report([pair[0]], tmp_path / "b", seed=5, **kwargs)["datasets"][0]
    assert a["lpips_intra_class"] == b["lpips_intra_class"] and a["teacher_agreement"] == b["teacher_agreement"]


def test_teacher_agreement_plumbing_on_real_digits(tmp_path):
    """The bundled teacher re-run through the report on real held-out digits must agree with the labels:
    this checks decoding, grey handling, the recorded normalization and the feature hook."""
    from dfgen.realdata import export_digits

    _, test_split = export_digits(tmp_path / "digits")
    skipped = make_report([test_split], tmp_path / "r0", images_per_class=8, lpips_net=None, device="cpu",
                          quiet=True)["datasets"][0]
    assert skipped["teacher_agreement"] is None and skipped["feature_diversity"] is None  # real: no teacher
    assert skipped["images_scanned"] == 450 and skipped["images_decoded"] == 80
    real = make_report([test_split], tmp_path / "r1", images_per_class=16, lpips_net=None, device="cpu",
                       teacher="digits", quiet=True)["datasets"][0]
    assert real["teacher_agreement"]["top1"] >= 0.9, real["teacher_agreement"]
    assert real["teacher_agreement"]["images"] == 160 and real["feature_diversity"]["mean"] > 0


def test_other_teacher_weights_are_flagged(pair, tmp_path):
    random_teacher = load_teacher("digits", pretrained=False)
    d = make_report([pair[1]], tmp_path / "r", images_per_class=2, lpips_net=None, device="cpu",
                    teacher=random_teacher, quiet=True)["datasets"][0]
    assert d["teacher"]["weights_match"] is False
    assert any("not those the dataset was made with" in w for w in d["warnings"])
    assert "not those the dataset was made with" in (tmp_path / "r" / "report.html").read_text()


def test_missing_lpips_backbone_names_the_file(dfgen_cli, pair, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))

    def no_network(url, dst, *args, **kwargs):  # stay hermetic even on a connected machine
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    expected = tmp_path / "empty_home" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    with pytest.raises(DfgenError) as info:
        make_report([pair[0]], tmp_path / "r", lpips_net="alex", device="cpu", quiet=True)
    message = str(info.value)
    assert str(expected) in message and "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in message
    assert "\n" not in message
    code, _, err = dfgen_cli(["report", pair[0], "--out", tmp_path / "r2", "--device", "cpu"])
    assert code == 1 and "alexnet-owt-7be5be79.pth" in err and "Traceback" not in err


# --------------------------------------------------------------------------- bad input


def _damage_truncate(dataset: Path) -> str:
    tar = dataset / "shards" / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[:5000])
    return "shard-000001.tar"


def _damage_truncate_with_matching_sidecar(dataset: Path) -> str:
    _damage_truncate(dataset)
    rewrite_sidecar_and_index(dataset, "shard-000001")
    return "shard-000001.tar"


def _damage_not_tar(dataset: Path) -> str:
    tar = dataset / "shards" / "shard-000000.tar"
    tar.write_bytes(b"this is not a tar file\n" * 1000)
    rewrite_sidecar_and_index(dataset, "shard-000000")
    return "shard-000000.tar"


def _damage_sha(dataset: Path) -> str:
    tar = dataset / "shards" / "shard-000001.tar"
    data = bytearray(tar.read_bytes())
    data[-3000] ^= 0xFF  # same size, different content
    tar.write_bytes(bytes(data))
    return "shard-000001.tar"


def _damage_dataset_json(dataset: Path) -> str:
    (dataset / "dataset.json").unlink()
    return "dataset.json"


def _damage_sidecar(dataset: Path) -> str:
    (dataset / "shards" / "shard-000000.json").unlink()
    return "shard-000000.json"


@pytest.mark.parametrize(
    "damage, words",
    [
        (_damage_truncate, "truncated or changed"),
        (_damage_truncate_with_matching_sidecar, "truncated"),
        (_damage_not_tar, "not a tar file"),
        (_damage_sha, "sha256 does not match"),
        (_damage_dataset_json, "not found"),
        (_damage_sidecar, "sidecar"),
    ],
)
def test_bad_input_gives_one_line_error_naming_the_file(dfgen_cli, pair, tmp_path, damage, words):
    dataset = copy_dataset(pair[0], tmp_path / "data")
    filename = damage(dataset)
    code, _, err = dfgen_cli(["report", dataset, "--out", tmp_path / "r", "--lpips-net", "none", "--device", "cpu",
                              "--quiet"])
    assert code == 1, err
    assert err.startswith("Error: ") and filename in err and words in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_tar_member_layout_matches_what_the_scanner_reads(pair):
    """The scanner keeps (offset, size) of each image member; those bytes must be a decodable image."""
    info = open_dataset(pair[0])
    ref = scan_shards(info, 1, 0).samples[0][0]
    with open(ref.shard, "rb") as handle:
        handle.seek(ref.offset)
        image = Image.open(io.BytesIO(handle.read(ref.size)))
        assert image.size == (32, 32)  # written at the teacher's input size
    with tarfile.open(ref.shard) as archive:
        assert archive.getmember(f"{ref.key}.png").offset_data == ref.offset


# --------------------------------------------------------------------------- the page in a browser


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_page_renders_images_in_headless_chromium(two_report, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no headless Chromium on this machine (apt-get install chromium)")
    out, _ = two_report
    shot = tmp_path / "shot.png"
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
        (out / "report.html").resolve().as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"chromium wrote no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert (pixels.min(axis=2) < 250).mean() > 0.05  # not a blank page
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    # Text is grey; the coloured bars of the embedded matplotlib plots show the images rendered.
    saturated = (pixels.max(axis=2) - pixels.min(axis=2)) > 80
    assert saturated.sum() > 5000, saturated.sum()
