"""`dfgen report --judge`: diversity and top-1 in a network that synthesis did not use (the teacher-feature
diversity is measured in the embedding the diversity loss optimises, so it can be gamed)."""

import json

import dfgen

JUDGE = '''
import torch
from torch import nn


def plain_cnn(num_classes=10):
    """No BatchNorm: a judge only embeds and classifies, it is never inverted."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, num_classes))
'''


def test_report_with_a_judge(dfgen_cli, tmp_path):
    data = tmp_path / "syn"
    dfgen.synthesize(teacher="digits", n=20, out=str(data), schedule="8:3,16:3", classes_per_batch=5,
                     images_per_class=2, shard_size=20, warmup=1, quiet=True, flip=False)
    judge = tmp_path / "judge.py"
    judge.write_text(JUDGE)
    out = tmp_path / "report"
    code, stdout, err = dfgen_cli(["report", data, "--out", out, "--lpips-net", "none", "--judge", f"{judge}:plain_cnn",
                                   "--judge-image-size", "32", "--judge-mean", "0.3", "--judge-std", "0.3",
                                   "--quiet"])
    assert code == 0, err
    entry = json.loads((out / "report.json").read_text())["datasets"][0]
    assert entry["judge"]["name"].endswith("judge.py:plain_cnn")
    assert 0 <= entry["judge"]["top1"] <= 1 and 0 < entry["judge"]["feature_diversity"] <= 2
    assert entry["judge"]["feature_diversity"] != entry["feature_diversity"]["mean"]  # another embedding
    assert "judge top-1" in stdout
    html = (out / "report.html").read_text()
    assert "judge top-1" in html and "flips (decided from the teacher)" in html and "off (asked: False" in html


def test_judge_options_need_a_judge(dfgen_cli, tmp_path):
    code, _, err = dfgen_cli(["report", tmp_path, "--out", tmp_path / "r", "--judge-weights", tmp_path / "w.pt"])
    assert code == 2 and "--judge" in err
