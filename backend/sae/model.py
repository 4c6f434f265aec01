"""One Sae module for every architecture; variants are flags, objectives live in losses.py.

    pre     = (x - b_dec) @ W_enc + b_enc                 (N, d_sae)
    latents = act(pre)   relu:      max(pre, 0)
                         topk:      the k largest of relu(pre) per token, others 0
                         batchtopk: the k*N largest of relu(pre) over the batch (training); saved as
                                    jumprelu with one learned threshold for inference
                         jumprelu:  pre * (pre > threshold)
    recons  = latents @ W_dec + b_dec                     (N, d_in)

Hazards: decode() adds b_dec, so decode(0) = b_dec, not 0; steer with W_dec rows (unit norm
after training), never W_enc columns. A boosted residual SAE has b_dec fixed to 0.

Format: the SAELens layout (cfg.json + sae_weights.safetensors); sparsify's (cfg.json +
sae.safetensors) loads too. Weights are read with safetensors only; nothing is unpickled. Other outside
formats (dictionary_learning, Gemma Scope, sparsify run folders) are read by formats.load_pretrained.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from backend.atomic import atomic_dir, atomic_write_text
from backend.config import ARCHITECTURES

_SAELENS_ARCH = {"standard": "relu", "relu": "relu", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}


class SaeError(ValueError):
    """A user-fixable SAE problem: bad config, corrupt files, shape mismatch, non-finite data."""


@dataclass
class SaeSpec:
    """The shape and metadata of one Sae module (what cfg.json records); config.SaeConfig is the training
    recipe of a workspace's SAE, from which the trainer makes one of these."""

    d_in: int
    d_sae: int
    architecture: str = "topk"  # relu | topk | batchtopk (training only; saved as jumprelu) | jumprelu
    k: int = 32
    hook_name: str = ""
    model_name: str = ""
    apply_b_dec: bool = True  # False for boosted residual SAEs (b_dec fixed at 0)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise SaeError(f"unknown SAE architecture {self.architecture!r}: use one of {', '.join(ARCHITECTURES)}")
        if self.d_in < 1 or self.d_sae < 1:
            raise SaeError(f"d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}")
        if self.architecture in ("topk", "batchtopk") and not 1 <= self.k <= self.d_sae:
            raise SaeError(f"k={self.k} must be between 1 and d_sae={self.d_sae}")


class Sae(nn.Module):
    def __init__(self, cfg: SaeSpec, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(seed)
        W_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=g)
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.clone())  # encoder initialized to the decoder's transpose
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in), requires_grad=cfg.apply_b_dec)
        self.threshold = nn.Parameter(torch.zeros(cfg.d_sae), requires_grad=cfg.architecture == "jumprelu")

    # ---- inference -------------------------------------------------------------------
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """latents (N, d_sae) for x (N, d_in); batchtopk uses its learned threshold (as jumprelu)."""
        pre = self.pre_acts(x.to(self.W_enc.dtype))
        a = self.cfg.architecture
        if a == "relu":
            return torch.relu(pre)
        if a == "topk":
            vals, idx = torch.relu(pre).topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, idx, vals)
        return pre * (pre > self.threshold)

    def encode_topk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(values (N, k), indices (N, k)) of the k largest latents per token (any architecture)."""
        lat = self.encode(x)
        return lat.topk(min(self.cfg.k, lat.shape[-1]), dim=-1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """recons = latents @ W_dec + b_dec (b_dec is added: decode(0) == b_dec)."""
        return latents.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    # ---- format ------------------------------------------------------------------------
    def inference_cfg(self) -> dict[str, Any]:
        """cfg.json in the SAELens layout (v6 keys plus the v5 ones older readers expect)."""
        arch = "jumprelu" if self.cfg.architecture == "batchtopk" else self.cfg.architecture
        layer = _layer_of(self.cfg.hook_name)
        d = {
            "architecture": "standard" if arch == "relu" else arch,
            "d_in": self.cfg.d_in,
            "d_sae": self.cfg.d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": self.cfg.apply_b_dec,
            "normalize_activations": "none",
            "hook_name": self.cfg.hook_name,
            "hook_layer": layer,
            "model_name": self.cfg.model_name,
            "metadata": {"model_name": self.cfg.model_name, "hook_name": self.cfg.hook_name, "hook_layer": layer},
            "saex": {"trained_as": self.cfg.architecture, **self.cfg.meta},
        }
        if arch == "topk":
            d["k"] = self.cfg.k
            d["activation_fn_kwargs"] = {"k": self.cfg.k}
        return d

    def save(self, path: str | Path) -> Path:
        """Write the SAELens layout atomically (temp folder, then rename over ``path``)."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            tensors = {
                n: p.detach().float().cpu().contiguous()
                for n, p in (("W_enc", self.W_enc), ("W_dec", self.W_dec), ("b_enc", self.b_enc), ("b_dec", self.b_dec))
            }
            if self.cfg.architecture in ("jumprelu", "batchtopk"):
                tensors["threshold"] = self.threshold.detach().float().cpu().contiguous()
            save_file(tensors, str(tmp / "sae_weights.safetensors"))
            (tmp / "cfg.json").write_text(json.dumps(self.inference_cfg(), indent=1))
            if (path / "metrics.json").exists():
                shutil.copy2(path / "metrics.json", tmp / "metrics.json")
        return path


def write_metrics(sae_dir: str | Path, new: dict) -> dict:
    """Merge ``new`` into sae_dir/metrics.json (written atomically); returns the merged metrics."""
    p = Path(sae_dir) / "metrics.json"
    cur = json.loads(p.read_text()) if p.exists() else {}
    cur.update(new)
    atomic_write_text(p, json.dumps(cur, indent=1))
    return cur


def _layer_of(hook_name: str) -> int | None:
    parts = hook_name.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else None


def _read_json(p: Path) -> dict:
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SaeError(f"{p} is not valid JSON ({e}); re-save or re-train this SAE") from None
    if not isinstance(d, dict):
        raise SaeError(f"{p} must hold a JSON object")
    return d


def _dims(src: str | Path, w: dict, shapes: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """Bind named dims (d_in, d_sae, ...) from the tensors' shapes, in the order given; one SaeError naming the
    tensor whose shape disagrees. ``shapes`` maps a tensor name to its dim names (``()`` = a scalar); tensors
    absent from ``w`` are skipped (their absence is reported by the caller)."""
    dims: dict[str, int] = {}
    first: dict[str, str] = {}  # dim name -> the tensor that fixed it
    for name, names in shapes.items():
        if name not in w:
            continue
        got = tuple(w[name].shape)
        if len(got) != len(names) or any(dims.get(n, g) != g for n, g in zip(names, got)):
            need = [dims.get(n, n) for n in names]
            refs = sorted({first[n] for n in names if n in first})
            fit = f" to fit {', '.join(f'{r} {list(w[r].shape)}' for r in refs)}" if refs else ""
            raise SaeError(
                f"{src}: {name} has shape {list(got)} but needs [{', '.join(map(str, need))}] "
                f"({', '.join(names) or 'a scalar'}){fit}: the file is corrupt or not in this format; re-export it"
            )
        for n, g in zip(names, got):
            first.setdefault(n, name)
            dims[n] = g
    return dims


def _weights(p: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(p))
    except Exception as e:  # safetensors raises several types for truncated/corrupt files
        raise SaeError(f"{p} is not a readable safetensors file ({e})") from None


def twin_dir(sae_dir: str | Path) -> Path:
    """Where an SAE's stability twin lives: a sibling folder ``<name>@twin`` (trained, evaluated against, never
    served or indexed)."""
    sae_dir = Path(sae_dir)
    return sae_dir.with_name(f"{sae_dir.name}@twin")


def load_sae(path: str | Path, device: str | torch.device = "cpu"):
    """Load an SAE folder: ours/SAELens (cfg.json + sae_weights.safetensors), sparsify
    (cfg.json + sae.safetensors), or a boosted composite (cfg.json naming its base)."""
    path = Path(path)
    cfg_p = path / "cfg.json"
    if not cfg_p.exists():
        raise SaeError(f"{path} is not an SAE folder (no cfg.json)")
    d = _read_json(cfg_p)
    base_rel = d.get("saex", {}).get("boost_base")
    if (path / "sae.safetensors").exists() and not (path / "sae_weights.safetensors").exists():
        sae = _load_sparsify(d, _weights(path / "sae.safetensors"), path)
    elif not (path / "sae_weights.safetensors").exists():
        raise SaeError(
            f"{path}: sae_weights.safetensors is missing (SAELens layout) and there is no sae.safetensors "
            "(sparsify layout)"
        )
    else:
        sae = _load_saelens(d, _weights(path / "sae_weights.safetensors"), path)
    sae = sae.to(device).eval()
    if base_rel:
        from backend.sae.boost import BoostedSae

        return BoostedSae(load_sae((path / base_rel).resolve(), device), sae)
    return sae


def _load_saelens(d: dict, w: dict[str, torch.Tensor], path: Path) -> Sae:
    """SAELens 6 (``architecture``, hooks under ``metadata``) and pre-6 (``activation_fn_str``, ``hook_point``)
    folders. Inference-time conventions are folded into the weights so that our encode/decode reproduce
    SAELens' exactly: ``rescale_acts_by_decoder_norm`` (TopK: latents = topk(pre * |W_dec_i|), decoded
    divided by |W_dec_i|), a pre-6 finetuning ``scaling_factor`` (multiplies latents before decoding; 5.x's
    save_model names it ``finetuning_scaling_factor``), and, for
    folders not written by this project (no "saex" key): ``apply_b_dec_to_input`` false (SAELens encodes
    x @ W_enc + b_enc: folded as b_enc + b_dec @ W_enc) and JumpReLU's relu(pre) * (pre > threshold) (equal to
    ours with the threshold clamped at 0; our own jumprelu keeps its threshold as saved)."""
    arch_raw = d.get("architecture") or d.get("activation_fn_str") or "standard"
    if arch_raw == "relu" and "architecture" not in d:  # SAELens v5: activation_fn_str relu = standard
        arch_raw = "standard"
    if arch_raw not in _SAELENS_ARCH:
        raise SaeError(f"{path}/cfg.json: unknown architecture {arch_raw!r}; known: {', '.join(sorted(_SAELENS_ARCH))}")
    arch = _SAELENS_ARCH[arch_raw]
    act = d.get("activation_fn_str")  # SAELens 5: the activation, whatever the architecture
    if act not in (None, "relu", "topk"):
        raise SaeError(f"{path}/cfg.json: activation_fn_str {act!r} is not supported; known: relu, topk")
    if d.get("activation_fn_str") == "topk" or (d.get("activation_fn_kwargs") or {}).get("k"):
        arch = "topk" if arch_raw in ("standard", "topk") else arch
    norm = d.get("normalize_activations") or "none"
    if norm != "none":
        raise SaeError(
            f"{path}/cfg.json: normalize_activations {norm!r} is not supported (it needs the training-time "
            "input statistics); export the SAE with normalize_activations 'none' (fold the scaling in)"
        )
    missing = [k for k in ("W_enc", "W_dec", "b_enc", "b_dec") if k not in w]
    if missing:
        raise SaeError(f"{path}: weights lack {missing}")
    shapes = {"W_enc": ("d_in", "d_sae"), "W_dec": ("d_sae", "d_in"), "b_enc": ("d_sae",), "b_dec": ("d_in",)}
    _dims(path / "sae_weights.safetensors", w, shapes)
    d_in, d_sae = w["W_enc"].shape
    if d.get("d_sae") is not None and int(d["d_sae"]) != d_sae:
        raise SaeError(
            f"{path}/cfg.json d_sae={d['d_sae']} but the weights have {d_sae} latents: cfg.json and "
            "sae_weights.safetensors do not belong together"
        )
    meta = d.get("metadata") or {}
    ours = "saex" in d
    apply_b_dec = bool(d.get("apply_b_dec_to_input", True))
    k = int(d.get("k") or (d.get("activation_fn_kwargs") or {}).get("k") or 32)
    if arch == "topk" and not 1 <= k <= d_sae:
        raise SaeError(f"{path}/cfg.json: k={k} must be between 1 and d_sae={d_sae}")
    cfg = SaeSpec(
        d_in=d_in,
        d_sae=d_sae,
        architecture=arch,
        k=min(k, d_sae),
        hook_name=d.get("hook_name") or meta.get("hook_name") or d.get("hook_point") or "",
        model_name=d.get("model_name") or meta.get("model_name", ""),
        apply_b_dec=apply_b_dec or not ours,  # an outside SAE's b_dec is folded into b_enc below
        meta=d.get("saex", {}),
    )
    sae = Sae(cfg)
    W_enc, b_enc, W_dec = w["W_enc"].float(), w["b_enc"].float(), w["W_dec"].float()
    if not apply_b_dec and not ours:  # SAELens: x @ W_enc + b_enc == (x - b_dec) @ W_enc + (b_enc + b_dec @ W_enc)
        b_enc = b_enc + w["b_dec"].float() @ W_enc
    scale = w.get("scaling_factor", w.get("finetuning_scaling_factor"))  # 5.x save_model writes the latter name
    if scale is not None:  # z * s decoded by W_dec == z decoded by s * W_dec
        W_dec = W_dec * scale.float()[:, None]
    if arch == "topk" and d.get("rescale_acts_by_decoder_norm"):
        n = W_dec.norm(dim=1).clamp_min(1e-12)  # pre * n = x @ (W_enc * n) + b_enc * n; decode z / n
        W_enc, b_enc, W_dec = W_enc * n, b_enc * n, W_dec / n[:, None]
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(w["b_dec"].float())
        if arch == "jumprelu":
            theta = w["threshold"] if "threshold" in w else w["log_threshold"].exp() if "log_threshold" in w else None
            if theta is None:
                raise SaeError(f"{path}: a jumprelu SAE needs a 'threshold' tensor")
            if theta.numel() not in (1, d_sae):
                raise SaeError(f"{path}: threshold has {theta.numel()} values but the SAE has d_sae={d_sae} latents")
            theta = theta.float().reshape(-1).expand(d_sae)
            sae.threshold.copy_(theta if ours else theta.clamp_min(0))  # SAELens: relu(pre) * (pre > threshold)
    return sae


def _load_sparsify(d: dict, w: dict[str, torch.Tensor], path: Path) -> Sae:
    """EleutherAI sparsify: encoder.weight (d_sae, d_in), encoder.bias, W_dec, b_dec; TopK of relu(pre).
    multi_topk is a training loss only (inference keeps the top k), so it loads; transcoders, skip connections
    and groupmax do not map onto one Sae."""
    odd = [f for f in ("transcode", "skip_connection") if d.get(f)]
    if d.get("activation", "topk") != "topk" or odd:
        raise SaeError(
            f"{path}: only sparsify TopK SAEs load (activation 'topk', no transcode / skip_connection); "
            f"this one has activation {d.get('activation')!r}{', ' + ', '.join(odd) if odd else ''}"
        )
    missing = [k for k in ("encoder.weight", "encoder.bias", "W_dec", "b_dec") if k not in w]
    if missing:
        raise SaeError(f"{path}: sparsify weights lack {missing}")
    shapes = {"encoder.weight": ("d_sae", "d_in"), "encoder.bias": ("d_sae",), "W_dec": ("d_sae", "d_in")}
    _dims(path / "sae.safetensors", w, {**shapes, "b_dec": ("d_in",)})
    enc = w["encoder.weight"]
    d_sae, d_in = enc.shape
    if d.get("d_in") is not None and int(d["d_in"]) != d_in:
        raise SaeError(
            f"{path}/cfg.json d_in={d['d_in']} but sae.safetensors has d_in={d_in}: the two files do not belong together"
        )
    k = int(d.get("k", 32))
    if not 1 <= k <= d_sae:
        raise SaeError(f"{path}/cfg.json: k={k} must be between 1 and d_sae={d_sae}")
    cfg = SaeSpec(d_in=d_in, d_sae=d_sae, architecture="topk", k=k, meta={"format": "sparsify"})
    sae = Sae(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(enc.T.float())
        sae.b_enc.copy_(w["encoder.bias"].float())
        sae.W_dec.copy_(w["W_dec"].float())
        sae.b_dec.copy_(w["b_dec"].float())
    return sae


def check_site(sae, d_model: int, site: str = "the model site") -> None:
    """Raise when the SAE's input width differs from the model's at the site."""
    d_in = int(sae.W_dec.shape[1])
    if d_in != d_model:
        raise SaeError(
            f"SAE expects d_in={d_in} but {site} has d={d_model}: pick an SAE trained on this model and site"
        )


__all__ = ["Sae", "SaeSpec", "SaeError", "load_sae", "check_site", "write_metrics"]
