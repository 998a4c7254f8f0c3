"""A self-contained HTML report of a sweep partition (one file: figures and thumbnails inlined, a
small inline script, no external URL).

The verdicts first (how many queries are ``attributed``, ``uncertain``, ``unknown``, and how many
files declare an origin that a confident attribution contradicts), then the review list: the rows to
route to an expert (``uncertain`` and conflicts) with their evidence: the reason, each descriptor
family's call, what the file declares, and the neighbours' thumbnails. Then what made the night
(provenance: index and its version, features, pooling, k, threshold, codec weights, date, counts);
the metrics of the labelled queries, scored on ``predicted_label`` (the k-NN vote) with the nearest
neighbour's Top-1 beside it (no metrics section when no query carries a label); a per-query table,
sortable and filterable by verdict, predicted label, unknown and conflict
(``report.html#verdict=uncertain&conflict=1`` opens it filtered); and, where the images are
reachable, neighbour strips like the paper's Figure 4 for a stated sample: the least confident
queries and a seeded random set.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from latentsweep import storage
from latentsweep.query.metrics import at_k, map_name, precision_name
from latentsweep.query.verdict import VERDICTS

THUMBNAIL = 72
STRIPS_LEAST_CONFIDENT = 6  # neighbour strips: this many least confident queries ...
STRIPS_RANDOM = 6           # ... and this many others chosen at random (seeded: the same page each run)
STRIP_SEED = 0
TABLE_ROWS = 5000           # per-query rows embedded in the page (the least confident first)
REVIEW_STRIPS = 12          # review rows shown with their evidence and neighbours (conflicts first)
FRAME = {"label": "#1a9850", "family": "#fdae61", "wrong": "#d73027"}
NEUTRAL = "#9e9e9e"         # a neighbour of a query without a label: nothing to judge
MISSING = "\u2014"          # shown for NULL (no label, no family)
CANDIDATE_COLUMNS = ("uri", "predicted_label", "predicted_family", "vote_share", "confidence", "top_score", "unknown",
                     "label", "verdict", "verdict_reason", "declared_conflict", "declared_generator",
                     "declared_source_type", "declared_by", "c2pa_state", "c2pa_trusted", "evidence_features",
                     "evidence_labels", "evidence_confidence")
NEIGHBOUR_COLUMNS = ("neighbor_uris", "neighbor_labels", "neighbor_scores")


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


def confusion_figure(confusion: dict[str, dict[str, int]], predicted: str = "predicted_label (k-NN vote)") -> str:
    import numpy as np

    truths = sorted(confusion)
    predictions = sorted({p for row in confusion.values() for p in row} | set(truths))
    matrix = np.array([[confusion[t].get(p, 0) for p in predictions] for t in truths], dtype=float)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure, axes = _figure(1.0 + 0.6 * len(predictions), 0.8 + 0.5 * len(truths))
    image = axes.imshow(shares, cmap="viridis", vmin=0, vmax=1)
    axes.set_xticks(range(len(predictions)), predictions, rotation=45, ha="right")
    axes.set_yticks(range(len(truths)), truths)
    axes.set_xlabel(predicted)
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


def _text(value) -> str:
    """Escaped text of a value; NULL shows as a dash (never 'None' or 'nan')."""
    return MISSING if value is None else html.escape(str(value))


def _number(value, digits: int = 3) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1] or uri


def _declared(rows: dict, i: int) -> str:
    """What row ``i``'s file declares, in a few words (empty when nothing)."""
    by = rows["declared_by"][i]
    if by is None:
        return ""
    said = ", ".join(filter(None, [rows["declared_generator"][i], rows["declared_source_type"][i]])) or "?"
    if by == "c2pa":
        state = rows["c2pa_state"][i] or "?"
        by = f"C2PA {state}" + ("" if rows["c2pa_trusted"][i] else ", untrusted signer")
    return f"{html.escape(said)} ({html.escape(by)})"


def _verdicts(summary: dict) -> str:
    """The night's verdicts as cards, before anything else."""
    cards = [(summary.get("attributed", 0), "attributed", "confident, and every family asked agrees"),
             (summary.get("uncertain", 0), "uncertain", "to review: low confidence or families disagree"),
             (summary.get("unknown", 0), "unknown", "like no generator of the index (open set)"),
             (summary.get("conflicts", 0), "conflicts", "the file declares another origin than a confident call")]
    shown = "".join(f'<div class="card" id="verdict-{name}"><b>{count:,}</b><br>{name}<br><small>{note}</small></div>'
                    for count, name, note in cards)
    return f'<h2 id="verdicts">Verdicts of the {summary["queries"]:,} queries</h2><div class="cards">{shown}</div>'


def _provenance(provenance: dict, summary: dict) -> str:
    threshold = provenance.get("open_set_threshold")
    items = [
        ("index", _text(provenance.get("index"))),
        ("index version", f"created {_text(provenance.get('index_created'))}, manifest sha256 "
                          f"<code title=\"{_text(provenance.get('index_manifest_sha256'))}\">"
                          f"{_text((provenance.get('index_manifest_sha256') or '')[:16])}</code>"),
        ("index type", f"{_text(provenance.get('index_type'))}, {_text(provenance.get('index_vectors'))} reference "
                       f"vectors, {_text(provenance.get('index_labels'))} labels"),
        ("features", f"{_text(provenance.get('features'))} (columns: "
                     f"{_text(', '.join(provenance.get('columns') or []))})"),
        ("pooling", _text(provenance.get("pooling"))),
        ("k", _text(provenance.get("k"))),
        ("vote", "weighted by similarity" if provenance.get("weighted") else "one vote per neighbour"),
        ("open-set threshold", "none (every query gets a label)" if threshold is None
         else f"{threshold} (queries whose best similarity is below it are unknown)"),
        ("confidence", "none: the index has no calibration for this k and vote"
         if provenance.get("confidence_calibrated_on") is None else "P(predicted label is right) by vote share, "
         f"calibrated leave-one-out on {provenance['confidence_calibrated_on']} of the index's references"),
        ("codec", _text(provenance.get("codec"))),
        ("codec weights digest", f"<code>{_text(provenance.get('weights_digest'))}</code>"),
        ("date partition", f"{_text(provenance.get('date'))} ({_text(provenance.get('partition'))})"),
        ("counts", f"{summary['queries']} queries, {summary['labelled']} labelled, {summary['unknown']} unknown, "
                   f"{summary['parts']} parts"),
        ("latentsweep", f"{_text(provenance.get('latentsweep'))}, finished {_text(provenance.get('finished'))}"),
    ]
    rows = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in items)
    return f'<h2>Provenance</h2><table class="kv" id="provenance">{rows}</table>'


def _metric_columns(values: dict) -> list[tuple[str, str]]:
    """(key, header) of the metrics present: the paper's Top-1, Prec.@k, mAP@k and Top-1 Type, then
    the vote accuracy and the mAP divided by all relevant references, each under its own name."""
    precision, average = precision_name(values), map_name(values)
    columns = [("top1", "Top-1 (nearest neighbour)"),
               (precision, f"Prec.@{at_k(precision)}" if precision else ""),
               (average, f"mAP@{at_k(average)}" if average else ""),
               ("type_top1", "Top-1 Type (nearest neighbour)"), ("vote_accuracy", "Vote accuracy"),
               ("map_full", "mAP full (/ all relevant)")]
    return [(key, header) for key, header in columns if key and key in values]


def _table(title: str, key: str, section: dict) -> str:
    columns = _metric_columns(next(iter(section.values()), {}))
    rows = "".join(
        f"<tr><td>{html.escape(str(name))}</td>" + "".join(f"<td>{v[c]:.3f}</td>" for c, _ in columns)
        + f"<td>{v['queries']}</td></tr>" for name, v in section.items())
    header = "".join(f"<th>{h}</th>" for _, h in columns)
    return f"<h3>{html.escape(title)}</h3><table><tr><th>{key}</th>{header}<th>queries</th></tr>{rows}</table>"


def _metrics(metrics: dict, summary: dict) -> list[str]:
    overall = metrics["overall"]
    k = metrics.get("map_truncated_at")
    precision = precision_name(overall)
    cards = [(overall.get("vote_accuracy"), "vote accuracy", "predicted_label (the k-NN vote) = label"),
             (overall["top1"], "Top-1 (nearest neighbour)", "the nearest reference's label = label")]
    if precision:
        cards.append((overall[precision], f"Prec.@{at_k(precision)}",
                      "share of the k neighbours with the query's label"))
    average = map_name(overall)
    if average:
        cards.append((overall[average], f"mAP@{at_k(average)}",
                      f"AP over the top {at_k(average)}, divided by the hits found there (the paper's)"))
    cards.append((overall.get("map_full"), "mAP full", f"AP over the top {k} neighbours, divided by all relevant"))
    headline = "".join(f'<div class="card"><b>{value:.3f}</b><br>{name}<br><small>{note}</small></div>'
                       for value, name, note in cards if value is not None)
    per_label = {label: values.get("vote_accuracy", values["top1"]) for label, values in metrics["by_label"].items()}
    return [f"<h2 id=\"metrics\">Attribution of the {summary['labelled']} labelled queries (of {summary['queries']})</h2>",
            "<p>Only queries with a label are scored. The vote accuracy scores <code>predicted_label</code>, "
            "the label users act on; Top-1 scores the nearest neighbour alone.</p>",
            f'<div class="cards">{headline}</div>',
            _table("Overall", "set", {"all": overall}),
            _table("By family (Table 2)", "Type", metrics["by_family"]) if metrics["by_family"] else "",
            _table("By label (Table 3)", "Model", metrics["by_label"]),
            f'<img src="{bars_figure(per_label, "vote accuracy per label")}">',
            f"<h2>Confusion</h2><p>Rows: the true label; columns: "
            f"{html.escape(metrics.get('confusion_of', 'predicted_label (k-NN vote)'))}.</p>"
            f'<img src="{confusion_figure(metrics["confusion"], metrics.get("confusion_of", "predicted_label (k-NN vote)"))}">']


def _confidence_order(rows: dict) -> list[int]:
    """Row positions, least confident first: unknown and uncalibrated rows (NULL confidence), then by
    the calibrated confidence, then by top score; ties by URI: a stable order."""
    import math

    def finite(value) -> float:
        return value if value is not None and math.isfinite(value) else float("-inf")

    return sorted(range(len(rows["uri"])), key=lambda i: (finite(rows["confidence"][i]), finite(rows["top_score"][i]),
                                                          rows["uri"][i]))


def _query_table(rows: dict, order: list[int], total: int) -> str:
    shown = order[:TABLE_ROWS]
    labelled = any(label is not None for label in rows["label"])
    predicted = sorted({label for label in rows["predicted_label"] if label is not None})
    headers = [("file", "text"), ("verdict", "text"), ("predicted label", "text"), ("predicted family", "text"),
               ("vote share", "num"), ("confidence", "num"), ("top score", "num"), ("unknown", "text"),
               ("declared", "text"), ("conflict", "text")]
    if labelled:
        headers.append(("true label", "text"))
    body = []
    for i in shown:
        uri, label, guess = rows["uri"][i], rows["label"][i], rows["predicted_label"][i]
        score, confidence = rows["top_score"][i], rows["confidence"][i]
        conflict = rows["declared_conflict"][i]
        cells = [f'<td class="file" title="{html.escape(uri)}">{html.escape(_basename(uri))}</td>',
                 f"<td>{_text(rows['verdict'][i])}</td>",
                 f"<td>{_text(guess)}</td>", f"<td>{_text(rows['predicted_family'][i])}</td>",
                 f'<td data-v="{rows["vote_share"][i] or 0:.6f}">{_number(rows["vote_share"][i])}</td>',
                 f'<td data-v="{-9 if confidence is None else confidence:.6f}">{_number(confidence)}</td>',
                 f'<td data-v="{score if score is not None and abs(score) != float("inf") else -9:.6f}">'
                 f"{_number(score)}</td>", f"<td>{'yes' if rows['unknown'][i] else ''}</td>",
                 f"<td>{_declared(rows, i)}</td>",
                 f'<td title="{html.escape(conflict or "")}">{"yes" if conflict else ""}</td>']
        if labelled:
            cells.append(f"<td>{_text(label)}</td>")
        miss = ' class="miss"' if label is not None and guess != label else ""
        body.append(f'<tr{miss} data-predicted="{html.escape(guess or "")}" '
                    f'data-unknown="{1 if rows["unknown"][i] else 0}" data-verdict="{rows["verdict"][i] or ""}" '
                    f'data-conflict="{1 if conflict else 0}">{"".join(cells)}</tr>')
    if total > len(shown):
        statement = (f"The table holds the {len(shown):,} least confident of the {total:,} queries (lowest "
                     f"confidence first); all {total:,} are in the Parquet parts.")
    else:
        statement = f"All {total:,} queries, least confident (unknown, then lowest confidence) first."
    options = "".join(f'<option value="{html.escape(label)}">{html.escape(label)}</option>' for label in predicted)
    verdicts = "".join(f'<option value="{name}">{name}</option>' for name in VERDICTS)
    controls = (f'<p class="controls"><label>verdict <select id="filter-verdict"><option value="">all</option>'
                f'{verdicts}</select></label> <label>predicted label <select id="filter-predicted"><option value="">all'
                f'</option>{options}</select></label> <label><input type="checkbox" id="filter-unknown"> unknown only'
                f'</label> <label><input type="checkbox" id="filter-conflict"> declared/attributed conflicts only'
                f'</label> <span id="shown">{len(shown)}</span> of {len(shown)} rows shown. Click a header to sort.</p>')
    head = "".join(f'<th data-type="{kind}">{name}</th>' for name, kind in headers)
    return (f'<h2 id="queries">Queries</h2><p id="table-statement">{statement}'
            + (" Rows whose vote differs from the true label are tinted." if labelled else "") + "</p>"
            + controls + f'<table id="query-table"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


SCRIPT = """<script>
(function () {
  var table = document.getElementById('query-table');
  if (!table) return;
  var body = table.tBodies[0], select = document.getElementById('filter-predicted'),
      unknown = document.getElementById('filter-unknown'), shown = document.getElementById('shown'),
      verdict = document.getElementById('filter-verdict'), conflict = document.getElementById('filter-conflict');
  function apply() {
    var label = select.value, only = unknown.checked, wanted = verdict.value, flagged = conflict.checked, count = 0;
    Array.prototype.forEach.call(body.rows, function (row) {
      var visible = (!label || row.dataset.predicted === label) && (!only || row.dataset.unknown === '1')
                    && (!wanted || row.dataset.verdict === wanted) && (!flagged || row.dataset.conflict === '1');
      row.hidden = !visible;
      if (visible) count++;
    });
    shown.textContent = count;
  }
  function fromHash() {
    var wanted = new URLSearchParams(location.hash.slice(1));
    select.value = wanted.get('predicted') || '';
    if (select.value !== (wanted.get('predicted') || '')) select.value = '';
    verdict.value = wanted.get('verdict') || '';
    if (verdict.value !== (wanted.get('verdict') || '')) verdict.value = '';
    unknown.checked = wanted.get('unknown') === '1';
    conflict.checked = wanted.get('conflict') === '1';
    apply();
  }
  function toHash() {
    var state = new URLSearchParams();
    if (select.value) state.set('predicted', select.value);
    if (unknown.checked) state.set('unknown', '1');
    if (verdict.value) state.set('verdict', verdict.value);
    if (conflict.checked) state.set('conflict', '1');
    history.replaceState(null, '', '#' + state.toString());
    apply();
  }
  [select, unknown, verdict, conflict].forEach(function (control) { control.addEventListener('change', toHash); });
  window.addEventListener('hashchange', fromHash);
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, column) {
    th.addEventListener('click', function () {
      var ascending = th.dataset.dir !== 'asc', numeric = th.dataset.type === 'num';
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (o) { delete o.dataset.dir; });
      th.dataset.dir = ascending ? 'asc' : 'desc';
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[column], y = b.cells[column];
        var order = numeric ? parseFloat(x.dataset.v) - parseFloat(y.dataset.v)
                            : x.textContent.localeCompare(y.textContent);
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
  fromHash();
})();
</script>"""


def _sample_keys(uris: list[str]) -> np.ndarray:
    """A seeded pseudo-random key per query, a function of its URI alone: the strips' random queries
    are those of smallest key, so a part's candidates (:func:`candidates`) always hold the night's."""
    return np.array([int.from_bytes(hashlib.sha256(f"{STRIP_SEED}:{uri}".encode()).digest()[:8], "big")
                     for uri in uris], dtype=np.uint64)


def _sample(order: list[int], keys: np.ndarray) -> tuple[list[int], list[int]]:
    """The strips' sample: the least confident queries, then the others of smallest key."""
    least = order[:STRIPS_LEAST_CONFIDENT]
    rest = order[STRIPS_LEAST_CONFIDENT:]
    drawn = set(sorted(rest, key=lambda i: keys[i])[:STRIPS_RANDOM])
    return least, [i for i in rest if i in drawn]


def _review_order(rows: dict, order: list[int]) -> list[int]:
    """The rows to route to an expert, conflicts first, then ``uncertain`` ones, each least confident
    first (``order``)."""
    flagged = [i for i in order if rows["declared_conflict"][i] is not None]
    uncertain = [i for i in order if rows["verdict"][i] == "uncertain" and rows["declared_conflict"][i] is None]
    return flagged + uncertain


def is_review(table: pa.Table) -> pa.Array:
    """Which rows of a results table go to the review list: ``uncertain`` or flagged by a conflict."""
    return pc.or_(pc.fill_null(pc.equal(table.column("verdict"), "uncertain"), False),
                  table.column("declared_conflict").is_valid())


def candidates(results: pa.Table) -> pa.Table:
    """The rows of ``results`` a report can show, whatever other rows the night holds: the
    :data:`TABLE_ROWS` least confident, the first :data:`TABLE_ROWS` conflicts, and the rows the strips
    and the review list could draw (the least confident, those of smallest key, the first review rows),
    only these with their neighbours. Candidates of candidates are the same
    rows, so a sweep keeps each part's candidates and reduces them as parts are merged: the driver
    never holds a night's results."""
    rows = results.select(list(CANDIDATE_COLUMNS)).to_pydict()
    order = _confidence_order(rows)
    keys = _sample_keys(rows["uri"])
    keyed = np.argsort(keys, kind="stable")[:STRIPS_LEAST_CONFIDENT + STRIPS_RANDOM].tolist()
    review = _review_order(rows, order)
    strips = set(order[:STRIPS_LEAST_CONFIDENT]) | set(keyed) | set(review[:REVIEW_STRIPS])
    conflicts = [i for i in order if rows["declared_conflict"][i] is not None][:TABLE_ROWS]
    keep = sorted(set(order[:TABLE_ROWS]) | set(conflicts) | strips)
    chosen = results.select(list(CANDIDATE_COLUMNS) + list(NEIGHBOUR_COLUMNS)).take(pa.array(keep, pa.int64()))
    mask = pa.array([i in strips for i in keep])
    for name in NEIGHBOUR_COLUMNS:
        column = chosen.column(name)
        chosen = chosen.set_column(chosen.schema.get_field_index(name), name,
                                   pc.if_else(mask, column, pa.nulls(len(keep), column.type)))
    return chosen


def _thumbnails(sample: list[dict]) -> dict[str, str | None]:
    """Thumbnails of the queries of ``sample`` and of their neighbours, read in parallel."""
    uris = {row["uri"] for row in sample} | {uri for row in sample for uri in row["neighbor_uris"] or [] if uri}
    with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 4) * 2)) as pool:
        names = sorted(uris)
        return dict(zip(names, pool.map(thumbnail, names)))


def _review(results, rows: dict, order: list[int], total: int, needing: int | None = None) -> str:
    """The rows to route to an expert (conflicts first, then ``uncertain``), each with its evidence;
    ``needing``: how many the night holds (the page may hold fewer)."""
    review = _review_order(rows, order)
    needing = len(review) if needing is None else needing
    if not review:
        return '<h2 id="review">Review list</h2><p id="review-statement">No query needs review.</p>'
    shown = review[:REVIEW_STRIPS]
    sample = results.take(shown).select(["uri", "neighbor_uris", "neighbor_labels", "neighbor_scores"]).to_pylist()
    pictures = _thumbnails(sample)
    blocks = []
    for i, row in zip(shown, sample):
        families = rows["evidence_features"][i] or []
        calls = "".join(f"<li>{_text(name)}: {_text(label)} ({_number(score, 2)})</li>" for name, label, score in
                        zip(families, rows["evidence_labels"][i] or [], rows["evidence_confidence"][i] or []))
        facts = [f"<li>verdict <b>{_text(rows['verdict'][i])}</b>: {_text(rows['verdict_reason'][i])}</li>",
                 f"<li>index: {_text(rows['predicted_label'][i])} ({_number(rows['confidence'][i], 2)})</li>", calls]
        if rows["declared_by"][i] is not None:
            facts.append(f"<li>declared: {_declared(rows, i)}</li>")
        if rows["declared_conflict"][i] is not None:
            facts.append(f"<li><b>conflict</b>: {_text(rows['declared_conflict'][i])}</li>")
        query = pictures.get(row["uri"])
        image = f'<img src="{query}">' if query else '<div class="missing"></div>'
        cells = [f"<figure>{image}<figcaption>{html.escape(_basename(row['uri']))}</figcaption></figure>"]
        for uri, label, score in zip(row["neighbor_uris"] or [], row["neighbor_labels"] or [], row["neighbor_scores"] or []):
            picture = pictures.get(uri)
            image = f'<img src="{picture}">' if picture else '<div class="missing"></div>'
            cells.append(f"<figure>{image}<figcaption>{_text(label)}<br>{_number(score)}</figcaption></figure>")
        blocks.append(f'<div class="review"><ul>{"".join(facts)}</ul><div class="evidence">{"".join(cells)}</div></div>')
    statement = (f"{needing:,} of the {total:,} queries need review (all of them are in <code>review.parquet</code>); "
                 f"the first {len(shown)}, conflicts first, with their evidence.")
    return f'<h2 id="review">Review list</h2><p id="review-statement">{statement}</p>' + "".join(blocks)


def _strips(results, order: list[int], families: dict[str, str], total: int) -> str:
    least, drawn = _sample(order, _sample_keys(results.column("uri").to_pylist()))
    sample = results.take(least + drawn).select(["uri", "label", "predicted_label", "vote_share",
                                                  "neighbor_uris", "neighbor_labels", "neighbor_scores"]).to_pylist()
    pictures = _thumbnails(sample)
    blocks, rendered, judged, neutral = {"least": [], "random": []}, {"least": 0, "random": 0}, False, False
    for group, row in [("least", r) for r in sample[:len(least)]] + [("random", r) for r in sample[len(least):]]:
        query = pictures.get(row["uri"])
        if query is None:
            continue
        label = row.get("label")
        caption = (f"{html.escape(_basename(row['uri']))}<br>predicted {_text(row['predicted_label'])} "
                   f"({_number(row['vote_share'], 2)})" + (f"<br>label {_text(label)}" if label is not None else ""))
        cells = [f'<figure><img src="{query}" style="border:3px solid #333" title="{html.escape(row["uri"])}">'
                 f"<figcaption>query<br>{caption}</figcaption></figure>"]
        for uri, neighbour, score in zip(row["neighbor_uris"] or [], row["neighbor_labels"] or [],
                                         row["neighbor_scores"] or []):
            if label is None:
                colour, verdict, neutral = NEUTRAL, "query has no label", True
            else:
                judged = True
                verdict = ("label" if neighbour == label else
                           "family" if families.get(neighbour) is not None and families.get(neighbour) == families.get(label)
                           else "wrong")
                colour = FRAME[verdict]
            picture = pictures.get(uri)
            image = f'<img src="{picture}"' if picture else '<div class="missing"'
            end = "" if picture else "</div>"
            cells.append(f'<figure>{image} style="border:3px solid {colour}" title="{html.escape(verdict)}">{end}'
                         f"<figcaption>{_text(neighbour)}<br>{_number(score)}</figcaption></figure>")
        blocks[group].append(f'<div class="strip">{"".join(cells)}</div>')
        rendered[group] += 1
    strips = rendered["least"] + rendered["random"]
    statement = (f"Neighbour strips for {strips} of {total} queries: the {rendered['least']} least confident and "
                 f"{rendered['random']} chosen at random (seed {STRIP_SEED}).")
    unreachable = len(least) + len(drawn) - strips
    if unreachable:
        statement += f" {unreachable} sampled queries are left out: their images are not reachable from here."
    if not strips:
        return f'<h2>Nearest neighbours</h2><p id="strip-statement">{statement}</p>'
    legend = []
    if judged:
        legend += [f'<span style="border:3px solid {c};padding:0 4px">{n}</span>' for n, c in FRAME.items()]
    if neutral:
        legend.append(f'<span style="border:3px solid {NEUTRAL};padding:0 4px">query has no label</span>')
    parts = [f'<h2>Nearest neighbours</h2><p id="strip-statement">{statement}</p><p>Frames: {" ".join(legend)}</p>']
    if blocks["least"]:
        parts.append(f"<h3>The {rendered['least']} least confident</h3>" + "".join(blocks["least"]))
    if blocks["random"]:
        parts.append(f"<h3>{rendered['random']} chosen at random</h3>" + "".join(blocks["random"]))
    return "".join(parts)


def predicted_counts(labels) -> dict[str, int]:
    """Queries per predicted label (NULL shown as a dash)."""
    counts: dict[str, int] = {}
    for label in labels:
        counts[label or MISSING] = counts.get(label or MISSING, 0) + 1
    return counts


STYLE = ("body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}"
         "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f0f0f0}"
         "table.kv th,table.kv td{text-align:left}#query-table th{cursor:pointer}"
         "#query-table td.file{text-align:left;max-width:28em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}"
         "#query-table tr.miss{background:#fdecea}th[data-dir=asc]:after{content:' \\25B2'}"
         "th[data-dir=desc]:after{content:' \\25BC'}.cards{display:flex;gap:12px;margin:8px 0}"
         ".card{border:1px solid #ccc;padding:8px 14px;text-align:center}.card b{font-size:22px}"
         ".strip,.evidence{display:flex;gap:4px;margin:6px 0}figure{margin:0;text-align:center;font-size:10px;max-width:96px}"
         ".missing{width:72px;height:72px;background:#eee}.review{border-top:1px solid #ddd;margin:8px 0}")


def render(results, summary: dict, provenance: dict, families: dict[str, str],
           predicted: dict[str, int] | None = None) -> bytes:
    """The report page of a sweep partition from its results (every part, or their :func:`candidates`
    with ``predicted``, the night's count of queries per predicted label), its summary and its
    provenance."""
    rows = results.select(list(CANDIDATE_COLUMNS)).to_pydict()
    order = _confidence_order(rows)
    total = len(order) if predicted is None else sum(predicted.values())
    date = provenance.get("date") or ""
    sections = [f"<h1>latentsweep sweep report {html.escape(date)}</h1><p>{html.escape(summary['out'])}</p>",
                _verdicts(summary), _review(results, rows, order, total, summary.get("review")),
                _provenance(provenance, summary)]
    if summary.get("metrics") and summary.get("labelled"):
        sections += _metrics(summary["metrics"], summary)
    predicted = predicted_counts(rows["predicted_label"]) if predicted is None else predicted
    if predicted:
        sections.append(f'<h2>Predicted labels</h2><img src="{bars_figure(dict(sorted(predicted.items())), "queries per predicted label")}">')
    sections.append(_query_table(rows, order, total))
    sections.append(_strips(results, order, families, total))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>latentsweep report "
            f"{html.escape(date)}</title><style>{STYLE}</style></head><body>"
            + "".join(sections) + SCRIPT + "</body></html>")
    return page.encode()
