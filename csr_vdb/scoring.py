"""Exact scoring of CSR codes: an inverted-list top-k index (`SparseIndex`) and a `Reranker`."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch
from scipy import sparse as sp

from csr_vdb import native
from csr_vdb.errors import ConfigError, DataError, describe_rows
from csr_vdb.sparse import SparseVectors

logger = logging.getLogger(__name__)

# Documents per block of the block-max selection: the top-k pass reads one max per block and then
# only the few blocks that can hold a top-k document, instead of sorting a whole [queries, N] buffer.
_SELECT_BLOCK = 128
# Cap (elements) of one [queries, N] float32 score buffer on an accelerator (4 GiB).
_GPU_BUFFER_ELEMS = 1 << 30
# Score-buffer elements per CPU worker that still fit a per-core cache (2 MB).
_CPU_CACHE_ELEMS = 1 << 19
# Same budget for the vectorised path on CPU (a shared machine: 64 MB).
_CPU_BUFFER_ELEMS = 1 << 24
# Budget of the posting entries expanded at once by the vectorised (accelerator) path.
_GPU_EXPAND_ELEMS = 1 << 27
# Rows per tile of the native CPU kernel: a 512 KB float32 buffer stays in a core's L2 cache.
_NATIVE_TILE_ROWS = 1 << 17


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a `torch.device`; ``None`` means CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown torch device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return dev


_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 1


@contextlib.contextmanager
def _single_intra_op_thread() -> Iterator[None]:
    """Set torch's intra-op threads to 1 while any CPU search runs (restored by the last one out)."""
    global _threads_users, _threads_saved
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_saved)


def _check_top_k(top_k: int) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
    return int(top_k)


def _check_finite(codes: SparseVectors, what: str) -> None:
    bad = ~np.isfinite(codes.values).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad).tolist()
        raise DataError(f"{what} contain NaN or inf at rows {describe_rows(rows)}", rows)
    live = codes.values != 0
    out = (live & ((codes.indices < 0) | (codes.indices >= codes.dim))).any(axis=1)
    if out.any():
        rows = np.flatnonzero(out).tolist()
        raise DataError(f"{what} have an index outside [0, {codes.dim}) at rows {describe_rows(rows)}", rows)


class SparseIndex:
    """Exact brute-force top-k inner-product search over sparse codes, by inverted lists.

    The codes are stored as posting lists (CSC: for every latent, the rows that use it and their
    values). A query with ``k`` non-zeros touches only those ``k`` lists, so one query costs about
    ``k * N * k / h`` multiply-adds (times the skew of the latent usage) instead of the ``N * d``
    of a dense scan. Scores are accumulated into a float32 buffer per block of queries; the top-k
    is then found by a block-max pass (the max of every ``_SELECT_BLOCK`` rows) and an exact sort
    of the few blocks whose max reaches the k-th largest block max, so ``[q, N]`` is never sorted.
    Rows are split into shards of ``shard_rows`` (each with its own posting lists and buffer) so a
    score buffer row never exceeds ``shard_rows`` floats; shard results are merged exactly.

    Ground truth semantics: the top-k is exact over ALL rows, zero scores included, ordered by
    score descending and then by smaller row. So a query that touches fewer than ``top_k`` rows
    is completed with zero-score rows in ascending row order, and negative scores (possible when
    codes have negative values) rank below every untouched row. Only when ``top_k`` exceeds the
    number of rows are results padded, with row -1 and score -inf.

    Scores are float32 sums (accumulation order may differ from a float64 reference in the last
    bit; codes made of exactly representable values give identical results).

    On CPU the default is the native kernel (`csr_vdb.native`: C compiled on first use, called
    through ctypes) when a C compiler is present: it scores one cache-sized tile of rows at a
    time and keeps a bounded heap, so neither the ``[q, N]`` buffer nor its block maxima ever
    leave the core's cache. Its pure-torch equivalent (``method="loop"``, also the fallback) runs
    one fused ``index_add_`` of a posting list per (query, latent) into the query's buffer row.
    Both spread queries over at most ``threads`` Python threads (torch's intra-op threads are set
    to 1 during a search and restored) and return identical scores. On CUDA all posting entries
    of a query block are expanded and scattered at once.

    Args:
        codes: the ``[N, width]`` codes to search (row positions are the result ids).
        device: torch device; ``None`` = CUDA when available, else CPU.
        threads: CPU worker threads (at most 2 unless told otherwise).
        query_block: queries scored together (default: as many as keep a CPU worker's buffer
            within ~2 MB, 1 to 8; sized to free memory on CUDA).
        method: ``"native"`` (the compiled CPU kernel; CPU default when it builds), ``"loop"``
            (pure torch, one ``index_add_`` per query latent; the CPU fallback), ``"vectorised"``
            (expand all posting entries of a block; the CUDA default) or ``"auto"``.
        shard_rows: rows per shard (bounds the score buffer: ``shard_rows`` float32 per query).

    Raises:
        DataError: codes with NaN/inf or indices outside ``[0, dim)``.
        ConfigError: unknown device, CUDA unavailable, or a non-positive block/shard size.
    """

    def __init__(
        self,
        codes: SparseVectors,
        device: str | torch.device | None = None,
        threads: int = 2,
        query_block: int | None = None,
        method: Literal["auto", "native", "loop", "vectorised"] = "auto",
        shard_rows: int = 1 << 24,
    ) -> None:
        self.device = resolve_device(device)
        if method not in ("auto", "native", "loop", "vectorised"):
            raise ConfigError(f"method must be 'auto', 'native', 'loop' or 'vectorised', got {method!r}")
        self._native = None
        if method in ("auto", "native") and self.device.type == "cpu":
            self._native = native.load()
            if self._native is None and method == "native":
                raise ConfigError("the native kernel is unavailable (no C compiler, or CSR_VDB_NATIVE=0)")
            method = "native" if self._native is not None else "loop"
        elif method == "native":
            raise ConfigError(f"method 'native' runs on CPU only, not on {self.device}")
        elif method == "auto":
            method = "vectorised"
        self.method = method
        if query_block is not None and query_block < 1:
            raise ConfigError(f"query_block must be positive, got {query_block}")
        if shard_rows < 1:
            raise ConfigError(f"shard_rows must be positive, got {shard_rows}")
        self.dim = int(codes.dim)
        self.threads = max(1, int(threads))
        self.shard_rows = int(shard_rows)
        self._query_block = query_block
        self._parts: list[SparseVectors] = []
        self._shards: list[_Shard] = []
        self._n = 0
        self._built = False
        self._lock = threading.Lock()
        self.add(codes)

    # ------------------------------------------------------------------ building
    def add(self, codes: SparseVectors) -> None:
        """Append rows; they get positions ``len(self) .. len(self) + len(codes) - 1``.

        The posting lists are rebuilt lazily at the next `search`.

        Raises:
            DataError: a different dimension, NaN/inf or out-of-range indices.
        """
        if codes.dim != self.dim:
            raise DataError(f"codes have dimension {codes.dim}, the index has {self.dim}")
        _check_finite(codes, "codes")
        if len(codes):
            self._parts.append(codes)
            self._n += len(codes)
            self._built = False

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes held by the posting lists (pointers, row ids and values) once built."""
        self._build()
        return sum(t.element_size() * t.numel() for sh in self._shards for t in (sh.ptr, sh.docs, sh.vals))

    def _build(self) -> None:
        with self._lock:
            if self._built:
                return
            big = sum(p.indices.size for p in self._parts) >= 2**31 or self.dim >= 2**31
            itype = np.int64 if big else np.int32
            parts = self._parts or [SparseVectors.empty(self.dim, 1)]
            vals = np.concatenate([p.values.ravel() for p in parts])
            # Padding slots may hold any index: point them at 0 so scipy accepts them.
            lat = np.where(vals != 0, np.concatenate([p.indices.ravel() for p in parts]), 0).astype(itype)
            widths = np.repeat([p.width for p in parts], [len(p) for p in parts])
            indptr = np.concatenate([[0], np.cumsum(widths)])
            csr = sp.csr_array((vals, lat, indptr.astype(itype)), shape=(self._n, self.dim))
            csr.eliminate_zeros()
            shards = [
                _Shard.build(csr[start : start + self.shard_rows], start, self.device, self.method)
                for start in range(0, self._n, self.shard_rows)
            ]
            self._shards = shards
            self._built = True
            logger.debug("built SparseIndex: %d rows, %d postings, %d shards", self._n, csr.nnz, len(shards))

    # ------------------------------------------------------------------ search
    def search(self, queries: SparseVectors, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k rows by inner product for every query.

        Args:
            queries: ``[q, width]`` sparse queries in the index's dimension.
            top_k: results per query.

        Returns:
            ``(scores [q, top_k] float32, rows [q, top_k] int64)``, best first, ties by smaller
            row; padded with (-inf, -1) only where ``top_k > len(self)``.

        Raises:
            DataError: wrong dimension or NaN/inf in the queries; a latent repeated within a row
                of the indexed codes (found when the posting lists are built).
            ConfigError: ``top_k`` not a positive integer.
        """
        top_k = _check_top_k(top_k)
        if queries.dim != self.dim:
            raise DataError(f"queries have dimension {queries.dim}, the index has {self.dim}")
        _check_finite(queries, "queries")
        self._build()
        nq = len(queries)
        scores = np.full((nq, top_k), -np.inf, np.float32)
        rows = np.full((nq, top_k), -1, np.int64)
        if nq == 0 or self._n == 0:
            return scores, rows
        kk = min(top_k, self._n)
        found = [self._search_shard(sh, queries, min(kk, sh.n)) for sh in self._shards]
        if len(found) == 1:
            scores[:, :kk], rows[:, :kk] = found[0]
        else:
            # Shards are in row order and each is sorted by (score desc, row asc), so a stable
            # sort of their concatenation by score keeps ties in ascending row order.
            cat_s = np.concatenate([f[0] for f in found], axis=1)
            cat_r = np.concatenate([f[1] for f in found], axis=1)
            order = np.argsort(-cat_s, axis=1, kind="stable")[:, :kk]
            scores[:, :kk] = np.take_along_axis(cat_s, order, axis=1)
            rows[:, :kk] = np.take_along_axis(cat_r, order, axis=1)
        return scores, rows

    def _search_shard(self, shard: _Shard, queries: SparseVectors, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of one shard: ``(scores [q, top_k], global rows [q, top_k])``."""
        nq = len(queries)
        scores = np.empty((nq, top_k), np.float32)
        rows = np.empty((nq, top_k), np.int64)
        if shard.native:
            q_idx, q_val = queries.indices, queries.values
            parts = np.array_split(np.arange(nq), min(self.threads, nq))

            def run(sel: np.ndarray) -> None:
                s, r = native.topk(self._native, shard.n, shard.ptr_np, shard.docs_np, shard.vals_np,
                                   q_idx[sel], q_val[sel], top_k, _NATIVE_TILE_ROWS)
                scores[sel], rows[sel] = s, r

            # ctypes releases the GIL: each thread runs the kernel on its own slice of queries
            if len(parts) > 1:
                with ThreadPoolExecutor(max_workers=len(parts)) as pool:
                    list(pool.map(run, parts))
            else:
                run(parts[0])
        elif self.method in ("loop", "native"):
            # Few queries per buffer: the rows being scattered into should stay cache-resident
            # (measured at N=1M: 1 query per block is 2.7x faster than 8).
            block = self._query_block or max(1, min(8, _CPU_CACHE_ELEMS // shard.n))
            starts = list(range(0, nq, block))
            workers = min(self.threads, len(starts))
            # One reusable buffer per worker: a fresh [block, N] allocation costs page faults
            # comparable to the scoring itself.
            free: queue.SimpleQueue[torch.Tensor] = queue.SimpleQueue()
            for _ in range(workers):
                free.put(shard.new_buffer(min(block, nq)))

            def work(start: int) -> None:
                q = queries[start : start + block]
                buf = free.get()
                try:
                    s, r = shard.search_loop(q, top_k, buf)
                finally:
                    free.put(buf)
                scores[start : start + len(q)] = s
                rows[start : start + len(q)] = r

            # Our worker threads are the parallelism: intra-op threads (index_add_ splits long
            # posting lists) would oversubscribe the cores, so they are off during the search.
            with _single_intra_op_thread():
                if workers > 1:
                    with ThreadPoolExecutor(max_workers=workers) as pool:
                        list(pool.map(work, starts))
                else:
                    for start in starts:
                        work(start)
        else:
            budget = _CPU_BUFFER_ELEMS
            if self.device.type == "cuda":
                # A quarter of the free memory (the buffer plus its gathers), capped.
                free_bytes, _ = torch.cuda.mem_get_info(self.device)
                budget = max(1, min(_GPU_BUFFER_ELEMS, free_bytes // 16))
            block = self._query_block or max(1, min(nq, budget // shard.n))
            for start in range(0, nq, block):
                q = queries[start : start + block]
                s, r = shard.search_vectorised(q, top_k)
                scores[start : start + len(q)] = s
                rows[start : start + len(q)] = r
        rows += shard.start
        return scores, rows


class _Shard:
    """Posting lists (CSC) of the rows ``start .. start + n - 1`` of a `SparseIndex`."""

    def __init__(self, start: int, n: int, ptr: np.ndarray, docs: torch.Tensor, vals: torch.Tensor, method: str):
        self.start, self.n = start, n
        self.device = docs.device
        self.ptr_list = ptr.tolist()
        self.ptr = torch.from_numpy(ptr).to(self.device)
        self.docs, self.vals = docs, vals
        # The native kernel reads int32 rows; a shard of 2**31 rows or more runs the torch loop.
        self.native = method == "native" and docs.dtype == torch.int32
        if self.native:  # numpy views of the same CPU memory, for ctypes
            self.ptr_np, self.docs_np, self.vals_np = ptr, docs.numpy(), vals.numpy()
        # Per-latent views for the CPU loop: saves two slicing calls per (query, latent).
        views = method in ("loop", "native") and not self.native
        sizes = np.diff(ptr).tolist()
        self.doc_lists = torch.split(docs, sizes) if views else ()
        self.val_lists = torch.split(vals, sizes) if views else ()

    @classmethod
    def build(cls, csr, start: int, device: torch.device, method: str) -> _Shard:
        """From a scipy CSR block (padding removed) whose row 0 is index row ``start``."""
        # scipy's CSR -> CSC is a counting sort in C++: rows stay ascending inside each posting
        # list (sequential writes at search time); duplicates are kept, not summed.
        csc = csr.tocsc()
        ptr = csc.indptr.astype(np.int64)
        rows = csc.indices
        # A latent repeated within a row shows up as equal adjacent rows in one posting list.
        dup = rows[1:] == rows[:-1]
        inner = ptr[1:-1]
        dup[inner[(inner > 0) & (inner < len(rows))] - 1] = False
        if dup.any():
            bad = (np.unique(rows[1:][dup]) + start).tolist()
            raise DataError(f"codes contain a duplicate index within rows {describe_rows(bad)}", bad)
        n = csr.shape[0]
        docs = torch.from_numpy(rows.astype(np.int32 if n < 2**31 else np.int64, copy=False)).to(device)
        vals = torch.from_numpy(csc.data.astype(np.float32, copy=False)).to(device)
        return cls(start, n, ptr, docs, vals, method)

    def new_buffer(self, b: int) -> torch.Tensor:
        """``[b, n]`` zeros padded to whole selection blocks with -inf (padding never wins)."""
        n_pad = -(-self.n // _SELECT_BLOCK) * _SELECT_BLOCK
        buf = torch.zeros((b, n_pad), dtype=torch.float32, device=self.device)
        buf[:, self.n :] = -torch.inf
        return buf

    def search_loop(
        self, q: SparseVectors, top_k: int, buf: torch.Tensor | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """CPU: one fused ``index_add_`` per (query, latent) into the query's buffer row.

        ``buf`` (from `new_buffer`, at least ``len(q)`` rows) is used and left zeroed again.
        """
        if buf is None:
            buf = self.new_buffer(len(q))
        buf = buf[: len(q)]
        ptr, docs, vals = self.ptr_list, self.doc_lists, self.val_lists
        for b, (lat_row, val_row) in enumerate(zip(q.indices.tolist(), q.values.tolist())):
            row = buf[b, : self.n]
            for lat, qv in zip(lat_row, val_row):
                if qv != 0.0 and ptr[lat + 1] > ptr[lat]:
                    row.index_add_(0, docs[lat], vals[lat], alpha=qv)
        out = _select(buf, top_k)
        buf[:, : self.n].zero_()
        return out

    def search_vectorised(self, q: SparseVectors, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Any device: expand every posting entry of the block's latents and scatter at once."""
        dev = self.device
        buf = self.new_buffer(len(q))
        flat = buf.view(-1)
        live = q.values != 0
        q_row = torch.from_numpy(np.nonzero(live)[0]).to(dev)
        q_lat = torch.from_numpy(q.indices[live]).to(dev)
        q_val = torch.from_numpy(q.values[live]).to(dev)
        start = self.ptr[q_lat]
        length = self.ptr[q_lat + 1] - start
        # Expand in pieces so the int64 index arrays stay within budget on huge lists.
        ends = torch.cumsum(length, 0).cpu().numpy()
        i, n_entries = 0, len(ends)
        while i < n_entries:
            base = ends[i - 1] if i else 0
            j = int(np.searchsorted(ends, base + _GPU_EXPAND_ELEMS, side="right"))
            j = max(j, i + 1)
            ln = length[i:j]
            total = int(ends[j - 1] - base)
            if total:
                entry = torch.repeat_interleave(torch.arange(j - i, device=dev), ln, output_size=total)
                offset = torch.cumsum(ln, 0) - ln
                pos = torch.arange(total, device=dev) + (start[i:j] - offset)[entry]
                key = q_row[i:j][entry] * buf.shape[1] + self.docs[pos].long()
                flat.index_add_(0, key, self.vals[pos] * q_val[i:j][entry])
            i = j
        return _select(buf, top_k)


def _select(buf: torch.Tensor, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of every buffer row, ties by smaller column, via block maxima.

    The k-th largest block max ``t`` is a lower bound of the k-th best score (the k best
    blocks each hold a row scoring at least ``t``), so every top-k row, ties included, lies
    in a block whose max is ``>= t``; only those blocks are sorted.
    """
    b, n_pad = buf.shape
    nblocks = n_pad // _SELECT_BLOCK
    blocks = buf.view(b, nblocks, _SELECT_BLOCK)
    bmax = blocks.amax(dim=2)
    kb = min(top_k, nblocks)
    thr = torch.topk(bmax, kb, dim=1).values[:, -1:]
    need = int((bmax >= thr).sum(dim=1).max())
    # The `need` largest block maxima of each row include all its qualifying blocks; extra
    # blocks of a row hold only scores below its threshold and cannot enter its top-k.
    cand = torch.topk(bmax, need, dim=1).indices
    cand = torch.sort(cand, dim=1).values  # ascending blocks -> ascending rows after gather
    gathered = torch.gather(blocks, 1, cand.unsqueeze(2).expand(b, need, _SELECT_BLOCK))
    cand_scores = gathered.reshape(b, need * _SELECT_BLOCK)
    cand_rows = (cand.unsqueeze(2) * _SELECT_BLOCK + torch.arange(_SELECT_BLOCK, device=buf.device)).reshape(
        b, need * _SELECT_BLOCK
    )
    # A stable descending sort keeps equal scores in ascending row order.
    order = torch.sort(cand_scores, dim=1, descending=True, stable=True).indices[:, :top_k]
    scores = torch.gather(cand_scores, 1, order)
    rows = torch.gather(cand_rows, 1, order)
    return scores.cpu().numpy(), rows.cpu().numpy().astype(np.int64)


# ------------------------------------------------------------------------------------ re-ranking
Id = Hashable
VectorLookup = Mapping[Id, np.ndarray] | Callable[[list[Id]], np.ndarray]
CodeLookup = Mapping[Id, object] | Callable[[list[Id]], SparseVectors]


def _unique_candidates(candidates: Sequence[Sequence[Id]]) -> tuple[list[list[Id]], list[Id], list[list[int]]]:
    """Per-query candidates without repeats (first kept), the distinct ids, and their positions."""
    per_query: list[list[Id]] = []
    distinct: dict[Id, int] = {}
    where: list[list[int]] = []
    for cands in candidates:
        seen: dict[Id, None] = {}
        for c in cands:
            seen.setdefault(c, None)
        ids = list(seen)
        per_query.append(ids)
        where.append([distinct.setdefault(c, len(distinct)) for c in ids])
    return per_query, list(distinct), where


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


def _lookup_codes(codes: CodeLookup, ids: list[Id], dim: int) -> SparseVectors:
    if callable(codes) and not isinstance(codes, Mapping):
        out = codes(ids)
        if not isinstance(out, SparseVectors) or len(out) != len(ids):
            raise DataError(f"code lookup must return SparseVectors with {len(ids)} rows")
        return out
    missing = [i for i in ids if i not in codes]
    if missing:
        raise DataError(f"no sparse code for candidate ids {describe_rows(missing)}", missing)
    pairs: list[tuple[list[int], list[float]]] = []
    for i in ids:
        c = codes[i]
        if isinstance(c, SparseVectors):
            live = c.values[0] != 0
            pairs.append((c.indices[0][live].tolist(), c.values[0][live].tolist()))
        elif isinstance(c, Mapping):  # Milvus {index: value}
            pairs.append(([int(k) for k in c], [float(v) for v in c.values()]))
        else:  # Qdrant-style (indices, values)
            ind, val = c
            pairs.append((list(ind), list(val)))
    return SparseVectors.from_qdrant(pairs, dim) if pairs else SparseVectors.empty(dim, 1)


class Reranker:
    """Exact re-ranking of per-query candidate ids (e.g. a database's sparse ANN results).

    Scores are computed in float64 on the device (CUDA when available), so the order is that of
    exact dot products; equal scores keep the order in which the candidates were given. Repeated
    candidate ids of one query are scored once (first occurrence kept). Ids may be any hashable
    (int or str).

    Args:
        device: torch device; ``None`` = CUDA when available, else CPU.
        batch_size: candidate pairs scored per device batch (bounds memory).
    """

    def __init__(self, device: str | torch.device | None = None, batch_size: int = 1 << 16) -> None:
        self.device = resolve_device(device)
        self.batch_size = max(1, int(batch_size))

    def rerank_dense(
        self,
        queries: np.ndarray,
        candidates: Sequence[Sequence[Id]],
        vectors: VectorLookup,
        top_k: int | None = None,
    ) -> list[tuple[list[Id], np.ndarray]]:
        """Re-rank by the exact dense dot product ``<query, vector>``.

        Args:
            queries: ``[q, d]`` dense query vectors.
            candidates: ``q`` lists of candidate ids.
            vectors: ``id -> [d]`` mapping, or a callable taking a list of ids and returning
                ``[len(ids), d]`` (called once with every distinct candidate).
            top_k: keep this many per query (all when ``None``).

        Returns:
            Per query ``(ids, scores [m] float64)``, best first.

        Raises:
            DataError: NaN/inf or mismatched dimensions, a query count that differs from
                ``len(candidates)``, or candidate ids without a vector.
        """
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        self._check_queries(q, len(candidates))
        per_query, distinct, where = _unique_candidates(candidates)
        if not distinct:
            return [([], np.zeros(0, np.float64)) for _ in per_query]
        vec = _lookup_dense(vectors, distinct)
        if vec.shape[1] != q.shape[1]:
            raise DataError(f"candidate vectors have dimension {vec.shape[1]}, queries {q.shape[1]}")
        bad = ~np.isfinite(vec).all(axis=1)
        if bad.any():
            names = [distinct[i] for i in np.flatnonzero(bad)]
            raise DataError(f"candidate vectors contain NaN or inf at ids {describe_rows(names)}", names)
        qt = torch.from_numpy(q).to(self.device, torch.float64)
        vt = torch.from_numpy(vec).to(self.device, torch.float64)

        def score(qi: torch.Tensor, ci: torch.Tensor) -> torch.Tensor:
            return (qt[qi] * vt[ci]).sum(dim=1)

        return self._rank(per_query, where, score, top_k)

    def rerank_sparse(
        self,
        query_codes: SparseVectors,
        candidates: Sequence[Sequence[Id]],
        codes: CodeLookup,
        top_k: int | None = None,
    ) -> list[tuple[list[Id], np.ndarray]]:
        """Re-rank by the exact sparse dot product of the codes.

        Args:
            query_codes: ``[q, width]`` query codes.
            candidates: ``q`` lists of candidate ids.
            codes: ``id -> code`` mapping (a 1-row `SparseVectors`, a Milvus ``{index: value}``
                dict or a Qdrant-style ``(indices, values)`` pair), or a callable taking a list of
                ids and returning their `SparseVectors` (called once with every distinct candidate).
            top_k: keep this many per query (all when ``None``).

        Returns:
            Per query ``(ids, scores [m] float64)``, best first.

        Raises:
            DataError: NaN/inf, mismatched dimensions or counts, or ids without a code.
        """
        _check_finite(query_codes, "query codes")
        if len(query_codes) != len(candidates):
            raise DataError(f"{len(query_codes)} queries but {len(candidates)} candidate lists")
        per_query, distinct, where = _unique_candidates(candidates)
        if not distinct:
            return [([], np.zeros(0, np.float64)) for _ in per_query]
        cand = _lookup_codes(codes, distinct, query_codes.dim)
        if cand.dim != query_codes.dim:
            raise DataError(f"candidate codes have dimension {cand.dim}, queries {query_codes.dim}")
        _check_finite(cand, "candidate codes")
        dev = self.device
        # Queries as dense rows are small ([q, dim]); candidates stay sparse and gather from them.
        q_idx = torch.from_numpy(query_codes.indices).to(dev)
        q_val = torch.from_numpy(query_codes.values).to(dev, torch.float64)
        c_idx = torch.from_numpy(cand.indices).to(dev)
        c_val = torch.from_numpy(cand.values).to(dev, torch.float64)
        dim = query_codes.dim

        def score(qi: torch.Tensor, ci: torch.Tensor) -> torch.Tensor:
            # Dense copies of just this batch's queries: memory [batch queries, dim].
            uq, inv = torch.unique(qi, return_inverse=True)
            dense = torch.zeros((len(uq), dim), dtype=torch.float64, device=dev)
            dense.scatter_add_(1, q_idx[uq], q_val[uq])
            return (torch.gather(dense[inv], 1, c_idx[ci]) * c_val[ci]).sum(dim=1)

        return self._rank(per_query, where, score, top_k, pair_budget=max(1, (1 << 24) // max(dim, 1)))

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_queries(q: np.ndarray, n_lists: int) -> None:
        if q.ndim != 2:
            raise DataError(f"queries must be [q, d], got shape {q.shape}")
        if q.shape[0] != n_lists:
            raise DataError(f"{q.shape[0]} queries but {n_lists} candidate lists")
        bad = ~np.isfinite(q).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad).tolist()
            raise DataError(f"queries contain NaN or inf at rows {describe_rows(rows)}", rows)

    def _rank(
        self,
        per_query: list[list[Id]],
        where: list[list[int]],
        score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        top_k: int | None,
        pair_budget: int | None = None,
    ) -> list[tuple[list[Id], np.ndarray]]:
        if top_k is not None:
            top_k = _check_top_k(top_k)
        lengths = np.array([len(c) for c in per_query], np.int64)
        q_of_pair = torch.from_numpy(np.repeat(np.arange(len(per_query)), lengths)).to(self.device)
        c_of_pair = torch.from_numpy(np.fromiter((i for w in where for i in w), np.int64, int(lengths.sum())))
        c_of_pair = c_of_pair.to(self.device)
        step = min(self.batch_size, pair_budget or self.batch_size)
        parts = [score(q_of_pair[s : s + step], c_of_pair[s : s + step]) for s in range(0, len(q_of_pair), step)]
        flat = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=self.device)
        # Pad to [q, max candidates] with -inf and sort each row once; stability keeps input order.
        width = int(lengths.max(initial=0))
        padded = torch.full((len(per_query), max(width, 1)), -torch.inf, dtype=torch.float64, device=self.device)
        slot = torch.from_numpy(np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths))
        padded[q_of_pair, slot.to(self.device)] = flat
        sc, order = torch.sort(padded, dim=1, descending=True, stable=True)
        sc, order = sc.cpu().numpy(), order.cpu().numpy()
        out: list[tuple[list[Id], np.ndarray]] = []
        for i, ids in enumerate(per_query):
            m = len(ids) if top_k is None else min(len(ids), top_k)
            out.append(([ids[j] for j in order[i, :m]], sc[i, :m].copy()))
        return out
