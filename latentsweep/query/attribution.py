"""What an index says of a table of query rows: the k-NN vote, its calibrated confidence, the verdict,
the neighbours, and what each query file declares about itself. One code path for the sweep's query
actors and for ``latentsweep attribute`` (a few files, in-process): the same rows either way.

Other descriptor families can be asked too (``evidence``: indices of the same references built on
other features); a query is ``attributed`` only when they vote the label the index votes
(:mod:`latentsweep.query.verdict`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from latentsweep import provenance, schema
from latentsweep.decision import calibration, vote
from latentsweep.index import reader
from latentsweep.query import verdict


class Attribution:
    """Attributes query rows with ``engine`` (a :class:`~latentsweep.query.actor.QueryEngine`) and the
    vote ``settings`` (k, weighted, open_set_threshold, attribute_at), asking ``evidence`` engines too."""

    def __init__(self, engine, settings: dict, evidence: list | None = None):
        self.engine, self.settings, self.evidence = engine, settings, evidence or []
        self.voters = [_Voter(item) for item in [engine, *self.evidence]]

    def columns(self) -> list[str]:
        """The feature columns every engine asked reads from the query rows."""
        return list(dict.fromkeys(column for engine in [self.engine, *self.evidence]
                                  for column in engine.manifest.columns))

    def results(self, table: pa.Table, uri: str) -> pa.Table:
        """The result rows of ``table`` (the query rows of file ``uri``: id, uri, label, family, the
        declared columns and every engine's feature columns), built from arrays: no Python object
        per query or neighbour, but for the few rows whose verdict needs words."""
        k, weighted = self.settings["k"], self.settings["weighted"]
        metadata = ["id", "uri", "label", "family", *schema.DECLARED_COLUMNS]
        calls = []
        for voter in self.voters:
            batch = reader.batch_of(table, list(voter.engine.manifest.columns), metadata, uri)
            calls.append(voter.vote(batch.vectors, k, weighted, self.settings["open_set_threshold"]))
        main = calls[0]
        confidence = main.confidence
        disagreement = _disagreement(main, calls[1:]) if calls[1:] else None
        decided, reason = verdict.decide(main.votes.unknown, confidence,
                                         self.settings.get("attribute_at", verdict.ATTRIBUTE_AT), disagreement)
        meta = table.select(metadata)
        labels, families = main.labels(), main.families()
        conflicts = _conflicts(meta, labels, families, decided)
        columns = {
            "id": meta.column("id"), "uri": meta.column("uri"),
            "predicted_label": pa.array(labels, pa.string()), "predicted_family": pa.array(families, pa.string()),
            "vote_share": pa.array(main.votes.share.astype(np.float32)),
            "top_score": pa.array(main.votes.top_score.astype(np.float32)),
            "confidence": (pa.array(confidence.astype(np.float32), mask=main.votes.unknown) if confidence is not None
                           else pa.nulls(len(main.votes.unknown), pa.float32())),
            "unknown": pa.array(main.votes.unknown),
            "neighbor_ids": _lists(pa.array(main.ids.reshape(-1)), main.ids.shape),
            "neighbor_labels": _lists(pa.array(main.neighbour_labels().reshape(-1), pa.string()), main.ids.shape),
            "neighbor_scores": _lists(pa.array(main.scores.reshape(-1).astype(np.float32)), main.ids.shape),
            "neighbor_uris": _lists(main.references.uri_array(main.ids), main.ids.shape),
            "label": meta.column("label"), "family": meta.column("family"),
            "verdict": pa.array(decided, pa.string()), "verdict_reason": pa.array(reason, pa.string()),
            **{name: meta.column(name) for name in schema.DECLARED_COLUMNS},
            "declared_conflict": pa.array(conflicts, pa.string()),
            "evidence_features": _repeat([call.features for call in calls[1:]], table.num_rows, pa.string()),
            "evidence_labels": _per_query([call.labels() for call in calls[1:]], table.num_rows, pa.string()),
            "evidence_confidence": _per_query([call.confidence_or_nan() for call in calls[1:]], table.num_rows,
                                              pa.float32()),
        }
        return pa.table(columns, schema=schema.RESULT_SCHEMA)


class _Voter:
    """One engine's labels by code, ready to vote."""

    def __init__(self, engine):
        self.engine = engine
        names = engine.references.label_names
        self.predicted = np.array(names + [vote.UNKNOWN], dtype=object)  # by code; -1: unknown
        self.families = np.array([engine.families.get(name) for name in names] + [None], dtype=object)

    def vote(self, vectors: np.ndarray, k: int, weighted: bool, threshold: float | None) -> "_Call":
        scores, ids = self.engine.search_ids(vectors, k)
        codes = self.engine.references.codes(ids)
        votes = vote.votes(codes, scores, weighted, threshold)
        confidence = calibration.confidence(self.engine.manifest.confidence, k, weighted, votes.share)
        return _Call(self, scores, ids, codes, votes, confidence)


class _Call:
    def __init__(self, voter: _Voter, scores, ids, codes, votes, confidence):
        self.voter, self.scores, self.ids, self.codes, self.votes, self.confidence = (
            voter, scores, ids, codes, votes, confidence)
        self.features = voter.engine.manifest.features
        self.references = voter.engine.references

    def labels(self) -> np.ndarray:
        return self.voter.predicted[self.votes.codes]

    def families(self) -> np.ndarray:
        return self.voter.families[self.votes.codes]

    def neighbour_labels(self) -> np.ndarray:
        return self.references.names_of(self.codes)

    def confidence_or_nan(self) -> np.ndarray:
        if self.confidence is None:
            return np.full(len(self.votes.codes), np.nan, np.float32)
        return np.where(self.votes.unknown, np.nan, self.confidence).astype(np.float32)


def _disagreement(main: _Call, others: list[_Call]) -> np.ndarray:
    """Per query, the other families that voted another label than ``main`` (or unknown), in words."""
    said, theirs = main.labels(), [(call.features, call.labels()) for call in others]
    texts = np.full(len(said), None, dtype=object)
    for i in range(len(said)):
        against = [f"{features} votes {labels[i]}" for features, labels in theirs if labels[i] != said[i]]
        if against:
            texts[i] = f"{main.features} votes {said[i]}, " + ", ".join(against)
    return texts


def _conflicts(meta: pa.Table, labels: np.ndarray, families: np.ndarray, decided: np.ndarray) -> list:
    """Per query, the flag of :func:`latentsweep.provenance.conflict` where its file declared anything."""
    declared_by = meta.column("declared_by").to_pylist()
    flags = [None] * meta.num_rows
    rows = [i for i, by in enumerate(declared_by) if by is not None]
    if not rows:
        return flags
    wanted = meta.select(list(schema.DECLARED_COLUMNS)).take(pa.array(rows)).to_pylist()
    for i, columns in zip(rows, wanted):
        declaration = provenance.from_columns(columns)
        flags[i] = provenance.conflict(declaration, labels[i], verdict.is_generator(labels[i], families[i]),
                                       confident=decided[i] == verdict.ATTRIBUTED)
    return flags


def _lists(values: pa.Array, shape: tuple[int, int]) -> pa.ListArray:
    """``values`` (row-major, ``shape[0]`` rows of ``shape[1]``) as one list per row."""
    rows, k = shape
    return pa.ListArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32) * k), values)


def _repeat(values: list, rows: int, kind: pa.DataType) -> pa.ListArray:
    """The same list ``values`` on every row."""
    flat = pa.array(values * rows, kind)
    return _lists(flat, (rows, len(values)))


def _per_query(columns: list[np.ndarray], rows: int, kind: pa.DataType) -> pa.ListArray:
    """One list per row: row i holds ``column[i]`` of each column, in order (NaN floats are NULL)."""
    if not columns:
        return _lists(pa.array([], kind), (rows, 0))
    stacked = np.stack(columns, axis=1).reshape(-1)
    mask = np.isnan(stacked) if stacked.dtype.kind == "f" else None
    return _lists(pa.array(stacked, kind, mask=mask), (rows, len(columns)))
