"""distill.train: the two stages, the hidden loss, exact resume, and bad input (SPEC sections 5 and 7).

Tiny runs: dearkd_micro_patch4_32 on 64 real digits (2 shards) at batch 16, CPU, fp32."""

import json
from pathlib import Path

import pytest
import torch

from dfgen.realdata import write_image_dataset
from distill import DistillError, build_config, evaluate_checkpoint, train
from distill.data import open_dataset
from distill.losses import dearkd_loss, label_criterion
from distill.models import Aligner
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


def test_eval_on_an_imagefolder_matches_the_shards(straight_run, digits, tmp_path):
    import io

    import webdataset as wds
    from PIL import Image

    folder = tmp_path / "folder"
    for url in open_dataset(digits / "test").urls:
        for sample in wds.tariterators.tarfile_samples([{"url": url}]):
            (folder / sample["cls"].decode()).mkdir(parents=True, exist_ok=True)
            Image.open(io.BytesIO(sample["png"])).save(folder / sample["cls"].decode() / f"{sample['__key__']}.png")
    on_folder = evaluate_checkpoint(straight_run[0] / "last.pt", folder, device="cpu")
    on_shards = evaluate_checkpoint(straight_run[0] / "last.pt", digits / "test", device="cpu")
    assert on_folder == on_shards


def test_resume_equals_uninterrupted(straight_run, digits, tmp_path):
    out = tmp_path / "run"
    first = train(tiny_config(digits, out, stop_after=2))
    assert first["epoch"] == 2 and len(read_metrics(out)) == 2
    train(tiny_config(digits, out, resume=True))
    straight, resumed = read_metrics(straight_run[0]), read_metrics(out)
    assert len(resumed) == 3
    for a, b in zip(straight, resumed, strict=True):
        for key in ("loss", "loss_cls", "loss_dist", "lr", "val_top1"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["epoch"], key)
    final_a = torch.load(straight_run[0] / "last.pt", weights_only=True)["model"]
    final_b = torch.load(out / "last.pt", weights_only=True)["model"]
    for key, value in final_a.items():
        torch.testing.assert_close(value, final_b[key], rtol=1e-4, atol=1e-5)


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
        outputs, tokens = student.forward_intermediates(images, [block])
        terms = dearkd_loss(outputs, labels, label_criterion(False, 0.1), logits, [aligner(tokens[block])],
                            [maps[stage.name]])
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
        open_dataset(empty)
    with pytest.raises(DistillError, match="unknown student model 'dearkd_nano'"):
        train(tiny_config(digits, tmp_path / "b", model="dearkd_nano"))
    with pytest.raises(DistillError, match="resnet18 is not a DearKD student"):
        train(tiny_config(digits, tmp_path / "c", model="resnet18"))
    with pytest.raises(DistillError, match="stage1-epochs"):
        tiny_config(digits, tmp_path / "d", epochs=3, stage1_epochs=4)


def test_missing_and_truncated_shards(digits, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(digits / "train", broken)
    tar = broken / "shards" / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[:1000])
    with pytest.raises(DistillError, match=r"shard-000001.tar \(truncated"):
        open_dataset(broken)
    tar.unlink()
    with pytest.raises(DistillError, match=r"shard-000001.tar \(missing\)"):
        open_dataset(broken)


def test_corrupt_shard_mid_training_is_skipped_then_limited(digits, tmp_path, capsys):
    from dfgen.zoo.digits import load_digits_split

    split = load_digits_split()
    data = write_image_dataset(tmp_path / "data", (split.train_images[:64] * 255).round().to(torch.uint8),
                               split.train_labels[:64], {"num_classes": 10}, shard_size=8)
    corrupt = [data / "shards" / f"shard-{k:06d}.tar" for k in (1, 3, 5, 7)]
    for tar in corrupt:  # a valid first header (passes the start-up check), junk after: found only when read
        garbage = bytearray(tar.read_bytes())
        garbage[512:] = b"\x01" * (len(garbage) - 512)
        tar.write_bytes(bytes(garbage))
    summary = train(tiny_config(digits, tmp_path / "skip", shards=[str(data)], val=None, epochs=1, stage1_epochs=1,
                                max_bad_shards=4))
    assert summary["epoch"] == 1
    err = capsys.readouterr().err
    skipped = [t.name for t in corrupt if f"skipping corrupt shard {t}" in err]
    assert skipped and read_metrics(tmp_path / "skip")[0]["bad_shards"] == len(skipped)
    with pytest.raises(DistillError, match=r"1 corrupt shards \(shard-00000[1357].tar\), more than the 0 allowed"):
        train(tiny_config(digits, tmp_path / "stop", shards=[str(data)], val=None, epochs=1, stage1_epochs=1,
                          max_bad_shards=0))
