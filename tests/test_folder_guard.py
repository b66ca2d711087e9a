"""Output folders own their contents and are held by one run: what made a folder is recognised (made_by.json, or
an earlier version's files), other folders are refused in one line, an overwrite removes only its own files, and a
second run is refused while the ranks of one run share the folder; stale locks are taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from dfgen import folder_guard as guard
from dfgen.errors import DfgenError
from dfgen.outdir import remove_dataset_files
from dfgen.realdata import write_image_dataset

SYNTHETIC = guard.Maker("dfgen", "synthesize", "synthetic", {})
DISTILL = guard.Maker("distill", "run", "run", {})


def _one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


@pytest.fixture
def launcher_free(monkeypatch):
    for name in ("TORCHELASTIC_RUN_ID", "SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID", "PMIX_NAMESPACE",
                 "OMPI_MCA_ess_base_jobid", "PMI_ID_JOBID"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_folders_of_earlier_versions_are_recognised_by_their_files(tmp_path):
    legacy = {
        "syn": ("config.json", {"content": {}, "dataset": {}, "fingerprint": "x"}),
        "real": ("dataset.json", {"kind": "real", "n": 3}),
        "run": ("config.json", {"model": "dearkd_micro_patch4_32", "epochs": 3, "shards": []}),
        "rep": ("report.json", {}),
    }
    for name, (file, content) in legacy.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / file).write_text(json.dumps(content))
    kinds = {name: guard.inspect_folder(tmp_path / name).maker["kind"] for name in legacy}
    assert kinds == {"syn": "synthetic", "real": "real", "run": "run", "rep": "report"}
    assert guard.inspect_folder(tmp_path / "absent").empty
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    found = guard.inspect_folder(tmp_path / "mine")
    assert found.maker is None and found.unknown == ["notes.txt"]
    # an old synthetic set still resumes; anything else is refused, saying what is there
    assert guard.check_ownership(tmp_path / "syn", SYNTHETIC).maker["command"] == "synthesize"
    with pytest.raises(DfgenError) as excinfo:
        guard.check_ownership(tmp_path / "real", SYNTHETIC)
    assert "holds a real dataset made by dfgen export" in _one_line(excinfo)
    with pytest.raises(DfgenError) as excinfo:
        guard.check_ownership(tmp_path / "syn", DISTILL)
    assert "holds a synthetic dataset" in _one_line(excinfo) and "choose another --out" in str(excinfo.value)
    with pytest.raises(DfgenError) as excinfo:
        guard.check_ownership(tmp_path / "mine", SYNTHETIC)
    assert "notes.txt" in _one_line(excinfo)


def test_a_mark_names_the_maker_and_other_settings_need_the_overwrite_flag(tmp_path):
    made = guard.Maker("dfgen", "report", "report", {"datasets": ["a"]})
    guard.make_folder(tmp_path / "r")
    guard.mark_folder(tmp_path / "r", made)
    (tmp_path / "r" / "report.json").write_text("{}")
    record = json.loads((tmp_path / "r" / guard.MARKER).read_text())
    assert (record["tool"], record["command"], record["kind"], record["config"]) == \
        ("dfgen", "report", "report", {"datasets": ["a"]})
    other = guard.Maker("dfgen", "report", "report", {"datasets": ["b"]})
    with pytest.raises(DfgenError) as excinfo:
        guard.check_ownership(tmp_path / "r", other, "--overwrite")
    assert "differs in: datasets" in _one_line(excinfo) and "--overwrite" in str(excinfo.value)
    assert guard.check_ownership(tmp_path / "r", other, "--overwrite", overwrite=True).maker["kind"] == "report"
    (tmp_path / "r" / guard.MARKER).write_text("{not json")
    with pytest.raises(DfgenError, match="made_by.json is unreadable"):
        guard.check_ownership(tmp_path / "r", made)


def test_an_export_refuses_a_synthetic_set_and_replaces_only_its_own(tmp_path):
    import torch

    images, labels = torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 0, 1])
    synthetic = tmp_path / "syn"
    (synthetic / "shards").mkdir(parents=True)
    (synthetic / "config.json").write_text(json.dumps({"content": {}, "dataset": {}}))
    (synthetic / "shards" / "shard-00000.tar").write_bytes(b"synthetic")
    with pytest.raises(DfgenError, match="holds a synthetic dataset"):
        write_image_dataset(synthetic, images, labels, {"num_classes": 2})
    assert (synthetic / "shards" / "shard-00000.tar").read_bytes() == b"synthetic"
    assert sorted(p.name for p in synthetic.iterdir()) == ["config.json", "shards"]
    real = write_image_dataset(tmp_path / "real", images, labels, {"num_classes": 2}, shard_size=2)
    assert json.loads((real / guard.MARKER).read_text())["kind"] == "real"
    assert not list(real.glob("lock-r*"))  # released at the end
    write_image_dataset(real, images[:2], labels[:2], {"num_classes": 2}, shard_size=2)  # its own: replaced
    assert json.loads((real / "dataset.json").read_text())["n"] == 2


def test_an_overwrite_removes_only_what_synthesize_wrote(tmp_path):
    out = tmp_path / "syn"
    (out / "shards").mkdir(parents=True)
    for name in ("shard-00000.tar", "shard-00000.json", "keep.txt"):
        (out / "shards" / name).write_text("x")
    for name in ("config.json", "index.json", "dataset.json", "README"):
        (out / name).write_text("{}")
    remove_dataset_files(out)
    assert sorted(p.name for p in out.rglob("*")) == ["README", "keep.txt", "shards"]


def test_a_folder_under_a_file_or_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DfgenError, match="is a file, not a folder"):
        guard.make_folder(blocker)
    with pytest.raises(DfgenError, match="lies under a file"):
        guard.make_folder(blocker / "sub")

    def refuse(self, *args, **kwargs):
        raise OSError(122, "Disk quota exceeded", str(self))  # EDQUOT

    monkeypatch.setattr(guard.Path, "mkdir", refuse)
    with pytest.raises(DfgenError) as excinfo:
        guard.make_folder(tmp_path / "new")
    assert "disk quota exceeded" in _one_line(excinfo)
    monkeypatch.undo()
    monkeypatch.setattr(guard.os, "access", lambda *args: False)  # (root may write anywhere: the check is faked)
    with pytest.raises(DfgenError, match="is not writable"):
        guard.make_folder(tmp_path)


_HOLDER = """
import sys, time
from dfgen.folder_guard import acquire_lock
lock = acquire_lock(sys.argv[1], 0, 1, "test holder")
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_run_is_refused_while_the_first_holds_the_folder(tmp_path, launcher_free):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for name in ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID"):
        env.pop(name, None)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, env=env,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DfgenError) as excinfo:
            guard.acquire_lock(tmp_path, 0, 1, "dfgen synthesize")
        assert f"PID {holder.pid}" in _one_line(excinfo) and "in use by test holder" in str(excinfo.value)
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock is stale (dead PID on this host) and taken over
    with guard.acquire_lock(tmp_path, 0, 1, "dfgen synthesize") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not lock.path.exists()


def _fake_lock(folder, **fields):
    record = {"host": socket.gethostname(), "pid": os.getppid(), "rank": 0, "world_size": 1, "run": None,
              "command": "dfgen synthesize", "started": time.time(), "started_at": "then", **fields}
    (folder / f"lock-r{record['rank']}.json").write_text(json.dumps(record))


def test_ranks_of_one_run_share_the_folder_and_stale_locks_are_detected(tmp_path, launcher_free):
    launcher_free.setenv("TORCHELASTIC_RUN_ID", "job-a")
    launcher_free.setenv("MASTER_ADDR", "node1")
    launcher_free.setenv("MASTER_PORT", "29500")
    run_a = guard.run_identity()
    assert run_a == "torchrun:job-a@node1:29500"
    _fake_lock(tmp_path, rank=1, world_size=2, run=run_a)  # a live rank 1 of this launch (the parent process)
    with guard.acquire_lock(tmp_path, 0, 2, "dfgen synthesize"):
        pass
    # the same launch restarted this rank on another node (a requeue): its old lock is the restarted process's
    _fake_lock(tmp_path, rank=0, world_size=2, run=run_a, host="elsewhere", pid=12345)
    with guard.acquire_lock(tmp_path, 0, 2, "dfgen synthesize"):
        pass
    launcher_free.setenv("TORCHELASTIC_RUN_ID", "job-b")  # another launch: refused
    with pytest.raises(DfgenError, match="in use by dfgen synthesize"):
        guard.acquire_lock(tmp_path, 0, 2, "dfgen synthesize")
    # a lock of another host cannot be checked: the refusal says which file to delete
    (tmp_path / "lock-r1.json").unlink()
    _fake_lock(tmp_path, host="elsewhere", pid=12345)
    with pytest.raises(DfgenError) as excinfo:
        guard.acquire_lock(tmp_path, 0, 1, "dfgen synthesize")
    assert f"delete {tmp_path / 'lock-r0.json'}" in _one_line(excinfo)
    # a live PID that started after the lock was written is a reused PID: stale
    _fake_lock(tmp_path, started=1.0)
    with guard.acquire_lock(tmp_path, 0, 1, "dfgen synthesize"):
        pass
    # by hand (no launcher): --rank r --world-size W processes share the folder
    launcher_free.delenv("TORCHELASTIC_RUN_ID")
    _fake_lock(tmp_path, rank=1, world_size=2)
    with guard.acquire_lock(tmp_path, 0, 2, "dfgen synthesize"):
        with pytest.raises(DfgenError):  # but not with a single-process run
            guard.acquire_lock(tmp_path, 0, 1, "dfgen synthesize")


def test_launch_ids_of_slurm_and_mpi():
    assert guard.run_identity({"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0"}) == "slurm:7.0"
    assert guard.run_identity({"SLURM_JOB_ID": "7"}) == "slurm:7.batch"
    assert guard.run_identity({"SLURM_ARRAY_JOB_ID": "5", "SLURM_JOB_ID": "9"}) == "slurm-array:5"
    assert guard.run_identity({"PMIX_NAMESPACE": "prterun-x@1"}) == "mpi:prterun-x@1"
    assert guard.run_identity({}) is None


def test_distill_run_and_report_refuse_a_dataset_and_leave_it_untouched(tmp_path, capsys, dfgen_cli):
    from distill.cli import main as distill_main

    dataset = tmp_path / "syn"
    (dataset / "shards").mkdir(parents=True)
    claim = json.dumps({"content": {"seed": 0}, "dataset": {"n": 10}})
    (dataset / "config.json").write_text(claim)
    with pytest.raises(SystemExit) as exited:
        distill_main(["run", "--shards", str(dataset), "--out", str(dataset), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert exited.value.code == 1 and err.startswith(f"Error: --out {dataset} holds a synthetic dataset made by "
                                                     "dfgen synthesize; distill run does not write into it")
    code, _, err = dfgen_cli(["report", str(dataset), "--out", str(dataset), "--quiet"])
    assert code == 1 and "holds a synthetic dataset" in err and len(err.strip().splitlines()) == 1
    assert (dataset / "config.json").read_text() == claim
    assert sorted(p.name for p in dataset.rglob("*")) == ["config.json", "shards"]
    # a folder holding only a mark (a run that stopped before writing anything) is free for any command
    guard.make_folder(tmp_path / "free")
    guard.mark_folder(tmp_path / "free", DISTILL)
    assert guard.check_ownership(tmp_path / "free", SYNTHETIC).empty
