"""What each synthetic sample and shard records beyond the image: the teacher's stored soft labels (for distill
--soft-labels stored) and the share of anchors on which each diversity term was active."""

import io
import json

import numpy as np
import torch
import webdataset as wds
from PIL import Image

SMALL = ["--teacher", "digits", "--schedule", "8:4,16:4", "--classes-per-batch", "5", "--images-per-class", "2",
         "--shard-size", "20", "--warmup", "1", "--quiet", "--flip", "off", "-n", "20"]


def test_soft_labels_are_the_teachers_top_logits_on_the_written_image(dfgen_cli, tmp_path, digits_teacher):
    out = tmp_path / "out"
    code, _, err = dfgen_cli(["synthesize", *SMALL, "--soft-topk", "4", "--out", out])
    assert code == 0, err
    assert json.loads((out / "dataset.json").read_text())["soft_labels"]["k"] == 4
    samples = list(wds.WebDataset([str(out / "shards" / "shard-000000.tar")], shardshuffle=False))
    images = torch.stack([torch.from_numpy(np.array(Image.open(io.BytesIO(s["png"])))) for s in samples])[:, None]
    mean, std = digits_teacher.mean[0], digits_teacher.std[0]
    with torch.no_grad():
        logits = digits_teacher.model((images.float() / 255 - mean) / std)
    for sample, row in zip(samples, logits, strict=True):
        soft = json.loads(sample["json"])["soft"]
        top = row.topk(4)
        assert soft["index"] == top.indices.tolist()
        assert np.allclose(soft["logit"], top.values.numpy(), atol=2e-4)
        assert soft["logit"] == sorted(soft["logit"], reverse=True)


def test_all_logits_for_small_class_counts_and_none_when_off(dfgen_cli, tmp_path):
    code, _, _ = dfgen_cli(["synthesize", *SMALL, "--out", tmp_path / "a"])  # default k = 10 = every class
    assert code == 0
    meta = json.loads(next(iter(wds.WebDataset([str(tmp_path / "a" / "shards" / "shard-000000.tar")],
                                               shardshuffle=False)))["json"])
    assert sorted(meta["soft"]["index"]) == list(range(10))
    sidecar = json.loads((tmp_path / "a" / "shards" / "shard-000000.json").read_text())
    assert 0 <= sidecar["loss"]["ep_active"] <= 1 and 0 <= sidecar["loss"]["triplet_active"] <= 1
    code, _, _ = dfgen_cli(["synthesize", *SMALL, "--soft-topk", "0", "--out", tmp_path / "b"])
    assert code == 0
    meta = json.loads(next(iter(wds.WebDataset([str(tmp_path / "b" / "shards" / "shard-000000.tar")],
                                               shardshuffle=False)))["json"])
    assert "soft" not in meta and json.loads((tmp_path / "b" / "dataset.json").read_text())["soft_labels"] is None
