"""Output folders that protect what is in them, for every command that writes one (dfgen synthesize, export-*,
report; distill run).

Ownership: a command marks its folder with what made it (made_by.json: tool, command, kind, configuration) and
refuses a folder that something else made, or that holds files nothing of ours made; folders of earlier versions
(no mark) are recognised by their files (config.json, dataset.json, last.pt, report.json). It never deletes a file
it did not write.

Holding: a run holds its folder with one lock file per rank (lock-rRANK.json: host, PID, rank, world size and the
launcher's run id). The ranks of one run share the folder; a second run is refused. A lock whose process is gone
(dead PID, or a PID reused since, on this host) is stale and taken over; on another host it cannot be checked, and
the refusal says which file to delete."""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfgen.atomic import TMP_MARK, write_json_atomic
from dfgen.dataset import CONFIG_FILE, DATASET_FILE, SHARDS_DIR
from dfgen.errors import DfgenError

MARKER = "made_by.json"
LOCK_PREFIX = "lock-r"  # lock-r0.json, lock-r1.json, ...
TOLERANCE_S = 2.0  # clock granularity when comparing a process's start with its lock's


@dataclass(frozen=True)
class Maker:
    """What makes (or made) a folder: `tool` dfgen/distill, `command` (synthesize, export-real, report, run...),
    `kind` (synthetic, real, report, run), and `config`, the settings that identify its content."""

    tool: str
    command: str
    kind: str
    config: dict[str, Any]

    def record(self) -> dict[str, Any]:
        return {"tool": self.tool, "command": self.command, "kind": self.kind, "config": self.config}

    def describe(self) -> str:
        return f"{self.tool} {self.command} ({self.kind})"


@dataclass(frozen=True)
class Found:
    """What a folder holds: its maker's record (None: nothing we know made it), whether it was inferred from an
    earlier version's files, and the entries that no known maker accounts for."""

    maker: dict[str, Any] | None
    inferred: bool
    unknown: list[str]

    @property
    def empty(self) -> bool:
        return self.maker is None and not self.unknown

    def describe(self) -> str:
        if self.maker is None:
            names = ", ".join(self.unknown[:5]) + (", ..." if len(self.unknown) > 5 else "")
            return f"files not made by dfgen or distill ({names})"
        what = {"synthetic": "a synthetic dataset", "real": "a real dataset", "report": "a report",
                "run": "a training run", "dataset": "a dataset"}.get(self.maker.get("kind"), "a folder")
        return f"{what} made by {self.maker.get('tool')} {self.maker.get('command')}"


# ------------------------------------------------------------------------------------------------ ownership
def inspect_folder(path: Path) -> Found:
    """What `path` holds (nonexistent or empty: nothing)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DfgenError(f"--out {path} is a file, not a folder; choose another --out")
    if not path.is_dir():
        return Found(None, False, [])
    try:
        entries = sorted(p.name for p in path.iterdir() if TMP_MARK not in p.name and not _is_lock(p.name))
    except OSError as exc:
        raise DfgenError(f"cannot list --out {path} ({exc.strerror or exc}); check its permissions") from None
    if not entries or entries == [MARKER]:  # a mark alone (a run that stopped before writing) holds nothing
        return Found(None, False, [])
    if MARKER in entries:
        record = _read_json(path / MARKER)
        if not isinstance(record, dict) or not {"tool", "command", "kind"} <= set(record):
            raise DfgenError(f"{path / MARKER} is unreadable, so what made {path} is unknown; restore it or choose "
                             "another --out")
        return Found(record, False, [])
    maker = _infer_maker(path, set(entries))
    return Found(maker, True, [] if maker else entries)


def _infer_maker(path: Path, entries: set[str]) -> dict[str, Any] | None:
    """The maker of a folder written before made_by.json existed, from the files each command writes."""
    if CONFIG_FILE in entries:
        config = _read_json(path / CONFIG_FILE)
        if isinstance(config, dict) and "content" in config and "dataset" in config:
            return {"tool": "dfgen", "command": "synthesize", "kind": "synthetic", "config": {}}
        if isinstance(config, dict) and "epochs" in config and "model" in config:
            return {"tool": "distill", "command": "run", "kind": "run", "config": {}}
        if config is _UNREADABLE and SHARDS_DIR in entries:  # a dataset's config.json, damaged
            return {"tool": "dfgen", "command": "synthesize", "kind": "synthetic", "config": {}, "damaged": True}
        return None
    if entries & {"last.pt", "best.pt", "metrics.jsonl"}:
        return {"tool": "distill", "command": "run", "kind": "run", "config": {}}
    if DATASET_FILE in entries:
        description = _read_json(path / DATASET_FILE)
        kind = description.get("kind") if isinstance(description, dict) else None
        if kind == "real":
            return {"tool": "dfgen", "command": "export", "kind": "real", "config": {}}
        if kind == "synthetic":
            return {"tool": "dfgen", "command": "synthesize", "kind": "synthetic", "config": {}}
        return None
    if entries & {"report.json", "report.html"}:
        return {"tool": "dfgen", "command": "report", "kind": "report", "config": {}}
    return None


_UNREADABLE = object()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return _UNREADABLE


def check_ownership(path: Path, maker: Maker, overwrite_flag: str | None = None, overwrite: bool = False,
                    compare_config: bool = True) -> Found:
    """Refuse `path` unless it is empty or made by `maker`'s tool and kind. A folder of the same kind made with
    another configuration passes only with `overwrite` (the caller then replaces its own files); the refusal names
    `overwrite_flag` (`compare_config` False or an empty `maker.config`: any configuration passes, the command
    replaces or checks its own). Folders of earlier versions (no made_by.json) are judged by their files."""
    found = inspect_folder(path)
    if found.empty:
        return found
    where = f"--out {path}"
    if found.maker is None:
        raise DfgenError(f"{where} holds {found.describe()}; {maker.describe()} writes only into an empty folder or "
                         f"one it made: choose another --out")
    same_kind = (found.maker.get("tool"), found.maker.get("kind")) == (maker.tool, maker.kind)
    if not same_kind:
        raise DfgenError(f"{where} holds {found.describe()}; {maker.tool} {maker.command} does not write into it "
                         "(nor delete it): choose another --out, or remove it yourself first")
    recorded = found.maker.get("config") or {}
    if compare_config and recorded and maker.config and recorded != maker.config and not overwrite:
        changed = sorted(k for k in set(recorded) | set(maker.config) if recorded.get(k) != maker.config.get(k))
        hint = f"pass {overwrite_flag} to replace it" if overwrite_flag else "choose another --out"
        raise DfgenError(f"{where} holds {found.describe()} with other settings (differs in: {', '.join(changed)}); "
                         f"{hint}, or choose another --out")
    return found


def mark_folder(path: Path, maker: Maker) -> None:
    """Write made_by.json (atomically; several ranks may write the same record at once)."""
    marker = Path(path) / MARKER
    record = {**maker.record(), "version": _version()}
    if _read_json(marker) != record:
        write_json_atomic(marker, record)


def _version() -> str:
    from dfgen import __version__

    return __version__


def make_folder(path: Path, flag: str = "--out") -> None:
    """Create `path` (and its parents), or one line saying why it cannot be: a file in the way, no permission, a
    read-only file system, no space."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DfgenError(f"{flag} {path} is a file, not a folder; choose another {flag}") from None
    except NotADirectoryError:
        raise DfgenError(f"{flag} {path} lies under a file, not a folder; choose another {flag}") from None
    except OSError as exc:
        raise DfgenError(f"cannot create {flag} {path}: {describe_os_error(exc)}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise DfgenError(f"{flag} {path} is not writable by this user; choose another {flag} or fix its permissions")


FILE_SYSTEM_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR)


def describe_os_error(exc: OSError) -> str:
    """What an OSError means for the user, in a few words with what to do."""
    reasons = {
        errno.ENOSPC: "no space left on the device; free some space, or choose another --out",
        errno.EDQUOT: "disk quota exceeded; free some space within your quota, or choose another --out",
        errno.EROFS: "the file system is read-only; choose another --out",
        errno.EACCES: "permission denied; choose another --out or fix its permissions",
        errno.EPERM: "operation not permitted; choose another --out or fix its permissions",
        errno.ENOTDIR: "a part of the path is a file, not a folder; choose another --out",
    }
    where = f" ({exc.filename})" if exc.filename else ""
    return reasons.get(exc.errno, exc.strerror or str(exc)) + where


def owned_files(folder: Path, prefix: str) -> list[Path]:
    """The files in `folder` whose names start with `prefix` (what a command wrote there, e.g. shard-): a
    replacement removes these and nothing else."""
    folder = Path(folder)
    return sorted(p for p in folder.glob(f"{prefix}*") if p.is_file()) if folder.is_dir() else []


# ------------------------------------------------------------------------------------------------ holding
def run_identity(environ: dict[str, str] | None = None) -> str | None:
    """An id shared by the processes of one launch, different for another launch: torchrun's run id with its
    rendezvous address, SLURM's job (array) and step, or the MPI job; None when started by hand."""
    env = os.environ if environ is None else environ
    if env.get("TORCHELASTIC_RUN_ID"):
        return f"torchrun:{env['TORCHELASTIC_RUN_ID']}@{env.get('MASTER_ADDR', '')}:{env.get('MASTER_PORT', '')}"
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"slurm-array:{env['SLURM_ARRAY_JOB_ID']}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm:{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', 'batch')}"
    for name in ("PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid", "PMI_ID_JOBID"):
        if env.get(name):
            return f"mpi:{env[name]}"
    return None


def _is_lock(name: str) -> bool:
    return name.startswith(LOCK_PREFIX) and name.endswith(".json")


def _host() -> str:
    return socket.gethostname() or "localhost"


@dataclass
class FolderLock:
    """This process's lock on a folder (see the module's docstring); `release()` removes it."""

    path: Path
    record: dict[str, Any]

    def release(self) -> None:
        if _read_json(self.path) == self.record:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_lock(folder: Path, rank: int, world_size: int, command: str) -> FolderLock:
    """Hold `folder` for rank `rank` of `world_size` processes, or one line saying who holds it. The folder must
    exist (make_folder)."""
    folder = Path(folder)
    record = {"host": _host(), "pid": os.getpid(), "rank": rank, "world_size": world_size, "run": run_identity(),
              "command": command, "started": time.time(),
              "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    path = folder / f"{LOCK_PREFIX}{rank}.json"
    for _ in range(5):
        _refuse_conflicts(folder, record)
        try:
            write_json_atomic(path, record, replace=False)
        except FileExistsError:  # another process took it since we looked: judge it on the next round
            continue
        except FileNotFoundError:  # the temporary was swept by a rank clearing a killed run's leftovers: again
            continue
        except OSError as exc:
            raise DfgenError(f"cannot write the lock file {path}: {describe_os_error(exc)}") from None
        try:  # two runs starting at once both saw a free folder: the later check refuses at least one of them
            _refuse_conflicts(folder, record)
        except DfgenError:
            path.unlink(missing_ok=True)
            raise
        return FolderLock(path, record)
    raise DfgenError(f"{folder} is being locked and unlocked by other processes; retry when no run writes there")


def _refuse_conflicts(folder: Path, mine: dict[str, Any]) -> None:
    """Remove stale locks; refuse if a live one belongs to another run (or to this rank of another process)."""
    for path in sorted(folder.glob(f"{LOCK_PREFIX}*.json")):
        other = _read_json(path)
        if other == mine:
            continue
        if not isinstance(other, dict) or not {"host", "pid", "rank"} <= set(other):
            if time.time() - _mtime(path) > 60:  # a lock is written whole (atomically): this one is not ours
                path.unlink(missing_ok=True)
            continue
        if _is_stale(other, mine):
            path.unlink(missing_ok=True)
            continue
        if other.get("rank") != mine["rank"] and _same_run(other, mine):
            continue
        raise DfgenError(_held_message(folder, path, other))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _same_run(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Ranks of one launch: the same launcher run id; by hand (no id), the same number of processes (> 1)."""
    if a.get("run") is not None or b.get("run") is not None:
        return a.get("run") == b.get("run") and a.get("world_size") == b.get("world_size")
    return a.get("world_size") == b.get("world_size") and int(b.get("world_size") or 1) > 1


def _is_stale(lock: dict[str, Any], mine: dict[str, Any]) -> bool:
    """Whether the process that wrote `lock` is gone. A launcher runs one process per rank, so this rank's lock
    from the same launch was left by a process it restarted (SLURM's requeue, an elastic restart), on any host.
    Otherwise only a lock of this host can be checked."""
    if mine.get("run") is not None and (lock.get("run"), lock.get("rank"), lock.get("world_size")) == \
            (mine["run"], mine["rank"], mine["world_size"]):
        return True
    if lock.get("host") != mine["host"]:
        return False
    pid = int(lock.get("pid") or 0)
    if pid == os.getpid():  # this very process (an earlier call), or a PID reused across container restarts
        return lock.get("rank") == mine["rank"] or lock.get("run") != mine.get("run")
    if not process_alive(pid):
        return True
    started = process_start_time(pid)
    return started is not None and started > float(lock.get("started") or 0) + TOLERANCE_S  # the PID was reused


def process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return True


def process_start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), from /proc; None where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        ticks = float(stat.rsplit(")", 1)[1].split()[19])
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _held_message(folder: Path, path: Path, other: dict[str, Any]) -> str:
    who = (f"{other.get('command', 'a run')} (PID {other.get('pid')} on host {other.get('host')}, rank "
           f"{other.get('rank')} of {other.get('world_size')}, since {other.get('started_at', '?')})")
    if other.get("host") == _host():
        return f"{folder} is in use by {who}; wait for it to finish, or choose another --out"
    return (f"{folder} is in use by {who}; wait for it to finish, or choose another --out; if no such process is "
            f"running on {other.get('host')} any more, delete {path}")


@contextmanager
def hold_folder(path: Path, maker: Maker, rank: int = 0, world_size: int = 1, mark: bool = True,
                overwrite_flag: str | None = None, overwrite: bool = False,
                compare_config: bool = True) -> Iterator[Found]:
    """Check that `path` is free or `maker`'s, create it, hold it for this rank until the block ends, and mark it
    (`mark`: the rank that writes there). Yields what the folder held before."""
    found = check_ownership(path, maker, overwrite_flag, overwrite, compare_config)
    make_folder(path)
    with acquire_lock(path, rank, world_size, f"{maker.tool} {maker.command}"):
        if mark:
            mark_folder(path, maker)
        yield found
