"""distill.train: the two stages, the hidden loss, exact resume, and bad input.

Tiny runs: dearkd_micro_patch4_32 on 64 real digits (2 shards) at batch 16, CPU, fp32."""

import json
from pathlib import Path

import pytest
import torch

from dfgen.realdata import write_image_dataset
from distill import DistillError, build_config, evaluate_checkpoint, train
from distill.losses import dearkd_loss, distillation_target, label_criterion
from distill.models import Aligner
from distill.sources import open_source
from distill.teacher_features import TeacherFeatures, default_block, nearest_stage, parse_align, teacher_stages

ROOT = Path(__file__).resolve().parents[1]
DIGITS_PRESET = ROOT / "configs" / "distill_digits.yaml"


def tiny_config(digits, out, **overrides):
    settings = dict(shards=[str(digits / "train")], val=str(digits / "test"), out=str(out), epochs=3,
                    stage1_epochs=1, batch_size=16, warmup_epochs=1, device="cpu", workers=0, quiet=True,
                    attn_images=8, shuffle_buffer=32, eval_every=1)
    settings.update(overrides)
    return build_config(DIGITS_PRESET, **settings)


def read_metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight_run(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    summary = train(tiny_config(digits, out))
    return out, summary


def test_three_epochs_log_both_stages_and_all_terms(straight_run):
    out, summary = straight_run
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["stage"] for r in records] == [1, 2, 2]
    assert {"loss", "loss_cls", "loss_dist", "loss_hidden"} <= set(records[0])
    assert "loss_hidden" not in records[1] and {"loss_cls", "loss_dist"} <= set(records[1])
    for r in records:
        assert {"lr", "images_per_s", "val_top1", "val_top5"} <= set(r)
        assert len(r["attn_distance"]) == 6  # one value per block of the micro student
        assert r["rank_steps"] == [4]  # 64 images / batch 16
    for name in ("last.pt", "best.pt", "curves.png", "config.json"):
        assert (out / name).is_file(), name
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 3 and ckpt["stage"] == 2 and isinstance(ckpt["config"], str)
    assert summary["epoch"] == 3


def test_eval_reproduces_the_logged_accuracy(straight_run, digits):
    out, _ = straight_run
    result = evaluate_checkpoint(out / "last.pt", digits / "test", device="cpu", batch_size=16)
    assert result["n"] == 32
    assert result["top1"] == pytest.approx(read_metrics(out)[-1]["val_top1"])


def test_eval_on_an_imagefolder_or_a_flat_directory_matches_the_shards(straight_run, digits, tmp_path):
    import webdataset as wds

    folder, flat = tmp_path / "folder", tmp_path / "flat"
    flat.mkdir()
    lines = []
    for url in open_source(digits / "test").urls:
        for sample in wds.tariterators.tarfile_samples([{"url": url}]):
            label, name = sample["cls"].decode(), f"{sample['__key__']}.png"
            (folder / label).mkdir(parents=True, exist_ok=True)
            (folder / label / name).write_bytes(sample["png"])
            (flat / name).write_bytes(sample["png"])
            lines.append(f"{name} {label}\n")
    (tmp_path / "labels.txt").write_text("".join(lines))
    on_folder = evaluate_checkpoint(straight_run[0] / "last.pt", folder, device="cpu")
    on_flat = evaluate_checkpoint(straight_run[0] / "last.pt", flat, device="cpu", labels_file=tmp_path / "labels.txt")
    on_shards = evaluate_checkpoint(straight_run[0] / "last.pt", digits / "test", device="cpu")
    assert on_folder == on_flat == on_shards and on_shards["n"] == 32


def test_resume_equals_uninterrupted(straight_run, digits, tmp_path):
    out = tmp_path / "run"
    first = train(tiny_config(digits, out, stop_after=2))
    assert first["epoch"] == 2 and len(read_metrics(out)) == 2
    stale = [out / "last.pt.tmp-4242", out / "metrics.jsonl.tmp-4242"]  # what a power loss mid-write leaves
    for path in stale:
        path.write_bytes(b"half a file")
    train(tiny_config(digits, out, resume=True))
    assert not any(path.exists() for path in stale)
    straight, resumed = read_metrics(straight_run[0]), read_metrics(out)
    assert len(resumed) == 3
    for a, b in zip(straight, resumed, strict=True):
        for key in ("loss", "loss_cls", "loss_dist", "lr", "val_top1", "val_top5", "attn_distance"):
            assert a.get(key) == b.get(key), (a["epoch"], key)  # bit for bit, not within a tolerance
    final_a = torch.load(straight_run[0] / "last.pt", weights_only=True)
    final_b = torch.load(out / "last.pt", weights_only=True)
    for part in ("model", "aligners"):
        assert final_a[part].keys() == final_b[part].keys()
        for key, value in final_a[part].items():
            assert torch.equal(value, final_b[part][key]), (part, key)
    for key, value in final_a["optimizer"]["state"].items():
        assert all(torch.equal(v, final_b["optimizer"]["state"][key][n]) for n, v in value.items()), key


def test_checkpoint_writes_fsync_the_file_and_its_directory(tmp_path, monkeypatch):
    import os
    import stat

    from dfgen import atomic
    from distill import checkpoint

    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)  # checkpoints go through dfgen's one atomic writer
    checkpoint.save_checkpoint({"format": checkpoint.CHECKPOINT_FORMAT, "x": torch.arange(3)}, tmp_path / "last.pt")
    assert synced == ["file", "dir"]
    assert torch.equal(checkpoint.load_checkpoint(tmp_path / "last.pt")["x"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_model_kwargs_reach_the_student_and_its_checkpoint(digits, tmp_path):
    out = tmp_path / "run"
    kwargs = {"prefix_logit": False, "locality_strength": 2.0}
    train(tiny_config(digits, out, epochs=1, stage1_epochs=0, model_kwargs=kwargs, attn_images=0))
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert json.loads(ckpt["model_args"])["model_kwargs"] == kwargs
    assert not any(k.endswith("prefix_logit") for k in ckpt["model"])  # built without the prefix logit
    # evaluation rebuilds the same non-default student (a default one would not load these weights)
    assert evaluate_checkpoint(out / "last.pt", digits / "test", device="cpu")["n"] == 32
    with pytest.raises(DistillError, match=r"model_kwargs \{'heads': 3\}: dearkd_micro_patch4_32 does not take"):
        train(tiny_config(digits, tmp_path / "bad", model_kwargs={"heads": 3}))


def test_eval_every_measures_only_every_nth_and_the_last_epoch(digits, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(digits, out, eval_every=2, ema=True))
    records = read_metrics(out)
    measured = [r["epoch"] for r in records if "val_top1" in r]
    assert measured == [2, 3]
    assert [r["epoch"] for r in records if "ema_val_top1" in r] == [2, 3]
    assert [r["epoch"] for r in records if "attn_distance" in r] == [2, 3]
    with pytest.raises(DistillError, match="--eval-every must be >= 1"):
        tiny_config(digits, out, eval_every=0)


def test_resume_refuses_other_settings_and_existing_run_needs_resume(straight_run, digits):
    out, _ = straight_run
    with pytest.raises(DistillError, match="different settings .*lr"):
        train(tiny_config(digits, out, resume=True, lr=1e-2))
    with pytest.raises(DistillError, match="already holds a run"):
        train(tiny_config(digits, out))


def test_hidden_loss_decreases_on_a_fixed_batch(digits_teacher):
    import timm

    torch.manual_seed(0)
    student = timm.create_model("dearkd_micro_patch4_32", in_chans=1, num_classes=10)
    student.set_distilled_training(True)
    stages = teacher_stages(digits_teacher.model, (1, 32, 32))
    stage = nearest_stage(stages, student.grid_size)
    assert (stage.name, stage.hw) == ("stage3", (8, 8))
    block = default_block(student)
    aligner = Aligner(student.embed_dim, stage.channels, student.grid_size)
    teacher = TeacherFeatures(digits_teacher.model, digits_teacher.mean, digits_teacher.std, (0.5,), (0.5,),
                              [stage.name])
    images, labels = torch.randn(16, 1, 32, 32), torch.randint(0, 10, (16,))
    params = list(student.parameters()) + list(aligner.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    student.train()
    hidden = []
    for _ in range(8):
        logits, maps = teacher(images)
        outputs, tokens = student.forward_with_tokens(images, [block])
        terms = dearkd_loss(outputs, labels, label_criterion(False, 0.1), distillation_target(logits, "hard"),
                            [aligner(tokens[block])], [maps[stage.name]])
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        hidden.append(float(terms["hidden"].detach()))
    assert all(b < a for a, b in zip(hidden, hidden[1:], strict=False)), hidden
    assert hidden[-1] < 0.9 * hidden[0], hidden


def test_align_parsing_and_choice(digits_teacher):
    import timm

    assert parse_align("2:stage3, 1:1") == [(2, "stage3"), (1, "1")]
    with pytest.raises(DistillError, match="BLOCK:STAGE"):
        parse_align("stage3")
    from distill.teacher_features import resolve_pairs

    student = timm.create_model("dearkd_micro_patch4_32", in_chans=1, num_classes=10)
    stages = teacher_stages(digits_teacher.model, (1, 32, 32))
    pairs = resolve_pairs("1:stage2,-1:0", student, stages)
    assert [(p.block, p.stage.name, p.stage.hw) for p in pairs] == [(1, "stage2", (16, 16)), (5, "stage1", (32, 32))]
    with pytest.raises(DistillError, match="no stage 'layer3'.*stage1"):
        resolve_pairs("1:layer3", student, stages)
    with pytest.raises(DistillError, match="out of range"):
        resolve_pairs("9:stage3", student, stages)


def test_bad_input_is_a_clear_error(digits, tmp_path):
    with pytest.raises(DistillError, match="not found"):
        train(tiny_config(digits, tmp_path / "a", shards=[str(tmp_path / "nowhere")]))
    empty = tmp_path / "empty"
    (empty / "shards").mkdir(parents=True)
    (empty / "dataset.json").write_text(json.dumps({"kind": "real", "n": 0, "num_classes": 10}))
    (empty / "index.json").write_text(json.dumps({"__kind__": "wids-shard-index-v1", "shardlist": []}))
    with pytest.raises(DistillError, match="empty"):
        open_source(empty)
    with pytest.raises(DistillError, match="unknown student model 'dearkd_nano'"):
        train(tiny_config(digits, tmp_path / "b", model="dearkd_nano"))
    with pytest.raises(DistillError, match="stage1-epochs"):
        tiny_config(digits, tmp_path / "d", epochs=3, stage1_epochs=4)


def test_missing_and_truncated_shards(digits, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(digits / "train", broken)
    tar = broken / "shards" / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[:1000])
    with pytest.raises(DistillError, match=r"shard-000001.tar \(truncated"):
        open_source(broken)
    tar.unlink()
    with pytest.raises(DistillError, match=r"shard-000001.tar \(missing\)"):
        open_source(broken)


def test_corrupt_shards_found_by_two_workers_are_counted_and_stop_the_run(digits, tmp_path, capsys):
    from dfgen.zoo.digits import load_digits_split

    split = load_digits_split()
    data = write_image_dataset(tmp_path / "data", (split.train_images[:64] * 255).round().to(torch.uint8),
                               split.train_labels[:64], {"num_classes": 10}, shard_size=8)
    corrupt = [data / "shards" / f"shard-{k:06d}.tar" for k in (1, 3, 5, 7)]
    for tar in corrupt:  # a valid first header (passes the start-up check), junk after: found only when read
        garbage = bytearray(tar.read_bytes())
        garbage[512:] = b"\x01" * (len(garbage) - 512)
        tar.write_bytes(bytes(garbage))
    # the bad shards are met in the loader's worker processes; their reports travel with the batches
    summary = train(tiny_config(digits, tmp_path / "skip", shards=[str(data)], val=None, epochs=1, stage1_epochs=0,
                                max_bad_shards=4, workers=2, attn_images=0))
    assert summary["epoch"] == 1
    err = capsys.readouterr().err
    skipped = [t.name for t in corrupt if f"skipping corrupt shard {t}" in err]
    assert skipped and all(err.count(f"skipping corrupt shard {data / 'shards' / name}") == 1 for name in skipped)
    assert read_metrics(tmp_path / "skip")[0]["bad_shards"] == len(skipped)
    saved = json.loads(torch.load(tmp_path / "skip" / "last.pt", weights_only=True)["bad_shards"])
    assert sorted(Path(u).name for u in saved) == sorted(skipped)
    with pytest.raises(DistillError, match=r"corrupt shards \(shard-00000[1357].tar(, shard-00000[1357].tar)*\), "
                                           r"more than the 0 allowed"):
        train(tiny_config(digits, tmp_path / "stop", shards=[str(data)], val=None, epochs=1, stage1_epochs=0,
                          max_bad_shards=0, workers=2, attn_images=0))


def test_a_teacher_wrapped_in_one_sequential_gives_its_last_module_at_each_size():
    """A user's model file often wraps the whole network in one Sequential: its one child gives logits, so the
    stages come from the modules inside (the last module at each spatial size, in forward order)."""
    from torch import nn

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                     nn.Linear(8 * 7 * 7, 10))

        def forward(self, x):
            return self.net(x)

    stages = teacher_stages(Wrapped().eval(), (1, 28, 28))
    assert [(s.index, s.name, s.channels, s.hw) for s in stages] == [
        (0, "net.2", 4, (28, 28)), (1, "net.5", 8, (14, 14)), (2, "net.6", 8, (7, 7))]
    with pytest.raises(DistillError, match="any intermediate feature map"):
        teacher_stages(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), (1, 28, 28))


def test_ema_warmup_ramps_the_decay_so_a_short_run_moves_the_ema():
    import timm

    from distill.config import TrainConfig
    from distill.optim import Trainable, build_optimization

    def ema_after(warmup: bool, steps: int) -> float:
        torch.manual_seed(0)
        model = timm.create_model("dearkd_micro_patch4_32", num_classes=2)
        start = model.head.weight.detach().clone()
        cfg = TrainConfig(ema=True, ema_decay=0.998, ema_warmup=warmup, epochs=1, stage1_epochs=1, warmup_epochs=0)
        ema = build_optimization(cfg, Trainable(model, torch.nn.ModuleDict()), steps, None).ema
        ema.update(model, step=1)  # the first update copies the weights (decay 0)
        with torch.no_grad():
            model.head.weight.add_(1.0)  # then the trained weights sit 1.0 away from the initialisation
        for step in range(2, steps + 1):
            ema.update(model, step=step)
        return float((ema.module.head.weight.detach() - start).mean())

    # 1 - step^-2/3 capped at 0.998: the EMA follows the weights within a hundred steps
    assert ema_after(True, 100) > 0.99
    # without the warm-up the decay is 0.998 from step 2 on: after 99 more steps the EMA has moved 1 - 0.998^99
    assert ema_after(False, 100) == pytest.approx(1 - 0.998 ** 99, abs=1e-3)
