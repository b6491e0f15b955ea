"""Measured default settings for training a CSR encoder on a collection (`default_configs`)."""

from __future__ import annotations

import math

from csr_vdb.config import CSRConfig, TrainConfig
from csr_vdb.errors import ConfigError

#: Optimisation steps the defaults aim for: quality kept rising with steps up to a few thousand
#: on 5k-10k row collections.
TARGET_STEPS = 2000
#: Entries of the database's search query (the decoder projection's largest): the exact re-score
#: of `SEARCH_CANDIDATES` candidates with the whole signed query then keeps the quality of the
#: 512-entry query while the database walks about 1/26 of the postings (bench/README.md,
#: query_width.py and scale.py).
QUERY_WIDTH = 16
#: Candidates re-scored per query with `QUERY_WIDTH`-entry search queries.
SEARCH_CANDIDATES = 300
#: Cap on epochs, so that a tiny collection is not trained for hours.
MAX_EPOCHS = 200
#: Small collections take smaller batches: more steps per epoch, and in-batch negatives stay hard.
SMALL_BATCH = 256
LARGE_BATCH = 1024
SMALL_COLLECTION_ROWS = 50_000


def default_configs(
    input_dim: int,
    n_rows: int,
    k: int = 32,
    hidden_dim: int | None = None,
) -> tuple[CSRConfig, TrainConfig]:
    """Settings that reached the best measured quality for a collection of ``n_rows`` x ``input_dim``.

    Model: h = 4d (the paper's sweet spot); documents encoded by matching pursuit with the bias
    latent (k-1 atoms + ``b_pre``), codes L2-normalised; queries by the decoder projection, so that
    a database's search ranks by the cosine with each document's reconstruction and the signed
    query re-scores its candidates exactly; the search query keeps `QUERY_WIDTH` entries and
    `SEARCH_CANDIDATES` candidates are re-scored (`with_overrides` drops both for TopK queries). Training: InfoNCE on code cosines (temperature 0.1)
    with each row's dense nearest neighbour, mined in the batch plus a pool of the 4096 most recent
    rows, as the positive; Adam 1e-3 with cosine decay; batch 256 below `SMALL_COLLECTION_ROWS`
    rows (more steps per epoch), 1024 above; epochs for about `TARGET_STEPS` steps; no early
    stopping and no hold-out (the validation loss stops falling long before retrieval stops
    improving). bench/README.md (quality) shows the figures and how each choice was measured.

    Args:
        input_dim: dimension d of the dense embeddings.
        n_rows: rows available for training (the collection size, or the sample trained on).
        k: active latents per code.
        hidden_dim: latents h; default ``4 * input_dim`` (the paper's sweet spot).

    Returns:
        ``(CSRConfig, TrainConfig)``; callers may ``model_copy(update=...)`` either.

    Raises:
        ConfigError: non-positive sizes or ``k`` larger than ``hidden_dim``.
    """
    if input_dim <= 0 or n_rows <= 0:
        raise ConfigError(f"input_dim and n_rows must be positive, got {input_dim} and {n_rows}")
    h = hidden_dim if hidden_dim is not None else 4 * input_dim
    if not 0 < k <= h:
        raise ConfigError(f"k must be in 1..{h} (hidden_dim), got {k}")
    batch = SMALL_BATCH if n_rows < SMALL_COLLECTION_ROWS else LARGE_BATCH
    batch = max(2, min(batch, n_rows))
    steps_per_epoch = math.ceil(n_rows / batch)
    epochs = max(1, min(MAX_EPOCHS, math.ceil(TARGET_STEPS / steps_per_epoch)))
    # documents by matching pursuit over the decoder, queries by the decoder projection: the best
    # measured pair on both benchmarks (quality.py's csr against csr_topk); the bias latent (k-1
    # atoms + b_pre) makes the signed query's re-score the exact cosine with the reconstruction
    # (seeds.py's csr against csr_no_bias)
    model = CSRConfig(
        input_dim=input_dim,
        hidden_dim=h,
        k=k,
        k_query=min(QUERY_WIDTH, h),
        search_candidates=SEARCH_CANDIDATES,
        normalize_codes=True,
        query_projection="decoder",
        doc_codes="pursuit",
        bias_latent=k >= 2,
    )
    train = TrainConfig(
        epochs=epochs,
        batch_size=batch,
        # lr 1e-3 helped SciFact over 4e-4; cosine decay to 0 over the planned steps brought
        # Banking77 back to 4e-4's level with SciFact unchanged
        lr=1e-3,
        lr_decay="cosine",
        positives="neighbors",
        neighbor_pool=4096,
        temperature=0.1,
        # early stopping on the validation loss (and restoring its best weights) cost SciFact
        # quality: the loss stops falling long before retrieval stops improving
        patience=None,
        restore_best=False,
        val_fraction=0.0,
    )
    return model, train


def with_overrides(model: CSRConfig, **changes: object) -> CSRConfig:
    """The recipe's model settings with ``changes`` (`CSRConfig` fields), keeping them coherent.

    Queries by the encoder projection (``query_projection="encoder"``, TopK codes like the
    documents) get neither the recipe's decoder search width nor its candidate count, nor the
    bias latent, unless ``changes`` sets them.

    Raises:
        pydantic.ValidationError: an unknown field or an invalid combination.
    """
    fields = {**model.model_dump(), **changes}
    if fields.get("query_projection") == "encoder":
        for name in ("k_query", "search_candidates"):
            if name not in changes:
                fields[name] = None
        if "bias_latent" not in changes:
            fields["bias_latent"] = False
    return CSRConfig(**fields)
