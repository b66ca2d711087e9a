"""dfgen synthesize end to end on the bundled digits teacher: inversion quality, the output format, byte-identical
reruns and resume, and one-line refusals of bad input."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from dfgen.cli import main
from dfgen.config import LossWeights
from dfgen.inversion import EngineSettings, InversionEngine

ROOT = Path(__file__).resolve().parents[1]
# A tiny, fast configuration: 5 classes x 2 images per batch, 2 batches per shard.
SMALL = ["--teacher", "digits", "--schedule", "8:4,16:4", "--classes-per-batch", "5", "--images-per-class", "2",
         "--shard-size", "20", "--warmup", "1", "--quiet"]


def run_cli(args, capsys=None):
    """Run `dfgen ARGS` in-process; return (exit code, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err if capsys else ""
    return code, err


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))}


def test_inversion_reaches_teacher_agreement_and_bn_loss_falls(digits_teacher):
    torch.manual_seed(0)
    settings = EngineSettings(schedule=[(16, 100), (32, 100)], weights=LossWeights(), warmup=10, log_every=1)
    engine = InversionEngine(digits_teacher.model, digits_teacher.mean, digits_teacher.std, settings,
                             torch.device("cpu"))
    labels = torch.arange(10).repeat_interleave(2)
    bn_values = []
    result = engine.invert(labels, seed=123, on_log=lambda stage, it, n, terms: bn_values.append(terms["bn"]))
    agreement = (result.predicted == labels).float().mean().item()
    assert agreement >= 0.9, agreement
    assert bn_values[-1] < bn_values[0] / 3, (bn_values[0], bn_values[-1])  # from the first iteration
    assert result.images.dtype == torch.uint8 and result.images.shape == (20, 1, 32, 32)


def test_output_format_and_webdataset_readback(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_cli(["synthesize", *SMALL, "--n", "30", "--out", out], capsys)
    assert code == 0, err
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["n"] == 30 and dataset["num_classes"] == 10 and dataset["in_chans"] == 1
    assert dataset["teacher"]["source"] == "dfgen:digits" and len(dataset["teacher"]["weights_sha256"]) == 64
    assert dataset["schedule"] == "8:4,16:4" and dataset["format"] == "png" and dataset["seed"] == 0
    assert dataset["losses"]["ep"] == 50 and dataset["image_size"] == [1, 32, 32]  # the teacher's input size
    index = json.loads((out / "index.json").read_text())
    assert index["__kind__"] == "wids-shard-index-v1" and index["wids_version"] == 1
    assert [s["nsamples"] for s in index["shardlist"]] == [20, 10]
    for entry in index["shardlist"]:
        tar = out / entry["url"]
        sidecar = json.loads(tar.with_suffix(".json").read_text())
        assert entry["filesize"] == tar.stat().st_size == sidecar["bytes"]
        import hashlib

        assert sidecar["sha256"] == hashlib.sha256(tar.read_bytes()).hexdigest() == entry["sha256"]
        assert {"count", "seconds", "loss"} <= set(sidecar)

    urls = [str(out / s["url"]) for s in index["shardlist"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode())  # images stay bytes: check their mode
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(30)]
    labels = [s["cls"] for s in samples]
    assert all(isinstance(label, int) for label in labels)
    assert np.bincount(labels, minlength=10).tolist() == [3] * 10 == dataset["class_counts"]
    images = [Image.open(io.BytesIO(s["png"])) for s in samples]
    assert all(img.mode == "L" and img.size == (32, 32) for img in images)  # one channel stays grey
    assert [s["json"]["index"] for s in samples] == list(range(30))
    assert all(s["json"]["label"] == s["cls"] for s in samples)
    assert all(0 <= s["json"]["target_prob"] <= 1 for s in samples)
    assert not [p for p in (out / "shards").iterdir() if ".tmp-" in p.name]


def test_same_command_twice_gives_identical_bytes_and_rerun_does_nothing(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(["synthesize", *SMALL, "--n", "20", "--out", a], capsys)[0] == 0
    assert run_cli(["synthesize", *SMALL, "--n", "20", "--out", b], capsys)[0] == 0
    assert shard_bytes(a) == shard_bytes(b) and shard_bytes(a)
    before = {p: p.stat().st_mtime_ns for p in (a / "shards").iterdir()}
    code, err = run_cli(["synthesize", *SMALL, "--n", "20", "--out", a], capsys)
    assert code == 0 and "nothing to do" in err
    assert {p: p.stat().st_mtime_ns for p in (a / "shards").iterdir()} == before


def test_different_configuration_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(["synthesize", *SMALL, "--n", "10", "--out", out], capsys)[0] == 0
    code, err = run_cli(["synthesize", *SMALL, "--n", "10", "--seed", "1", "--out", out], capsys)
    assert code == 1 and "different configuration" in err and "seed" in err and "Traceback" not in err
    code, err = run_cli(["synthesize", *SMALL, "--n", "10", "--seed", "1", "--out", out, "--overwrite"], capsys)
    assert code == 0, err
    assert json.loads((out / "dataset.json").read_text())["seed"] == 1


def test_changed_shard_is_remade(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(["synthesize", *SMALL, "--n", "40", "--out", out], capsys)[0] == 0
    reference = shard_bytes(out)
    damaged = out / "shards" / "shard-000001.tar"
    damaged.write_bytes(damaged.read_bytes()[:1000])  # truncated: sha256 no longer matches
    assert run_cli(["synthesize", *SMALL, "--n", "40", "--out", out], capsys)[0] == 0
    assert shard_bytes(out) == reference


def test_sigkill_after_first_shard_then_rerun_is_identical(tmp_path, capsys):
    args = [*SMALL, "--schedule", "8:30,16:30", "--n", "60"]
    reference = tmp_path / "reference"
    assert run_cli(["synthesize", *args, "--out", reference], capsys)[0] == 0

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "dfgen", "synthesize", *args, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "shards" / "shard-000000.json"
    deadline = time.time() + 600  # generous: a loaded machine is slow, and the loop ends as soon as it is there
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists()
    assert not (out / "index.json").exists()  # killed before the end: not marked complete

    code, err = run_cli(["synthesize", *args, "--out", out], capsys)
    assert code == 0, err
    assert "resuming" in err
    assert shard_bytes(out) == shard_bytes(reference)
    assert not [p for p in (out / "shards").iterdir() if ".tmp-" in p.name]
    assert (out / "index.json").exists()


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--n", "abc"], 2, "positive count"),
        (["--n", "0"], 2, "positive count"),
        (["--schedule", "32-100"], 2, "resolution:iterations"),
        (["--teacher", "resnet_18"], 1, "did you mean"),
        (["--teacher-weights", "/nonexistent/w.pt"], 1, "not found"),
        (["--teacher", "alexnet", "--random-init"], 1, "BatchNorm"),
        (["--images-per-class", "1"], 1, "images-per-class >= 2"),
        (["--batch-size", "53"], 1, "try --batch-size 52"),
        (["--batch-size", "7", "--classes-per-batch", "5"], 1, "not a multiple of --classes-per-batch 5"),
        (["--batch-size", "40", "--classes-per-batch", "5", "--images-per-class", "4"], 1, "two of the three"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(tmp_path, capsys, args, code, message):
    base = ["synthesize", "--teacher", "digits", "--n", "10", "--out", tmp_path / "o", "--quiet",
            "--schedule", "8:1"]
    got, err = run_cli([*base, *args], capsys)
    assert got == code, err
    assert message in err and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len([line for line in lines if line.startswith("Error:")]) == 1
    assert len(lines) <= 3  # click usage errors add a usage line and a hint


def test_teacher_count_and_out_are_required_without_a_preset(tmp_path, capsys):
    code, err = run_cli(["synthesize", "-n", "10", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "--teacher" in err
    code, err = run_cli(["synthesize", "--teacher", "digits", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "-n" in err


def test_not_a_checkpoint_teacher_weights(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    code, err = run_cli(["synthesize", "--teacher", "digits", "--teacher-weights", junk, "--n", "10", "--out",
                         tmp_path / "o"], capsys)
    assert code == 1 and "not a PyTorch checkpoint" in err


def test_foreign_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("user data")
    code, err = run_cli(["synthesize", *SMALL, "--n", "10", "--out", out, "--overwrite"], capsys)
    assert code == 1 and "not made by dfgen" in err
    assert (out / "notes.txt").exists()


def test_export_digits_writes_the_real_split_in_the_dataset_format(tmp_path, capsys):
    code, err = run_cli(["export-digits", "--out", tmp_path / "real"], capsys)
    assert code == 0, err
    sizes = {}
    for part in ("train", "test"):
        dataset = json.loads((tmp_path / "real" / part / "dataset.json").read_text())
        index = json.loads((tmp_path / "real" / part / "index.json").read_text())
        assert dataset["kind"] == "real" and dataset["in_chans"] == 1 and dataset["image_size"] == [1, 32, 32]
        urls = [str(tmp_path / "real" / part / s["url"]) for s in index["shardlist"]]
        samples = list(wds.WebDataset(urls, shardshuffle=False).decode())
        sizes[part] = len(samples)
        assert sum(s["nsamples"] for s in index["shardlist"]) == len(samples) == dataset["n"]
        assert np.bincount([s["cls"] for s in samples]).tolist() == dataset["class_counts"]
    assert sizes == {"train": 1347, "test": 450}
