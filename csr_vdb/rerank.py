"""`Reranker`: exact re-ranking of candidates (a database's sparse search results) by dense vectors
or by their codes, vectorised on the device.

Two forms of input. `rank_dense` / `rank_codes` take the candidates' vectors as they come back
with a search (`csr_vdb.store.Candidates`: one array of all candidates, grouped by query), and
return positions: the hot path of `csr_vdb.retriever.Retriever`. `rerank_dense` /
`rerank_sparse` take candidate ids and a lookup (a mapping or a callable), for callers that hold
vectors by id (evaluation, benchmarks).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from csr_vdb.device import resolve_device
from csr_vdb.errors import DataError, describe_rows
from csr_vdb.sparse import SparseVectors
from csr_vdb.validation import check_codes, check_top_k

Id = Hashable
VectorLookup = Mapping[Id, np.ndarray] | Callable[[list[Id]], np.ndarray]
CodeLookup = Mapping[Id, SparseVectors] | Callable[[list[Id]], SparseVectors]
Ranked = list[tuple[np.ndarray, np.ndarray]]
"""Per query ``(positions [m] int64 into its candidates, scores [m] float64)``, best first."""
FEW_QUERIES = 16
"""`Reranker.rank_codes` on CPU scores up to this many queries' candidates in one gather."""


def _unique_candidates(candidates: Sequence[Sequence[Id]]) -> tuple[list[list[Id]], list[Id], np.ndarray]:
    """Per-query candidates without repeats (first kept), the distinct ids, and for every
    (query, candidate) pair in order the candidate's position among the distinct ids."""
    per_query: list[list[Id]] = []
    distinct: dict[Id, int] = {}
    where: list[int] = []
    for cands in candidates:
        ids = list(dict.fromkeys(cands))
        per_query.append(ids)
        where += [distinct.setdefault(c, len(distinct)) for c in ids]
    return per_query, list(distinct), np.asarray(where, np.int64)


def _lookup_dense(vectors: VectorLookup, ids: list[Id]) -> np.ndarray:
    if callable(vectors) and not isinstance(vectors, Mapping):
        out = np.asarray(vectors(ids), dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != len(ids):
            raise DataError(f"vector lookup returned shape {out.shape} for {len(ids)} ids")
        return out
    missing = [i for i in ids if i not in vectors]
    if missing:
        raise DataError(f"no vector for candidate ids {describe_rows(missing)}", missing)
    rows = [np.asarray(vectors[i], dtype=np.float32).ravel() for i in ids]
    sizes = {len(r) for r in rows}
    if len(sizes) > 1:
        raise DataError(f"candidate vectors have different dimensions: {sorted(sizes)}")
    return np.stack(rows)


def _as_code(code: object, dim: int) -> SparseVectors:
    """A looked-up code as a 1-row `SparseVectors`. A database row format (a Milvus ``{index:
    value}`` dict, a Qdrant ``(indices, values)`` pair) is still read, with a deprecation warning:
    adapters return `SparseVectors` now (`VectorStore.search_candidates`)."""
    if isinstance(code, SparseVectors):
        return code
    warnings.warn(
        "Reranker.rerank_sparse: codes given as database rows (dicts or (indices, values) pairs) are "
        "deprecated; pass SparseVectors",
        DeprecationWarning,
        stacklevel=4,
    )
    if isinstance(code, Mapping):
        return SparseVectors.from_milvus([code], dim)
    return SparseVectors.from_qdrant([code], dim)  # type: ignore[list-item]


def _lookup_codes(codes: CodeLookup, ids: list[Id], dim: int) -> SparseVectors:
    if callable(codes) and not isinstance(codes, Mapping):
        out = codes(ids)
        if not isinstance(out, SparseVectors) or len(out) != len(ids):
            raise DataError(f"code lookup must return SparseVectors with {len(ids)} rows")
        return out
    missing = [i for i in ids if i not in codes]
    if missing:
        raise DataError(f"no sparse code for candidate ids {describe_rows(missing)}", missing)
    return SparseVectors.concat([_as_code(codes[i], dim) for i in ids])


class Reranker:
    """Exact re-ranking of per-query candidates.

    Scores are computed in float64 (in torch on CUDA when available, in numpy on CPU), so the
    order is that of exact dot products; equal scores keep the order in which the candidates were
    given.

    Args:
        device: torch device; ``None`` = CUDA when available, else CPU.
        batch_size: (query, candidate) pairs scored per device batch (bounds memory).
    """

    def __init__(self, device: str | torch.device | None = None, batch_size: int = 1 << 16) -> None:
        self.device = resolve_device(device)
        self.batch_size = max(1, int(batch_size))

    # ------------------------------------------------------------------ candidates as arrays
    def rank_dense(
        self, queries: np.ndarray, vectors: np.ndarray, lengths: Sequence[int], top_k: int | None = None,
        *, checked_queries: bool = False,
    ) -> Ranked:
        """Rank each query's candidates by the exact dot product ``<query, vector>``.

        Args:
            queries: ``[q, d]`` dense queries.
            vectors: ``[sum(lengths), d]`` the candidates' vectors, query 0's first.
            lengths: candidates per query.
            top_k: keep this many per query (all when ``None``).
            checked_queries: the queries were checked already (an encoder checked them on their
                way, as in `csr_vdb.retriever.Retriever.search`): only their count is.

        Raises:
            DataError: NaN/inf, mismatched dimensions or counts.
        """
        q = self._dense_queries(queries, len(lengths), check_values=not checked_queries)
        vec = np.asarray(vectors, dtype=np.float32)
        self._check_vectors(vec, q.shape[1], lambda rows: rows)
        lengths = self._lengths(lengths, len(vec))
        return self._rank_pairs(self._dense_score(q, vec), lengths, np.arange(len(vec)), top_k)

    def rank_codes(
        self, query_codes: SparseVectors, codes: SparseVectors, lengths: Sequence[int], top_k: int | None = None,
        *, checked_queries: bool = False,
    ) -> Ranked:
        """Rank each query's candidates by the exact dot product of the codes.

        Args:
            query_codes: ``[q, width]`` query codes (signed values allowed).
            codes: ``[sum(lengths), width]`` the candidates' codes, query 0's first.
            lengths: candidates per query.
            top_k: keep this many per query (all when ``None``).
            checked_queries: the query codes come from an encoder that checked its input (as in
                `csr_vdb.retriever.Retriever.search`): only their count and dimension are checked.

        Raises:
            DataError: NaN/inf, indices outside the dimension, mismatched dimensions or counts.
        """
        self._check_codes(query_codes, codes, len(lengths), check_queries=not checked_queries)
        lengths = self._lengths(lengths, len(codes))
        if self._on_cpu() and len(query_codes) <= FEW_QUERIES:
            # a few queries (one user's): one gather per candidate entry, one sort per query
            rows = self._query_rows(query_codes, np.arange(len(query_codes)))
            of_row = np.repeat(np.arange(len(lengths)), lengths)
            scores = (rows[of_row[:, None], codes.indices] * codes.values).sum(axis=1)
            return self._rank_each(scores, lengths, top_k)
        score, budget = self._code_score(query_codes, codes)
        return self._rank_pairs(score, lengths, np.arange(len(codes)), top_k, budget)

    # ------------------------------------------------------------------ candidates as ids
    def rerank_dense(
        self,
        queries: np.ndarray,
        candidates: Sequence[Sequence[Id]],
        vectors: VectorLookup,
        top_k: int | None = None,
    ) -> list[tuple[list[Id], np.ndarray]]:
        """Re-rank candidate ids by the exact dense dot product ``<query, vector>``.

        Args:
            queries: ``[q, d]`` dense query vectors.
            candidates: ``q`` lists of candidate ids (a repeated id is scored once, first kept).
            vectors: ``id -> [d]`` mapping, or a callable taking a list of ids and returning
                ``[len(ids), d]`` (called once with every distinct candidate).
            top_k: keep this many per query (all when ``None``).

        Returns:
            Per query ``(ids, scores [m] float64)``, best first.

        Raises:
            DataError: NaN/inf or mismatched dimensions, a query count that differs from
                ``len(candidates)``, or candidate ids without a vector.
        """
        q = self._dense_queries(queries, len(candidates))
        per_query, distinct, where = _unique_candidates(candidates)
        if not distinct:
            return [([], np.zeros(0, np.float64)) for _ in per_query]
        vec = _lookup_dense(vectors, distinct)
        self._check_vectors(vec, q.shape[1], lambda rows: [distinct[i] for i in rows], "ids")
        ranked = self._rank_pairs(self._dense_score(q, vec), [len(c) for c in per_query], where, top_k)
        return [([ids[j] for j in pos], sc) for ids, (pos, sc) in zip(per_query, ranked)]

    def rerank_sparse(
        self,
        query_codes: SparseVectors,
        candidates: Sequence[Sequence[Id]],
        codes: CodeLookup,
        top_k: int | None = None,
    ) -> list[tuple[list[Id], np.ndarray]]:
        """Re-rank candidate ids by the exact sparse dot product of the codes.

        Args:
            query_codes: ``[q, width]`` query codes.
            candidates: ``q`` lists of candidate ids (a repeated id is scored once, first kept).
            codes: ``id -> 1-row SparseVectors`` mapping, or a callable taking a list of ids and
                returning their `SparseVectors` (called once with every distinct candidate).
            top_k: keep this many per query (all when ``None``).

        Returns:
            Per query ``(ids, scores [m] float64)``, best first.

        Raises:
            DataError: NaN/inf, mismatched dimensions or counts, or ids without a code.
        """
        self._check_queries(query_codes, len(candidates))
        per_query, distinct, where = _unique_candidates(candidates)
        if not distinct:
            return [([], np.zeros(0, np.float64)) for _ in per_query]
        cand = _lookup_codes(codes, distinct, query_codes.dim)
        self._check_codes(query_codes, cand, len(candidates), check_queries=False)  # checked above
        score, budget = self._code_score(query_codes, cand)
        ranked = self._rank_pairs(score, [len(c) for c in per_query], where, top_k, budget)
        return [([ids[j] for j in pos], sc) for ids, (pos, sc) in zip(per_query, ranked)]

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _dense_queries(queries: np.ndarray, n_lists: int, check_values: bool = True) -> np.ndarray:
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2:
            raise DataError(f"queries must be [q, d], got shape {q.shape}")
        if q.shape[0] != n_lists:
            raise DataError(f"{q.shape[0]} queries but {n_lists} candidate lists")
        bad = ~np.isfinite(q).all(axis=1) if check_values else None
        if bad is not None and bad.any():
            rows = np.flatnonzero(bad).tolist()
            raise DataError(f"queries contain NaN or inf at rows {describe_rows(rows)}", rows)
        return q

    @staticmethod
    def _check_vectors(vec: np.ndarray, dim: int, name: Callable[[list[int]], list], label: str = "rows") -> None:
        if vec.ndim != 2 or (len(vec) and vec.shape[1] != dim):
            raise DataError(f"candidate vectors have dimension {vec.shape[-1]}, queries {dim}")
        bad = ~np.isfinite(vec).all(axis=1)
        if bad.any():
            names = name(np.flatnonzero(bad).tolist())
            raise DataError(f"candidate vectors contain NaN or inf at {label} {describe_rows(names)}", names)

    @staticmethod
    def _check_queries(query_codes: SparseVectors, n_lists: int, check_values: bool = True) -> None:
        if check_values:
            check_codes(query_codes, "query codes")
        if len(query_codes) != n_lists:
            raise DataError(f"{len(query_codes)} queries but {n_lists} candidate lists")

    @classmethod
    def _check_codes(cls, query_codes: SparseVectors, codes: SparseVectors, n_lists: int, check_queries: bool = True) -> None:
        cls._check_queries(query_codes, n_lists, check_queries)
        if codes.dim != query_codes.dim:
            raise DataError(f"candidate codes have dimension {codes.dim}, queries {query_codes.dim}")
        check_codes(codes, "candidate codes")

    @staticmethod
    def _lengths(lengths: Sequence[int], total: int) -> list[int]:
        out = [int(n) for n in lengths]
        if sum(out) != total or any(n < 0 for n in out):
            raise DataError(f"candidate counts {out[:5]}... do not add up to the {total} candidates given")
        return out

    # ------------------------------------------------------------------ scoring
    # Scores are float64 dot products of (query, candidate) pairs, computed in batches. On CPU in
    # numpy: a re-rank is small (hundreds of pairs), and torch's intra-op thread pool costs more
    # than the arithmetic there (on a busy machine, milliseconds per operation); on CUDA in torch.
    def _on_cpu(self) -> bool:
        return self.device.type == "cpu"

    def _dense_score(self, q: np.ndarray, vec: np.ndarray) -> Callable[[Any, Any], Any]:
        if self._on_cpu():
            q64, v64 = q.astype(np.float64), vec.astype(np.float64)
            return lambda qi, ci: np.einsum("ij,ij->i", q64[qi], v64[ci])
        qt = torch.from_numpy(q).to(self.device, torch.float64)
        vt = torch.from_numpy(vec).to(self.device, torch.float64)
        return lambda qi, ci: (qt[qi] * vt[ci]).sum(dim=1)

    def _code_score(self, query_codes: SparseVectors, codes: SparseVectors) -> tuple[Callable[[Any, Any], Any], int]:
        """Queries become dense rows (small: ``[queries in a batch, dim]``); candidates stay sparse
        and gather from them, so one pair costs its candidate's width."""
        dim = query_codes.dim
        budget = max(1, (1 << 24) // max(dim, 1))
        if self._on_cpu():
            c_idx, c_val = codes.indices, codes.values.astype(np.float64)

            def score_np(qi: np.ndarray, ci: np.ndarray) -> np.ndarray:
                uq, inv = np.unique(qi, return_inverse=True)
                return (self._query_rows(query_codes, uq)[inv[:, None], c_idx[ci]] * c_val[ci]).sum(axis=1)

            return score_np, budget
        dev = self.device
        tq_idx = torch.from_numpy(query_codes.indices).to(dev)
        tq_val = torch.from_numpy(query_codes.values).to(dev, torch.float64)
        tc_idx = torch.from_numpy(codes.indices).to(dev)
        tc_val = torch.from_numpy(codes.values).to(dev, torch.float64)

        def score_torch(qi: torch.Tensor, ci: torch.Tensor) -> torch.Tensor:
            uq, inv = torch.unique(qi, return_inverse=True)
            dense = torch.zeros((len(uq), dim), dtype=torch.float64, device=dev)
            dense.scatter_add_(1, tq_idx[uq], tq_val[uq])
            return (torch.gather(dense[inv], 1, tc_idx[ci]) * tc_val[ci]).sum(dim=1)

        return score_torch, budget

    @staticmethod
    def _query_rows(query_codes: SparseVectors, which: np.ndarray) -> np.ndarray:
        """Query codes ``which`` as dense float64 rows ``[len(which), dim]`` (repeated indices add
        up, padding adds 0)."""
        dim = query_codes.dim
        slots = (np.arange(len(which))[:, None] * dim + query_codes.indices[which]).ravel()
        weights = query_codes.values[which].astype(np.float64).ravel()
        return np.bincount(slots, weights=weights, minlength=len(which) * dim).reshape(len(which), dim)

    @staticmethod
    def _rank_each(scores: np.ndarray, lengths: Sequence[int], top_k: int | None) -> Ranked:
        """Each query's slice of ``scores`` sorted on its own (stable: ties keep the order given)."""
        if top_k is not None:
            top_k = check_top_k(top_k)
        out: Ranked = []
        start = 0
        for m in lengths:
            s = scores[start : start + m]
            order = np.argsort(-s, kind="stable")[:top_k]
            out.append((order.astype(np.int64), s[order]))
            start += m
        return out

    def _rank_pairs(
        self,
        score: Callable[[Any, Any], Any],
        lengths: Sequence[int],
        candidate_of_pair: np.ndarray,
        top_k: int | None,
        pair_budget: int | None = None,
    ) -> Ranked:
        """Score every (query, candidate) pair in batches, then sort each query's row once
        (padded with -inf; a stable sort keeps equal scores in the order given)."""
        if top_k is not None:
            top_k = check_top_k(top_k)
        counts = np.asarray(lengths, np.int64)
        total = int(counts.sum())
        nq = len(counts)
        q_of_pair = np.repeat(np.arange(nq), counts)
        c_of_pair = np.asarray(candidate_of_pair, np.int64)
        slot = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        width = max(int(counts.max(initial=0)), 1)
        step = min(self.batch_size, pair_budget or self.batch_size)
        if self._on_cpu():
            parts = [score(q_of_pair[s : s + step], c_of_pair[s : s + step]) for s in range(0, total, step)]
            padded = np.full((nq, width), -np.inf)
            padded[q_of_pair, slot] = np.concatenate(parts) if parts else np.zeros(0)
            order = np.argsort(-padded, axis=1, kind="stable")
            sc = np.take_along_axis(padded, order, axis=1)
        else:
            tq = torch.from_numpy(q_of_pair).to(self.device)
            tc = torch.from_numpy(c_of_pair).to(self.device)
            tparts = [score(tq[s : s + step], tc[s : s + step]) for s in range(0, total, step)]
            flat = torch.cat(tparts) if tparts else torch.zeros(0, dtype=torch.float64, device=self.device)
            tpad = torch.full((nq, width), -torch.inf, dtype=torch.float64, device=self.device)
            tpad[tq, torch.from_numpy(slot).to(self.device)] = flat
            tsc, tord = torch.sort(tpad, dim=1, descending=True, stable=True)
            sc, order = tsc.cpu().numpy(), tord.cpu().numpy()
        out: Ranked = []
        for i, m in enumerate(counts.tolist()):
            m = m if top_k is None else min(m, top_k)
            out.append((order[i, :m].astype(np.int64), sc[i, :m].copy()))
        return out
