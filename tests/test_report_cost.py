"""`dfgen report` shows what a dataset cost to make: the counted teacher passes, forwards, generator FLOPs and
seconds per image from dataset.json, in report.json, report.html and its summary line."""

from __future__ import annotations

import json

import dfgen
from dfgen.report import make_report


def test_the_report_shows_the_synthesis_cost(tmp_path, capsys):
    out = tmp_path / "set"
    dfgen.synthesize(teacher="digits", n=8, batch_size=4, shard_size=8, schedule="8:2,16:1", flip="off",
                     ep_reach=0.2, margin=0.34, out=str(out), quiet=True)
    report = make_report([out], tmp_path / "report", pairs_per_class=2, images_per_class=2, lpips_net=None,
                         device="cpu")
    cost = report["datasets"][0]["synthesis_cost"]
    assert cost == json.loads((out / "dataset.json").read_text())["cost"]
    assert cost["per_image"]["teacher_passes"] == 3  # 2 + 1 iterations, no start-up probe
    html = (tmp_path / "report" / "report.html").read_text()
    assert "synthesis: teacher passes / image" in html and "synthesis: generator FLOPs / image" in html
    assert "made with 3 teacher passes an image" in capsys.readouterr().err
