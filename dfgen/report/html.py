"""The picture side of `dfgen report`: per-class image grids, matplotlib plots (Agg, PNG files) and a
self-contained HTML page with every image embedded as a base64 data URI, so it opens offline."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

GRID_COLUMNS = 8


def grid_image(images: Sequence[np.ndarray], columns: int = GRID_COLUMNS) -> Image.Image:
    """Tile uint8 (C, H, W) images into one picture. Small images are enlarged by an integer factor
    with nearest neighbour (pixels stay visible); large ones are shrunk to 96 px."""
    if not images:
        return Image.new("L", (8, 8), 255)
    height, width = images[0].shape[-2:]
    if max(height, width) <= 64:
        factor = max(1, 64 // max(height, width))
        tile = (width * factor, height * factor)
        resample = Image.NEAREST
    else:
        scale = 96 / max(height, width)
        tile = (max(1, round(width * scale)), max(1, round(height * scale)))
        resample = Image.BILINEAR
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    gap = 2
    mode = "L" if images[0].shape[0] == 1 else "RGB"
    canvas = Image.new(mode, (columns * (tile[0] + gap) - gap, rows * (tile[1] + gap) - gap), 255)
    for i, array in enumerate(images):
        pil = Image.fromarray(array[0]) if array.shape[0] == 1 else Image.fromarray(array.transpose(1, 2, 0)[..., :3])
        pil = pil.convert(mode).resize(tile, resample)
        canvas.paste(pil, ((i % columns) * (tile[0] + gap), (i // columns) * (tile[1] + gap)))
    return canvas


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display: render to files only
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def _class_axis(ax: Any, class_names: Sequence[str]) -> None:
    n = len(class_names)
    if n <= 30:
        ax.set_xticks(range(n))
        ax.set_xticklabels(class_names, rotation=90 if n > 12 else 0, fontsize=8)
    ax.set_xlabel("class")


def grouped_bars(
    path: Path,
    title: str,
    ylabel: str,
    class_names: Sequence[str],
    series: dict[str, Sequence[float | None]],
    integer: bool = False,
) -> Path:
    """One bar per class and dataset, datasets side by side within a class (None drawn as a gap)."""
    plt = _pyplot()
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(min(16, max(6, 0.35 * n * max(1, len(series)))), 3.6))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        heights = [np.nan if v is None else v for v in values]
        ax.bar(np.arange(len(heights)) + (k - (len(series) - 1) / 2) * width, heights, width=width, label=name)
    _class_axis(ax, class_names)
    if integer:
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _save(fig, path)


def histogram(path: Path, title: str, xlabel: str, series: dict[str, Sequence[float]]) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bins = np.linspace(0, 1, 21)
    for name, values in series.items():
        ax.hist(values, bins=bins, alpha=0.55 if len(series) > 1 else 0.9, label=f"{name} (n={len(values)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "&mdash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;
text-align:left;vertical-align:middle}th{background:#f2f2f2}.num{text-align:right}
img{image-rendering:pixelated;max-width:100%}.warn{color:#a00;font-weight:600}.note{color:#555;font-size:12px}
"""

PLOT_TITLES = {
    "class_counts": "Class counts",
    "lpips_per_class": "Intra-class LPIPS per class",
    "feature_diversity_per_class": "Teacher feature diversity per class",
    "teacher_target_prob": "Teacher's probability of the target class (sampled images)",
}

def _derived_flip(derived: dict | None) -> str | None:
    if not derived or not derived.get("flip"):
        return None
    flip, probe = derived["flip"], derived.get("probe") or {}
    if flip.get("reason"):  # the probe decided nothing (agreement near chance): the safe setting
        return f"{'on' if flip['value'] else 'off'} (asked: {flip['requested']}; {flip['reason']})"
    kept = f", mirrored probe images kept their class {probe['mirror_kept']:.0%}" if "mirror_kept" in probe else ""
    return f"{'on' if flip['value'] else 'off'} (asked: {flip['requested']}{kept})"


def _derived_pair(derived: dict | None) -> str | None:
    if not derived or not derived.get("ep_reach"):
        return None
    return f"{derived['ep_reach']['value']} / {derived['margin']['value']} (asked: {derived['ep_reach']['requested']})"


# (label, function of a dataset entry) for the summary / comparison table
SUMMARY_ROWS: list[tuple[str, Any]] = [
    ("path", lambda d: d["path"]),
    ("kind", lambda d: d.get("kind")),
    ("read as", lambda d: d.get("source_format")),
    ("teacher", lambda d: (d.get("teacher") or {}).get("source")),
    ("diversity losses", lambda d: d.get("diversity")),
    ("seed / schedule", lambda d: f"{d.get('seed')} / {d.get('schedule')}" if d.get("schedule") else None),
    ("images", lambda d: d["n"]),
    ("classes", lambda d: d["num_classes"]),
    ("image size", lambda d: d["image_size"]),
    ("format", lambda d: d["format"]),
    ("bytes on disk", lambda d: d["bytes_on_disk"]),
    ("shards checked (sha256)", lambda d: d["shards"]["checked"]),
    ("images scanned / decoded", lambda d: f"{d['images_scanned']:,} / {d['images_decoded']:,}"),
    ("LPIPS intra-class (mean)", lambda d: (d.get("lpips_intra_class") or {}).get("mean")),
    ("feature diversity (mean)", lambda d: (d.get("feature_diversity") or {}).get("mean")),
    ("teacher top-1 agreement", lambda d: (d.get("teacher_agreement") or {}).get("top1")),
    ("teacher mean target prob", lambda d: (d.get("teacher_agreement") or {}).get("mean_target_prob")),
    ("judge top-1 (a network synthesis did not use)", lambda d: (d.get("judge") or {}).get("top1")),
    ("feature diversity in the judge's embedding", lambda d: (d.get("judge") or {}).get("feature_diversity")),
    ("flips (decided from the teacher)", lambda d: _derived_flip(d.get("derived"))),
    ("reach / margin", lambda d: _derived_pair(d.get("derived"))),
    ("synthesis: teacher passes / image", lambda d: _cost(d, "teacher_passes")),
    ("synthesis: teacher forwards / image", lambda d: _cost(d, "teacher_forwards")),
    ("synthesis: generator FLOPs / image", lambda d: _cost(d, "generator_flops")),
    ("synthesis: seconds / image", lambda d: _cost(d, "seconds")),
    ("seconds", lambda d: d["timings"]["total_s"]),
]


def _cost(entry: dict[str, Any], key: str) -> Any:
    """A per-image synthesis cost that `dfgen synthesize` recorded in dataset.json (None for older datasets)."""
    return ((entry.get("synthesis_cost") or {}).get("per_image") or {}).get(key)


def _cell(label: str, value: Any, entry: dict[str, Any]) -> str:
    """A table cell; an agreement near chance is shown in red (the warning below the table says why)."""
    agreement = entry.get("teacher_agreement") or {}
    if label == "teacher top-1 agreement" and agreement.get("near_chance"):
        return (f"<td class='num warn' title='near chance: up to {agreement['chance_bound']:.3f}'>{_fmt(value)} "
                "(near chance)</td>")
    return f"<td class='num'>{_fmt(value)}</td>"


def write_html(report: dict[str, Any], out: Path, plots: dict[str, Path], grids: dict[str, dict[str, Path]]) -> Path:
    """report.html: a summary (comparison) table, the plots, and per-class grids side by side."""
    datasets = report["datasets"]
    names = [d["name"] for d in datasets]
    s = report["settings"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>dfgen report: {html.escape(', '.join(names))}</title><style>{_CSS}</style></head><body>",
        f"<h1>dfgen report: {html.escape(', '.join(names))}</h1>",
        f"<p class='note'>dfgen {html.escape(report['version'])}, {html.escape(report['created'])}; "
        f"LPIPS net {_fmt(s['lpips_net'])}, {s['pairs_per_class']} pairs per class, "
        f"{s['images_per_class']} sampled images per class, seed {s['seed']}, device {html.escape(s['device'])}. "
        "LPIPS: mean distance over sampled same-class pairs (higher is more diverse). Feature diversity: mean "
        "Euclidean distance between L2-normalized teacher penultimate features of same-class images.</p>",
        "<h2>" + ("Comparison" if len(datasets) > 1 else "Summary") + "</h2><table><tr><th></th>",
        *[f"<th>{html.escape(n)}</th>" for n in names],
        "</tr>",
    ]
    for label, get in SUMMARY_ROWS:
        parts.append(f"<tr><th>{html.escape(label)}</th>")
        parts += [_cell(label, get(d), d) for d in datasets]
        parts.append("</tr>")
    parts.append("</table>")
    for d in datasets:
        for warning in d.get("warnings", []):
            parts.append(f"<p class='warn'>{html.escape(d['name'])}: {html.escape(warning)}</p>")
    parts.append("<h2>Plots</h2>")
    for key, path in plots.items():
        title = PLOT_TITLES.get(key, key.replace("_", " "))
        parts.append(f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' src='{data_uri(path)}'>")
    parts.append("<h2>Per-class images</h2>")
    parts.append("<p class='note'>A random sample of each class (the first images of the per-class reservoir "
                 "sample); classes shown evenly spaced when there are many.</p>")
    parts.append("<table><tr><th>class</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>")
    shown = list(dict.fromkeys(c for g in grids.values() for c in g))  # class order, first dataset first
    for cls in shown:
        parts.append(f"<tr><th>{html.escape(cls)}</th>")
        for d in datasets:
            path = grids.get(d["name"], {}).get(cls)
            lp = ((d.get("lpips_intra_class") or {}).get("per_class") or {}).get(cls)
            top1 = ((d.get("teacher_agreement") or {}).get("per_class_top1") or {}).get(cls)
            caption = f"<div class='note'>LPIPS {_fmt(lp, 3)}, top-1 {_fmt(top1, 3)}</div>"
            cell = f"<img alt='class {html.escape(cls)}' src='{data_uri(path)}'>{caption}" if path else "&mdash;"
            parts.append(f"<td>{cell}</td>")
        parts.append("</tr>")
    parts.append("</table></body></html>")
    path = Path(out) / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path

