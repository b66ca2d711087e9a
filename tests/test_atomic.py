"""dfgen.atomic: one atomic writer for dfgen's shards, JSON files and report."""

import json
import os
import stat

import pytest

from dfgen import atomic


def test_two_writers_with_one_pid_do_not_share_a_temporary(tmp_path, monkeypatch):
    # Containers on different nodes reuse PIDs: two ranks writing dataset.json on shared storage at once.
    monkeypatch.setattr(atomic.os, "getpid", lambda: 4242)
    target = tmp_path / "dataset.json"
    names = []

    def outer(handle):
        handle.write(b'{"writer": "A", ')
        names.append(sorted(p.name for p in tmp_path.iterdir()))
        # the second writer runs to completion while the first one's file is half written
        atomic.write_json_atomic(target, {"writer": "B"})
        handle.write(b'"done": true}\n')

    atomic.write_atomic(target, outer)
    assert json.loads(target.read_text()) == {"writer": "A", "done": True}  # A's file was never touched by B
    assert [p.name for p in tmp_path.iterdir()] == ["dataset.json"]  # no temporary left by either
    first = atomic.temporary_name(target)
    assert first != atomic.temporary_name(target) and ".tmp-" in first.name and "-4242-" in first.name


def test_temporary_names_carry_host_and_rank(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic.socket, "gethostname", lambda: "node/17.cluster")
    monkeypatch.setitem(atomic._process, "rank", None)
    assert atomic.temporary_name(tmp_path / "x.tar").name.startswith(f"x.tar.tmp-node_17_cluster-{os.getpid()}-")
    atomic.set_process_rank(5)
    assert atomic.temporary_name(tmp_path / "x.tar").name.startswith(f"x.tar.tmp-node_17_cluster-r5-{os.getpid()}-")


def test_file_and_directory_are_fsynced_and_failures_leave_nothing(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    target = tmp_path / "config.json"
    atomic.write_json_atomic(target, {"b": 1, "a": [1, 2]})
    assert synced == ["file", "dir"]
    assert target.read_text() == '{\n "a": [\n  1,\n  2\n ],\n "b": 1\n}\n'

    def failing(handle):
        handle.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic.write_atomic(target, failing)
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_a_write_that_must_not_replace_keeps_the_first_file(tmp_path):
    target = tmp_path / "config.json"
    atomic.write_json_atomic(target, {"claim": 1}, replace=False)
    with pytest.raises(FileExistsError):
        atomic.write_json_atomic(target, {"claim": 2}, replace=False)
    assert json.loads(target.read_text()) == {"claim": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
