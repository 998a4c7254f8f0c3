"""Index types: FAISS factory strings, inner product on L2-normalised vectors (= cosine).

``choose`` picks a type from the vector count and a memory budget the way autofaiss does, and says
why, with the memory arithmetic spelled out.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from latentsweep.errors import UsageError

FLAT_LIMIT = 1_000_000      # above this, exact search is slow enough that HNSW/IVF pay off
HNSW_LIMIT = 10_000_000
HNSW_M = 32
ID_BYTES = 8
POINTS_PER_CENTROID = 39    # FAISS's k-means warns below 39 training points per centroid
LADDER_STEPS = 6            # search params tried when recall is measured (default, then 2x, 4x, ...)


@dataclass(frozen=True)
class Choice:
    spec: str
    search_params: str  # FAISS ParameterSpace string, e.g. "nprobe=16"
    reasons: tuple[str, ...]


def flat_bytes(n: int, d: int) -> int:
    return n * (4 * d + ID_BYTES)


def hnsw_bytes(n: int, d: int, m: int = HNSW_M) -> int:
    # level 0 keeps 2M neighbour ids (4 bytes each); upper levels add about 1/M of that again
    return int(n * (4 * d + 2 * m * 4 * (1 + 1 / m) + ID_BYTES))


def ivfpq_bytes(n: int, d: int, nlist: int, m: int) -> int:
    return n * (m + ID_BYTES) + nlist * d * 4 + 256 * d * 4


def nlist_for(n: int) -> int:
    return int(min(65536, max(64, 2 ** round(math.log2(4 * math.sqrt(max(n, 1)))))))


def choose(n: int, d: int, budget_bytes: int) -> Choice:
    reasons = [f"{n:,} vectors of {d} dims, memory budget {budget_bytes / 2**30:.2f} GiB"]
    flat = flat_bytes(n, d)
    reasons.append(f"Flat needs n*(4d+8) = {flat / 2**30:.3f} GiB")
    if flat <= budget_bytes and n <= FLAT_LIMIT:
        reasons.append(f"fits and n <= {FLAT_LIMIT:,}: exact IndexFlatIP (the paper's choice)")
        return Choice("Flat", "", tuple(reasons))
    hnsw = hnsw_bytes(n, d)
    reasons.append(f"HNSW{HNSW_M} needs n*(4d+{2 * HNSW_M * 4}*(1+1/M)+8) = {hnsw / 2**30:.3f} GiB")
    if hnsw <= budget_bytes and n <= HNSW_LIMIT:
        reasons.append("fits: HNSW graph, no training, recall ~0.95+ at efSearch=128")
        return Choice(f"HNSW{HNSW_M}", "efSearch=128", tuple(reasons))
    nlist = nlist_for(n)
    for m in (64, 32, 16, 8, 4):
        if d % m == 0 and ivfpq_bytes(n, d, nlist, m) <= budget_bytes:
            reasons.append(f"IVF{nlist},PQ{m} needs n*(m+8)+nlist*4d+codebooks = "
                           f"{ivfpq_bytes(n, d, nlist, m) / 2**30:.3f} GiB: fits")
            return Choice(f"IVF{nlist},PQ{m}", default_search_params(f"IVF{nlist},PQ{m}"), tuple(reasons))
    raise UsageError(f"{n:,} vectors of {d} dims do not fit {budget_bytes / 2**30:.2f} GiB even as "
                     f"IVF{nlist},PQ4: raise --memory-budget or split the reference set")


def needs_training(spec: str) -> bool:
    return "IVF" in spec or "PQ" in spec


def is_exact(spec: str) -> bool:
    """Flat is exact; every other type (trained or graph) is approximate and has its recall measured."""
    return spec == "Flat"


def nlist_of(spec: str) -> int:
    """The number of inverted lists of an ``IVF<nlist>...`` spec (0 for other types)."""
    found = re.match(r"IVF(\d+)", spec)
    return int(found.group(1)) if found else 0


def _pq(spec: str) -> tuple[int, int] | None:
    """(m, bits) of the product quantizer in ``spec`` (``PQ32``, ``PQ16x4``), or None."""
    found = re.search(r"(?<![A-Za-z])PQ(\d+)(?:x(\d+))?", spec)
    return (int(found.group(1)), int(found.group(2) or 8)) if found else None


def centroids(spec: str) -> int:
    """The most centroids any k-means of ``spec`` trains: nlist for IVF, 2**bits per PQ sub-quantizer."""
    pq = _pq(spec)
    return max(nlist_of(spec), 2 ** pq[1] if pq else 0)


def min_train_points(spec: str) -> int:
    """FAISS's recommended training set: 39 points per centroid of the largest k-means (0: no training)."""
    return POINTS_PER_CENTROID * centroids(spec) if needs_training(spec) else 0


def index_bytes(spec: str, n: int, d: int) -> int:
    """Memory of an index of ``spec`` holding ``n`` vectors of ``d`` dims, with the formulas of
    :func:`choose` (ids 8 bytes each; IVF adds nlist centroids, PQ its 2**bits codebooks per
    sub-quantizer; SQ8 1 byte and SQ4 half a byte per dimension). Unknown types count as Flat."""
    nlist, pq = nlist_of(spec), _pq(spec)
    fixed = nlist * d * 4
    if spec.startswith("HNSW"):
        found = re.match(r"HNSW(\d+)", spec)
        return hnsw_bytes(n, d, int(found.group(1)) if found else HNSW_M)
    if pq:
        m, bits = pq
        return n * (math.ceil(m * bits / 8) + ID_BYTES) + fixed + 2**bits * d * 4
    per_dim = {"SQ8": 1.0, "SQ4": 0.5, "SQfp16": 2.0}
    for name, size in per_dim.items():
        if f",{name}" in spec:
            return int(n * (size * d + ID_BYTES)) + fixed
    return flat_bytes(n, d) + fixed


def default_search_params(spec: str) -> str:
    if spec.startswith("HNSW"):
        return "efSearch=128"
    nlist = nlist_of(spec)
    if nlist:
        return f"nprobe={min(nlist, max(8, nlist // 64))}"
    return ""


def search_ladder(spec: str) -> list[str]:
    """Search params to measure recall at, cheapest first: the default, then larger efSearch (HNSW) or
    nprobe (IVF, up to every list), ``LADDER_STEPS`` at most; types without a search knob: one entry."""
    first = default_search_params(spec)
    if not first:
        return [first]
    name, value = first.split("=")
    top = nlist_of(spec) if name == "nprobe" else 128 * 2 ** (LADDER_STEPS - 1)
    ladder, current = [], int(value)
    while len(ladder) < LADDER_STEPS:
        ladder.append(f"{name}={current}")
        if current >= top:
            break
        current = min(top, current * 2)
    return ladder


def create(spec: str, dimension: int):
    """An empty index that stores global int64 ids (``add_with_ids``)."""
    import faiss

    wrapped = spec if spec.startswith("IVF") else f"IDMap,{spec}"
    index = faiss.index_factory(dimension, wrapped, faiss.METRIC_INNER_PRODUCT)
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if hasattr(inner, "do_polysemous_training"):
        # the factory turns on polysemous training for PQ codes: a Hamming-filter ordering that search
        # here never uses (polysemous_ht stays 0) and that took 40 s of a 3,000-vector IVF256,PQ32 build
        inner.do_polysemous_training = False
    return index


def check(spec: str, dimension: int) -> None:
    """Refuse a factory string FAISS cannot build for ``dimension`` (before any task starts)."""
    try:
        create(spec, dimension)
    except RuntimeError as error:
        # FAISS's messages start with the C++ function that raised: keep what follows the location
        reason = str(error).strip().split(": ", 1)[-1].removeprefix("Error: ")
        raise UsageError(f"--index-type {spec!r} cannot be built for {dimension} dims ({reason}); "
                         f"e.g. Flat, HNSW32, IVF1024,Flat, IVF1024,PQ32") from None


def apply_search_params(index, params: str) -> None:
    import faiss

    if params:
        target = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
        faiss.ParameterSpace().set_index_parameters(target, params)
