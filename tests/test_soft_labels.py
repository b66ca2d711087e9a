"""Distillation targets: soft distillation, mixup/cutmix pairing, and the soft labels dfgen stores:
`--soft-labels stored` trains stage 1 from the stored top-k logits without loading the teacher, or from the
stored views it replays (dfgen --soft-views)."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.data.mixup import mixup_target

from dfgen.dataset import build_index
from dfgen.shards import Sample, encode_image, image_key, write_json_atomic, write_shard
from distill import DistillError, build_config, train
from distill import engine as engine_module
from distill.losses import PairedMixup, distillation_loss, distillation_target, mix_targets
from distill.pipeline import dense_logits

ROOT = Path(__file__).resolve().parents[1]
STORED = [4.0, 2.0, 1.0]  # the stored top-3 logits of every synthetic test image, at label+1, label+2, label+3


def stored_classes(label: int) -> list[int]:
    return [(label + 1) % 10, (label + 2) % 10, (label + 3) % 10]


def write_soft_dataset(root: Path, count: int = 64, views: int = 0) -> Path:
    """A "synthetic" dataset of real digits whose per-image JSON stores top-3 soft labels, made by hand; with
    `views`, also that many stored views (dfgen --soft-views) whose logits point at label + 2 + v."""
    from dfgen.zoo.digits import load_digits_split

    split = load_digits_split()
    pixels = (split.train_images[-count:].clamp(0, 1) * 255).round().to(torch.uint8)
    labels = [int(v) for v in split.train_labels[-count:]]
    (root / "shards").mkdir(parents=True)
    sidecars = []
    for shard in range(count // 32):
        samples = []
        for i in range(shard * 32, shard * 32 + 32):
            meta = {"index": i, "label": labels[i], "soft": {"index": stored_classes(labels[i]), "logit": STORED}}
            if views:
                meta["soft_views"] = {"box": [[4 * v, 2, 20, 24, v % 2] for v in range(views)],
                                      "index": [[(labels[i] + 2 + v) % 10] for v in range(views)],
                                      "logit": [[5.0] for _ in range(views)]}
            samples.append(Sample(image_key(i), encode_image(pixels[i].numpy()), labels[i], meta))
        sidecars.append(write_shard(root, shard, samples, "png", {}))
    write_json_atomic(root / "index.json", build_index(sidecars, "soft"))
    soft_labels = {"k": 3, **({"views": {"count": views}} if views else {})}
    write_json_atomic(root / "dataset.json", {"kind": "synthetic", "n": count, "num_classes": 10, "in_chans": 1,
                                              "image_size": [1, 32, 32], "soft_labels": soft_labels,
                                              "classes": [str(c) for c in range(10)]})
    return root


@pytest.fixture(scope="module")
def soft_set(tmp_path_factory):
    return write_soft_dataset(tmp_path_factory.mktemp("soft") / "syn")


def config(out, shards, **overrides):
    settings = dict(shards=[str(s) for s in shards], out=str(out), epochs=1, stage1_epochs=1, batch_size=16,
                    warmup_epochs=1, device="cpu", workers=0, quiet=True, attn_images=0, shuffle_buffer=32,
                    soft_labels="stored", cutmix=0.0)  # unmixed targets unless a test asks for mixing
    settings.update(overrides)
    return build_config(ROOT / "configs" / "distill_digits.yaml", **settings)


@pytest.fixture
def recorded(monkeypatch):
    """The (label target, teacher target) of every training batch, and a teacher that must not be loaded."""
    calls = []
    original = engine_module.dearkd_loss

    def record(outputs, target, criterion, teacher_target=None, *args, **kwargs):
        calls.append((target.detach().clone(), None if teacher_target is None else teacher_target.detach().clone()))
        return original(outputs, target, criterion, teacher_target, *args, **kwargs)

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded")

    monkeypatch.setattr(engine_module, "dearkd_loss", record)
    monkeypatch.setattr("dfgen.teachers.load_teacher", no_teacher)
    monkeypatch.setattr("dfgen.teachers.load_recorded_teacher", no_teacher)
    return calls


# ------------------------------------------------------------------------------------------------ the losses
def test_soft_and_hard_distillation_by_hand():
    student = torch.tensor([[2.0, 0.0, -1.0]])
    teacher = torch.tensor([[0.0, 1.0, float("-inf")]])  # a class outside the stored top-k
    hard = distillation_target(teacher, "hard")
    assert hard.tolist() == [[0.0, 1.0, 0.0]]
    assert distillation_loss(student, hard, "hard").item() == pytest.approx(F.cross_entropy(student, hard.argmax(-1)))
    tau = 2.0
    soft = distillation_target(teacher, "soft", tau)
    p = [1 / (1 + math.exp(0.5)), math.exp(0.5) / (1 + math.exp(0.5)), 0.0]  # softmax([0, 0.5, -inf])
    assert soft[0].tolist() == pytest.approx(p)
    q = torch.softmax(student / tau, dim=-1)[0].tolist()
    kl = sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True) if pi > 0)  # 0 log 0 = 0
    assert distillation_loss(student, soft, "soft", tau).item() == pytest.approx(tau * tau * kl, rel=1e-5)


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_paired_mixup_mixes_other_targets_like_the_images(kind):
    torch.manual_seed(0)
    alphas = {"mixup": dict(mixup_alpha=0.8, cutmix_alpha=0.0), "cutmix": dict(mixup_alpha=0.0, cutmix_alpha=1.0)}
    mixer = PairedMixup(**alphas[kind], label_smoothing=0.0, num_classes=5)
    images = torch.rand(6, 1, 8, 8)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    mixed, target, lam = mixer.mix(images.clone(), labels)
    assert 0 < lam < 1
    assert torch.allclose(target, mixup_target(labels, 5, lam, 0.0))  # timm's targets, unchanged
    assert torch.allclose(mix_targets(F.one_hot(labels, 5).float(), lam), target)  # ours: the same pairing
    if kind == "mixup":
        assert torch.allclose(mixed, lam * images + (1 - lam) * images.flip(0))
    else:  # the box comes from sample B-1-i, and lam is the share of the image left
        from_flipped = (mixed != images).float().mean().item()
        assert from_flipped == pytest.approx(1 - lam, abs=0.05)
        assert torch.equal(mixed[mixed != images], images.flip(0)[mixed != images])


def test_stored_logits_decoding():
    assert dense_logits({"index": [2, 0], "logit": [1.5, -0.5]}, 1, 4, required=True).tolist() == [
        -0.5, float("-inf"), 1.5, float("-inf")]
    assert dense_logits(None, 1, 4, required=False).tolist() == [float("-inf"), 0.0] + [float("-inf")] * 2
    with pytest.raises(ValueError, match="no stored soft labels"):
        dense_logits(None, 1, 4, required=True)
    with pytest.raises(ValueError, match="index outside 0..3"):
        dense_logits({"index": [4], "logit": [1.0]}, 1, 4, required=True)
    with pytest.raises(ValueError, match="malformed"):
        dense_logits({"index": [1, 2], "logit": [1.0]}, 1, 4, required=True)


# ------------------------------------------------------------------------------------------------ training
def test_stored_soft_labels_train_without_the_teacher(soft_set, digits, tmp_path, recorded, capsys):
    out = tmp_path / "run"
    train(config(out, [soft_set, digits / "train"], distillation="soft", distill_tau=1.0, mix="0.5,0.5",
                 fraction="0.5,0.5"))
    err = capsys.readouterr().err
    assert err.count("the hidden loss is off") == 1 and "stored soft labels" in err
    assert "learns only the stored logits' argmax" not in err  # soft distillation: no advice
    record = json.loads((out / "metrics.jsonl").read_text())
    assert "loss_hidden" not in record and record["loss_dist"] > 0 and len(record["mix"]) == 2
    synthetic = torch.softmax(torch.tensor(STORED), dim=0)
    kinds = {"synthetic": 0, "real": 0}
    for labels, teacher in recorded:
        assert teacher is not None
        for label, row in zip(labels.tolist(), teacher, strict=True):
            if int((row > 0).sum()) == 3:  # a synthetic image: its stored top-3 at temperature 1
                assert torch.allclose(row[stored_classes(label)], synthetic)
                kinds["synthetic"] += 1
            else:  # a real image: its one-hot label
                assert row.tolist() == F.one_hot(torch.tensor(label), 10).float().tolist()
                kinds["real"] += 1
    assert kinds["synthetic"] > 8 and kinds["real"] > 8, kinds


def test_stored_targets_follow_the_mixup_pairing(soft_set, tmp_path, recorded):
    train(config(tmp_path / "run", [soft_set], mixup=0.8, cutmix=1.0, smoothing=0.0, distillation="hard"))
    # every stored argmax is label + 1: mixed with the images' lambda and pairing, the distillation target of each
    # row is its mixed label target shifted by one class
    mixed_rows = 0
    for target, teacher in recorded:
        assert torch.allclose(teacher, target.roll(1, dims=-1), atol=1e-6)
        mixed_rows += int((target.max(dim=-1).values < 1 - 1e-6).sum())
    assert mixed_rows > 20


@pytest.mark.parametrize("replay", [True, False])
def test_training_learns_the_replayed_views_logits(tmp_path, recorded, capsys, replay):
    augment = {} if replay else {"aa": ""}  # the preset's RandAugment, or none
    train(config(tmp_path / "run", [write_soft_dataset(tmp_path / "syn", views=3)], smoothing=0.0,
                 stored_views=replay, **augment))
    err = capsys.readouterr().err
    assert ("3 stored views per image" in err) == replay
    assert "--distillation hard learns only the stored logits' argmax" in err  # the preset's hard distillation
    assert ("change the image but not its stored target" in err) == replay  # RandAugment on (cutmix is off)
    offsets = [int(o) for labels, teacher in recorded for o in (teacher.argmax(-1) - labels) % 10]
    if replay:  # every target is one of the stored views' (label + 2, 3, 4), each view drawn
        assert set(offsets) == {2, 3, 4} and len(offsets) == 64
    else:  # the whole image's top logit, label + 1
        assert set(offsets) == {1}


def test_stored_needs_a_dataset_that_stores_them(digits, tmp_path):
    unsoft = tmp_path / "unsoft"
    write_soft_dataset(unsoft)
    description = json.loads((unsoft / "dataset.json").read_text())
    del description["soft_labels"]
    write_json_atomic(unsoft / "dataset.json", description)
    with pytest.raises(DistillError, match=f"{unsoft} holds no stored soft labels .*re-synthesize .*--soft-labels "
                                           "online"):
        train(config(tmp_path / "a", [unsoft]))
    with pytest.raises(DistillError, match="none of .*train holds stored soft labels"):
        train(config(tmp_path / "b", [digits / "train"]))
