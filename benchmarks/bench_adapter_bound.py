"""How much attribution the analysis side could write into ``2lat`` within the adapters' guard: an oracle.

The SFMA adapters (``codec/adapters.py``) change only the analysis transforms, so all they can do for
``2lat`` (GAP of ``y_hat``) is move ``y`` before the quantiser, at the frozen decoder's price in PSNR and
rate. This bound separates the two halves of that job. An *oracle* encoder that is told each image's class
adds a class code to ``y``: a constant offset of ``amplitude`` x (the channel's standard deviation of GAP(y)
over the references) with a random sign per class, in the ``channels`` channels that cost least. It
measures what that written code is worth to ``2lat`` Top-1 (references z-scored, cosine 1-NN, as a Flat
index scores) and what it costs the unchanged decoder (PSNR, estimated rate).

A channel's cost: PSNR drop and rate ratio when only that channel is offset by one standard deviation, on
``--probe`` reference images; channels are ranked by ``drop / 0.5 dB + max(rate - 1, 0) / 5%`` (the
guard). Offsets, pricing and ranking are ``lab/latentsweep_lab/training/trace.py``'s, with which the trace
writer (since withdrawn) wrote a detected code where this oracle writes the true one. Corpus: the real-software TUNING split (``zoo/software.py``; references and queries with
different content seeds); the held-out split is never used. So if the oracle reaches the target within the
guard, what the adapters lack is detecting the formation, not a place to write it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

def corpus(root: Path, per_class: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    from PIL import Image

    from latentsweep_lab.zoo.software import SoftwareSettings, make_software_corpus

    make_software_corpus(root, SoftwareSettings("tuning", per_class, seed=seed))
    files = sorted(root.rglob("*.png"))
    return ([np.asarray(Image.open(path).convert("RGB")) for path in files],
            np.array([path.relative_to(root).parts[0] for path in files]))


class OracleCodec:
    """The shipped codec, run with a per-image offset added to ``y`` of both branches."""

    def __init__(self):
        from latentsweep.codec import weights

        self.model, _, _ = weights.load(None)
        self.model.eval()

    def run(self, images: list[np.ndarray], offsets: np.ndarray | None = None, batch: int = 16) -> dict:
        """``2lat`` vectors of ``images`` (``offsets``: (N, 256) added to y), GAP(y) of the same pass, their
        mean PSNR and bits per pixel."""
        import torch

        from latentsweep_lab.training.trace import pooled, quality, y_offset

        vectors, pooled_y, psnr, bpp = [], [], [], []
        with torch.inference_mode():
            for start in range(0, len(images), batch):
                rgb = torch.from_numpy(np.stack(images[start:start + batch])).permute(0, 3, 1, 2).float() / 255
                offset = (torch.zeros(len(rgb), 256) if offsets is None
                          else torch.from_numpy(offsets[start:start + batch]).float())
                with y_offset(self.model, offset):
                    exported = self.model.export(rgb)
                vectors.append(pooled(exported))
                pooled_y.append(pooled(exported, "y"))
                image_psnr, image_bpp = quality(self.model, rgb, exported)
                psnr.append(image_psnr)
                bpp.append(image_bpp)
        return {"vectors": torch.cat(vectors).numpy(), "y": torch.cat(pooled_y).numpy(),
                "psnr": torch.cat(psnr).mean().item(), "bpp": torch.cat(bpp).mean().item()}


def top1(references: np.ndarray, reference_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray) -> float:
    """Cosine 1-NN after the index's own transform (z-score by the references, L2-normalise)."""
    from latentsweep.index.scaler import Scaler

    scaler = Scaler.fit(references)
    nearest = (scaler.transform(queries) @ scaler.transform(references).T).argmax(1)
    return float((reference_labels[nearest] == query_labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-class", type=int, default=60, help="references per class (queries: 40)")
    parser.add_argument("--probe", type=int, default=16, help="reference images that price each channel")
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--amplitudes", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    args = parser.parse_args()
    import torch

    from latentsweep_lab.training.trace import channel_costs, cheapest

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench-adapter-bound-"))
    references, reference_labels = corpus(work / "reference", args.per_class, seed=0)
    queries, query_labels = corpus(work / "queries", 40, seed=1)
    codec = OracleCodec()
    base, base_queries = codec.run(references), codec.run(queries)
    spread = base["y"].std(axis=0, ddof=1)
    rows = [{"oracle": "none (the codec as shipped)", "channels": 0, "amplitude": 0.0,
             "top1_2lat": round(top1(base["vectors"], reference_labels, base_queries["vectors"], query_labels), 3),
             "psnr_delta_db": 0.0, "rate_ratio": 1.0}]

    probe = references[::max(1, len(references) // args.probe)][:args.probe]
    probe_rgb = torch.from_numpy(np.stack(probe)).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        order = cheapest(channel_costs(codec.model, probe_rgb, torch.from_numpy(spread).float()), len(spread))

    rng = np.random.default_rng(0)
    for count in args.channels:
        chosen = order[:count]
        codes = {label: rng.choice([-1.0, 1.0], count) for label in sorted(set(reference_labels))}
        for amplitude in args.amplitudes:
            def offsets(labels: np.ndarray) -> np.ndarray:
                out = np.zeros((len(labels), len(spread)))
                for row, label in enumerate(labels):
                    out[row, chosen] = amplitude * spread[chosen] * codes[label]
                return out

            written, written_queries = codec.run(references, offsets(reference_labels)), codec.run(
                queries, offsets(query_labels))
            rows.append({"oracle": "class code written into y", "channels": count, "amplitude": amplitude,
                         "top1_2lat": round(top1(written["vectors"], reference_labels, written_queries["vectors"],
                                                 query_labels), 3),
                         "psnr_delta_db": round(written["psnr"] - base["psnr"], 3),
                         "rate_ratio": round(written["bpp"] / base["bpp"], 3)})
            print(rows[-1], flush=True)
    report("adapter bound: what a class code written into y is worth to 2lat, and what it costs", rows,
           Path("benchmarks/results/adapter_bound.json"))


if __name__ == "__main__":
    main()
