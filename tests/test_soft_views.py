"""Soft labels for K stored views of each image (issue 15 item 3, FKD-style): dfgen stores the teacher's logits on
random-resized crops with their boxes, and `distill run --soft-labels stored` replays exactly those crops."""

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image

from dfgen.shards import Sample, build_index, encode_image, image_key, write_json_atomic, write_shard
from dfgen.soft_views import crop_views, draw_view_boxes
from distill import build_config, train
from distill import engine as engine_module
from distill.pipeline import stored_view

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--teacher", "digits", "--schedule", "8:4,16:4", "--classes-per-batch", "5", "--images-per-class", "2",
         "--shard-size", "20", "--warmup", "1", "--quiet", "--flip", "off", "-n", "20"]


class Pick(random.Random):
    """An rng whose randrange returns a chosen view."""

    def __init__(self, view: int) -> None:
        super().__init__(0)
        self.view = view

    def randrange(self, *args, **kwargs) -> int:
        return self.view


# ------------------------------------------------------------------------------------------------ the views
def test_view_boxes_lie_inside_the_image_cover_the_scale_and_follow_the_seed():
    boxes = draw_view_boxes(torch.Generator().manual_seed(3), 50, 8, 32, 0.3, flip=False)
    assert boxes.shape == (50, 8, 5) and boxes.dtype == torch.int64
    top, left, height, width, flip = boxes.unbind(-1)
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 32).all() and (left + width <= 32).all()
    area = (height * width).double() / 32 ** 2
    assert area.min() >= 0.25 and area.max() <= 1.0 and area.max() > 0.9 and area.min() < 0.4  # rounding: ~0.3
    assert not flip.any()
    assert torch.equal(boxes, draw_view_boxes(torch.Generator().manual_seed(3), 50, 8, 32, 0.3, flip=False))
    flips = draw_view_boxes(torch.Generator().manual_seed(3), 50, 8, 32, 0.3, flip=True)[..., 4]
    assert 0.3 < flips.double().mean() < 0.7


def test_crop_views_by_hand():
    image = torch.arange(16.0).view(1, 1, 4, 4)
    boxes = torch.tensor([[[0, 0, 4, 4, 1], [1, 1, 2, 2, 0], [0, 2, 4, 2, 0]]])
    views = crop_views(image, boxes)
    assert torch.equal(views[0], image[0].flip(2))  # the whole image, mirrored
    # the centre 2x2 block [[5, 6], [9, 10]] upscaled x2, half-pixel centres: corners keep the block's values
    assert views[1, 0, 0, 0] == 5 and views[1, 0, 3, 3] == 10 and views[1, 0, 0, 1] == pytest.approx(5.25)
    assert torch.allclose(views[2], F.interpolate(image[:, :, :, 2:], size=(4, 4), mode="bilinear",
                                                  align_corners=False)[0])


def test_stored_view_refuses_malformed_entries():
    image = Image.new("L", (8, 8))
    assert stored_view({"soft": {}}, image, Pick(0)) is None
    views = {"box": [[0, 0, 4, 4, 0]], "index": [[1]], "logit": [[2.0]]}
    crop, soft = stored_view({"soft_views": views}, image, Pick(0))
    assert crop.size == (8, 8) and soft == {"index": [1], "logit": [2.0]}
    with pytest.raises(ValueError, match="same length"):
        stored_view({"soft_views": {**views, "index": []}}, image, Pick(0))
    with pytest.raises(ValueError, match="outside the 8x8 image"):
        stored_view({"soft_views": {**views, "box": [[6, 0, 4, 4, 0]]}}, image, Pick(0))
    with pytest.raises(ValueError, match="top, left, height, width, flip"):
        stored_view({"soft_views": {**views, "box": [[0, 0, 4]]}}, image, Pick(0))


# ------------------------------------------------------------------------------------------------ dfgen writes them
def test_stored_views_are_the_teachers_logits_on_the_crops_distill_replays(dfgen_cli, tmp_path, digits_teacher):
    out = tmp_path / "out"
    code, _, err = dfgen_cli(["synthesize", *SMALL, "--soft-topk", "4", "--soft-views", "3",
                              "--soft-view-min-scale", "0.4", "--out", out])
    assert code == 0, err
    record = json.loads((out / "dataset.json").read_text())["soft_labels"]
    assert record["k"] == 4 and record["views"]["count"] == 3 and record["views"]["min_scale"] == 0.4
    samples = list(wds.WebDataset([str(out / "shards" / "shard-000000.tar")], shardshuffle=False))
    mean, std = digits_teacher.mean[0], digits_teacher.std[0]
    partial = 0
    for sample in samples:
        meta = json.loads(sample["json"])
        pil = Image.open(io.BytesIO(sample["png"]))
        image = torch.from_numpy(np.array(pil)).float()[None, None] / 255
        boxes = torch.tensor(meta["soft_views"]["box"])[None]
        crops = crop_views(image, boxes)
        with torch.no_grad():
            logits = digits_teacher.model((crops - mean) / std)
        for v, (row, crop) in enumerate(zip(logits, crops, strict=True)):
            top = row.topk(4)
            assert meta["soft_views"]["index"][v] == top.indices.tolist()
            assert np.allclose(meta["soft_views"]["logit"][v], top.values.numpy(), atol=2e-4)
            replayed, soft = stored_view(meta, pil, Pick(v))  # distill's PIL replay: the same pixels to a grey level
            assert soft == {"index": meta["soft_views"]["index"][v], "logit": meta["soft_views"]["logit"][v]}
            assert (torch.from_numpy(np.array(replayed)).float() / 255 - crop[0]).abs().max() <= 1.01 / 255
            partial += meta["soft_views"]["box"][v][2] < 32
    assert partial > 10  # most views are real crops, not the whole image


def test_soft_views_need_soft_labels(dfgen_cli, tmp_path):
    code, _, err = dfgen_cli(["synthesize", *SMALL, "--soft-topk", "0", "--soft-views", "2", "--out", tmp_path / "x"])
    assert code != 0 and "--soft-views needs stored soft labels" in err


# ------------------------------------------------------------------------------------------------ distill replays them
def write_view_dataset(root: Path, count: int = 64, views: int = 3) -> Path:
    """Real digits stored as "synthetic": the whole image's logits point at label + 1, view v's at label + 2 + v."""
    from dfgen.zoo.digits import load_digits_split

    split = load_digits_split()
    pixels = (split.train_images[-count:].clamp(0, 1) * 255).round().to(torch.uint8)
    labels = [int(v) for v in split.train_labels[-count:]]
    (root / "shards").mkdir(parents=True)
    sidecars = []
    for shard in range(count // 32):
        samples = []
        for i in range(shard * 32, shard * 32 + 32):
            y = labels[i]
            meta = {"index": i, "label": y, "soft": {"index": [(y + 1) % 10], "logit": [5.0]},
                    "soft_views": {"box": [[4 * v, 2, 20, 24, v % 2] for v in range(views)],
                                   "index": [[(y + 2 + v) % 10] for v in range(views)],
                                   "logit": [[5.0] for _ in range(views)]}}
            samples.append(Sample(image_key(i), encode_image(pixels[i].numpy()), y, meta))
        sidecars.append(write_shard(root, shard, samples, "png", {}))
    write_json_atomic(root / "index.json", build_index(sidecars, "views"))
    write_json_atomic(root / "dataset.json", {"kind": "synthetic", "n": count, "num_classes": 10, "in_chans": 1,
                                              "image_size": [1, 32, 32],
                                              "soft_labels": {"k": 1, "views": {"count": views}},
                                              "classes": [str(c) for c in range(10)]})
    return root


@pytest.mark.parametrize("replay", [True, False])
def test_training_learns_the_replayed_views_logits(tmp_path, monkeypatch, capsys, replay):
    offsets = []  # the class offset of each distillation target from its label
    original = engine_module.dearkd_loss

    def record(outputs, target, criterion, teacher_target=None, *args, **kwargs):
        labels = target if target.dim() == 1 else target.argmax(-1)  # class indices without mixing
        offsets.extend(((teacher_target.argmax(-1) - labels) % 10).tolist())
        return original(outputs, target, criterion, teacher_target, *args, **kwargs)

    monkeypatch.setattr(engine_module, "dearkd_loss", record)
    data = write_view_dataset(tmp_path / "syn")
    train(build_config(ROOT / "configs" / "distill_digits.yaml", shards=[str(data)], out=str(tmp_path / "run"),
                       epochs=1, stage1_epochs=1, batch_size=16, warmup_epochs=1, device="cpu", workers=0, quiet=True,
                       attn_images=0, shuffle_buffer=32, soft_labels="stored", cutmix=0.0, smoothing=0.0,
                       stored_views=replay))
    assert ("3 stored views per image" in capsys.readouterr().err) == replay
    if replay:  # every target is one of the views' (offsets 2, 3, 4), each view drawn
        assert set(offsets) == {2, 3, 4} and len(offsets) == 64
    else:
        assert set(offsets) == {1}
