"""Sequential recommender adapter: a SASRec-style transformer over item-id sequences.

Tokens are items. Id 0 is padding; ids 1..n_items index the catalogue (``items.json`` in the model
folder maps them to the dataset's raw item ids and titles). Input text is a string of
space-separated raw item ids, oldest first, e.g. "50 181 258".

Model (Kang & McAuley 2018, pre-LN variant), for item ids i_1..i_T:
    h_0 = E[i_t] + P[t]                         E (n_items+1, d) item embeddings, P (max_len, d)
    h_l = h_{l-1} + Attn_causal(LN(h_{l-1}));  h_l += MLP(LN(h_l))        l = 1..n_layers
    score(t, j) = LN_f(h_L[t]) . E[j]           the output layer is tied to the item embeddings
so position t's scores rank the item that comes after i_t. Sites: ``blocks.{l}.hook_resid_post``
is h after block l (block n_layers-1's is the hidden state before the prediction layer, i.e.
before LN_f and the tied projection); ``blocks.{l}.hook_mlp_out`` is block l's MLP output.
``unembed`` returns E, so the logit lens of a decoder row ranks items directly (LN_f skipped).
Right padding is safe: attention is causal, so real positions never attend to padding.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from backend.adapters.base import Intervention, Site, TokenBatch
from backend.adapters.causal_lm import resolve_device
from backend.adapters.hooks import StopForward, capture_and_stop, scoped_hook
from backend.config import ModelConfig
from backend.data.assets import cache_root

EMBEDDED_ID = "sasrec-ml100k"


@dataclass
class SASRecConfig:
    n_items: int
    """Catalogue size (ids 1..n_items; 0 is padding)."""
    d_model: int = 64
    """Hidden width."""
    n_layers: int = 2
    """Transformer blocks."""
    n_heads: int = 2
    """Attention heads."""
    max_len: int = 50
    """Longest item sequence (positional embeddings)."""
    dropout: float = 0.2
    """Dropout on embeddings, attention output and MLP (training only)."""


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d)
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, h, T, d/h)
        return self.drop(self.out(y.transpose(1, 2).reshape(B, T, d)))


class Block(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model),
            nn.GELU(),
            nn.Linear(4 * cfg.d_model, cfg.d_model),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class SASRec(nn.Module):
    """Causal transformer over item ids with a tied item-embedding output layer."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.item_emb.weight, std=cfg.d_model**-0.5)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) item ids -> (B, T, d) final hidden states (after LN_f)."""
        T = ids.shape[1]
        if T > self.cfg.max_len:
            raise ValueError(f"sequence of {T} items exceeds the model's max_len {self.cfg.max_len}")
        x = self.drop(self.item_emb(ids) + self.pos_emb(torch.arange(T, device=ids.device)))
        for blk in self.blocks:
            x = blk(x)
        return self.ln_f(x)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T, n_items + 1) scores (column 0 = padding, never a recommendation)."""
        return self.hidden(ids) @ self.item_emb.weight.T

    def save(self, folder: str | Path, items: list[dict]) -> None:
        """model.safetensors + config.json + items.json (index i -> {'id', 'title', ...} at i - 1)."""
        from safetensors.torch import save_file

        p = Path(folder)
        p.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(p / "model.safetensors"))
        (p / "config.json").write_text(json.dumps({"model_type": "sasrec", **asdict(self.cfg)}, indent=1))
        (p / "items.json").write_text(json.dumps(items))

    @classmethod
    def load(cls, folder: str | Path) -> tuple[SASRec, list[dict]]:
        from safetensors.torch import load_file

        p = Path(folder)
        missing = [f for f in ("model.safetensors", "config.json", "items.json") if not (p / f).exists()]
        if missing:
            raise FileNotFoundError(
                f"{p} is not a SASRec model folder: it lacks {missing} (train one: train-recommender)"
            )
        cfg = json.loads((p / "config.json").read_text())
        cfg.pop("model_type", None)
        model = cls(SASRecConfig(**cfg))
        model.load_state_dict(load_file(str(p / "model.safetensors")))
        return model.eval(), json.loads((p / "items.json").read_text())


class ItemTokenizer:
    """The minimal tokenizer surface shared code expects: decode(ids) -> space-separated raw item ids
    (so steering.fit_prompt cuts an over-long history at item boundaries, keeping the latest items)."""

    def __init__(self, items: list[dict]):
        self.items = items

    def decode(self, ids: Sequence[int], **_) -> str:
        return " ".join(str(self.items[int(i) - 1]["id"]) for i in ids if int(i) > 0)


class RecsysAdapter:
    """ModelAdapter for a SASRec recommender (modality 'recsys')."""

    modality = "recsys"

    def __init__(self, model: SASRec, items: list[dict], model_id: str = "sasrec"):
        self.model = model.eval()
        self.items = items
        self.model_id = self.display_name = model_id
        self.d_model, self.n_layers = model.cfg.d_model, model.cfg.n_layers
        self.vocab_size = model.cfg.n_items + 1
        self.context_limit = model.cfg.max_len
        self.device = next(model.parameters()).device
        self.index = {str(it["id"]): i + 1 for i, it in enumerate(items)}  # raw id -> token id
        self.tokenizer = ItemTokenizer(items)

    # ---- tokens ---------------------------------------------------------------
    def encode_ids(self, text: str) -> list[int]:
        """Token ids of space-separated raw item ids; ValueError naming any unknown ids."""
        raw = text.replace(",", " ").split()
        unknown = [r for r in raw if r not in self.index]
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
            raise ValueError(
                f"unknown item id(s) {shown}: this catalogue has {len(self.index)} items "
                f"(ids such as {', '.join(list(self.index)[:3])}); give space-separated item ids"
            )
        if not raw:
            raise ValueError("the item sequence is empty: give space-separated item ids, oldest first")
        return [self.index[r] for r in raw]

    def batch_from_ids(self, seqs: Sequence[Sequence[int]]) -> TokenBatch:
        """Right-pad with 0; no special tokens, so keep_mask = attention_mask."""
        T = max(len(s) for s in seqs)
        if T > self.context_limit:
            raise ValueError(
                f"a sequence has {T} items; this model reads at most {self.context_limit} (keep the latest)"
            )
        ids = torch.zeros((len(seqs), T), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        att = ids > 0
        return TokenBatch(ids, att, att.clone())

    def tokenize(self, texts: Sequence[str], max_len: int) -> TokenBatch:
        """Keeps each sequence's most recent min(max_len, max_len of the model) items."""
        n = min(max_len, self.context_limit)
        return self.batch_from_ids([self.encode_ids(t)[-n:] for t in texts])

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return ["<pad>" if int(i) == 0 else self.items[int(i) - 1]["title"] for i in ids]

    # ---- forward passes -----------------------------------------------------
    def _module(self, site: str) -> nn.Module:
        s = Site.parse(site, self.n_layers)
        blk = self.model.blocks[s.layer]
        return blk if s.kind == "resid_post" else blk.mlp

    @torch.inference_mode()
    def capture(self, batch: TokenBatch, site: str) -> torch.Tensor:
        """(B, T, d) at ``site``; later blocks and the prediction layer never run."""
        with capture_and_stop(self._module(site)):
            try:
                self.model.hidden(batch.input_ids.to(self.device))
            except StopForward as s:
                return s.acts.float()
        raise RuntimeError(f"the forward pass never reached {site}")

    @torch.inference_mode()
    def logits(self, batch: TokenBatch) -> torch.Tensor:
        """(B, T, n_items + 1) next-item scores at every position (column 0 is padding)."""
        return self.model(batch.input_ids.to(self.device)).float()

    def intervene(self, site: str, fn: Intervention):
        return scoped_hook(self._module(site), fn)

    def unembed(self) -> torch.Tensor | None:
        return self.model.item_emb.weight.detach().float()

    @torch.inference_mode()
    def recommend(self, ids: Sequence[int], k: int = 10, exclude_seen: bool = True) -> list[int]:
        """Top-k next item ids after the sequence (respects any open ``intervene`` context)."""
        ids = list(ids)[-self.context_limit :]
        scores = self.logits(self.batch_from_ids([ids]))[0, len(ids) - 1].clone()  # (n_items + 1,)
        scores[0] = -math.inf
        if exclude_seen:
            scores[torch.tensor(sorted(set(ids)))] = -math.inf
        return torch.topk(scores, k).indices.tolist()

    @torch.inference_mode()
    def generate(
        self, prompt: str, max_new_tokens: int = 10, temperature: float = 0.0, seed: int = 0, chat: bool = True
    ) -> Iterator[str]:
        """Stream a continuation of the item sequence: each step appends the best (or, with
        temperature > 0, a sampled) unseen next item and yields its title on its own line."""
        ids = self.encode_ids(prompt)
        g = torch.Generator().manual_seed(int(seed))
        for _ in range(max_new_tokens):
            window = ids[-self.context_limit :]
            scores = self.logits(self.batch_from_ids([window]))[0, len(window) - 1].cpu()
            scores[[0, *set(ids)]] = -math.inf
            if temperature <= 0:
                nxt = int(torch.argmax(scores))
            else:
                nxt = int(torch.multinomial(torch.softmax(scores / temperature, -1), 1, generator=g))
            ids.append(nxt)
            yield self.token_strings([nxt])[0] + "\n"


def embedded_folder() -> Path:
    """Where the embedded 'sasrec-ml100k' is cached (backend/modalities/recsys.py trains it there on first use)."""
    return cache_root() / "models" / EMBEDDED_ID


def load_recsys(cfg: ModelConfig, verbose: bool = True) -> RecsysAdapter:
    """The recommender adapter for ``model.id``: 'sasrec-ml100k' (the cached embedded model) or a SASRec model
    folder. (Workspaces load through the registry, whose loader trains the embedded model on first use.)"""
    folder = embedded_folder() if cfg.id == EMBEDDED_ID else Path(cfg.id)
    model, items = SASRec.load(folder)
    return RecsysAdapter(model.to(resolve_device(cfg.device)), items, model_id=cfg.id)
