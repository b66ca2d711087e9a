"""A small process pool for benchmarks: jobs side by side in one-thread processes (on this project's 2-core
machine two one-thread processes do ~1.4x the work of one two-thread process on small models), futures kept by
name; `jobs=1` runs inline."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import torch


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


class Jobs:
    """Runs jobs in a process pool (or inline with jobs=1), keeping the futures by name."""

    def __init__(self, jobs: int, threads: int) -> None:
        self.pool = (ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_set_threads,
                                         initargs=(threads,)) if jobs > 1 else None)
        self.caller_threads = torch.get_num_threads()  # inline jobs borrow the process; close() gives it back
        if self.pool is None:
            torch.set_num_threads(threads)
        self.futures: dict[str, Future] = {}

    def submit(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if self.pool is not None:
            self.futures[name] = self.pool.submit(fn, *args, **kwargs)
            return
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        self.futures[name] = future

    def result(self, name: str) -> Any:
        return self.futures[name].result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        torch.set_num_threads(self.caller_threads)  # a different count changes CPU summation order downstream


def print_result(run: Callable[[Any], dict[str, Any]], args: Any) -> dict[str, Any]:
    """A benchmark's run, its result printed as the one JSON line it ends with."""
    result = run(args)
    print(json.dumps(result))
    return result


def add_job_options(parser: argparse.ArgumentParser) -> None:
    """--jobs and --threads: how many one-thread processes run a benchmark's jobs side by side."""
    parser.add_argument("--jobs", type=int, default=2, help="processes running jobs side by side [2]")
    parser.add_argument("--threads", type=int, default=1, help="threads per process [1]")
