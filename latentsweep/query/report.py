"""A self-contained HTML report of a sweep partition: summary, the paper's tables, a confusion
heatmap, per-label bars and, where the images are reachable, neighbour strips like the paper's
Figure 4 (query + nearest references, framed by whether label and family match)."""

from __future__ import annotations

import base64
import html
import io

from latentsweep import storage

THUMBNAIL = 72
STRIP_QUERIES = 6
FRAME = {"label": "#1a9850", "family": "#fdae61", "wrong": "#d73027"}


def warm_up() -> None:
    """Import the plotting stack ahead of :func:`render` (a sweep calls this in a thread while its
    actors search, so the second it takes is hidden)."""
    import matplotlib.figure  # noqa: F401


def _figure(width: float, height: float):
    """A figure on the Agg canvas through matplotlib's object API: no pyplot import (about a second),
    no global figure registry to close."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots()


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def confusion_figure(confusion: dict[str, dict[str, int]]) -> str:
    import numpy as np

    truths = sorted(confusion)
    predictions = sorted({p for row in confusion.values() for p in row} | set(truths))
    matrix = np.array([[confusion[t].get(p, 0) for p in predictions] for t in truths], dtype=float)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure, axes = _figure(1.0 + 0.6 * len(predictions), 0.8 + 0.5 * len(truths))
    image = axes.imshow(shares, cmap="viridis", vmin=0, vmax=1)
    axes.set_xticks(range(len(predictions)), predictions, rotation=45, ha="right")
    axes.set_yticks(range(len(truths)), truths)
    axes.set_xlabel("top-1 neighbour's label")
    axes.set_ylabel("true label")
    for row in range(len(truths)):
        for col in range(len(predictions)):
            if matrix[row, col]:
                axes.text(col, row, int(matrix[row, col]), ha="center", va="center",
                          color="white" if shares[row, col] < 0.6 else "black", fontsize=8)
    figure.colorbar(image, ax=axes, fraction=0.04)
    return _png(figure)


def bars_figure(values: dict[str, float], title: str) -> str:
    figure, axes = _figure(1.2 + 0.55 * len(values), 3)
    axes.bar(list(values), list(values.values()), color="#4575b4")
    axes.set_title(title)
    axes.set_ylim(0, max(1.0, max(values.values(), default=1)))
    axes.tick_params(axis="x", rotation=45)
    return _png(figure)


def thumbnail(uri: str | None) -> str | None:
    """A small JPEG data URI of the image at ``uri``, or None when it cannot be read."""
    from PIL import Image

    if not uri:
        return None
    try:
        image = Image.open(io.BytesIO(storage.read_bytes(uri))).convert("RGB")
    except Exception:
        return None
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _table(title: str, key: str, section: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(str(name))}</td><td>{v['top1']:.3f}</td><td>{v['precision_at_10']:.3f}</td>"
        f"<td>{v['map']:.3f}</td><td>{v['type_top1']:.3f}</td><td>{v['queries']}</td></tr>"
        for name, v in section.items())
    return (f"<h3>{html.escape(title)}</h3><table><tr><th>{key}</th><th>Top-1 Acc.</th><th>Prec.@10</th>"
            f"<th>mAP</th><th>Top-1 Type Acc.</th><th>queries</th></tr>{rows}</table>")


def _strips(rows: list[dict], families: dict[str, str]) -> str:
    blocks = []
    for row in rows:
        query = thumbnail(row["uri"])
        if query is None:
            continue
        cells = [f'<figure><img src="{query}" style="border:3px solid #333"><figcaption>query<br>'
                 f'{html.escape(str(row.get("label") or "?"))}</figcaption></figure>']
        for uri, label, score in zip(row["neighbor_uris"], row["neighbor_labels"], row["neighbor_scores"]):
            picture = thumbnail(uri)
            if row.get("label") is not None and label == row["label"]:
                verdict = "label"
            elif row.get("label") is not None and families.get(label) == families.get(row["label"]):
                verdict = "family"
            else:
                verdict = "wrong"
            image = f'<img src="{picture}"' if picture else '<div class="missing"'
            cells.append(f'<figure>{image} style="border:3px solid {FRAME[verdict]}" title="{verdict}">'
                         f'<figcaption>{html.escape(str(label))}<br>{score:.3f}</figcaption></figure>')
        blocks.append(f'<div class="strip">{"".join(cells)}</div>')
        if len(blocks) == STRIP_QUERIES:
            break
    if not blocks:
        return "<p>Neighbour strips: the query images are not reachable from here.</p>"
    legend = " ".join(f'<span style="border:3px solid {c};padding:0 4px">{n}</span>' for n, c in FRAME.items())
    return f"<h2>Nearest neighbours</h2><p>Frames: {legend}</p>" + "".join(blocks)


def render(partition: str, parts: list[dict], summary: dict, families: dict[str, str]) -> bytes:
    """The report page of a sweep partition, from its result parts and summary."""
    root = storage.Location.parse(partition)
    sample_rows = storage.read_table(root.join(parts[0]["file"])).to_pylist()[:STRIP_QUERIES * 4] if parts else []
    sections = [f"<h1>latentsweep sweep report</h1><p>{html.escape(summary['out'])}</p>",
                "<table>" + "".join(f"<tr><th>{k}</th><td>{html.escape(str(summary[k]))}</td></tr>"
                                    for k in ("queries", "attributed", "unknown", "parts", "labelled")) + "</table>"]
    predicted: dict[str, int] = {}
    for part in parts:
        for label in storage.read_table(root.join(part["file"]), columns=["predicted_label"]).column(
                "predicted_label").to_pylist():
            predicted[label] = predicted.get(label, 0) + 1
    sections.append(f'<h2>Predicted labels</h2><img src="{bars_figure(dict(sorted(predicted.items())), "queries per predicted label")}">')
    metrics = summary.get("metrics")
    if metrics:
        sections.append(f"<h2>Attribution of labelled queries (AP truncated at {metrics.get('map_truncated_at')})</h2>")
        sections.append(_table("Overall", "set", {"all": metrics["overall"]}))
        sections.append(_table("By family (Table 2)", "Type", metrics["by_family"]))
        sections.append(_table("By label (Table 3)", "Model", metrics["by_label"]))
        top1 = {label: values["top1"] for label, values in metrics["by_label"].items()}
        sections.append(f'<img src="{bars_figure(top1, "Top-1 accuracy per label")}">')
        sections.append(f'<h2>Confusion</h2><img src="{confusion_figure(metrics["confusion"])}">')
    sections.append(_strips(sample_rows, families))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>latentsweep report</title><style>"
            "body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f0f0f0}"
            ".strip{display:flex;gap:4px;margin:6px 0}figure{margin:0;text-align:center;font-size:10px}"
            ".missing{width:72px;height:72px;background:#eee}</style></head><body>"
            + "".join(sections) + "</body></html>")
    return page.encode()
