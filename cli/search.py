"""`csr-vdb search`: text or vector queries through dense search, sparse search and the two re-rankings."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from csr_vdb.errors import ConfigError, DataError

MODES = ("dense", "sparse", "rerank", "codes")
"""What ``--mode all`` runs: dense search, then `Retriever.search` with each of `RERANK`'s settings."""

RERANK: dict[str, bool | str] = {"sparse": False, "rerank": True, "codes": "codes", "rescore": "codes"}
"""``Retriever.search(rerank=...)`` of each sparse mode ("rescore": the deprecated name of "codes")."""


def load_query_vectors(path: str | Path) -> np.ndarray:
    """A ``[q, dim]`` (or ``[dim]``) float .npy file; raises DataError when it is not one."""
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as exc:
        raise DataError(f"{path} is not a numeric .npy file: {exc}") from exc
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{path}: expected a float array [queries, dim], got {x.dtype} {x.shape}")
    return x.astype(np.float32)


def _hits(hits: list[list[Any]]) -> list[list[dict[str, Any]]]:
    return [[{"id": h.id, "score": float(h.score), "payload": h.payload} for h in hs] for hs in hits]


def run_search(
    app: Any,
    store: Any,
    collection: str,
    *,
    query: list[str],
    vectors: str | None,
    model_dir: str | None,
    mode: str,
    top_k: int,
    candidates: int | None,
    text_model: str,
    query_projection: str | None = None,
) -> dict[str, Any]:
    """Embed the queries, run the chosen mode(s), return ``{queries, results: {mode: hits}, ms}``.

    Args:
        app: the CLI's `App` (device, state dir and store settings, to find the model).
        store: the open store.
        collection: collection or alias to search.
        query: query texts (embedded with ``text_model``), or empty with ``vectors``.
        vectors: a ``[q, dim]`` .npy file of query vectors.
        model_dir: the encoder; default the one of this collection's migration.
        mode: "dense", a key of `RERANK`, or "all" (`MODES`).
        top_k, candidates: hits returned, and sparse candidates re-ranked, per query (None: the
            model's ``search_candidates``).
        text_model: the sentence-transformers model that embeds ``query``.
        query_projection: the encoder's query projection, unless its config's.
    """
    from csr_vdb.cli.ops import load_encoder, model_for
    from csr_vdb.retriever import Retriever

    if bool(query) == bool(vectors):
        raise ConfigError("give query text(s) or --vectors FILE.npy (not both)")
    info = store.describe(collection)
    if vectors:
        x = load_query_vectors(vectors)
        labels = [f"{vectors}[{i}]" for i in range(len(x))]
    else:
        from csr_vdb.text import load_text_model

        x = load_text_model(text_model, device=app.device).embed(query)
        labels = list(query)
    modes = MODES if mode == "all" else (mode,)
    if mode == "all" and not info.vector_field:
        modes = ("sparse", "rerank")  # a lean (--drop-dense) collection has nothing to search densely
    results: dict[str, Any] = {}
    ms: dict[str, float] = {}
    retriever: Any = None
    if any(m != "dense" for m in modes):
        mdir = model_for(model_dir, app.state_dir, app.settings.store, app.settings.uri, collection)
        retriever = Retriever(store, collection, load_encoder(mdir, app.device), device=app.device,
                              query_projection=query_projection)
    for m in modes:
        t0 = time.perf_counter()
        if m == "dense":
            from csr_vdb.validation import check_dense

            xd = check_dense(x, dim=info.dimension, what="query vectors")
            hits = store.search_dense(collection, xd, limit=top_k, with_payload=True)
        else:
            hits = retriever.search(x, top_k=top_k, candidates=candidates, rerank=RERANK[m])
        ms[m] = (time.perf_counter() - t0) * 1000.0
        results[m] = _hits(hits)
    return {"collection": collection, "queries": labels, "results": results, "ms": ms}
