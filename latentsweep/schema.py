"""Every Parquet schema the stages exchange, versioned.

Stages meet only in files; this module is the contract. Each file carries its kind and version in
the Parquet key-value metadata (``latentsweep.schema = "embeddings/1"``) and readers call
:func:`check` before trusting a file, so an old or foreign file fails with a message that says what
is wrong instead of a KeyError deep in a stage.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from latentsweep.errors import UsageError

SCHEMA_KEY = "latentsweep.schema"
# embeddings/3: rows carry the input's ``version`` (so a rerun reuses them item by item) and what the
# file declares about its origin (DECLARED_FIELDS). errors/2 carry the version too.
# results/3: the verdict, the declared provenance and its conflict with the attribution.
# manifest/2: the ingest plan, one row group per shard, in parts of SHARDS_PER_PART shards.
VERSIONS = {"embeddings": 3, "errors": 2, "results": 3, "manifest": 2}


class SchemaError(UsageError):
    """A file is not the kind or version a stage expects."""


def tag(kind: str) -> dict[str, str]:
    return {SCHEMA_KEY: f"{kind}/{VERSIONS[kind]}"}


def check(schema: pa.Schema, kind: str, source: str) -> None:
    """Refuse ``schema`` unless it is ``kind`` at the version this code reads."""
    raw = (schema.metadata or {}).get(SCHEMA_KEY.encode())
    if raw is None:
        raise SchemaError(f"{source} is not a latentsweep {kind} file (no '{SCHEMA_KEY}' metadata)")
    found_kind, _, found_version = raw.decode().partition("/")
    if found_kind != kind:
        raise SchemaError(f"{source} holds {found_kind} rows, expected {kind}")
    if found_version != str(VERSIONS[kind]):
        raise SchemaError(f"{source} is {kind} schema version {found_version}; this latentsweep reads "
                          f"version {VERSIONS[kind]}: re-run the stage that wrote it with this version")


def stable_id(uri: str) -> int:
    """A stable signed int64 id from a URI: the first 8 bytes of its SHA-256.

    Ids are what FAISS stores (``add_with_ids``), so they must not depend on row positions, shard
    layout or the run: the same URI always gets the same id.
    """
    value = int.from_bytes(hashlib.sha256(uri.encode("utf-8")).digest()[:8], "big", signed=True)
    return 0 if value == -1 else value  # -1 is FAISS's "no result"


# Pooled-tensor columns: "<tensor>_<branch>", luma first, tensors in this fixed order.
BRANCHES = ("luma", "chroma")
TENSORS = ("y", "z", "z_hat", "psi", "mu", "scale", "residual_quant", "residual", "y_hat")
ALL_COLUMNS = tuple(f"{tensor}_{branch}" for branch in BRANCHES for tensor in TENSORS)
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "2lat": ("y_hat_luma", "y_hat_chroma"),
    "selected": ("y_hat_luma", "y_hat_chroma", "residual_luma", "residual_chroma",
                 "residual_quant_luma", "residual_quant_chroma"),
    "all": ALL_COLUMNS,
}

# Pixel-domain descriptors stored beside the pooled tensors (latentsweep.descriptors): column ->
# (dimension, version). The version travels in the column's field metadata; an index reads one version.
DESCRIPTORS: dict[str, tuple[int, str]] = {
    "fingerprint": (251, "2"),
    "residual_spectrum": (32, "1"),
    # learned filters + per-image self-description; the version names the shipped weights' SHA-256
    "self_description": (515, "1-wb4c077d71ac2782b"),
}

# Identity and provenance columns of an embedding row; one float32 column per pooled tensor follows.
EMBEDDING_FIELDS = [
    pa.field("id", pa.int64(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("sha256", pa.string()),
    pa.field("version", pa.string()),         # the input's ETag or mtime when it was read
    pa.field("label", pa.string()),
    pa.field("family", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("source", pa.string()),          # "image", "latents" (an exported .pt) or "bitstream" (.jai)
    pa.field("codec", pa.string()),           # e.g. "jpegai-bop"
    pa.field("weights_digest", pa.string()),  # sha256 of the codec weights, "reference" for .pt input
    pa.field("feature_set", pa.string()),     # which tensors were pooled: 2lat | selected | all
    pa.field("pooling", pa.string()),         # gap | gap+std
]

# What an input file declares about its own origin (latentsweep.provenance), read at ingest and carried
# into the sweep's results beside the attribution, never instead of it. NULL: nothing declared.
DECLARED_FIELDS = [
    pa.field("declared_generator", pa.string()),    # the software or generator the file names
    pa.field("declared_source_type", pa.string()),  # IPTC digital source type, e.g. trainedAlgorithmicMedia
    pa.field("declared_by", pa.string()),           # the strongest source: c2pa | xmp | png-text | exif
    pa.field("c2pa_state", pa.string()),            # C2PA validation: Invalid | Valid | Trusted
    pa.field("c2pa_signature_valid", pa.bool_()),
    pa.field("c2pa_trusted", pa.bool_()),           # the signer chains to a configured trust anchor
    pa.field("c2pa_hashes_match", pa.bool_()),
    pa.field("c2pa_failures", pa.string()),         # the validator's failure codes, comma-separated
    pa.field("declared_camera", pa.bool_()),        # the declaration says a camera captured it
    pa.field("provenance_note", pa.string()),       # what was wrong with the metadata, if anything
]
DECLARED_COLUMNS = tuple(field.name for field in DECLARED_FIELDS)

ERROR_SCHEMA = pa.schema([
    pa.field("id", pa.int64(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("version", pa.string()),
    pa.field("stage", pa.string()),           # read | decode | encode | ...
    pa.field("error_type", pa.string()),      # unreadable | truncated | not_image | too_large | too_small | ...
    pa.field("message", pa.string()),
], metadata=tag("errors"))


# An ingest output's shard list (DEST/shards.parquet, kind "manifest"): the shards of its current plan.
# Readers take DEST/embeddings/shard-NNNNN.parquet of these shards only, never a glob.
INGEST_SHARDS_FILE = "shards.parquet"
INGEST_PLAN_FILES = ("manifest", INGEST_SHARDS_FILE, "errors")  # not embeddings
# Written by an ingest that finished every shard of its plan, removed when a run starts: readers
# (index build, index add, sweep) take an ingest output only when it holds this record and its
# ``plan_sha256`` is the SHA-256 of the current DEST/shards.parquet.
INGEST_COMPLETE_FILE = "_COMPLETE.json"

# The folder of done markers in a stage's output: an ingest's DEST/_done/shard-NNNNN.json, a sweep
# partition's _done/part-....json. A marker is written last, so a run that stopped redoes what has none.
DONE_FOLDER = "_done"


def shard_name(shard_id: int) -> str:
    """The name of a shard's files: ``embeddings/shard-NNNNN.parquet``, ``errors/...``, ``_done/...``."""
    return f"shard-{shard_id:05d}"


# The ingest plan (DEST/manifest/part-NNNNN.parquet): every item with the shard it belongs to.
MANIFEST_SCHEMA = pa.schema([
    pa.field("id", pa.int64(), nullable=False),
    pa.field("shard", pa.int32(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("size", pa.int64()),
    pa.field("version", pa.string()),
    pa.field("label", pa.string()),
    pa.field("family", pa.string()),
], metadata=tag("manifest"))


def embedding_schema(tensor_dims: dict[str, int]) -> pa.Schema:
    """Embeddings schema for the vector columns ``{column: dimension}`` in their fixed order: pooled
    tensors, then descriptors (nullable: rows from ``.pt`` latents have no pixels to describe), each
    descriptor field tagged with its version."""
    fields = [pa.field(name, pa.list_(pa.float32(), dim), nullable=name in DESCRIPTORS,
                       metadata={"version": DESCRIPTORS[name][1]} if name in DESCRIPTORS else None)
              for name, dim in tensor_dims.items()]
    return pa.schema(EMBEDDING_FIELDS + DECLARED_FIELDS + fields, metadata=tag("embeddings"))


def descriptor_version(field: pa.Field) -> str | None:
    """The version a descriptor column was made with (None for pooled tensors and older files)."""
    return (field.metadata or {}).get(b"version", b"").decode() or None


def tensor_columns(schema: pa.Schema) -> dict[str, int]:
    """The pooled-tensor columns of an embeddings schema, ``{column: dimension}``, in file order."""
    return {field.name: field.type.list_size for field in schema
            if pa.types.is_fixed_size_list(field.type)}


RESULT_SCHEMA = pa.schema([
    pa.field("id", pa.int64(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("predicted_label", pa.string()),
    pa.field("predicted_family", pa.string()),
    pa.field("vote_share", pa.float32()),
    pa.field("top_score", pa.float32()),
    pa.field("confidence", pa.float32()),     # P(predicted_label is right), calibrated by the index; NULL if unknown
    pa.field("unknown", pa.bool_()),
    pa.field("neighbor_ids", pa.list_(pa.int64())),
    pa.field("neighbor_labels", pa.list_(pa.string())),
    pa.field("neighbor_scores", pa.list_(pa.float32())),
    pa.field("neighbor_uris", pa.list_(pa.string())),
    pa.field("label", pa.string()),           # the query's own label, where known
    pa.field("family", pa.string()),
    pa.field("verdict", pa.string()),         # attributed | uncertain | unknown (query/verdict.py)
    pa.field("verdict_reason", pa.string()),  # why not attributed, in words; NULL when attributed
    *DECLARED_FIELDS,
    pa.field("declared_conflict", pa.string()),  # the declaration disagrees with a confident attribution
    # other descriptor families asked (sweep --evidence): their features, votes and calibrated confidence
    pa.field("evidence_features", pa.list_(pa.string())),
    pa.field("evidence_labels", pa.list_(pa.string())),
    pa.field("evidence_confidence", pa.list_(pa.float32())),
], metadata=tag("results"))
