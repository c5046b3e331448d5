"""SASRec and DROS on the same backbone, predicting whether the user likes the target item.

Backbone (SASRec, Kang & McAuley 2018): each history item is its item vector + a liked/disliked flag
embedding + a position embedding; causal self-attention blocks; the last history position is the user
state h; logit = <h, e_target> / sqrt(d) + b_target + b. Item vectors are learned id embeddings (SASRec,
DROS) or a linear projection of frozen text embeddings (DROS-BERT, see `text_encoder`), which also covers
items never seen in training.

DROS (Yang et al., SIGIR'23, "A Generic Learning Framework for Sequential Recommendation with Distribution
Shifts") adds to the nominal loss a distributionally robust term: the worst-case expected loss over
distributions within a KL ball of the nominal item distribution, whose dual is

    L_dro = beta * log E_{j ~ w}[ exp(l_j / beta) ],   w_j proportional to (pop_j / sum pop) ** gamma

with l_j the squared error of the predicted probability (sigmoid of the logit) for item j given the
user's history, and the nominal distribution w the train popularity raised to gamma (0.05 in the paper).
As in the authors' code the expectation runs over the observed target (with its label) and unobserved
items taken as negatives (label 0): here `dro_negatives` items drawn uniformly from the train catalog per
record (an unbiased sample of the catalog sum), weighted by w. Total loss = BCE(target label) + alpha *
L_dro with alpha = 0.1, beta = 0.5 (paper defaults). The BCE part is identical to SASRec's, so the two
differ only by the DRO term.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

PAD, UNK = 0, 1  # item index 0 = padding, 1 = item unseen in training
FLAG_PAD, FLAG_DISLIKED, FLAG_LIKED = 0, 1, 2


@dataclass
class SequentialConfig:
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.2
    max_history: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 20
    min_steps: int = 100  # tiny K-shot train sets still get this many optimiser steps
    # DROS
    dro: bool = False
    dro_alpha: float = 0.1
    dro_beta: float = 0.5
    dro_gamma: float = 0.05
    dro_negatives: int = 20
    seed: int = 0


def _build_model(num_items: int, cfg: SequentialConfig, item_features=None):
    import torch
    from torch import nn

    class SASRecClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            d = cfg.dim
            self.item_emb = nn.Embedding(num_items, d, padding_idx=PAD)
            self.item_bias = nn.Embedding(num_items, 1, padding_idx=PAD)
            nn.init.normal_(self.item_emb.weight, std=0.05 if item_features is None else 0.0)
            nn.init.zeros_(self.item_bias.weight)
            if item_features is not None:
                self.register_buffer("features", torch.as_tensor(item_features, dtype=torch.float32))
                self.item_proj = nn.Linear(self.features.shape[1], d + 1)  # vector and bias
            self.flag_emb = nn.Embedding(3, d)
            self.pos_emb = nn.Embedding(cfg.max_history, d)
            layer = nn.TransformerEncoderLayer(
                d, cfg.num_heads, dim_feedforward=2 * d, dropout=cfg.dropout, batch_first=True, norm_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d)
            self.dropout = nn.Dropout(cfg.dropout)
            self.global_bias = nn.Parameter(torch.zeros(()))

        def item_vectors(self, ids):
            if item_features is None:
                return self.item_emb(ids), self.item_bias(ids).squeeze(-1)
            # text projection + an id residual (zero at start, stays zero for items unseen in training;
            # items added after training have text features but no id row: they read the UNK row)
            known = torch.where(ids < num_items, ids, torch.full_like(ids, UNK))
            vec, bias = self.item_emb(known), self.item_bias(known).squeeze(-1)
            out = self.item_proj(self.features[ids])
            return out[..., :-1] + vec, out[..., -1] + bias

        def user_state(self, hist_ids, hist_flags, lengths):
            # right-padded histories + causal attention: real positions never see padding
            vec, _ = self.item_vectors(hist_ids)
            pos = torch.arange(hist_ids.shape[1], device=hist_ids.device)
            x = self.dropout(vec + self.flag_emb(hist_flags) + self.pos_emb(pos))
            causal = nn.Transformer.generate_square_subsequent_mask(hist_ids.shape[1], device=hist_ids.device)
            h = self.norm(self.encoder(x, mask=causal, is_causal=True))
            return h[torch.arange(h.shape[0]), lengths - 1]

        def logits(self, user, item_ids):
            """user: (B, d); item_ids: (B,) or (B, N) -> logits of the same shape as item_ids."""
            vec, bias = self.item_vectors(item_ids)
            if item_ids.dim() == 1:
                dot = (user * vec).sum(-1)
            else:
                dot = torch.einsum("bd,bnd->bn", user, vec)
            return dot / math.sqrt(cfg.dim) + bias + self.global_bias

    return SASRecClassifier()


class SequentialRecommender:
    """fit(train_records, valid_records) / predict(records) -> P(like) as a numpy array."""

    def __init__(self, config: SequentialConfig | None = None, text_encoder_path=None, text_batch_size: int = 64):
        self.cfg = config or SequentialConfig()
        self.text_encoder_path = text_encoder_path
        self.text_batch_size = text_batch_size

    def settings(self) -> dict:
        """What metrics.json records of this model: its config and text encoder."""
        return {"config": dataclasses.asdict(self.cfg),
                "text_encoder": str(self.text_encoder_path) if self.text_encoder_path else None}

    # ---- item vocabulary -------------------------------------------------------------------------
    def _index_items(self, train_records, extra_records=()):
        """Id mode: items of the train records (others map to UNK). Text mode: every item with a title,
        including test items, since their text embedding needs no training."""
        self.item_index: dict[str, int] = {}
        self.titles: list[str] = ["", ""]
        sources = list(train_records) + (list(extra_records) if self.text_encoder_path else [])
        for rec in sources:
            for it in [*rec["history"], rec["target"]]:
                if it["item_id"] not in self.item_index:
                    self.item_index[it["item_id"]] = len(self.titles)
                    self.titles.append(it.get("title") or it["item_id"])

    def _ids(self, item_ids):
        return [self.item_index.get(i, UNK) for i in item_ids]

    def _tensors(self, records):
        import torch

        n, L = len(records), self.cfg.max_history
        hist = torch.zeros(n, L, dtype=torch.long)
        flags = torch.zeros(n, L, dtype=torch.long)
        lengths = torch.ones(n, dtype=torch.long)  # an empty history reads as one padding token
        for r, rec in enumerate(records):
            h = rec["history"][-L:]
            if h:
                hist[r, : len(h)] = torch.tensor(self._ids([x["item_id"] for x in h]))
                flags[r, : len(h)] = torch.tensor([FLAG_LIKED if x["liked"] else FLAG_DISLIKED for x in h])
                lengths[r] = len(h)
        targets = torch.tensor(self._ids([rec["target"]["item_id"] for rec in records]), dtype=torch.long)
        return hist, flags, lengths, targets

    # ---- training --------------------------------------------------------------------------------
    def fit(self, train_records, valid_records=None, extra_records=()):
        import torch
        import torch.nn.functional as F
        from tqdm.auto import tqdm

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        self._index_items(train_records, list(extra_records) + list(valid_records or []))
        features = None
        if self.text_encoder_path:
            from .text_encoder import encode_texts

            features = encode_texts(self.titles, self.text_encoder_path, batch_size=self.text_batch_size)
            features[:2] = 0.0  # padding and unknown items carry no text
        self.model = _build_model(len(self.titles), cfg, features)
        opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        hist, flags, lengths, targets = self._tensors(train_records)
        labels = torch.tensor([float(r["label"]) for r in train_records])
        if cfg.dro:
            popularity = np.ones(len(self.titles))  # +1 smoothing, as in the authors' code
            for rec in train_records:
                for it in [*rec["history"], rec["target"]]:
                    popularity[self.item_index[it["item_id"]]] += 1
            popularity[:2] = 0.0
            nominal = torch.as_tensor((popularity / popularity.sum()) ** cfg.dro_gamma, dtype=torch.float32)
            nominal[:2] = 0.0
            train_items = np.arange(2, len(self.titles))
            dro_rng = np.random.default_rng([cfg.seed, 1])  # its own stream: batches stay those of SASRec

        n = len(train_records)
        steps_per_epoch = math.ceil(n / cfg.batch_size)
        epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
        best_auc, best_state = -1.0, None
        for epoch in tqdm(range(epochs), desc="train", leave=False):
            self.model.train()
            order = rng.permutation(n)
            for start in range(0, n, cfg.batch_size):
                b = torch.as_tensor(order[start : start + cfg.batch_size])
                user = self.model.user_state(hist[b], flags[b], lengths[b])
                logit = self.model.logits(user, targets[b])
                loss = F.binary_cross_entropy_with_logits(logit, labels[b])
                if cfg.dro:
                    negatives = torch.as_tensor(dro_rng.choice(train_items, size=(len(b), cfg.dro_negatives)))
                    items = torch.cat([targets[b][:, None], negatives], dim=1)
                    item_labels = torch.cat([labels[b][:, None], torch.zeros(len(b), cfg.dro_negatives)], dim=1)
                    sq_err = (torch.sigmoid(self.model.logits(user, items)) - item_labels) ** 2
                    w = nominal[items]
                    # beta * log of the w-weighted mean of exp(loss / beta), per record (KL-DRO dual)
                    log_mean = torch.logsumexp(sq_err / cfg.dro_beta + torch.log(w + 1e-24), dim=1) - torch.log(
                        w.sum(1) + 1e-24
                    )
                    loss = loss + cfg.dro_alpha * (cfg.dro_beta * log_mean).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            # validation at most ~20 times (tiny K-shot sets run many short epochs)
            if valid_records and (epoch + 1) % math.ceil(epochs / 20) == 0 or valid_records and epoch == epochs - 1:
                from ..evaluation.metrics import auc

                valid_auc = auc([r["label"] for r in valid_records], self.predict(valid_records))
                if not np.isnan(valid_auc) and valid_auc > best_auc:
                    best_auc, best_state = valid_auc, copy.deepcopy(self.model.state_dict())
        if best_state is not None:
            logger.info("best validation AUC %.4f", best_auc)
            self.model.load_state_dict(best_state)
        return self

    def _add_text_items(self, records):
        """Text mode: items first met at prediction time (e.g. ranking negatives) get their text embedding."""
        import torch

        from .text_encoder import encode_texts

        start = len(self.titles)
        for rec in records:
            for it in [*rec["history"], rec["target"]]:
                if it["item_id"] not in self.item_index and it.get("title"):
                    self.item_index[it["item_id"]] = len(self.titles)
                    self.titles.append(it["title"])
        if len(self.titles) > start:
            new = encode_texts(self.titles[start:], self.text_encoder_path, batch_size=self.text_batch_size)
            self.model.features = torch.cat([self.model.features, torch.as_tensor(new)])

    def predict(self, records, batch_size: int = 1024):
        import torch

        if self.text_encoder_path:
            self._add_text_items(records)
        self.model.eval()
        out = []
        with torch.no_grad():
            hist, flags, lengths, targets = self._tensors(records)
            for s in range(0, len(records), batch_size):
                batch = slice(s, s + batch_size)
                user = self.model.user_state(hist[batch], flags[batch], lengths[batch])
                out.append(torch.sigmoid(self.model.logits(user, targets[batch])))
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)
