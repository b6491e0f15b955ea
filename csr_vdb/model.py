"""`CSREncoder`: the CSR sparse autoencoder (arXiv 2503.01776) that turns dense embeddings into k-sparse codes."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from csr_vdb.config import CSRConfig
from csr_vdb.device import resolve_device
from csr_vdb.errors import ConfigError, DataError, ModelError
from csr_vdb.fileutil import atomic_write_bytes, atomic_write_json, sha256_file
from csr_vdb.kernels import selected_linear, sparse_decode, topk_indices
from csr_vdb.pursuit import pursuit_codes
from csr_vdb.sparse import SparseVectors
from csr_vdb.validation import check_dense

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the saved folder layout (config.json ``format_version``)."""
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
REPORT_FILE = "training_report.json"
NUMPY_QUERIES = 64
"""Full signed decoder queries of at most this many rows are projected in numpy on CPU (`CSREncoder.encode`)."""
MIN_ACTIVATION = 1e-6
"""Value given to a row's largest latent when TopK leaves no positive activation (Milvus rejects empty
sparse vectors, and a code must never be all zero)."""

_TENSOR_NAMES = ("W_enc", "W_dec", "b_enc", "b_pre")


class CSREncoder(nn.Module):
    """Contrastive Sparse Representation encoder (Wen et al., "Beyond Matryoshka", arXiv 2503.01776).

    ``z = ReLU(TopK_k(W_enc (x - b_pre) + b_enc))`` and ``x_hat = W_dec^T z + b_pre``.

    Parameters (all float32):
        W_enc: ``[hidden_dim, input_dim]`` encoder.
        W_dec: ``[hidden_dim, input_dim]`` decoder; row j is latent j's dictionary atom (unit norm,
            kept so by `normalize_decoder_`). Stored row-major so that sparse decoding is a gather.
        b_enc: ``[hidden_dim]`` encoder bias (zero at init).
        b_pre: ``[input_dim]`` pre-encoder bias, subtracted before encoding and added after decoding
            (initialised to the data mean by the trainer).

    At init the weights are tied (``W_enc == W_dec``) with unit-norm random atoms.

    Args:
        config: the encoder's shape and behaviour.
        device: "auto"/None (CUDA when present), "cpu", "cuda", or a torch device.
    """

    def __init__(self, config: CSRConfig, device: str | torch.device | None = None) -> None:
        super().__init__()
        self.config = config
        d, h = config.input_dim, config.hidden_dim
        w = torch.randn(h, d)
        w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.W_dec = nn.Parameter(w.clone())
        self.W_enc = nn.Parameter(w.clone())
        self.b_enc = nn.Parameter(torch.zeros(h))
        self.b_pre = nn.Parameter(torch.zeros(d))
        # rows seen since each latent last fired; training state only, never saved
        self.register_buffer("rows_since_fired", torch.zeros(h, dtype=torch.long), persistent=False)
        self.training_report: dict[str, Any] | None = None
        self.to(resolve_device(device))

    # ------------------------------------------------------------------ basics
    @property
    def device(self) -> torch.device:
        """Device holding the weights."""
        return self.W_enc.device

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder atom (row of ``W_dec``) to unit L2 norm, in place."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def dead_mask(self) -> torch.Tensor:
        """``[hidden_dim]`` bool: latents silent for more than ``dead_threshold`` training rows."""
        return self.rows_since_fired > self.config.dead_threshold

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Input normalisation (``normalize="l2"``): ``[n, input_dim]`` -> ``[n, input_dim]``."""
        if self.config.normalize == "l2":
            return F.normalize(x, dim=1)
        return x

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``W_enc (x - b_pre) + b_enc`` for preprocessed ``x [n, input_dim]`` -> ``[n, hidden_dim]``."""
        return torch.addmm(self.encoder_bias(), x, self.W_enc.T)

    def encoder_bias(self) -> torch.Tensor:
        """``b_enc - W_enc b_pre`` ``[hidden_dim]``: ``W_enc (x - b_pre) + b_enc = W_enc x + this``.

        Folding ``b_pre`` into the bias keeps its gradient a cheap matvec instead of a full
        ``[n, hidden_dim] x [hidden_dim, input_dim]`` product through the input.
        """
        return self.b_enc - self.W_enc @ self.b_pre

    def topk_codes(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable TopK codes of preprocessed ``x [n, input_dim]`` for training.

        Returns:
            ``(indices [n, k], values [n, k] >= 0)``, slots sorted by pre-activation.
        """
        bias = self.encoder_bias()
        with torch.no_grad():
            pre = torch.addmm(bias, x, self.W_enc.T)
            idx = topk_indices(pre, k)
        return idx, F.relu(selected_linear(x, self.W_enc, bias, idx, pre))

    def decode_sparse(self, indices: torch.Tensor, values: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """``x_hat = sum_j values[:, j] * W_dec[indices[:, j]] (+ b_pre)``.

        Args:
            indices: ``[n, w]`` int64 latent ids.
            values: ``[n, w]`` activations (0 = padding).
            bias: add ``b_pre`` (False for the auxiliary residual reconstruction).

        Returns:
            ``[n, input_dim]`` reconstruction.
        """
        # a gather + weighted sum (n*w*d work) with a sparse backward, instead of a dense n*h*d matmul
        out = sparse_decode(indices, values, self.W_dec)
        return out + self.b_pre if bias else out

    def forward(self, x: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode and reconstruct a preprocessed batch (differentiable; used for training).

        Args:
            x: ``[n, input_dim]`` preprocessed input.
            k: active latents (default ``config.k``).

        Returns:
            ``(indices [n, k], values [n, k] >= 0, x_hat [n, input_dim])``.
        """
        idx, vals = self.topk_codes(x, k or self.config.k)
        return idx, vals, self.decode_sparse(idx, vals)

    # --------------------------------------------------------------- inference
    def _as_tensor(self, x: np.ndarray | torch.Tensor, what: str, validated: bool = False) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            x = x.detach().to("cpu", torch.float32).numpy()
        arr = check_dense(x, dim=self.config.input_dim, what=what, validated=validated)
        return torch.from_numpy(arr).to(self.device)

    @torch.no_grad()
    def encode(
        self,
        x: np.ndarray | torch.Tensor,
        k: int | None = None,
        kind: Literal["doc", "query"] = "doc",
        batch_size: int = 8192,
        projection: Literal["encoder", "decoder"] | None = None,
        signed: bool = False,
        *,
        validated: bool = False,
    ) -> SparseVectors:
        """Sparse codes of dense embeddings.

        Every row gets at most ``k`` strictly positive values and at least one: when TopK leaves no
        positive activation the largest pre-activation is kept as `MIN_ACTIVATION` (documented
        deviation from the paper's ReLU, because databases reject empty sparse vectors).

        Args:
            x: ``[n, input_dim]`` (or ``[input_dim]``) float16/32/64 numpy array or torch tensor.
            k: non-zeros; default ``config.k`` for documents, ``config.k_query_for`` for queries.
            kind: "doc" or "query" (selects the default k and, for queries, the projection).
            batch_size: rows per forward pass.
            projection: queries only; ``None`` = ``config.query_projection``. ``"encoder"``: the TopK
                code (as documents). ``"decoder"``: the ``k`` largest positive entries of ``W_dec x``
                (``x`` preprocessed), so that ``<query, doc code>`` is the positive-query part of
                ``<x, decode(doc code)>``: documents are ranked by how well their reconstruction
                matches the query, which suits asymmetric retrieval (questions against passages);
                default ``k`` then ``config.k_query_for("decoder")``. The bias latent is left out:
                its posting list holds every document, which slows the database's search
                (measured by ``bench/rescore.py``), and the re-score adds its term exactly.
            signed: decoder-projection queries only: the entries of ``W_dec x`` (with ``bias_latent``
                also ``<x, b_pre>`` for the bias latent) with their signs, the ``k`` largest in
                magnitude, by default all ``code_dim`` of them, so that ``<query, doc code>`` is
                exactly ``<x, decode(doc code)>`` (the cosine of ``x`` with the document's whole
                reconstruction, for normalised codes with ``bias_latent``). Databases that only take
                non-negative query weights (Milvus) cannot search with it: it is the exact re-scorer
                of their candidates (`csr_vdb.retriever.Retriever`).
            validated: the caller has already checked the rows for NaN/inf and all-zero vectors (the
                migration pipeline, sync, `SparseWriter`): only the shape is checked here, so each
                row is scanned once. Other callers leave it False.

        Documents follow ``config.doc_codes``: the TopK code, or (``"pursuit"``) the k atoms and
        non-negative coefficients that matching pursuit fits to the embedding (`csr_vdb.pursuit`).
        With ``config.bias_latent`` a document code has k-1 atoms plus the bias latent (index
        ``hidden_dim``, value 1 before normalisation).

        Returns:
            `SparseVectors` ``[n, k]`` over ``code_dim``; slots sorted by value, padding (value 0,
            index 0) after the live entries. With ``normalize_codes`` each row has unit L2 norm
            (pursuit doc codes, and any doc code with ``bias_latent``: each row's reconstruction
            `decode` has unit norm).

        Raises:
            DataError: wrong dimension, NaN/inf or all-zero rows (named by row position), empty input,
                ``k`` outside ``1..code_dim`` (``2..`` for documents with ``bias_latent``), or
                ``signed`` without the decoder projection.
        """
        cfg = self.config
        if kind not in ("doc", "query"):
            raise DataError(f"kind must be 'doc' or 'query', got {kind!r}")
        if projection is None:
            projection = cfg.query_projection if kind == "query" else "encoder"
        if projection not in ("encoder", "decoder"):
            raise DataError(f"projection must be 'encoder' or 'decoder', got {projection!r}")
        if projection == "decoder" and kind != "query":
            raise DataError("the decoder projection is for queries only (kind='query')")
        if signed and projection != "decoder":
            raise DataError("signed codes are decoder-projection queries (kind='query', projection='decoder')")
        if k is None:
            k = cfg.k if kind == "doc" else (cfg.code_dim if signed else cfg.k_query_for(projection))
        bias_slot = kind == "doc" and cfg.bias_latent
        low = 2 if bias_slot else 1
        width = cfg.code_dim if signed else cfg.hidden_dim
        if not low <= int(k) <= (width + int(bias_slot)):
            raise DataError(f"k must be in {low}..{width + int(bias_slot)}, got {k}")
        k = int(k)
        atoms_k = k - int(bias_slot)
        shape = np.shape(x)
        rows = shape[0] if len(shape) == 2 else 1
        if signed and k >= width and self.device.type == "cpu" and rows <= NUMPY_QUERIES:
            return self._signed_projection(x, validated)
        t = self._as_tensor(x, "queries" if kind == "query" else "vectors", validated)
        was_training = self.training
        self.eval()
        idx_parts, val_parts = [], []
        try:
            pursuit = kind == "doc" and cfg.doc_codes == "pursuit"
            gram = self.W_dec @ self.W_dec.T if pursuit else None
            for start in range(0, t.shape[0], max(1, int(batch_size))):
                xb = self.preprocess(t[start : start + batch_size])
                if pursuit:
                    idx, vals = pursuit_codes(xb - self.b_pre, self.W_dec, gram, atoms_k, cfg.pursuit_candidates)
                elif projection == "decoder" and not signed:
                    vals, idx = (xb @ self.W_dec.T).topk(k, dim=1)
                elif projection == "decoder":
                    scores = xb @ self.W_dec.T
                    if cfg.bias_latent:
                        scores = torch.cat([scores, (xb @ self.b_pre)[:, None]], dim=1)
                    if k < scores.shape[1]:
                        idx = topk_indices(scores.abs().contiguous(), k)
                    else:
                        idx = torch.arange(scores.shape[1], device=scores.device).expand_as(scores)
                    vals = scores.gather(1, idx)
                else:
                    vals, idx = self.pre_activations(xb).topk(atoms_k, dim=1)
                if not signed:
                    if not bias_slot:  # (with it, the bias latent keeps the code non-empty)
                        # never an all-zero code: keep the largest pre-activation as a tiny positive value
                        vals[:, :1] = torch.where(vals[:, :1] > 0, vals[:, :1], torch.full_like(vals[:, :1], MIN_ACTIVATION))
                    vals = F.relu(vals)
                recon_scaled = pursuit or bias_slot
                if bias_slot:
                    idx = torch.cat([idx, torch.full_like(idx[:, :1], cfg.hidden_dim)], dim=1)
                    vals = torch.cat([vals, torch.ones_like(vals[:, :1])], dim=1)
                if cfg.normalize_codes and not signed:  # a signed query stays <x, .>, the exact score
                    if recon_scaled:
                        # unit-norm reconstruction: <decoder query, code> is then the cosine of the
                        # query with the document's reconstruction (without b_pre unless bias_latent)
                        norm = self._decode_codes(idx, vals).norm(dim=1, keepdim=True)
                        vals = vals / torch.where(norm > 0, norm, vals.norm(dim=1, keepdim=True))
                    else:
                        vals = vals / vals.norm(dim=1, keepdim=True).clamp_min(1e-30)
                if kind == "doc" or not signed:
                    vals, order = vals.sort(dim=1, descending=True)
                    idx = idx.gather(1, order)
                idx = torch.where(vals != 0, idx, torch.zeros_like(idx))
                idx_parts.append(idx.cpu())
                val_parts.append(vals.cpu())
        finally:
            self.train(was_training)
        return SparseVectors(torch.cat(idx_parts).numpy(), torch.cat(val_parts).numpy(), cfg.code_dim)

    def _signed_projection(self, x: np.ndarray | torch.Tensor, validated: bool = False) -> SparseVectors:
        """The full signed decoder query of a few rows, as one numpy product with the weights
        (``W_dec x`` and, with ``bias_latent``, ``<x, b_pre>``): a query's projection costs
        microseconds, far less than torch's per-operation overhead (`NUMPY_QUERIES`)."""
        if isinstance(x, torch.Tensor):
            x = x.detach().to("cpu", torch.float32).numpy()
        xb = check_dense(x, dim=self.config.input_dim, what="queries", validated=validated)
        if self.config.normalize == "l2":
            xb = xb / np.maximum(np.linalg.norm(xb, axis=1, keepdims=True), np.float32(1e-12))
        w = self.W_dec.detach().numpy()  # a view of the weights: no copy, always current
        proj = xb @ w.T
        if self.config.bias_latent:
            proj = np.concatenate([proj, (xb @ self.b_pre.detach().numpy())[:, None]], axis=1)
        idx = np.broadcast_to(np.arange(proj.shape[1], dtype=np.int64), proj.shape)
        return SparseVectors(idx, proj.astype(np.float32, copy=False), self.config.code_dim)

    def _decode_codes(self, idx: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        """``sum vals * atom[idx]`` with the bias latent's atom ``b_pre`` (index ``hidden_dim``) when
        configured, else the decoder atoms only (no ``b_pre``)."""
        if not self.config.bias_latent:
            return sparse_decode(idx, vals, self.W_dec)
        return sparse_decode(idx, vals, torch.cat([self.W_dec, self.b_pre[None, :]]))

    def with_config(self, **changes: Any) -> CSREncoder:
        """The same weights under other encode-time settings (``doc_codes``, ``bias_latent``,
        ``query_projection``, ``normalize_codes``, ...): a new encoder in eval mode, on this device.

        Raises:
            ConfigError: a change of a shape (``input_dim``, ``hidden_dim``) or an invalid config.
        """
        shaped = sorted({"input_dim", "hidden_dim"} & set(changes))
        if shaped:
            raise ConfigError(f"with_config keeps the weights, so it cannot change {', '.join(shaped)}")
        try:
            config = CSRConfig(**{**self.config.model_dump(), **changes})
        except ValidationError as exc:
            raise ConfigError(f"invalid encoder settings: {exc.errors()[0]['msg']}") from exc
        out = CSREncoder(config, device=self.device)
        out.load_state_dict(self.state_dict())
        return out.eval()

    def encode_queries(
        self,
        x: np.ndarray | torch.Tensor,
        k: int | None = None,
        batch_size: int = 8192,
        projection: Literal["encoder", "decoder"] | None = None,
        signed: bool = False,
        *,
        validated: bool = False,
    ) -> SparseVectors:
        """`encode` with ``kind="query"``: ``config.query_projection`` and its query k unless given."""
        return self.encode(x, k=k, kind="query", batch_size=batch_size, projection=projection, signed=signed,
                           validated=validated)

    @torch.no_grad()
    def decode(self, sparse: SparseVectors, batch_size: int = 8192) -> np.ndarray:
        """Reconstruct embeddings from codes: ``[n, input_dim]`` float32.

        The result approximates the *preprocessed* input (unit-norm with ``normalize="l2"``). Codes made
        with ``normalize_codes`` have lost their scale, so their reconstruction is scaled too. With
        ``bias_latent`` the bias latent's value weighs ``b_pre`` (it is not added again).

        Raises:
            DataError: the codes are over another dimension than ``code_dim``.
        """
        cfg = self.config
        if sparse.dim != cfg.code_dim:
            want = f"{cfg.code_dim} (hidden_dim + the bias latent)" if cfg.bias_latent else f"hidden_dim {cfg.hidden_dim}"
            raise DataError(f"codes have dimension {sparse.dim}, the encoder's codes {want}")
        problems = sparse.invalid_rows(allow_empty=True)
        problems.pop("duplicate index", None)  # duplicates simply add up, as in to_dense
        if problems:
            sparse.validate(allow_empty=True)
        out = []
        for start in range(0, len(sparse), max(1, int(batch_size))):
            idx = torch.from_numpy(sparse.indices[start : start + batch_size]).to(self.device)
            val = torch.from_numpy(sparse.values[start : start + batch_size]).to(self.device)
            idx = torch.where(val != 0, idx, torch.zeros_like(idx))
            rec = self._decode_codes(idx, val) if self.config.bias_latent else self.decode_sparse(idx, val)
            out.append(rec.cpu())
        if not out:
            return np.zeros((0, self.config.input_dim), np.float32)
        return torch.cat(out).numpy()

    # ------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``model.safetensors`` + ``config.json`` (+ ``training_report.json`` when trained).

        ``config.json`` holds the `CSRConfig`, the format version and the sha256 of the weights file.
        No pickle anywhere; both files are written atomically.

        Returns:
            The folder path.
        """
        from safetensors.torch import save as st_save

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {n: getattr(self, n).detach().to("cpu", torch.float32).contiguous() for n in _TENSOR_NAMES}
        # one metadata key only: safetensors orders several keys at random, and the bytes must be reproducible
        atomic_write_bytes(out / WEIGHTS_FILE, st_save(tensors, metadata={"format": "pt"}))
        meta = {
            "library": "csr-vdb",
            "format_version": FORMAT_VERSION,
            "architecture": "CSREncoder",
            "csr_config": self.config.model_dump(mode="json"),
            "weights_sha256": sha256_file(out / WEIGHTS_FILE),
            "tensors": {n: list(t.shape) for n, t in tensors.items()},
        }
        atomic_write_json(out / CONFIG_FILE, meta)
        if self.training_report is not None:
            atomic_write_json(out / REPORT_FILE, self.training_report)
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike[str], device: str | torch.device | None = None) -> CSREncoder:
        """Load a folder written by `save`, verifying format, checksum and tensor shapes.

        Raises:
            ModelError: missing folder/file, corrupt JSON, unknown format, invalid config, checksum
                mismatch, truncated/corrupt safetensors, missing tensors or shapes that do not fit.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        root = Path(directory)
        if not root.is_dir():
            raise ModelError(f"model folder not found: {root}")
        cfg_path, w_path = root / CONFIG_FILE, root / WEIGHTS_FILE
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise ModelError(f"model file missing: {p}")
        try:
            meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"corrupt model config {cfg_path}: {exc}") from exc
        if not isinstance(meta, dict) or "csr_config" not in meta:
            raise ModelError(f"{cfg_path} is not a csr-vdb model config (no 'csr_config')")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ModelError(
                f"{cfg_path} has format_version {meta.get('format_version')!r}; this csr-vdb reads {FORMAT_VERSION}"
            )
        try:
            config = CSRConfig(**meta["csr_config"])
        except (ValidationError, TypeError) as exc:
            first = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            raise ModelError(f"invalid model config in {cfg_path}: {first}") from exc
        expected = meta.get("weights_sha256")
        actual = sha256_file(w_path)
        if expected != actual:
            raise ModelError(f"checksum mismatch for {w_path}: config.json records {expected}, file has {actual}")
        try:
            tensors = load_file(str(w_path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"corrupt or truncated weights file {w_path}: {exc}") from exc
        shapes = {
            "W_enc": (config.hidden_dim, config.input_dim),
            "W_dec": (config.hidden_dim, config.input_dim),
            "b_enc": (config.hidden_dim,),
            "b_pre": (config.input_dim,),
        }
        for name, shape in shapes.items():
            if name not in tensors:
                raise ModelError(f"weights file {w_path} has no tensor {name!r}")
            if tuple(tensors[name].shape) != shape:
                raise ModelError(
                    f"tensor {name} in {w_path} has shape {tuple(tensors[name].shape)}, config needs {shape}"
                )
            if not torch.isfinite(tensors[name]).all():
                raise ModelError(f"tensor {name} in {w_path} holds NaN or inf")
        enc = cls(config, device="cpu")
        with torch.no_grad():
            for name in _TENSOR_NAMES:
                getattr(enc, name).copy_(tensors[name].to(torch.float32))
        report_path = root / REPORT_FILE
        if report_path.is_file():
            try:
                enc.training_report = json.loads(report_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                logger.warning("ignoring unreadable %s", report_path)
        enc.to(resolve_device(device))
        enc.eval()
        return enc

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"input_dim={c.input_dim}, hidden_dim={c.hidden_dim}, k={c.k}, "
            f"k_query={c.k_query_for(c.query_projection)}, query_projection={c.query_projection}, "
            f"doc_codes={c.doc_codes}, bias_latent={c.bias_latent}"
        )
