"""`distill run` / `distill eval` from the command line: output, clear errors, and DDP under torchrun on CPU."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
TINY = ["--config", str(ROOT / "configs" / "distill_digits.yaml"), "--epochs", "2", "--stage1-epochs", "1",
        "--batch-size", "16", "--eval-every", "1", "--device", "cpu", "--quiet"]


def distill(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "distill", *map(str, args)], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def test_run_then_eval(digits, tmp_path):
    out = tmp_path / "run"
    result = distill("run", *TINY, "--shards", digits / "train", "--val", digits / "test", "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["epoch"] == 2
    assert "epoch 1/2 stage 1" in result.stderr and "epoch 2/2 stage 2" in result.stderr
    result = distill("eval", "--checkpoint", out / "last.pt", "--data", digits / "test", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    line = json.loads(result.stdout.strip())
    assert set(line) == {"top1", "top5", "n"} and line["n"] == 32
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["top1"] == pytest.approx(last["val_top1"])


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["run", "--epochs", "2"], 2, "Missing option '--shards'"),
        (["run", "--shards", "{missing}"], 1, "Error: dataset .* not found"),
        (["run", "--shards", "{train}", "--model", "dearkd_tiny_patch16_244"], 1,
         "Error: unknown student model 'dearkd_tiny_patch16_244'; did you mean dearkd_tiny_patch16_224"),
        (["run", "--shards", "{train}", "--epochs", "3", "--stage1-epochs", "5"], 1,
         r"Error: --stage1-epochs \(5\) must be between 0 and --epochs \(3\)"),
        (["run", "--shards", "{train}", "--teacher", "resnet_nonexistent"], 1, "Error: unknown teacher"),
        (["run", "--shards", "{train}", "--teacher", "digits", "--align", "2-stage3"], 1,
         "Error: --align must look like"),
        (["run", "--shards", "{train}", "--teacher", "digits", "--align", "2:layer3", "--epochs", "1",
          "--stage1-epochs", "1"], 1, "Error: --align: the teacher has no stage 'layer3'"),
        (["run", "--shards", "{train}", "--mix", "0.5,0.5"], 1, r"Error: --mix gives 2 value\(s\) for 1 --shards"),
        (["run", "--shards", "{train}", "--fraction", "0"], 1, r"Error: --fraction values must be in \(0, 1\]"),
        (["run", "--shards", "{train}", "--model-kwargs", "prefix_logit"], 2, "expected KEY=VALUE"),
        (["run", "--shards", "{train}", "--soft-labels", "stored"], 1,
         "Error: --soft-labels stored: none of .* holds stored soft labels"),
        (["run", "--shards", "{folder}/shard-{{000000..000001}}.tar"], 1,
         "Error: .* plain WebDataset shards carry no class count; pass --num-classes"),
        (["eval", "--checkpoint", "{missing}", "--data", "{train}"], 1, "Error: checkpoint .* not found"),
        (["eval", "--checkpoint", "{train}/index.json", "--data", "{train}"], 1, "Error: .* not a distill checkpoint"),
    ],
)
def test_bad_input_exits_with_one_line(digits, tmp_path, capsys, args, code, message):
    import re

    from distill.cli import main

    filled = [a.format(missing=tmp_path / "missing", train=digits / "train", folder=digits / "train" / "shards")
              for a in args]
    if filled[0] == "run":
        filled += ["--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"]
    with pytest.raises(SystemExit) as exit_info:  # in-process: main() is exactly what the console script runs
        main(filled)
    err = capsys.readouterr().err
    assert exit_info.value.code == code, err
    assert re.search(message, err), err
    if code == 1:
        assert err.startswith("Error: ") and len(err.strip().splitlines()) == 1, err


def test_error_in_a_subprocess_has_no_traceback(digits, tmp_path):
    result = distill("run", "--shards", digits / "train", "--model", "vit_nonexistent_model", "--out", tmp_path / "o")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: unknown student model") and "Traceback" not in result.stderr


def test_torchrun_two_processes_take_the_same_steps(digits, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    out = tmp_path / "run"
    # 64 + 32 images at a global batch of 16: 6 steps per epoch on each rank, 8 images per rank and step
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "distill", "run", *TINY, "--shards",
         digits / "train", "--shards", digits / "test", "--val", digits / "test", "--out", out],
        env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == [1, 2]
    assert all(r["rank_steps"] == [6, 6] for r in records), [r["rank_steps"] for r in records]
    assert all(r["val_n"] == 32 for r in records)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["rng"]["torch"].shape[0] == 2
