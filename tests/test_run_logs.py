"""What a run logs besides metrics.jsonl: summary.csv in timm's columns (each epoch once, also after a resume),
TensorBoard event files only where the tensorboard package is installed, and evaluation's loss and progress bar
(shown on a terminal only)."""

import csv
import io
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from distill import build_config, train
from distill.evaluation import evaluate

ROOT = Path(__file__).resolve().parents[1]
TIMM_COLUMNS = ["epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr"]


def tiny(digits, out, **overrides):
    settings = dict(shards=[str(digits / "train")], val=str(digits / "test"), out=str(out), epochs=2,
                    stage1_epochs=0, batch_size=16, warmup_epochs=1, device="cpu", workers=0, quiet=True,
                    attn_images=4, shuffle_buffer=32, eval_every=2, ema=True)
    settings.update(overrides)
    return build_config(ROOT / "configs" / "distill_digits.yaml", **settings)


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def resumed_run(digits, tmp_path_factory):
    """Two epochs, validation at the second only, in two invocations (--stop-after 1, then --resume); TensorBoard
    made unimportable, as where it is not installed."""
    out = tmp_path_factory.mktemp("logs") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails, as without the package
        train(tiny(digits, out, stop_after=1))
        train(tiny(digits, out, resume=True))
    return out


def test_summary_csv_has_timms_columns_and_each_epoch_once(resumed_run):
    rows = list(csv.reader((resumed_run / "summary.csv").read_text().splitlines()))
    assert rows[0] == TIMM_COLUMNS + ["ema_eval_loss", "ema_eval_top1", "ema_eval_top5"]
    logged = records(resumed_run)
    assert [int(r[0]) for r in rows[1:]] == [r["epoch"] for r in logged] == [1, 2]
    first, second = (dict(zip(rows[0], row, strict=True)) for row in rows[1:])
    assert first["eval_top1"] == first["eval_loss"] == ""  # epoch 1 was not validated (eval_every 2)
    for row, record in ((first, logged[0]), (second, logged[1])):
        assert float(row["train_loss"]) == record["loss"] and float(row["lr"]) == record["lr"]
    assert float(second["eval_top1"]) == logged[1]["val_top1"] and float(second["eval_top5"]) == logged[1]["val_top5"]
    assert float(second["ema_eval_top1"]) == logged[1]["ema_val_top1"]
    assert 0 < float(second["eval_loss"]) == logged[1]["val_loss"]


def test_no_tensorboard_package_no_event_files(resumed_run):
    assert not (resumed_run / "tensorboard").exists()
    assert sorted(p.name for p in resumed_run.iterdir() if p.suffix in (".csv", ".jsonl")) == ["metrics.jsonl",
                                                                                               "summary.csv"]


def test_tensorboard_event_files_hold_the_epochs(digits, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(tiny(digits, out, epochs=1, eval_every=1))
    board = EventAccumulator(str(out / "tensorboard"))
    board.Reload()
    record = records(out)[0]
    for tag, key in (("train/loss", "loss"), ("train/lr", "lr"), ("val/val_top1", "val_top1"),
                     ("val/ema_val_top1", "ema_val_top1")):
        (event,) = board.Scalars(tag)
        assert event.step == 1 and event.value == pytest.approx(record[key], rel=1e-6), tag
    assert len(board.Scalars("attention_distance/block0")) == 1


class Fixed(nn.Module):
    """Logits given per image index (the image is its index)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, images):
        return self.logits[images.long()]


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_evaluation_loss_and_a_progress_bar_only_on_a_terminal(monkeypatch):
    torch.manual_seed(0)
    logits, labels = torch.randn(10, 4), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 3, 3])
    loader = [(torch.arange(0, 6), labels[:6]), (torch.arange(6, 10), labels[6:])]
    expected_top1 = 100 * (logits.argmax(1) == labels).float().mean().item()
    for stream, shown in ((io.StringIO(), False), (FakeTerminal(), True)):
        monkeypatch.setattr(sys, "stderr", stream)
        result = evaluate({"m": Fixed(logits)}, loader, torch.device("cpu"), progress=True, desc="validation")["m"]
        assert result["loss"] == pytest.approx(nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)
        assert result["top1"] == pytest.approx(expected_top1) and result["n"] == 10
        assert ("validation" in stream.getvalue() and "/2 " in stream.getvalue()) == shown, stream.getvalue()
    quiet = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    evaluate({"m": Fixed(logits)}, loader, torch.device("cpu"), progress=False)
    assert quiet.getvalue() == ""
