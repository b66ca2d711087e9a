"""distill's checkpoints in timm's layout: `timm.models.load_checkpoint` reads the student's weights and, with
use_ema=True, the EMA's; checkpoints in the earlier layout (`model`, EMA under `ema`) still evaluate and resume,
to the very same weights as a resume from the current layout."""

import shutil
from pathlib import Path

import pytest
import timm
import torch

from distill import build_config, evaluate_checkpoint, train
from distill.checkpoint import load_checkpoint, model_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def tiny(digits, out, **overrides):
    settings = dict(shards=[str(digits / "train")], val=str(digits / "test"), out=str(out), epochs=2,
                    stage1_epochs=0, batch_size=16, warmup_epochs=1, device="cpu", workers=0, quiet=True,
                    attn_images=0, shuffle_buffer=32, ema=True, ema_decay=0.9, ema_warmup=False, eval_every=1)
    settings.update(overrides)
    return build_config(ROOT / "configs" / "distill_digits.yaml", **settings)


def as_earlier_layout(path: Path) -> None:
    """Rewrite a checkpoint as distill wrote them before timm's keys: format v1, `model`, EMA under `ema`."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["format"] = "distill-checkpoint-v1"
    ckpt["model"] = ckpt.pop("state_dict")
    ckpt["ema"] = ckpt.pop("state_dict_ema")
    torch.save(ckpt, path)


@pytest.fixture(scope="module")
def first_epoch(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("timm_layout") / "run"
    train(tiny(digits, out, stop_after=1))
    return out


def test_timm_load_checkpoint_reads_the_weights_and_the_ema(first_epoch):
    path = first_epoch / "last.pt"
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert {"state_dict", "state_dict_ema", "model"} <= set(raw) and "ema" not in raw
    ours = load_checkpoint(path)
    plain, ema = model_from_checkpoint(ours), model_from_checkpoint(ours, ema=True)
    differs = [k for k in plain.state_dict() if not torch.equal(plain.state_dict()[k], ema.state_dict()[k])]
    assert differs  # one epoch at decay 0.9: the EMA is not the weights, or the check below proves nothing
    for use_ema, expected in ((True, ema), (False, plain)):
        model = model_from_checkpoint(ours)
        torch.nn.init.zeros_(model.head.weight)  # something to overwrite
        timm.models.load_checkpoint(model, str(path), use_ema=use_ema)
        for key, tensor in expected.state_dict().items():
            assert torch.equal(model.state_dict()[key], tensor), (use_ema, key)
    best = torch.load(first_epoch / "best.pt", map_location="cpu", weights_only=True)
    assert {"state_dict", "state_dict_ema"} <= set(best) and "ema" not in best


def test_earlier_layout_evaluates_and_resumes_to_the_same_weights(first_epoch, digits, tmp_path):
    current, earlier = tmp_path / "current", tmp_path / "earlier"
    shutil.copytree(first_epoch, current)
    shutil.copytree(first_epoch, earlier)
    as_earlier_layout(earlier / "last.pt")
    for ema in (False, True):
        assert (evaluate_checkpoint(earlier / "last.pt", digits / "test", device="cpu", ema=ema)
                == evaluate_checkpoint(current / "last.pt", digits / "test", device="cpu", ema=ema))
    for out in (current, earlier):
        assert train(tiny(digits, out, resume=True))["epoch"] == 2
    a = torch.load(current / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(earlier / "last.pt", map_location="cpu", weights_only=True)
    assert b["format"] == a["format"] == "distill-checkpoint-v2"  # the resumed run writes the current layout
    for key in ("state_dict", "state_dict_ema"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
