"""Settings of a CSR encoder (`CSRConfig`, saved beside the weights) and of its training (`TrainConfig`)."""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Positives = Literal["neighbors", "noise", "labels", "pairs", "none"]
QueryProjection = Literal["encoder", "decoder"]

#: Default query non-zeros of the decoder projection, in units of k (capped at hidden_dim). Chosen on
#: SciFact's *train* queries, where quality stopped rising at this width; more non-zeros make a
#: database's inverted-index search walk more posting lists.
DECODER_QUERY_K_FACTOR = 16
#: Candidates re-scored per query when neither the call nor the config's ``search_candidates`` says.
DEFAULT_CANDIDATES = 100


class QueryWidthReport(BaseModel):
    """How a model's search-query width (``k_query``) was chosen for a recall floor
    (`csr_vdb.query_width.fit_query_width`), kept in its config so that ``csr-vdb eval`` shows it."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(gt=0, description="The chosen width: entries of the database's search query.")
    floor: float = Field(description="Recall@10 the width had to reach (absolute).")
    recall_floor: float = Field(description="The floor asked for, as a share of the full-width recall.")
    recall: float = Field(description="Recall@10 of search + re-score at the chosen width.")
    full_recall: float = Field(description="Recall@10 at the full decoder-query width.")
    full_width: int = Field(gt=0, description="The full decoder-query width the floor is relative to.")
    recalls: dict[int, float] = Field(default_factory=dict, description="Recall@10 of every width tried.")
    candidates: int = Field(gt=0, description="Candidates searched per query before the re-score.")
    met: bool = Field(description="Whether the chosen width reaches the floor (else the widest tried).")
    queries: int = Field(ge=0, description="Self-queries measured (rows of the training sample).")
    rows: int = Field(ge=0, description="Rows searched (the training sample).")


class QueryWidthFields(BaseModel):
    """The query width a report shows (``csr-vdb train``'s summary, ``csr-vdb eval``'s report)."""

    query_width: int | None = Field(None, description="Entries of the database's search query (the model's k_query).")
    query_width_report: dict[str, Any] | None = Field(
        None, description="How the query width was chosen at training time (--query-width auto): recall per width, floor."
    )

    @staticmethod
    def of(config: CSRConfig, projection: QueryProjection) -> dict[str, Any]:
        """The two fields for a model's ``config`` searched with ``projection``."""
        report = config.query_width
        return {"query_width": config.k_query_for(projection),
                "query_width_report": report.model_dump() if report is not None else None}


class CSRConfig(BaseModel):
    """Shape and behaviour of a CSR encoder (arXiv 2503.01776); rebuilt with ``CSRConfig(**cfg)``.

    The vocabulary (``input_dim``, ``hidden_dim``, ``k``, ``k_aux``, ``dead_threshold``) follows
    sentence-transformers' CSR module so that models port over.
    """

    model_config = ConfigDict(extra="forbid")

    input_dim: int = Field(gt=0, description="Dimension d of the dense embeddings the encoder reads.")
    hidden_dim: int = Field(
        gt=0, description="Number h of latents (dimension of the sparse codes); the paper's sweet spot is 4d."
    )
    k: int = Field(gt=0, description="Active latents kept per document code (TopK).")
    k_query: int | None = Field(
        default=None, gt=0, description="Active latents kept per query code; None uses k (asymmetric k when set)."
    )
    query_projection: QueryProjection = Field(
        default="encoder",
        description=(
            "How query codes are made. 'encoder': the TopK code, like documents. 'decoder': the query's "
            "projection on the decoder atoms (W_dec x), its largest positive entries kept, so that "
            "<query, doc code> ranks documents by <x, reconstruction(doc)> (asymmetric retrieval: "
            "question -> passage). Default query k for 'decoder' is min(16 k, hidden_dim)."
        ),
    )
    search_candidates: int | None = Field(
        default=None,
        gt=0,
        description=(
            "Candidates a search asks the database for before re-scoring them exactly "
            "(`Retriever.search` and `csr-vdb search` when not given); None: 100."
        ),
    )
    query_width: QueryWidthReport | None = Field(
        default=None, description="How k_query was chosen for a recall floor at training time, if it was."
    )
    k_aux: int = Field(512, gt=0, description="Dead latents used by the auxiliary loss (clamped to hidden_dim).")
    dead_threshold: int = Field(
        10_000, gt=0, description="A latent is dead after this many training ROWS without a positive activation."
    )
    normalize: Literal["none", "l2"] = Field(
        default="l2", description="Input normalisation before encoding: 'l2' for cosine collections, 'none' otherwise."
    )
    doc_codes: Literal["topk", "pursuit"] = Field(
        default="topk",
        description=(
            "How documents are encoded. 'topk': the encoder's TopK code (as in training). 'pursuit': the k decoder "
            "atoms chosen by non-negative orthogonal matching pursuit among the doc's `pursuit_candidates` most "
            "correlated atoms, coefficients fitted by non-negative least squares (csr_vdb.pursuit): a better "
            "k-sparse reconstruction, which is what decoder-projection queries score against; with "
            "normalize_codes the code is scaled so that its reconstruction (without b_pre) has unit norm. "
            "Slower to encode than TopK."
        ),
    )
    pursuit_candidates: int = Field(
        default=256, gt=0, description="'pursuit' doc codes: atoms considered per document (clamped to k..hidden_dim)."
    )
    normalize_codes: bool = Field(
        default=False,
        description="L2-normalise each code's values at encode time, so the dot product of codes is their cosine.",
    )
    bias_latent: bool = Field(
        default=False,
        description=(
            "Document codes carry the pre-bias b_pre as one more latent (index hidden_dim, always active, counted "
            "in k: k-1 atoms + the bias latent), so that a code decodes to the whole reconstruction "
            "x_hat = W_dec^T z + b_pre; with normalize_codes the code is scaled so that x_hat has unit norm, and a "
            "signed decoder-projection query scores exactly cos(x, x_hat) (the re-scorer of database candidates; "
            "search queries leave the bias latent out, its posting list holds every document). Codes then have "
            "hidden_dim + 1 dimensions (`code_dim`); needs k >= 2."
        ),
    )
    source_collection: str | None = Field(default=None, description="Collection the encoder was trained on, if known.")
    source_model: str | None = Field(default=None, description="Name of the dense embedding model, if known.")
    data_fingerprint: str | None = Field(
        default=None, description="sha256 of the first training rows + row count + dim (set by train_encoder)."
    )

    @model_validator(mode="after")
    def _check_sizes(self) -> CSRConfig:
        if self.k > self.hidden_dim:
            raise ValueError(f"k ({self.k}) must not exceed hidden_dim ({self.hidden_dim})")
        if self.k_query is not None and self.k_query > self.hidden_dim:
            raise ValueError(f"k_query ({self.k_query}) must not exceed hidden_dim ({self.hidden_dim})")
        if self.bias_latent and self.k < 2:
            raise ValueError(f"bias_latent needs k >= 2 (k-1 atoms + the bias latent), got k={self.k}")
        return self

    @property
    def code_dim(self) -> int:
        """Dimension of the sparse codes: ``hidden_dim``, plus one for the bias latent."""
        return self.hidden_dim + int(self.bias_latent)

    def k_query_for(self, projection: QueryProjection = "encoder", k: int | None = None) -> int:
        """The query k in effect: non-zeros of a query code made with ``projection``.

        ``k_query`` when set; otherwise ``k`` for the encoder projection (TopK query codes, also
        training's query side) and ``min(DECODER_QUERY_K_FACTOR * k, hidden_dim)`` for the decoder
        projection. With ``k`` (a document k other than the model's, e.g. in a k sweep) the width
        follows that k and ``k_query`` is not used.
        """
        if k is None:
            if self.k_query is not None:
                return self.k_query
            k = self.k
        return k if projection == "encoder" else min(DECODER_QUERY_K_FACTOR * k, self.hidden_dim)

    def k_query_alone(self, projection: QueryProjection | None = None) -> int:
        """Width of a search query whose database ranking is used as it is (no exact re-score after):
        the decoder projection's full width, ``min(DECODER_QUERY_K_FACTOR * k, hidden_dim)``, since
        ``k_query`` narrows the search of a query path that re-scores its candidates; for the
        encoder projection the query k in effect. ``projection``: the config's when None."""
        if (projection or self.query_projection) == "decoder":
            return self.k_query_for("decoder", self.k)
        return self.k_query_for("encoder")

    @property
    def query_k(self) -> int:
        """Deprecated: ``k_query_for()``."""
        warnings.warn("CSRConfig.query_k is deprecated; use k_query_for()", DeprecationWarning, stacklevel=2)
        return self.k_query_for()

    def query_k_for(self, projection: str, k: int | None = None) -> int:
        """Deprecated: `k_query_for`."""
        warnings.warn("CSRConfig.query_k_for is deprecated; use k_query_for", DeprecationWarning, stacklevel=2)
        return self.k_query_for(projection, k)  # type: ignore[arg-type]


class TrainConfig(BaseModel):
    """How `csr_vdb.training.train_encoder` trains a `CSREncoder`.

    Defaults: Adam lr 4e-4 (the official CSR code; the paper's 4e-5 is slow on small
    collections), eps 6.25e-10 (paper), batch 1024, 10 epochs, beta_aux 1/32, gamma 1,
    mined nearest-neighbour positives inside the batch, InfoNCE on code cosines at temperature 0.05.
    `csr_vdb.recipes.default_configs` gives the measured recipe for a collection.
    """

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=10, gt=0, description="Passes over the training rows.")
    batch_size: int = Field(default=1024, ge=2, description="Rows per optimisation step.")
    lr: float = Field(default=4e-4, gt=0, description="Adam learning rate.")
    lr_decay: Literal["none", "cosine"] = Field(
        default="none",
        description="Learning-rate schedule over the planned steps: constant, or cosine decay from lr to 0.",
    )
    eps: float = Field(default=6.25e-10, gt=0, description="Adam epsilon (paper: 6.25e-10).")
    weight_decay: float = Field(default=0.0, ge=0, description="Adam weight decay (0 in the paper).")
    beta_aux: float = Field(default=1 / 32, ge=0, description="Weight of the auxiliary (dead-latent) loss.")
    gamma: float = Field(default=1.0, ge=0, description="Weight of the contrastive loss (0 disables it).")
    positives: Positives = Field(
        default="neighbors",
        description=(
            "Contrastive positives: 'neighbors' (each row's dense nearest neighbour in the batch plus a pool of "
            "recent rows), 'noise' (a noisy view of the row), 'labels' (SupCon on source labels), 'pairs' "
            "((query, doc) pairs given to train_encoder, in-batch negatives), 'none'."
        ),
    )
    temperature: float = Field(default=0.05, gt=0, description="InfoNCE temperature on code similarities.")
    similarity: Literal["dot", "cosine"] = Field(
        default="cosine",
        description=(
            "Code similarity inside the contrastive loss. 'cosine' keeps InfoNCE from inflating code norms "
            "(with 'dot' it fights reconstruction)."
        ),
    )
    neighbor_pool: int = Field(
        default=0,
        ge=0,
        description="Extra recent rows (a FIFO of past batches) searched for each row's nearest-neighbour positive.",
    )
    noise_std: float = Field(
        default=0.05,
        gt=0,
        description="'noise' positives: Gaussian noise std per unit-norm row (plus 10% input dropout).",
    )
    pairs_batch_size: int | None = Field(
        default=None, ge=2, description="'pairs': pairs per step (None = batch_size, capped at the number of pairs)."
    )
    k_start: int | None = Field(
        default=None, gt=0, description="CSRv2 k-annealing start k0 (<= hidden_dim/4); None disables annealing."
    )
    anneal_fraction: float = Field(
        default=0.7, gt=0, le=1, description="Fraction of the total steps over which k anneals from k_start to k."
    )
    val_fraction: float = Field(
        default=0.05, ge=0, lt=0.5, description="Fraction of the stream held out for validation (0 disables it)."
    )
    max_val_rows: int = Field(default=8192, gt=0, description="Cap on held-out validation rows kept in memory.")
    eval_every: int | None = Field(
        default=None, gt=0, description="Evaluate on the validation rows every N steps (None: once per epoch)."
    )
    patience: int | None = Field(
        default=3, gt=0, description="Stop after this many evaluations without improvement (None: never stop early)."
    )
    min_delta: float = Field(default=1e-4, ge=0, description="Relative improvement of validation loss that counts.")
    restore_best: bool = Field(default=True, description="Return the weights of the best validation evaluation.")
    max_steps: int | None = Field(default=None, gt=0, description="Hard cap on optimisation steps.")
    log_every: int = Field(default=10, gt=0, description="Steps between entries of the loss curves in the report.")
    init_rows: int = Field(default=16384, gt=0, description="Rows read up front to initialise b_pre to the data mean.")
    seed: int = Field(default=0, description="Seed for weights, shuffling, hold-out and noise.")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="'auto' = CUDA when present.")
    threads: int | None = Field(
        default=None, gt=0, description="torch CPU threads while training (None leaves torch's setting)."
    )
