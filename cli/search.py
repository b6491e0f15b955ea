"""`csr-vdb search`: text or vector queries, dense / sparse / sparse+rerank / sparse+re-score, rendered side by side."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from csr_vdb.errors import DataError

MODES = ("dense", "sparse", "rerank", "rescore")


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
    candidates: int,
    text_model: str,
    query_projection: str | None = None,
) -> dict[str, Any]:
    """Embed the queries, run the chosen mode(s), return ``{queries, results: {mode: hits}, ms}``."""
    from csr_vdb.cli.ops import load_encoder, model_for
    from csr_vdb.retriever import Retriever

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
    retriever = None
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
            assert retriever is not None
            rerank = {"sparse": False, "rerank": True, "rescore": "codes"}[m]
            hits = retriever.search(x, top_k=top_k, candidates=candidates, rerank=rerank)
        ms[m] = (time.perf_counter() - t0) * 1000.0
        results[m] = _hits(hits)
    return {"collection": collection, "queries": labels, "results": results, "ms": ms}


def _label(payload: dict[str, Any] | None, show: str | None, width: int = 70) -> str:
    if not payload:
        return ""
    key = show if show else next((k for k in ("name", "title", "text") if k in payload), next(iter(payload), None))
    text = str(payload.get(key, "")) if key else ""
    return text if len(text) <= width else text[: width - 1] + "…"


def render_results(res: dict[str, Any], show: str | None = None) -> str:
    """Human rendering: per query, one block per mode (rank, score, id, payload field)."""
    lines: list[str] = []
    for qi, q in enumerate(res["queries"]):
        lines.append(f"query: {q}")
        for m, per_q in res["results"].items():
            lines.append(f"  [{m}]  ({res['ms'][m] / max(1, len(res['queries'])):.1f} ms/query)")
            for rank, h in enumerate(per_q[qi], 1):
                lines.append(f"    {rank:>2}. {h['score']:8.4f}  {h['id']}  {_label(h['payload'], show)}")
        lines.append("")
    return "\n".join(lines).rstrip()
