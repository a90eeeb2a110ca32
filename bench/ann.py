"""Section 4: retrieval indexes - ScaNN vs exact brute force (NumPy) vs FAISS HNSW.

Maximum inner product search, as served: queries are the trained ALS user factors; the
catalog is the trained item factors (100k) or a synthetic 1M matrix of the same dimension
made from them (`synthetic_catalog`). Each index is built once per size and swept over its
search-time settings to draw recall@10 (against exact search) vs queries/s curves.

Every method searches single-threaded, with the whole query batch per call (ScaNN
`search_batched`, FAISS `search`, one BLAS matmul per block for brute force), so the rates
compare algorithms, not thread counts. ScaNN is built the project's way
(`recsys.model.retrieval.build_index`) for each `IndexConfig` variant in `BenchConfig.scann_builds`;
its search grid is expressed as the share of leaves searched (`leaves_to_search_share`) and
the reorder depth, so one setting means the same at every catalog size. The project's default
`IndexConfig`, searched with the searcher's own defaults (as `measure_recall` does), is its own
point; the recommended setting is the fastest one that keeps recall >= the target at every size.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from recsys.model.retrieval import IndexConfig, build_index

RECALL_TARGET = 0.95
# The recommended IndexConfig keeps this much recall above the target at every size: room for
# sampling error (1,000 queries) and for catalogs that drift from the measured ones.
RECOMMEND_MARGIN = 0.01
SPEEDUP_TARGET = 10.0
NOISE_SHARE = 0.3
EXACT_BLOCK = 128  # queries per matmul block: bounds the score matrix at 128 x n floats
SINGLE_QUERIES = 100


def synthetic_catalog(item_factors: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n item vectors shaped like trained ones: a random trained vector, perturbed.

    Each copy gets isotropic Gaussian noise of 30 % of its base vector's norm, so the matrix
    keeps the directions, clusters and the wide norm spread of the ALS factors (what makes
    MIPS hard or easy) instead of being structureless noise.
    """
    rng = np.random.default_rng(seed)
    base = item_factors[rng.integers(0, len(item_factors), size=n)]
    scale = NOISE_SHARE * np.linalg.norm(base, axis=1, keepdims=True) / np.sqrt(base.shape[1])
    noise = rng.standard_normal(size=base.shape, dtype=np.float32) * scale
    return np.ascontiguousarray(base + noise, dtype=np.float32)


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Exact top-k by inner product (NumPy, blocked matmul + argpartition) and its queries/s."""
    found = np.empty((len(queries), k), dtype=np.int64)
    start = time.perf_counter()
    for lo in range(0, len(queries), EXACT_BLOCK):
        scores = queries[lo : lo + EXACT_BLOCK] @ vectors.T
        found[lo : lo + EXACT_BLOCK] = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return found, len(queries) / (time.perf_counter() - start)


def faiss_flat_qps(vectors: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Queries/s of FAISS's exact inner-product index (a stronger brute force than NumPy)."""
    import faiss

    faiss.omp_set_num_threads(1)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    start = time.perf_counter()
    index.search(queries, k)
    return len(queries) / (time.perf_counter() - start)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    hits = sum(
        len(set(f[:k].tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)
    )
    return hits / truth.size


def _timed(search, queries: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    found = search(queries)
    return np.asarray(found), len(queries) / (time.perf_counter() - start)


def num_leaves_for(n: int, config: IndexConfig) -> int:
    """Leaves of the ScaNN tree for n items, as `build_index` sizes it."""
    return max(2, int(math.sqrt(n) * config.leaves_per_sqrt_n))


def leaves_for_share(num_leaves: int, share: float) -> int:
    """Leaves searched for a share, as `build_index` turns `leaves_to_search_share` into them."""
    return max(1, int(num_leaves * share))


def build_label(overrides: dict) -> str:
    if not overrides:
        return "default"
    return ", ".join(f"{key}={value}" for key, value in sorted(overrides.items()))


def scann_build_points(vectors, queries, truth, k, overrides, share_grid, reorder_grid):
    """One ScaNN tree-AH build (IndexConfig + overrides) searched at every grid setting."""
    config = replace(IndexConfig(), **overrides)
    start = time.perf_counter()
    searcher = build_index(vectors, replace(config, brute_force_below=0), num_neighbors=k)
    build_s = round(time.perf_counter() - start, 1)
    num_leaves = num_leaves_for(len(vectors), config)
    points = []
    for share in share_grid:
        leaves = leaves_for_share(num_leaves, share)
        for reorder in reorder_grid:
            found, qps = _timed(
                lambda q, leaves=leaves, reorder=reorder: searcher.search_batched(
                    q,
                    final_num_neighbors=k,
                    pre_reorder_num_neighbors=reorder,
                    leaves_to_search=leaves,
                )[0],
                queries,
            )
            points.append(
                {
                    "build": build_label(overrides),
                    "leaves_per_sqrt_n": config.leaves_per_sqrt_n,
                    "dims_per_block": config.dims_per_block,
                    "anisotropic_threshold": config.anisotropic_threshold,
                    "num_leaves": num_leaves,
                    "leaves_to_search_share": share,
                    "leaves_to_search": leaves,
                    "reorder": reorder,
                    "recall": round(recall_at_k(found, truth), 4),
                    "qps": round(qps, 1),
                }
            )
    return searcher, build_s, points


def default_point(vectors, queries, truth, k, searcher=None) -> dict:
    """The project's default IndexConfig, searched with the searcher's defaults."""
    config = IndexConfig()
    n = len(vectors)
    brute = n < config.brute_force_below
    if searcher is None or brute:
        searcher = build_index(vectors, config, num_neighbors=k)
    found, qps = _timed(lambda q: searcher.search_batched(q, final_num_neighbors=k)[0], queries)
    num_leaves = num_leaves_for(n, config)
    return {
        "index": "brute_force" if brute else "tree_ah_reorder",
        "num_leaves": None if brute else num_leaves,
        "leaves_to_search": None
        if brute
        else leaves_for_share(num_leaves, config.leaves_to_search_share),
        "reorder": None if brute else config.reorder,
        "recall": round(recall_at_k(found, truth), 4),
        "qps": round(qps, 1),
    }


def hnsw_points(vectors, queries, truth, k, m, ef_construction, ef_grid, build_threads=2):
    """FAISS HNSW with the inner-product metric, searched at each efSearch.

    The inner-product metric is used directly: the usual MIPS-to-L2 reduction (one extra
    dimension sqrt(max_norm^2 - |x|^2)) wrecks the graph on ALS factors, whose norms spread
    over two orders of magnitude (recall@10 stayed below 0.3 at 100k items in a probe).
    """
    import faiss

    faiss.omp_set_num_threads(build_threads)
    start = time.perf_counter()
    index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(vectors)
    build_s = round(time.perf_counter() - start, 1)
    faiss.omp_set_num_threads(1)
    points = []
    for ef in ef_grid:
        index.hnsw.efSearch = max(ef, k)
        found, qps = _timed(lambda q: index.search(q, k)[1], queries)
        points.append(
            {
                "M": m,
                "ef_construction": ef_construction,
                "ef_search": ef,
                "recall": round(recall_at_k(found, truth), 4),
                "qps": round(qps, 1),
            }
        )
    return points, build_s


def single_query_qps(search, queries: np.ndarray) -> float:
    """Queries/s one call per query, as the Retrieval service searches."""
    start = time.perf_counter()
    for query in queries:
        search(query)
    return len(queries) / (time.perf_counter() - start)


def fastest_meeting_target(points: list[dict], exact_qps: float) -> dict | None:
    """The fastest point with recall >= the target (None when none reaches it)."""
    good = [p for p in points if p["recall"] >= RECALL_TARGET]
    if not good:
        return None
    best = max(good, key=lambda p: p["qps"])
    return {**best, "speedup_vs_exact": round(best["qps"] / exact_qps, 1)}


def run_size(n, item_factors, user_factors, config, k=10, log=print) -> dict:
    """Every method at one catalog size."""
    rng = np.random.default_rng(config.seed)
    if n <= len(item_factors):
        vectors = np.ascontiguousarray(item_factors[:n], dtype=np.float32)
        source = "trained ALS item factors"
    else:
        vectors = synthetic_catalog(item_factors, n, config.seed)
        source = f"synthetic: trained item factors resampled with {NOISE_SHARE:.0%} relative noise"
    picked = rng.choice(
        len(user_factors), size=min(config.ann_queries, len(user_factors)), replace=False
    )
    queries = np.ascontiguousarray(user_factors[picked], dtype=np.float32)
    single = queries[:SINGLE_QUERIES]
    with threadpool_limits(limits=1, user_api="blas"):
        truth, exact_qps = exact_search(vectors, queries, k)
        flat_qps = faiss_flat_qps(vectors, queries[: max(1, len(queries) // 4)], k)
        log(f"  n={n}: exact NumPy {exact_qps:.0f} q/s, FAISS flat {flat_qps:.0f} q/s")
        scann, build_seconds, searchers = [], {}, {}
        for overrides in config.scann_builds:
            label = build_label(overrides)
            searcher, build_s, points = scann_build_points(
                vectors, queries, truth, k, overrides, config.scann_shares, config.scann_reorder
            )
            searchers[label], build_seconds[label] = searcher, build_s
            scann += points
            log(f"  n={n}: ScaNN {label}: {len(points)} points, build {build_s}s")
        default = default_point(vectors, queries, truth, k, searchers.get("default"))
        default["speedup_vs_exact"] = round(default["qps"] / exact_qps, 1)
        log(f"  n={n}: ScaNN default: recall {default['recall']} at {default['qps']:.0f} q/s")
        hnsw, hnsw_build_s = hnsw_points(
            vectors,
            queries,
            truth,
            k,
            config.hnsw_m,
            config.hnsw_ef_construction,
            config.hnsw_ef_search,
        )
        log(f"  n={n}: HNSW {len(hnsw)} points, build {hnsw_build_s}s")
        best = fastest_meeting_target(scann, exact_qps)
        single_query = {
            "exact_numpy": round(
                single_query_qps(lambda q: np.argpartition(-(vectors @ q), k - 1)[:k], single),
                1,
            )
        }
        if best:
            searcher = searchers[best["build"]]
            single_query["scann_fastest_meeting_target"] = round(
                single_query_qps(
                    lambda q: searcher.search(
                        q,
                        final_num_neighbors=k,
                        pre_reorder_num_neighbors=best["reorder"],
                        leaves_to_search=best["leaves_to_search"],
                    ),
                    single,
                ),
                1,
            )
    return {
        "items": n,
        "dim": int(vectors.shape[1]),
        "source": source,
        "queries": len(queries),
        "k": k,
        "exact_qps": round(exact_qps, 1),
        "faiss_flat_qps": round(flat_qps, 1),
        "scann_default": default,
        "scann": scann,
        "scann_build_seconds": build_seconds,
        "scann_fastest_meeting_target": best,
        "hnsw": hnsw,
        "hnsw_build_seconds": hnsw_build_s,
        "hnsw_fastest_meeting_target": fastest_meeting_target(hnsw, exact_qps),
        "single_query_qps": single_query,
    }


def recommend_index_config(sizes: list[dict]) -> dict | None:
    """The ScaNN setting with recall >= target + margin at every size, fastest at the largest.

    Settings are compared by (build, leaves_to_search_share, reorder): relative to the catalog
    size, so the result maps straight onto IndexConfig fields.
    """

    def key(point: dict) -> tuple:
        return point["build"], point["leaves_to_search_share"], point["reorder"]

    by_size = [{key(p): p for p in size["scann"]} for size in sizes]
    common = set(by_size[0]).intersection(*by_size[1:])
    floor = RECALL_TARGET + RECOMMEND_MARGIN
    good = [s for s in common if all(points[s]["recall"] >= floor for points in by_size)]
    if not good:
        return None
    largest = by_size[-1]
    best = max(good, key=lambda s: largest[s]["qps"])
    point = largest[best]
    return {
        "index_config": {
            "leaves_per_sqrt_n": point["leaves_per_sqrt_n"],
            "leaves_to_search_share": point["leaves_to_search_share"],
            "reorder": point["reorder"],
            "dims_per_block": point["dims_per_block"],
            "anisotropic_threshold": point["anisotropic_threshold"],
        },
        "per_size": [
            {
                "items": size["items"],
                "num_leaves": points[best]["num_leaves"],
                "leaves_to_search": points[best]["leaves_to_search"],
                "recall": points[best]["recall"],
                "qps": points[best]["qps"],
                "speedup_vs_exact": round(points[best]["qps"] / size["exact_qps"], 1),
            }
            for size, points in zip(sizes, by_size, strict=True)
        ],
    }


def run_ann(item_factors, user_factors, config, log=print) -> dict:
    """Section 4 for every configured catalog size."""
    sizes = [run_size(n, item_factors, user_factors, config, log=log) for n in config.ann_sizes]
    return {
        "recall_target": RECALL_TARGET,
        "recommend_margin": RECOMMEND_MARGIN,
        "speedup_target": SPEEDUP_TARGET,
        "threads": "1 search thread per method (HNSW builds with 2)",
        "blas": [
            {key: info.get(key) for key in ("internal_api", "architecture", "version")}
            for info in threadpool_info()
            if info.get("user_api") == "blas"
        ],
        "default_index_config": asdict(IndexConfig()),
        "sizes": sizes,
        "recommended": recommend_index_config(sizes),
    }
