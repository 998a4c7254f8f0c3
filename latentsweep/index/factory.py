"""Index types: FAISS factory strings, inner product on L2-normalised vectors (= cosine).

``choose`` picks a type from the vector count and a memory budget the way autofaiss does, and says
why, with the memory arithmetic spelled out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from latentsweep.errors import UsageError

FLAT_LIMIT = 1_000_000      # above this, exact search is slow enough that HNSW/IVF pay off
HNSW_LIMIT = 10_000_000
HNSW_M = 32
ID_BYTES = 8


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
            return Choice(f"IVF{nlist},PQ{m}", f"nprobe={max(8, nlist // 64)}", tuple(reasons))
    raise UsageError(f"{n:,} vectors of {d} dims do not fit {budget_bytes / 2**30:.2f} GiB even as "
                     f"IVF{nlist},PQ4: raise --memory-budget or split the reference set")


def needs_training(spec: str) -> bool:
    return "IVF" in spec or "PQ" in spec


def create(spec: str, dimension: int):
    """An empty index that stores global int64 ids (``add_with_ids``)."""
    import faiss

    wrapped = spec if spec.startswith("IVF") else f"IDMap,{spec}"
    return faiss.index_factory(dimension, wrapped, faiss.METRIC_INNER_PRODUCT)


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
