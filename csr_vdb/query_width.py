"""Query width: which entries of a search query the database walks, and the narrowest width that keeps a recall floor.

A database's sparse search walks one posting list per query entry, so its cost is about the sum
of the posting lengths of the entries the query keeps. A decoder-projection query has many
positive entries (512 at k=32); the exact signed re-score of the candidates (`csr_vdb.retriever`)
fixes the order afterwards, so the search query can keep far fewer of them. `narrow_queries`
keeps ``width`` entries per query, chosen by magnitude or by magnitude per expected posting cost;
`choose_query_width` finds the smallest width whose search + re-score still finds the exact dense
neighbours of a collection's own rows (self-queries) at a given recall floor; `fit_query_width`
runs it for a trained encoder (``csr-vdb train --query-width auto``) and `apply_query_width` keeps
the choice in the model's config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from csr_vdb.config import DEFAULT_CANDIDATES
from csr_vdb.errors import ConfigError, DataError
from csr_vdb.sparse import SparseVectors

if TYPE_CHECKING:
    from csr_vdb.config import QueryWidthReport
    from csr_vdb.model import CSREncoder

Select = Literal["magnitude", "cost"]

DEFAULT_WIDTHS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
"""Widths `choose_query_width` tries by default (those above the queries' width are left out)."""


def posting_lengths(codes: SparseVectors) -> np.ndarray:
    """Rows in each latent's posting list: ``[codes.dim]`` int64 (padding entries not counted)."""
    live = codes.values != 0
    return np.bincount(codes.indices[live].ravel(), minlength=codes.dim).astype(np.int64)


def narrow_queries(
    queries: SparseVectors,
    width: int,
    select: Select = "magnitude",
    posting: np.ndarray | None = None,
    alpha: float = 1.0,
) -> SparseVectors:
    """Keep at most ``width`` entries of each query row.

    Args:
        queries: ``[q, w]`` search queries (e.g. ``CSREncoder.encode_queries(x)``).
        width: entries kept per row (rows with fewer non-zeros keep them all).
        select: ``"magnitude"``: the ``width`` largest ``|value|``. ``"cost"``: the ``width``
            largest ``|value| / (1 + posting[index]) ** alpha``, i.e. the most score per posting
            walked: an entry on a short posting list is cheap for the database.
        posting: ``[queries.dim]`` posting-list lengths (`posting_lengths` of the collection's
            codes or of a sample of them); needed for ``"cost"``.
        alpha: exponent of the posting length in the ``"cost"`` ratio (0 = magnitude).

    Returns:
        `SparseVectors` ``[q, min(width, w)]`` with the kept entries sorted by value, descending
        (padding, value 0, after them).

    Raises:
        ConfigError: ``width < 1``, an unknown ``select``, or ``"cost"`` without a ``posting``
            of length ``queries.dim``.
    """
    if int(width) < 1:
        raise ConfigError(f"query width must be at least 1, got {width}")
    if select not in ("magnitude", "cost"):
        raise ConfigError(f"select must be 'magnitude' or 'cost', got {select!r}")
    width = min(int(width), queries.width)
    mag = np.abs(queries.values).astype(np.float64)
    if select == "cost":
        if posting is None or np.asarray(posting).shape != (queries.dim,):
            raise ConfigError(f"select='cost' needs posting lengths of shape ({queries.dim},)")
        cost = (1.0 + np.asarray(posting, dtype=np.float64)[queries.indices]) ** float(alpha)
        key = mag / cost
    else:
        key = mag
    key = np.where(queries.values != 0, key, -1.0)  # padding never chosen before a live entry
    if width < queries.width:
        part = np.argpartition(-key, width - 1, axis=1)[:, :width]
    else:
        part = np.broadcast_to(np.arange(queries.width), queries.indices.shape)
    idx = np.take_along_axis(queries.indices, part, axis=1)
    val = np.take_along_axis(queries.values, part, axis=1)
    order = np.argsort(-val, axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1)
    val = np.take_along_axis(val, order, axis=1)
    return SparseVectors(np.where(val != 0, idx, 0), val, queries.dim)


def recall_at(found: np.ndarray, truth: np.ndarray, self_rows: np.ndarray | None = None, top_k: int = 10) -> float:
    """Mean share of each row of ``truth`` found in the same row of ``found``.

    Args:
        found: ``[q, >= top_k]`` rows returned, best first.
        truth: ``[q, >= top_k]`` the exact neighbours, best first.
        self_rows: ``[q]`` the query's own row (self-queries): left out of both lists first.
        top_k: neighbours compared per query.
    """
    if len(found) != len(truth):
        raise DataError(f"{len(found)} result rows for {len(truth)} truth rows")
    total = 0.0
    for i in range(len(truth)):
        own = int(self_rows[i]) if self_rows is not None else None
        f = [r for r in found[i].tolist() if r != own and r >= 0][:top_k]
        t = [r for r in truth[i].tolist() if r != own and r >= 0][:top_k]
        total += len(set(f) & set(t)) / max(len(t), 1)
    return total / max(len(truth), 1)


@dataclass(frozen=True)
class WidthChoice:
    """What `choose_query_width` measured and chose.

    Attributes:
        width: the chosen search-query width (the narrowest meeting the floor; the widest tried
            when none does).
        floor: the recall the width had to reach (absolute, after ``relative`` was applied).
        recall: recall@top_k of search + re-score at ``width``.
        full_recall: the same at the queries' full width.
        recalls: ``{width: recall}`` for every width tried.
        candidates: candidates searched per query before the re-score.
        select: how entries were chosen.
        met: whether ``width`` reaches ``floor``.
    """

    width: int
    floor: float
    recall: float
    full_recall: float
    candidates: int
    select: str
    met: bool
    recalls: dict[int, float] = field(default_factory=dict)


def choose_query_width(
    search_queries: SparseVectors,
    exact_queries: SparseVectors,
    doc_codes: SparseVectors,
    truth: np.ndarray,
    floor: float = 0.99,
    relative: bool = True,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    candidates: int = DEFAULT_CANDIDATES,
    select: Select = "magnitude",
    posting: np.ndarray | None = None,
    alpha: float = 1.0,
    self_rows: np.ndarray | None = None,
    top_k: int = 10,
) -> WidthChoice:
    """The narrowest search-query width whose search + exact re-score keeps a recall floor.

    Each width is scored as the database would serve it: the top ``candidates`` rows of
    ``doc_codes`` by the narrowed query's dot product (exact; a database's inverted index
    returns the same rows), re-scored with ``exact_queries`` (`csr_vdb.metrics.rescored_search`),
    and compared with ``truth``, the exact dense neighbours.

    Args:
        search_queries: ``[q, w]`` the full-width search queries (non-negative).
        exact_queries: ``[q, ...]`` the re-scoring queries (``encode_queries(x, signed=True)``).
        doc_codes: ``[n, k]`` codes of the rows searched (the collection or a sample of it).
        truth: ``[q, >= top_k]`` rows of ``doc_codes`` that are each query's exact dense neighbours.
        floor: the recall to keep: a share of the full-width recall when ``relative``, else
            an absolute recall@top_k.
        relative: read ``floor`` as a share of the full-width recall.
        widths: widths to try (those >= the queries' width count as the full width).
        candidates: rows searched per query before the re-score.
        select: entry choice, see `narrow_queries`.
        posting: posting lengths for ``select="cost"`` (default: `posting_lengths` of ``doc_codes``).
        alpha: see `narrow_queries`.
        self_rows: ``[q]`` each query's own row in ``doc_codes`` (self-queries), left out of the
            results and of ``truth``.
        top_k: neighbours compared.

    Returns:
        `WidthChoice`.

    Raises:
        ConfigError: a floor outside (0, 1], no width >= 1, or ``candidates < top_k``.
        DataError: mismatched query counts or dimensions.
    """
    from csr_vdb.metrics import rescored_search

    if not 0.0 < float(floor) <= 1.0:
        raise ConfigError(f"recall floor must be in (0, 1], got {floor}")
    tried = sorted({int(w) for w in widths if int(w) >= 1})
    if not tried:
        raise ConfigError("no query width >= 1 to try")
    extra = 0 if self_rows is None else 1
    if int(candidates) < top_k + extra:
        raise ConfigError(f"candidates ({candidates}) must be at least top_k ({top_k + extra})")
    if len(search_queries) != len(exact_queries) or len(search_queries) != len(truth):
        raise DataError(
            f"{len(search_queries)} search queries, {len(exact_queries)} exact queries, {len(truth)} truth rows"
        )
    if select == "cost" and posting is None:
        posting = posting_lengths(doc_codes)
    full = search_queries.width
    widths_run = sorted({min(w, full) for w in tried} | {full})

    def score(w: int) -> float:
        q = search_queries if w >= full else narrow_queries(search_queries, w, select, posting, alpha)
        _, rows = rescored_search(q, exact_queries, doc_codes, top_k + extra, candidates=candidates)
        return recall_at(rows, truth, self_rows, top_k)

    recalls = {w: score(w) for w in widths_run}
    full_recall = recalls[full]
    need = float(floor) * full_recall if relative else float(floor)
    met = [w for w in widths_run if recalls[w] >= need - 1e-12]
    width = min(met) if met else full
    return WidthChoice(
        width=width,
        floor=need,
        recall=recalls[width],
        full_recall=full_recall,
        candidates=int(candidates),
        select=select,
        met=bool(met),
        recalls=recalls,
    )


def self_query_sample(
    x: np.ndarray, n_queries: int, top_k: int = 10, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` to use as self-queries and their exact cosine neighbours in ``x``.

    Args:
        x: ``[n, d]`` dense rows (a collection or a sample of it).
        n_queries: self-queries drawn without replacement (at most ``n``).
        top_k: neighbours per query, not counting the query's own row.
        seed: random seed of the draw.

    Returns:
        ``(rows [q] int64, truth [q, top_k + 1] int64)``: each query's own row and its exact
        neighbours (own row included, for `recall_at`'s ``self_rows`` to drop).
    """
    from csr_vdb.metrics import exact_search

    n = len(x)
    if n < 2:
        raise DataError("self-queries need at least 2 rows")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(int(n_queries), n), replace=False)).astype(np.int64)
    _, truth = exact_search(np.asarray(x)[rows], x, top_k + 1, metric="cosine")
    return rows, truth


def fit_query_width(
    encoder: CSREncoder,
    x: np.ndarray,
    recall_floor: float = 0.99,
    candidates: int | None = None,
    queries: int = 300,
    max_rows: int = 20_000,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    top_k: int = 10,
    seed: int = 0,
) -> QueryWidthReport:
    """The narrowest search-query width of a decoder-projection encoder that keeps
    ``recall_floor`` of its full-width recall, measured on the collection's own rows.

    Up to ``max_rows`` rows of ``x`` (e.g. the training sample) are encoded as documents;
    ``queries`` of them search the others (self-queries) with the database's search query at each
    width, the ``candidates`` best are re-scored exactly with the signed query (as `Retriever`
    does), and recall@``top_k`` is taken against the exact cosine neighbours (`choose_query_width`).

    Args:
        encoder: a trained `CSREncoder` with ``query_projection="decoder"``.
        x: ``[n, input_dim]`` rows of the collection.
        recall_floor: share of the full-width recall to keep, in (0, 1].
        candidates: candidates re-scored per query (default: the encoder's ``search_candidates``,
            else `DEFAULT_CANDIDATES`).
        queries: self-queries drawn from the rows.
        max_rows: rows encoded and searched (a random sample when ``x`` has more).
        widths: widths tried (the full width is always measured).
        top_k: neighbours compared.
        seed: sampling seed.

    Returns:
        A `csr_vdb.config.QueryWidthReport`; apply it with `apply_query_width`.

    Raises:
        ConfigError: an encoder without the decoder projection, or a floor outside (0, 1].
        DataError: fewer than ``top_k + 2`` rows.
    """
    from csr_vdb.config import QueryWidthReport

    cfg = encoder.config
    if cfg.query_projection != "decoder":
        raise ConfigError("a query width is chosen for decoder-projection queries (query_projection='decoder')")
    if len(x) < top_k + 2:
        raise DataError(f"choosing a query width needs at least {top_k + 2} rows, got {len(x)}")
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(x), max_rows, replace=False)) if len(x) > max_rows else slice(None)
    x = np.array(x[picked], dtype=np.float32)  # a copy in memory (x may be a read-only memmap)
    cand = int(candidates or cfg.search_candidates or DEFAULT_CANDIDATES)
    cand = min(max(cand, top_k + 1), len(x))
    rows, truth = self_query_sample(x, queries, top_k, seed=seed)
    full = cfg.k_query_alone("decoder")  # the full decoder width, whatever k_query says
    docs = encoder.encode(x)
    search = encoder.encode_queries(x[rows], k=full, projection="decoder")
    exact = encoder.encode_queries(x[rows], projection="decoder", signed=True)
    choice = choose_query_width(search, exact, docs, truth, floor=recall_floor, relative=True, widths=widths,
                                candidates=cand, self_rows=rows, top_k=top_k)
    return QueryWidthReport(
        width=choice.width, floor=round(choice.floor, 6), recall_floor=float(recall_floor),
        recall=round(choice.recall, 6), full_recall=round(choice.full_recall, 6), full_width=full,
        recalls={int(w): round(r, 6) for w, r in choice.recalls.items()}, candidates=cand, met=choice.met,
        queries=len(rows), rows=len(x),
    )


def apply_query_width(encoder: CSREncoder, report: QueryWidthReport) -> None:
    """Set the encoder's ``k_query`` (and ``search_candidates``) to a `fit_query_width` choice,
    keeping the report in its config (saved with the model)."""
    from csr_vdb.config import CSRConfig

    encoder.config = CSRConfig(**{**encoder.config.model_dump(), "k_query": report.width,
                                  "search_candidates": report.candidates, "query_width": report.model_dump()})
