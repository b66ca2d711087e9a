"""Atomic files on shared storage: write a temporary name beside the target, fsync it, rename it over the target,
fsync the directory. Readers see the old file or the new one, never part of one, and a power loss after the call
keeps the new one. Used by dfgen's shards and JSON files and by distill's checkpoints and logs.

Temporary names carry the host, the rank, the PID and a random suffix: containers on different nodes reuse PIDs,
and several ranks write the same config.json / index.json / dataset.json at once."""

from __future__ import annotations

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


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """`write(handle)` to a temporary name beside `path`, fsync the file, rename it over `path`, fsync the directory.
    On any failure the temporary is removed and `path` is untouched."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | Path, data: Any, **dump_options: Any) -> None:
    """`data` as indented JSON with sorted keys (extra json.dumps options allowed), written atomically."""
    text = json.dumps(data, **{"indent": 1, "sort_keys": True, **dump_options}) + "\n"
    write_atomic(path, lambda handle: handle.write(text.encode()))


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda handle: handle.write(text.encode()))
