"""The encoder actor: loads the codec once, turns decoded images (and exported latents) into pooled
vectors. One actor per GPU on GPU nodes; fractional CPUs on CPU-only machines."""

from __future__ import annotations

import numpy as np

from latentsweep.codec.embed import EmbedSettings


class EncodeActor:
    """Ray Data callable class: batch of decoded rows -> the same rows with vector columns."""

    def __init__(self, settings: EmbedSettings, torch_threads: int | None = None,
                 decode: dict | None = None):
        import torch

        from latentsweep.codec.embed import Embedder

        import ray

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.embedder = Embedder(settings)
        self.decode = decode  # read_and_decode arguments when decoding runs here (CPU-only pools)
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict) -> dict:
        if self.decode is not None:
            from latentsweep.ingest.decode import read_and_decode

            batch = read_and_decode(batch, **self.decode)
        count = len(batch["id"])
        errors = list(batch["error_type"])
        messages = list(batch["message"])
        vectors = {name: np.zeros((count, dim), np.float32) for name, dim in self.embedder.columns.items()}
        image_rows = [i for i in range(count) if not errors[i] and batch["source"][i] == "image"]
        if image_rows:
            try:
                pooled = self.embedder.embed([np.asarray(batch["image"][i]) for i in image_rows])
                for name, values in pooled.items():
                    vectors[name][image_rows] = values
            except Exception:  # one bad image must not sink its batch: retry one by one
                for i in image_rows:
                    self._embed_one(batch, i, vectors, errors, messages)
        for i in range(count):
            if not errors[i] and batch["source"][i] == "latents":
                self._pool_latents(batch["latents"][i], i, vectors, errors, messages)
        out = {name: batch[name] for name in ("id", "shard", "uri", "sha256", "width", "height", "source")}
        out["error_type"] = np.array(errors, dtype=object)
        out["message"] = np.array(messages, dtype=object)
        out["node"] = np.array([self.node] * count, dtype=object)  # for the summary, not written
        out.update(vectors)
        return out

    def _embed_one(self, batch, i, vectors, errors, messages) -> None:
        try:
            pooled = self.embedder.embed([np.asarray(batch["image"][i])])
            for name, values in pooled.items():
                vectors[name][i] = values[0]
        except Exception as error:
            errors[i], messages[i] = "encode_failed", f"{type(error).__name__}: {error}"

    def _pool_latents(self, data: bytes, i, vectors, errors, messages) -> None:
        from latentsweep.codec import pooling, reference

        try:
            tensors = reference.read(bytes(data))
            missing = [name for name in vectors if name not in tensors]
            if missing:
                raise reference.LatentFileError(
                    f"the file lacks {', '.join(missing)} needed by feature set "
                    f"{self.embedder.settings.feature_set!r}")
            for name in vectors:
                tensor = tensors[name]
                vectors[name][i] = pooling.pool(tensor, [tuple(tensor.shape[2:])],
                                                self.embedder.settings.pooling)[0].numpy()
        except reference.LatentFileError as error:
            errors[i], messages[i] = "bad_latents", str(error)
