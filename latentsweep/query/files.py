"""``latentsweep attribute FILE...``: a few files answered now, in this process, without Ray or a
cluster. The files are read, decoded and described by the ingest's own code (the declared provenance
included) and attributed by the sweep's (:class:`~latentsweep.query.attribution.Attribution`): a file
gets the row a sweep would give it, verdict and scores alike."""

from __future__ import annotations

import pyarrow as pa

from latentsweep.errors import UsageError


def embed_settings(manifest, weights: str | None = None, adapters: str | None = None):
    """The :class:`~latentsweep.codec.settings.EmbedSettings` that put images in the index's space: its
    codec weights and adapters, fp16 where its rows are, and the smallest feature set holding its
    columns. Other weights or adapters than the index's are refused."""
    from latentsweep.codec import weights as codec_weights
    from latentsweep.codec.settings import EmbedSettings
    from latentsweep.ingest.run import HALF_SUFFIX
    from latentsweep.schema import DESCRIPTORS, FEATURE_SETS

    half = manifest.weights_digest.endswith(HALF_SUFFIX)  # an index of fp16 rows: queries in fp16 too
    space = manifest.weights_digest.removesuffix(HALF_SUFFIX)
    digest = codec_weights.digest(weights, adapters)
    if digest != space:
        raise UsageError(f"the index was built with {describe_space(manifest.weights_digest)}, these are "
                         f"{describe_space(digest)}: pass the index's checkpoint with --weights and its adapters "
                         "with --adapters")
    tensors = set(manifest.columns) - set(DESCRIPTORS)
    feature_set = next(name for name in ("2lat", "selected", "all") if tensors <= set(FEATURE_SETS[name]))
    return EmbedSettings(weights, feature_set, manifest.pooling, half=half, adapters=adapters)


def describe_space(weights_digest: str) -> str:
    """A weights digest in words: 'codec weights 1a2b3c4d5e6f... with adapters ...' or without."""
    from latentsweep.ingest.run import HALF_SUFFIX

    space = weights_digest.removesuffix(HALF_SUFFIX)
    codec, _, adapters = space.partition("+")
    return (f"codec weights {codec[:12]}... " + (f"with adapters {adapters}" if adapters else "without adapters")
            + (" in fp16" if space != weights_digest else ""))


def attribute(files: list[str], index: str, settings: dict, evidence: list[str] | None = None,
              weights: str | None = None, adapters: str | None = None) -> tuple[pa.Table, dict[str, str]]:
    """The result rows of ``files`` (local paths or ``s3://`` URIs) against ``index``, and the files that
    could not be read or decoded with the reason (``{uri: reason}``). ``settings``: the vote's (k,
    weighted, open_set_threshold, attribute_at); an open-set threshold of None takes the index's."""
    import os

    from latentsweep.codec.layout import CODEC_NAME
    from latentsweep.index.manifest import load
    from latentsweep.ingest.decode import fetch
    from latentsweep.ingest.encode import Encoder
    from latentsweep.ingest.run import HALF_SUFFIX
    from latentsweep.ingest.write import embedding_table
    from latentsweep.query.actor import QueryEngine
    from latentsweep.query.attribution import Attribution
    from latentsweep.schema import stable_id

    manifest = load(index)
    evidence_manifests = [load(uri) for uri in evidence or []]
    embed = embed_settings(manifest, weights, adapters)
    settings = dict(settings)
    if settings.get("open_set_threshold") is None:
        settings["open_set_threshold"] = manifest.open_set_threshold
    uris = [uri if "://" in uri else os.path.abspath(uri) for uri in files]
    fetched = [fetch(uri) for uri in uris]
    failed = {item.uri: f"{item.error_type}: {item.message}" for item in fetched if item.error_type}
    encoder = Encoder(embed)
    vectors = encoder.encode(fetched)
    failed.update({item.uri: f"{item.error_type}: {item.message}" for item in fetched
                   if item.error_type and item.uri not in failed})
    good = [i for i, item in enumerate(fetched) if not item.error_type]
    rows = pa.table({"id": pa.array([stable_id(fetched[i].uri) for i in good], pa.int64()),
                     "uri": pa.array([fetched[i].uri for i in good], pa.string()),
                     "version": pa.nulls(len(good), pa.string()), "label": pa.nulls(len(good), pa.string()),
                     "family": pa.nulls(len(good), pa.string())})
    digest = encoder.embedder.weights_digest + (HALF_SUFFIX if embed.half else "")
    provenance = {"codec": CODEC_NAME, "weights_digest": digest, "feature_set": embed.feature_set,
                  "pooling": embed.pooling}
    table = embedding_table(rows, [fetched[i] for i in good], {name: values[good] for name, values in vectors.items()},
                            encoder.columns, provenance)
    for each in evidence_manifests:
        missing = [column for column in each.columns if column not in table.column_names]
        if missing:
            raise UsageError(f"an --evidence index needs {', '.join(missing)}, which the main index's embedding "
                             "settings do not make")
    engines = [QueryEngine(index, k=settings["k"])] + [QueryEngine(uri, use_gpu=False, k=settings["k"])
                                                       for uri in evidence or []]
    attribution = Attribution(engines[0], settings, engines[1:])
    return attribution.results(table, "the files given"), failed
