"""Soft labels for K stored views of each image (FKD-style): dfgen stores the teacher's logits on
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

import dfgen
from dfgen.soft_views import crop_views, draw_view_boxes
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


def test_views_enter_the_content_only_when_stored():
    plain = dfgen.build_config(None).content_fields()  # directories made before the option keep their fingerprint
    assert "soft_views" not in plain and "soft_view_min_scale" not in plain
    assert dfgen.build_config(None, soft_view_min_scale=0.5).content_fields() == plain  # no views: no effect
    views = dfgen.build_config(None, soft_views=4, soft_view_min_scale=0.5).content_fields()
    assert views["soft_views"] == 4 and views["soft_view_min_scale"] == 0.5
    assert views != dfgen.build_config(None, soft_views=4).content_fields()


def test_soft_views_need_soft_labels(dfgen_cli, tmp_path):
    code, _, err = dfgen_cli(["synthesize", *SMALL, "--soft-topk", "0", "--soft-views", "2", "--out", tmp_path / "x"])
    assert code != 0 and "--soft-views needs stored soft labels" in err
