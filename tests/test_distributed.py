"""Synthesis over several processes: torchrun, hand-started ranks, a killed rank."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--teacher", "digits", "--schedule", "8:6,16:6", "--classes-per-batch", "5", "--images-per-class", "2",
        "--shard-size", "10", "--warmup", "1", "-n", "60", "--quiet"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def dfgen(*args, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "dfgen", *map(str, args)], env=env or ENV, capture_output=True,
                          text=True, **kwargs)


def tar_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out"
    result = dfgen("synthesize", *ARGS, "--out", out)
    assert result.returncode == 0, result.stderr
    assert len(tar_bytes(out)) == 6
    return out


def test_torchrun_two_processes_match_one(single, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    out = tmp_path / "out"
    result = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "dfgen", "synthesize", *ARGS,
                             "--out", str(out)], env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert tar_bytes(out) == tar_bytes(single)
    assert (out / "index.json").read_text() == (single / "index.json").read_text()
    assert "[rank 1/2]" in result.stderr


def test_ranks_started_by_hand_match_one(single, tmp_path):
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, "-m", "dfgen", "synthesize", *ARGS, "--out", str(out), "--rank",
                               str(r), "--world-size", "2"], env=ENV, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert tar_bytes(out) == tar_bytes(single)
    assert (out / "index.json").exists() and (out / "dataset.json").exists()


def test_ranks_without_rank_flag_are_refused_or_ranked_from_slurm(single, tmp_path):
    """--world-size without --rank: refused where the environment holds no rank (every process would make the same
    shards), ranked by SLURM_ARRAY_TASK_ID in an array of single-process tasks."""
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, "-m", "dfgen", "synthesize", *ARGS, "--out", str(out), "--world-size",
                               "2"], env=ENV, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 1
        assert "--world-size 2 without --rank" in proc.stderr.read()
    assert not out.exists()
    array = {"SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "0"}
    procs = [subprocess.Popen([sys.executable, "-m", "dfgen", "synthesize", *ARGS, "--out", str(out), "--world-size",
                               "2"], env={**ENV, **array, "SLURM_ARRAY_TASK_ID": str(task)}, stderr=subprocess.PIPE,
                              text=True) for task in range(2)]
    errors = [proc.stderr.read() for proc in procs]
    assert [proc.wait(timeout=300) for proc in procs] == [0, 0], errors
    assert "[rank 0/2]" in errors[0] and "[rank 1/2]" in errors[1]
    assert tar_bytes(out) == tar_bytes(single)


def test_killed_rank_restarted_alone_completes_identically(single, tmp_path):
    out = tmp_path / "out"
    rank0 = subprocess.Popen([sys.executable, "-m", "dfgen", "synthesize", *ARGS, "--out", str(out), "--rank", "0",
                              "--world-size", "2"], env=ENV, stderr=subprocess.DEVNULL)
    rank1 = subprocess.Popen([sys.executable, "-m", "dfgen", "synthesize", *ARGS, "--out", str(out), "--rank", "1",
                              "--world-size", "2"], env=ENV, stderr=subprocess.DEVNULL)
    first_of_rank1 = out / "shards" / "shard-000001.json"
    deadline = time.time() + 120
    while not first_of_rank1.exists() and rank1.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    rank1.send_signal(signal.SIGKILL)
    rank1.wait()
    assert rank0.wait(timeout=300) == 0
    assert not (out / "index.json").exists()  # rank 1's shards are missing

    result = dfgen("index", out)
    assert result.returncode == 1 and "missing or damaged" in result.stderr and "shard-000005.tar" in result.stderr

    result = dfgen("synthesize", *ARGS, "--out", out, "--rank", "1", "--world-size", "2")
    assert result.returncode == 0, result.stderr
    assert tar_bytes(out) == tar_bytes(single)
    assert not [p for p in (out / "shards").iterdir() if ".tmp-" in p.name]
    assert (out / "index.json").read_text() == (single / "index.json").read_text()

    result = dfgen("index", out)
    assert result.returncode == 0 and "all sha256 verified" in result.stdout


def test_dry_run_plans_without_writing(tmp_path):
    out = tmp_path / "planned"
    start = time.perf_counter()
    result = dfgen("synthesize", "--config", ROOT / "configs" / "digits.yaml", "--n", "1.2M", "--out", out,
                   "--world-size", "8", "--dry-run")  # no --rank and no rank in the environment: a plan needs none
    assert result.returncode == 0, result.stderr
    assert "1,200,000" in result.stdout and "rank 7" in result.stdout and "images/s" in result.stdout
    assert "disk" in result.stdout
    assert not out.exists()
    assert time.perf_counter() - start < 60
