"""`dfgen index OUT`: validate every shard against its sidecar and rebuild index.json."""

from __future__ import annotations

from pathlib import Path

from dfgen.dataset import CONFIG_FILE, INDEX_FILE, shard_paths
from dfgen.errors import DfgenError
from dfgen.shards import shard_done


def rebuild_index(out: Path) -> str:
    """Check all shards (sha256 against sidecars); write index.json and dataset.json when complete.
    Needs no teacher. Returns a one-line summary; raises DfgenError listing missing or damaged shards."""
    from dfgen.outdir import finalize, plan_from_description, read_claim

    config_path = Path(out) / CONFIG_FILE
    if not config_path.is_file():
        raise DfgenError(f"{config_path} not found: {out} is not a dfgen synthesize output directory")
    try:
        plan = plan_from_description(read_claim(Path(out))["dataset"])
    except (KeyError, TypeError):
        raise DfgenError(f"{config_path} does not describe a dataset (no \"dataset\" entry); it was not written by "
                         "dfgen synthesize") from None
    bad = [k for k in range(plan.num_shards) if not shard_done(out, k, len(plan.shard_range(k)))]
    if bad:
        names = ", ".join(shard_paths(out, k)[0].name for k in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise DfgenError(
            f"{len(bad)} of {plan.num_shards} shard(s) missing or damaged: {names}; rerun the synthesize command "
            "to make them"
        )
    finalize(Path(out))
    return f"{out}: {plan.num_shards} shard(s), {plan.n} images, all sha256 verified; {INDEX_FILE} written"
