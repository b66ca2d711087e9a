"""The output directory: claimed for one configuration at the start (config.json), refused to any other, and
finished (index.json, dataset.json) by whichever process finds every shard done. Several ranks do all of this at
once on shared storage; every file is written atomically (dfgen.atomic)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from dfgen import __version__
from dfgen.atomic import write_json_atomic
from dfgen.config import AUTO, config_fingerprint, format_schedule
from dfgen.cost import dataset_cost
from dfgen.dataset import CONFIG_FILE, DATASET_FILE, INDEX_FILE, SHARDS_DIR, build_index, read_sidecar, shard_paths
from dfgen.errors import DfgenError
from dfgen.folder_guard import (
    FolderLock,
    Maker,
    acquire_lock,
    check_ownership,
    make_folder,
    mark_folder,
    owned_files,
)
from dfgen.plan import LabelPlan
from dfgen.runplan import RunPlan, RunRequest, derived_record
from dfgen.soft_views import soft_label_record

DATASET_FILES = (INDEX_FILE, DATASET_FILE, CONFIG_FILE)  # what synthesize writes beside shards/ (and made_by.json)
SHARD_PREFIX = "shard-"  # shards/shard-NNNNN.tar and its sidecar: an overwrite removes these and nothing else


def synthesis_maker(fingerprint: str | None = None) -> Maker:
    """What made a synthetic dataset, for made_by.json (fingerprint: of the claimed content)."""
    return Maker("dfgen", "synthesize", "synthetic", {"fingerprint": fingerprint} if fingerprint else {})


def check_out_dir(run: RunRequest) -> None:
    """Refuse an --out that holds anything but a synthetic dataset (exported real data, a training run, a report,
    files of the user's): cheap, so it runs before the start-up probe."""
    check_ownership(run.out, synthesis_maker(), "--overwrite", run.config.overwrite)


def check_claim_before_probe(run: RunRequest) -> None:
    """Refuse a synthetic dataset made with another configuration before the start-up probe runs: what is known
    before it (the content as asked, how it is computed, the resolutions) is compared with the claim in config.json,
    a value left to the probe ("auto") taken as the claim's, so a folder is refused here only where no decision of
    the probe could make the contents match. The full content is compared when the folder is claimed."""
    if run.config.overwrite:
        return
    existing = read_claim(run.out)
    if existing is None or not isinstance(existing.get("content"), dict):
        return
    claimed_all = existing["content"]
    known = {**run.requested_content(), "multires": run.multires, "execution": run.execution()}
    if known.get("flip") == AUTO and "flip" in claimed_all:
        known["flip"] = claimed_all["flip"]
    claimed_losses = claimed_all.get("losses")
    if isinstance(known.get("losses"), dict) and isinstance(claimed_losses, dict):
        known["losses"] = {key: claimed_losses.get(key, value) if value == AUTO else value
                           for key, value in known["losses"].items()}
    claimed = {key: value for key, value in claimed_all.items() if key in known}
    if claimed != known:  # a key the claim lacks differs too: the claim compares whole contents
        raise DfgenError(_mismatch(run.out, {**existing, "content": claimed}, known, run.requested_content()))


def claim_out_dir(run: RunPlan) -> FolderLock:
    """Claim `out` for this configuration and hold it (one lock per rank; release it at the end), or refuse.
    Several ranks may run this at once: config.json is created only where none exists (the first claim wins,
    dfgen.atomic), and a process whose content differs from the claim that won is refused, so processes computing
    differently never write into one dataset. A folder made by anything else is refused (dfgen.folder_guard)."""
    out = run.out
    content = run.content()
    check_out_dir(run)
    make_folder(out)
    lock = acquire_lock(out, run.rank, run.world_size, "dfgen synthesize")
    try:
        _claim(run, content)
    except BaseException:
        lock.release()
        raise
    mark_folder(out, synthesis_maker(config_fingerprint(content)))
    return lock


def _claim(run: RunPlan, content: dict[str, Any]) -> None:
    out = run.out
    config_path = out / CONFIG_FILE
    try:
        existing = read_claim(out)
    except DfgenError:
        if not run.config.overwrite:
            raise
        existing = {}  # damaged: replaced, as asked
    if existing is None and (out / SHARDS_DIR).is_dir():  # config.json comes first: another rank may have just claimed
        existing = read_claim(out)
    if existing is not None and existing.get("content") == content:
        (out / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        return
    if existing is None and (out / SHARDS_DIR).is_dir() and not run.config.overwrite:
        raise DfgenError(f"{out} holds shards but no {CONFIG_FILE}, so what they were made with is unknown; pass "
                         "--overwrite to replace them, or choose another --out")
    if existing is not None or (out / SHARDS_DIR).is_dir():
        if existing is not None and not run.config.overwrite:
            raise DfgenError(_mismatch(out, existing, content, run.requested_content()))
        if run.world_size > 1:
            raise DfgenError("--overwrite with several processes would race; delete the output directory first")
        remove_dataset_files(out)
    record = {"fingerprint": config_fingerprint(content), "content": content, "requested": run.requested_content(),
              "dataset": dataset_description(run), "derived": derived_record(run)}
    try:
        write_json_atomic(config_path, record, replace=False)
    except FileExistsError:  # another process claimed it since we looked: its claim stands, ours must match it
        existing = read_claim(out)
        if existing is None or existing.get("content") != content:
            raise DfgenError(_mismatch(out, existing or {}, content, run.requested_content())) from None
    (out / SHARDS_DIR).mkdir(exist_ok=True)


def remove_dataset_files(out: Path) -> None:
    """Remove what synthesize wrote in `out` (shards, their sidecars, index, description, claim) and nothing else:
    files of the user's in shards/ stay, and so does shards/ then."""
    for path in owned_files(out / "shards", SHARD_PREFIX):
        path.unlink(missing_ok=True)
    try:
        (out / SHARDS_DIR).rmdir()
    except OSError:  # absent, or holding files synthesize did not write
        pass
    for name in DATASET_FILES:
        (out / name).unlink(missing_ok=True)


def claimed_mode(out: Path, overwrite: bool = False) -> str | None:
    """The synthesis mode of the dataset claimed in `out` (None: no claim, or it is to be overwritten). A damaged
    claim or another tool's folder is left to the folder checks, which say what is wrong."""
    try:
        existing = None if overwrite else read_claim(Path(out))
    except DfgenError:
        return None
    if existing is None or not isinstance(existing.get("content"), dict):
        return None
    return existing["content"].get("mode", "pixels")  # pixel-mode contents carry no mode entry


def read_claim(out: Path) -> dict[str, Any] | None:
    """config.json of `out`, or None where there is none; a damaged one is refused in one line."""
    config_path = out / CONFIG_FILE
    if not config_path.is_file():
        return None
    try:
        record = json.loads(config_path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
        raise DfgenError(f"{config_path} cannot be read ({reason}): it records what the dataset was made with; "
                         "restore it, or pass --overwrite to replace the dataset") from None
    if not isinstance(record, dict):
        raise DfgenError(f"{config_path} does not hold a dfgen claim (a JSON object); restore it, or pass "
                         "--overwrite to replace the dataset")
    return record


def _mismatch(out: Path, existing: dict[str, Any], content: dict[str, Any], requested: dict[str, Any]) -> str:
    """Why `out` is refused: for the execution alone, how to match it; else the keys the user asked differently
    (derived values follow from them), else the resolved keys that differ."""
    old = existing.get("content", {})
    changed = _differing(old, content)
    top = sorted({key.split(".")[0] for key in changed})  # "execution.device" -> "execution"
    if [k for k in top if k != "precision"] == ["execution"] and isinstance(old.get("execution"), dict):
        was, now = old["execution"], content["execution"]
        flags = f"--precision {was.get('precision')}" + (" --compile" if was.get("compile") else "")
        return (f"{out} was made with {_describe_execution(was)}, but this process would compute with "
                f"{_describe_execution(now)}, which writes different bytes into the same dataset; run it on a "
                f"{was.get('device')} device with {flags}{'' if was.get('compile') else ' (no --compile)'}, or pass "
                "--overwrite to replace it")
    if top == ["execution"] and old and "execution" not in old:
        return (f"{out} was made by an earlier dfgen that did not record how its images were computed (device, "
                "precision, --compile), so new shards could differ from its shards in their bytes; finish it with that "
                "version, or pass --overwrite to replace it")
    if existing.get("requested") and existing["requested"] != requested:
        changed = _differing(existing["requested"], requested)
    return (f"{out} was made with a different configuration (differs in: {', '.join(changed)}); rerun the same "
            "command to continue it, or pass --overwrite to replace it")


def _differing(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys whose values differ. Where both sides hold a group (the losses, the generator settings), its
    differing keys are named inside it ("losses.bn"), so the user sees which option to give."""
    changed = []
    for key in sorted(set(new) | set(old)):
        was, now = old.get(key), new.get(key)
        if was == now:
            continue
        if isinstance(was, dict) and isinstance(now, dict):
            changed += [f"{key}.{inner}" for inner in _differing(was, now)]
        else:
            changed.append(key)
    return changed


def _describe_execution(execution: dict[str, Any]) -> str:
    compiled = "compiled" if execution.get("compile") else "eager"
    return f"{execution.get('precision')} on {execution.get('device')} ({compiled})"


def recorded_derivation(out: Path) -> dict[str, Any] | None:
    """The "derived" entry of an existing config.json (a resume or another rank reuses its probe)."""
    try:
        return json.loads((out / CONFIG_FILE).read_text()).get("derived")
    except (OSError, ValueError, AttributeError):
        return None


def plan_from_description(description: dict[str, Any]) -> LabelPlan:
    return LabelPlan(
        n=description["n"],
        num_classes=description["num_classes"],
        classes_per_batch=description["classes_per_batch"],
        images_per_class=description["images_per_class"],
        seed=description["seed"],
        shard_size=description["shard_size"],
    )


def finalize(out: Path) -> bool:
    """If every shard is done, write index.json and dataset.json (atomically; several processes may
    do it at once and write the same content). Cheap: sidecars and file sizes, not hashes. Needs only
    config.json, not the teacher, so `dfgen index` can run anywhere."""
    description = json.loads((out / CONFIG_FILE).read_text())["dataset"]
    plan = plan_from_description(description)
    sidecars = []
    for shard in range(plan.num_shards):
        sidecar = read_sidecar(out, shard)
        tar_path, _ = shard_paths(out, shard)
        if sidecar is None or not tar_path.is_file() or tar_path.stat().st_size != sidecar.get("bytes"):
            return False
        sidecars.append(sidecar)
    counts = [int(s["count"]) for s in sidecars]
    weighted = lambda key: float(np.average([s["loss"][key] for s in sidecars], weights=counts))  # noqa: E731
    description = {
        **description,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "stats": {
            "agreement": weighted("agreement"),
            "target_prob_mean": weighted("target_prob_mean"),
            "final_total_mean": weighted("final_total_mean"),
            "retried_batches": int(sum(s["loss"]["retried_batches"] for s in sidecars)),
            "seconds": float(sum(s.get("seconds", 0.0) for s in sidecars)),
            "bytes": int(sum(s["bytes"] for s in sidecars)),
        },
    }
    description["cost"] = dataset_cost(out, sidecars, plan.n)  # teacher passes, generator FLOPs, time (dfgen.cost)
    write_json_atomic(out / INDEX_FILE, build_index(sidecars, name=out.name))
    write_json_atomic(out / DATASET_FILE, description)
    return True


def dataset_description(run: RunPlan) -> dict[str, Any]:
    """dataset.json without the figures only known at the end (stats, created)."""
    c, plan, teacher = run.config, run.plan, run.teacher
    resolution = run.teacher.resolution  # images are written at the teacher's input size
    description = {
        "kind": "synthetic",
        "tool": "dfgen",
        "version": __version__,
        "teacher": teacher.describe(),
        "num_classes": teacher.num_classes,
        "classes": list(c.class_names) if c.class_names else [str(i) for i in range(teacher.num_classes)],
        "class_counts": plan.class_counts().tolist(),
        "in_chans": teacher.in_chans,
        "image_size": [teacher.in_chans, resolution, resolution],
        "n": plan.n,
        "num_shards": plan.num_shards,
        "shard_size": plan.shard_size,
        "batch_size": plan.batch_size,
        "classes_per_batch": plan.classes_per_batch,
        "images_per_class": plan.images_per_class,
        "seed": c.seed,
        "schedule": format_schedule(run.schedule),
        "losses": dataclasses.asdict(run.weights),
        "diversity": not c.no_diversity,
        "optimizer": {"lr": c.lr, "warmup": c.warmup, "betas": [0.5, 0.9], "upsample": c.upsample,
                      "jitter_fraction": c.jitter_fraction, "flip": run.flip, "multires": run.multires,
                      "crop_min_scale": c.crop_min_scale, "kept": "last iterate"},
        "derived": derived_record(run),
        "soft_labels": soft_label_record(c.soft_topk, teacher.num_classes, c.soft_views, c.soft_view_min_scale,
                                         run.flip) if c.soft_topk else None,
        "precision": run.precision,
        "execution": run.execution(),  # the same for every shard: a resume computing otherwise is refused
        "format": c.format,
        "quality": None if c.format == "png" else c.quality,
        "fingerprint": config_fingerprint(run.content()),
    }
    if c.early_stop is not None:  # only where set: descriptions without it stay as they were
        description["optimizer"]["early_stop"] = {"tolerance": c.early_stop, "window": c.early_stop_window}
    if c.mode != "pixels":  # only where it matters: pixel-mode descriptions stay as they were
        description["mode"] = c.mode
        description["generator"] = dataclasses.asdict(c.generator)
    return description


def missing_shards(out: Path, plan: LabelPlan) -> list[int]:
    """The shards without a sidecar or whose tar does not have the sidecar's size (cheap, as in finalize)."""
    missing = []
    for shard in range(plan.num_shards):
        sidecar = read_sidecar(out, shard)
        tar_path, _ = shard_paths(out, shard)
        if sidecar is None or not tar_path.is_file() or tar_path.stat().st_size != sidecar.get("bytes"):
            missing.append(shard)
    return missing


def completion_note(run: RunPlan, environ: dict[str, str] | None = None) -> str:
    """One line for a process whose dataset is not complete at its end: what it made, what is missing and who
    makes it (another rank; this process's own shards are done when it gets here)."""
    environ = os.environ if environ is None else environ
    plan, rank, world = run.plan, run.rank, run.world_size
    missing = missing_shards(run.out, plan)
    listed = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
    text = f"dataset incomplete: {len(missing)} of {plan.num_shards} shard(s) missing ({listed})"
    if world == 1:
        return f"{text}; rerun the same command to make them"
    mine = run.my_shards()
    made = f"made the shards of rank {rank} of {world} (k % {world} == {rank}: {len(mine)} shard(s)); "
    tasks = environ.get("SLURM_NTASKS")
    if tasks and int(tasks) > 1 and "SLURM_STEP_ID" not in environ and "SLURM_STEPID" not in environ:
        return (f"{made}{text}, those of the other ranks: this SLURM job has {tasks} tasks but runs outside srun, "
                f"so only this process ran; start the command with srun to run all {world} ranks")
    return (f"{made}{text}, those of the other ranks: run all {world} ranks (torchrun, srun, or --rank 0..{world - 1} "
            "with the same --world-size); the last one to finish writes index.json")
