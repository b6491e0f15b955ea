"""`SparseIndex`: exact brute-force top-k over sparse codes by inverted lists (ground truth, speed benchmark)."""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch
from scipy import sparse as sp

from csr_vdb import native
from csr_vdb.device import resolve_device, single_intra_op_thread
from csr_vdb.errors import ConfigError, DataError, describe_rows
from csr_vdb.sparse import SparseVectors
from csr_vdb.validation import check_codes, check_top_k

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
        check_codes(codes, "codes")
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
        top_k = check_top_k(top_k)
        if queries.dim != self.dim:
            raise DataError(f"queries have dimension {queries.dim}, the index has {self.dim}")
        check_codes(queries, "queries")
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
            # Few queries per buffer: the rows being scattered into should stay cache-resident.
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
            with single_intra_op_thread():
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
