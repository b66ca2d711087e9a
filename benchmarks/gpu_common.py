"""What the GPU benchmarks share: the refusal without CUDA, the cards' dense bf16 peaks, model-FLOPs utilization,
timing functions that also run on a CPU (the tests use them there), and the JSON that benchmarks/gpu_check.sh
collects from its sections.

    python -m benchmarks.gpu_common merge WORK_DIR OUT.json     # gpu_check.sh: the sections' JSON in one file
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

# Dense (no 2:4 sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's datasheets, which quote the sparse
# figure: H100 / H200 SXM 1,979 -> 989.5, H100 PCIe 1,513 -> 756.5, A100 624 -> 312, L4 242 -> 121, A10 250 -> 125;
# L40S: the datasheet's own dense figure, 362.05. First match wins: the PCIe and NVL H100/H200 come before the plain
# names (NVL boards have no entry here: pass --peak-tflops).
PEAK_SOURCE = "NVIDIA datasheets, dense bf16 tensor-core peak (the sparse figure halved)"
PEAKS: list[tuple[str, str, float | None]] = [
    ("H100 PCIe", r"\bH100\b.*\bPCIe\b", 756.5),
    ("H100/H200 NVL", r"\bH[12]00\b.*\bNVL\b", None),
    ("H100 SXM", r"\bH100\b", 989.5),
    ("H200 SXM", r"\bH200\b", 989.5),
    ("A100", r"\bA100\b", 312.0),
    ("L40S", r"\bL40S\b", 362.05),
    ("L4", r"\bL4\b", 121.0),
    ("A10", r"\bA10\b", 125.0),
]


def require_cuda(what: str) -> torch.device:
    """The CUDA device, or exit 1 with one line (the GPU benchmarks measure nothing useful on a CPU; --cpu-smoke
    runs the same code at toy size instead, for the tests)."""
    if not torch.cuda.is_available():
        raise SystemExit(f"{what}: no CUDA GPU is visible (torch.cuda.is_available() is False); run it on a GPU "
                         "machine (benchmarks/gpu_check.sh runs every GPU check) or pass --cpu-smoke for a toy run")
    return torch.device("cuda")


def target_device(what: str, cpu_smoke: bool) -> torch.device:
    """The CPU for a --cpu-smoke run, else the CUDA device (or the one-line refusal)."""
    return torch.device("cpu") if cpu_smoke else require_cuda(what)


def interruptible(result: dict[str, Any], fill: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """`fill(result)`, keeping what it put in `result` if it is interrupted: gpu_check.sh stops a section that
    outruns its limit with SIGINT (a KeyboardInterrupt here), and a part of the figures beats none."""
    try:
        fill(result)
    except KeyboardInterrupt:
        result["interrupted"] = "stopped by SIGINT (gpu_check.sh's time limit): only the figures above were measured"
    return result


def peak_tflops(device_name: str, given: float | None = None) -> tuple[float | None, str]:
    """(dense bf16 peak in TFLOP/s, where it comes from) for a device name as torch reports it."""
    if given is not None:
        if given <= 0:
            raise SystemExit(f"--peak-tflops must be positive, got {given}")
        return given, "--peak-tflops"
    for label, pattern, peak in PEAKS:
        if re.search(pattern, device_name):
            return peak, f"{label}: {PEAK_SOURCE}" if peak else f"{label}: not in the table, pass --peak-tflops"
    return None, "unknown card: pass --peak-tflops"


def schedule_figures(batch: int, schedule: Sequence[tuple[int, int]], stage_seconds: Sequence[float],
                     fixed_seconds: float, stage_flop: Sequence[float], peak: float | None) -> dict[str, Any]:
    """A batch of `batch` images through `schedule` [(resolution, iterations)], one iteration of stage i taking
    `stage_seconds[i]` and each image-iteration `stage_flop[i]` model FLOP, plus `fixed_seconds` per batch:
    images/s, FLOP per image, achieved TFLOP/s, model-FLOPs utilization against `peak` TFLOP/s (None: unknown)
    and the GPU-hours that 1.2M images (ImageNet's size) take on one such device."""
    if len(stage_seconds) != len(schedule) or len(stage_flop) != len(schedule):
        raise ValueError("one time and one FLOP count per stage")
    seconds_per_batch = sum(i * t for (_, i), t in zip(schedule, stage_seconds, strict=True)) + fixed_seconds
    images_per_s = batch / seconds_per_batch
    flop_per_image = sum(i * f for (_, i), f in zip(schedule, stage_flop, strict=True))
    achieved = images_per_s * flop_per_image / 1e12
    return {
        "seconds_per_batch": seconds_per_batch,
        "images_per_s": images_per_s,
        "flop_per_image": flop_per_image,
        "achieved_tflops": achieved,
        "mfu": achieved / peak if peak else None,
        "stage_tflops": [batch * f / t / 1e12 for f, t in zip(stage_flop, stage_seconds, strict=True)],
        "gpu_hours_per_1_2m_images": 1.2e6 / images_per_s / 3600,
    }


def flop_per_image_iteration(model: torch.nn.Module, in_chans: int, resolution: int,
                             device: torch.device | str = "cpu") -> float:
    """Model FLOP of one image-iteration of inversion: the teacher's forward and its backward to the input only
    (the weights are frozen), as torch's FlopCounterMode counts them (matrix products and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    frozen = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    x = torch.randn(1, in_chans, resolution, resolution, device=device, requires_grad=True)
    try:
        with FlopCounterMode(display=False) as counter:
            model(x).float().sum().backward()
    finally:
        for p, was in zip(model.parameters(), frozen, strict=True):
            p.requires_grad_(was)
    return float(counter.get_total_flops())


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's out-of-memory error, or dfgen's one-line form of it."""
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def largest_fitting(fits: Callable[[int], bool], candidates: Sequence[int]) -> tuple[int | None, dict[int, bool]]:
    """The first of `candidates` (largest first) for which `fits(batch)` holds, and what was tried."""
    tried: dict[int, bool] = {}
    for batch in sorted(set(candidates), reverse=True):
        tried[batch] = fits(batch)
        if tried[batch]:
            return batch, tried
    return None, tried


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    """Drop what a failed (out-of-memory) attempt left, so the next one starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def matmul_tflops(device: torch.device, size: int = 8192, repeats: int = 10) -> float:
    """The bf16 matrix-product rate of this device on random data (the practical ceiling MFU is read against)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def device_facts(device: torch.device) -> dict[str, Any]:
    facts: dict[str, Any] = {"torch": torch.__version__, "date": _dt.date.today().isoformat()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(device=torch.cuda.get_device_name(device), memory_gib=round(props.total_memory / 2**30, 1),
                     multiprocessors=props.multi_processor_count, cuda=torch.version.cuda)
    else:
        facts.update(device="cpu", threads=torch.get_num_threads())
    return facts


def rounded(value: Any, digits: int = 4) -> Any:
    """Floats to `digits` significant digits, through dicts and lists (readable JSON)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def emit(result: dict[str, Any], path: str | Path | None, started: float | None = None) -> None:
    """Print the result as the last JSON line and write it to `path` if given; `started` (a time.perf_counter()
    reading) adds the script's wall time, `wall_s`."""
    if started is not None:
        result = {**result, "wall_s": time.perf_counter() - started}
    text = json.dumps(rounded(result))
    print(text, flush=True)
    if path:
        Path(path).write_text(text + "\n")


def merge_sections(work: Path) -> dict[str, Any]:
    """gpu_check.sh's sections: NAME.status (rc, seconds, budget) and NAME.json (the result, if it wrote one)
    -> {NAME: {..status, result}}; a section without its JSON keeps the last lines of its log."""
    sections: dict[str, Any] = {}
    for status_path in sorted(work.glob("*.status"), key=lambda p: p.stat().st_mtime):
        name = status_path.stem
        entry = json.loads(status_path.read_text())
        result_path, log_path = work / f"{name}.json", work / f"{name}.log"
        if result_path.is_file():
            entry["result"] = json.loads(result_path.read_text())
        elif log_path.is_file():
            entry["log_tail"] = log_path.read_text(errors="replace").splitlines()[-5:]
        sections[name] = entry
    return sections


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser("merge", help="gpu_check.sh's sections (WORK_DIR) as one JSON file (OUT.json)")
    merge.add_argument("work", type=Path, metavar="WORK_DIR")
    merge.add_argument("out", type=Path, metavar="OUT.json")
    args = parser.parse_args(argv)
    work, out = args.work, args.out
    facts = json.loads((work / "device.json").read_text()) if (work / "device.json").is_file() else {}
    out.write_text(json.dumps({"benchmark": "gpu_check", **facts, "sections": merge_sections(work)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
