"""Atomic files on shared storage: write a temporary name beside the target, fsync it, rename it over the target,
fsync the directory. Readers see the old file or the new one, never part of one, and a power loss after the call
keeps the new one. Used by dfgen's shards, JSON files and report.

Temporary names carry the host, the rank, the PID and a random suffix: containers on different nodes reuse PIDs,
and several ranks write the same config.json / index.json / dataset.json at once."""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TMP_MARK = ".tmp-"  # every temporary name holds it: a start removes what a killed run left
_process = {"rank": None}  # this process's rank, once known (dfgen.synthesize sets it)


def set_process_rank(rank: int | None) -> None:
    """Put `rank` into this process's temporary names (for whoever lists a shared directory)."""
    _process["rank"] = rank


def temporary_name(path: Path) -> Path:
    """`NAME.tmp-HOST-rRANK-PID-RANDOM` beside `path`: unique across nodes, ranks and reused PIDs."""
    host = "".join(c if c.isalnum() or c == "-" else "_" for c in socket.gethostname())[:32] or "host"
    rank = _process["rank"]
    rank_part = f"-r{rank}" if rank is not None else ""
    return path.with_name(f"{path.name}{TMP_MARK}{host}{rank_part}-{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that a rename inside it survives a power loss (where the platform allows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a platform or file system without directory handles: nothing more can be done
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], Any], replace: bool = True) -> None:
    """`write(handle)` to a temporary name beside `path`, fsync the file, rename it over `path`, fsync the directory.
    On any failure the temporary is removed and `path` is untouched. With `replace=False` an existing `path` is
    kept and FileExistsError raised: the first of several writers wins (a hard link, atomic on POSIX and NFS)."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _link_new(tmp: Path, path: Path) -> None:
    """Give `tmp`'s file the name `path` only if nothing has that name (FileExistsError otherwise)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: a check then a rename, racy only against another claim
        if path.exists():
            raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
        os.replace(tmp, path)


def write_json_atomic(path: str | Path, data: Any, replace: bool = True, **dump_options: Any) -> None:
    """`data` as indented JSON with sorted keys (extra json.dumps options allowed), written atomically (see
    write_atomic for `replace`)."""
    text = json.dumps(data, **{"indent": 1, "sort_keys": True, **dump_options}) + "\n"
    write_atomic(path, lambda handle: handle.write(text.encode()), replace)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda handle: handle.write(text.encode()))
