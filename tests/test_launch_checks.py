"""Launchers checked: rank and world size from torchrun, SLURM, MPI or flags are whole numbers in range, else one
line; a process that is one of N says at its end whether the dataset is complete and what is missing."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from dfgen.dataset import shard_paths
from dfgen.errors import DfgenError
from dfgen.outdir import completion_note
from dfgen.plan import LabelPlan
from dfgen.runtime import launcher_world, world_from_env

FIXED = ["--teacher", "digits", "--schedule", "8:2,16:2", "--classes-per-batch", "5", "--images-per-class", "2",
         "--shard-size", "10", "--warmup", "1", "--flip", "off", "--ep-reach", "0.3", "--margin", "0.5", "--quiet"]
WORLD_VARIABLES = ["LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "RANK", "PMI_RANK",
                   "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS",
                   "OMPI_COMM_WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT"]


@pytest.fixture
def clean_world(monkeypatch):
    for name in WORLD_VARIABLES + ["SLURM_STEP_ID", "SLURM_STEPID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"]:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("environ, message", [
    ({"RANK": "abc", "WORLD_SIZE": "2"}, "RANK='abc' in the environment is not a whole number"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 but WORLD_SIZE=2: a rank must be in 0..1"),
    ({"SLURM_PROCID": "-1", "SLURM_NTASKS": "4"}, "SLURM_PROCID=-1 in the environment must be >= 0"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 in the environment must be >= 1"),
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "1e3"}, "OMPI_COMM_WORLD_SIZE='1e3'"),
    ({"LOCAL_RANK": " "}, "LOCAL_RANK=' '"),
])
def test_bad_launcher_variables_are_one_line(environ, message):
    with pytest.raises(DfgenError) as excinfo:
        launcher_world(environ)
    assert message in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_good_launcher_variables_and_flags(clean_world):
    assert launcher_world({}) == (0, 0, 1)
    assert launcher_world({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1"}) == (1, 3, 4)
    assert launcher_world({"PMI_RANK": "1", "PMI_SIZE": "2"}) == (0, 1, 2)
    for rank, world, message in ((-1, 2, "--rank must be a whole number >= 0"),
                                 (0, 0, "--world-size must be a whole number >= 1"),
                                 (2, 2, "--rank must be in 0..1"), (True, 2, "--rank")):
        with pytest.raises(DfgenError, match=message):
            world_from_env(rank, world)


def test_rank_abc_on_the_command_line_is_one_line(dfgen_cli, clean_world, tmp_path):
    clean_world.setenv("RANK", "abc")
    clean_world.setenv("WORLD_SIZE", "2")
    code, _, err = dfgen_cli(["synthesize", *FIXED, "-n", "10", "--out", tmp_path / "out"])
    assert code == 1 and err.strip() == ("Error: RANK='abc' in the environment is not a whole number; unset it or "
                                         "start the processes with torchrun, srun or mpirun")
    assert not (tmp_path / "out").exists()


def _run(tmp_path, rank, world, n=40, shard_size=10):
    plan = LabelPlan(n=n, num_classes=10, classes_per_batch=5, images_per_class=2, seed=0, shard_size=shard_size)
    return SimpleNamespace(plan=plan, rank=rank, world_size=world, out=tmp_path,
                           my_shards=lambda: plan.shards_for_rank(rank, world))


def _done(out, shard):
    tar, sidecar = shard_paths(out, shard)
    tar.parent.mkdir(exist_ok=True)
    tar.write_bytes(b"x" * 3)
    sidecar.write_text(json.dumps({"bytes": 3, "count": 10}))


def test_a_rank_says_what_is_missing_and_an_sbatch_without_srun_is_named(tmp_path):
    for shard in (0, 2):
        _done(tmp_path, shard)
    note = completion_note(_run(tmp_path, 0, 2), environ={})
    assert note.startswith("made the shards of rank 0 of 2 (k % 2 == 0: 2 shard(s)); dataset incomplete: 2 of 4 "
                           "shard(s) missing (1, 3), those of the other ranks: run all 2 ranks")
    note = completion_note(_run(tmp_path, 0, 2), environ={"SLURM_NTASKS": "2", "SLURM_JOB_ID": "5"})
    assert "this SLURM job has 2 tasks but runs outside srun, so only this process ran" in note
    assert "outside srun" not in completion_note(_run(tmp_path, 0, 2), environ={"SLURM_NTASKS": "2",
                                                                                 "SLURM_STEP_ID": "0"})
    assert completion_note(_run(tmp_path, 0, 1), environ={}).endswith("rerun the same command to make them")


def test_one_rank_of_two_reports_the_dataset_incomplete_and_the_second_completes_it(dfgen_cli, clean_world,
                                                                                    tmp_path):
    out = tmp_path / "out"
    args = ["synthesize", *FIXED, "-n", "20", "--out", out, "--world-size", "2"]
    code, _, err = dfgen_cli([*args, "--rank", "0"])
    assert code == 0, err
    assert "[rank 0/2] made the shards of rank 0 of 2 (k % 2 == 0: 1 shard(s)); dataset incomplete: 1 of 2 " \
           "shard(s) missing (1)" in err
    assert not (out / "index.json").exists() and not list(out.glob("lock-r*"))
    code, _, err = dfgen_cli([*args, "--rank", "1"])
    assert code == 0 and "dataset complete" in err and (out / "index.json").is_file()
    assert json.loads((out / "made_by.json").read_text())["command"] == "synthesize"
