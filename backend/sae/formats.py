"""Read outside ("pretrained") SAEs into our Sae, each source's conventions folded into the weights.

Our module computes  pre = (x - b_dec) @ W_enc + b_enc,  latents = act(pre),  recons = latents @ W_dec + b_dec.
Each reader rewrites the source's tensors so that these equations give the source package's own encode and
decode outputs (tests/sae/test_pretrained_formats.py checks that against SAEs written by the packages):

    saelens / sae_explorer   cfg.json + sae_weights.safetensors        (model.load_sae; "saex" key = ours)
    sparsify                 cfg.json + sae.safetensors, or a run folder of hookpoint folders (pick one)
    dictionary_learning      ae.pt (a state dict) + config.json (trainer.dict_class names the class)
    gemma_scope              params.npz (W_enc, W_dec, b_enc, b_dec, threshold)

Folds:  no b_dec subtracted before encoding (Gemma Scope, dictionary_learning's JumpReluAutoEncoder, SAELens'
apply_b_dec_to_input false):  b_enc' = b_enc + b_dec @ W_enc.  relu(pre) * (pre > t) (every JumpReLU and
thresholded BatchTopK of these packages):  ours with t' = max(t, 0).  A decoder normalized on load
(dictionary_learning's AutoEncoder.from_pretrained):  W_dec' = W_dec / n, W_enc' = W_enc * n, b_enc' = b_enc * n.

Hazards: nothing is unpickled (torch.load(weights_only=True), np.load(allow_pickle=False)); a folder holding
several SAEs (a sparsify run, dictionary_learning's trainer_0, trainer_1 ...) needs ``hookpoint=`` to pick one.
"""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.sae.model import Sae, SaeError, SaeSpec, _dims, _read_json, load_sae

FORMATS = ("saelens", "sparsify", "dictionary_learning", "gemma_scope", "sae_explorer")
_LOOKED_FOR = (
    "cfg.json + sae_weights.safetensors (SAELens / SAE Explorer), cfg.json + sae.safetensors (sparsify layer), "
    "ae.pt + config.json (dictionary_learning), params.npz (Gemma Scope), or sub-folders holding one of these "
    "(a sparsify run)"
)

_I, _S = ("d_in",), ("d_sae",)
_LINEAR = {"encoder.weight": _S + _I, "encoder.bias": _S, "decoder.weight": _I + _S}  # nn.Linear (out, in)
_PARAMS = {"W_enc": _I + _S, "b_enc": _S, "W_dec": _S + _I, "b_dec": _I}
# dictionary_learning class -> (our architecture, its state dict: tensor -> dims); the keys must match exactly
_DL_CLASSES: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    "AutoEncoder": ("relu", {**_LINEAR, "bias": _I}),
    "AutoEncoderTopK": ("topk", {**_LINEAR, "b_dec": _I, "k": (), "threshold": ()}),
    "BatchTopKSAE": ("jumprelu", {**_LINEAR, "b_dec": _I, "k": (), "threshold": ()}),
    "MatryoshkaBatchTopKSAE": ("jumprelu", {**_PARAMS, "k": (), "threshold": (), "group_sizes": ("groups",)}),
    "JumpReluAutoEncoder": ("jumprelu", {**_PARAMS, "threshold": _S}),
}
_GEMMA = {**_PARAMS, "threshold": _S}


def load_pretrained(path: str | Path, hookpoint: str | None = None, device="cpu") -> tuple[Sae, dict]:
    """Read an outside SAE folder/file; detect the format. Returns the Sae (our module, conventions folded into the
    weights so that our encode/decode reproduce the source package exactly) and a provenance dict:
    {"format": "saelens" | "sparsify" | "dictionary_learning" | "gemma_scope" | "sae_explorer",
     "path": str(resolved path), "hookpoint": the layer picked or None,
     "hook_name": the site in the source's own naming if the files say it, else "",
     "model_name": the model name if the files say it, else "",
     "architecture": our architecture name, "d_in": int, "d_sae": int,
     "cfg": the source's config/metadata as a JSON-serialisable dict (small: drop tensors, cap long values)}

    ``path``: an SAE folder, a params.npz or ae.pt file, or a folder of SAE folders (a sparsify run) where
    ``hookpoint`` names the sub-folder; with one sub-folder it is picked. Given for a single SAE, ``hookpoint``
    must equal its folder name or its hook_name. "path" in the provenance is the resolved ``path`` as given, so
    ``load_pretrained(p["path"], p["hookpoint"])`` reads the same SAE. A folder this project wrote may hold a
    boosted pair; then the module is a BoostedSae (same encode/decode API). Raises SaeError, one line each."""
    given = Path(path).expanduser()
    if not given.exists():
        raise SaeError(f"{given} does not exist: give the folder (or params.npz / ae.pt file) of a pretrained SAE")
    given = given.resolve()
    src, picked = _locate(given, hookpoint)
    fmt = _kind(src)
    if fmt in ("saelens", "sparsify"):
        sae, cfg, hook_name, model_name = _read_cfg_folder(src)
        if fmt == "saelens" and "saex" in cfg:
            fmt = "sae_explorer"
    elif fmt == "dictionary_learning":
        sae, cfg, hook_name, model_name = _read_dictionary_learning(src)
    else:
        sae, cfg, hook_name, model_name = _read_gemma_scope(src)
    if hookpoint is not None and picked is None:
        if hookpoint not in (src.name, src.parent.name if src.is_file() else None, hook_name):
            raise SaeError(
                f"{given} is one SAE (at {hook_name or src.name!r}), not a folder of hookpoints: drop "
                f"hookpoint={hookpoint!r} or point at the folder that holds {hookpoint!r}"
            )
        picked = hookpoint
    sae = sae.to(device).eval()
    return sae, {
        "format": fmt,
        "path": str(given),
        "hookpoint": picked,
        "hook_name": hook_name,
        "model_name": model_name,
        "architecture": sae.cfg.architecture,
        "d_in": int(sae.cfg.d_in),
        "d_sae": int(sae.cfg.d_sae),
        "cfg": _small(cfg),
    }


# ---- detection -------------------------------------------------------------------------------------------------
def _kind(p: Path) -> str | None:
    """The format of one SAE folder or file (saelens also stands for sae_explorer), or None."""
    if p.is_file():
        return {".npz": "gemma_scope", ".pt": "dictionary_learning"}.get(p.suffix)
    if (p / "cfg.json").is_file():
        sparsify = (p / "sae.safetensors").is_file() and not (p / "sae_weights.safetensors").is_file()
        return "sparsify" if sparsify else "saelens"
    if (p / "ae.pt").is_file():
        return "dictionary_learning"
    if (p / "params.npz").is_file():
        return "gemma_scope"
    return None


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _locate(given: Path, hookpoint: str | None) -> tuple[Path, str | None]:
    """(the SAE folder or file to read, the hookpoint picked among sub-folders or None)."""
    if given.is_file():
        if _kind(given):
            return given, None
        if given.name in ("cfg.json", "sae_weights.safetensors", "sae.safetensors", "config.json"):
            given = given.parent
        else:
            raise SaeError(f"{given} is not a pretrained SAE file: looked for {_LOOKED_FOR}")
    if _kind(given):
        return given, None
    subs = sorted((c for c in given.iterdir() if c.is_dir() and _kind(c)), key=lambda c: _natural(c.name))
    names = [c.name for c in subs]
    if not subs:
        raise SaeError(f"{given} is not a recognised pretrained SAE: looked for {_LOOKED_FOR}")
    if hookpoint is None:
        if len(subs) > 1:
            raise SaeError(
                f"{given} holds {len(subs)} SAEs, one per hookpoint: {', '.join(names)}; pass hookpoint= one of them"
            )
        return subs[0], subs[0].name
    if hookpoint not in names:
        raise SaeError(f"{given} has no hookpoint {hookpoint!r}; available: {', '.join(names)}")
    return given / hookpoint, hookpoint


# ---- readers: (Sae, cfg, hook_name, model_name) ------------------------------------------------------------------
def _read_cfg_folder(src: Path) -> tuple[Sae, dict, str, str]:
    """SAELens / ours / a sparsify layer, through load_sae. sparsify names a layer by its folder (the hookpoint
    its trainer and load_many use); the run folder's config.json (a TrainConfig: "sae", "hookpoints", and
    "model" when written by its CLI) is kept under cfg["run"]."""
    sae = load_sae(src)
    cfg = _read_json(src / "cfg.json")
    if (src / "sae_weights.safetensors").is_file():
        return sae, cfg, sae.cfg.hook_name, sae.cfg.model_name
    try:  # provenance only: an unreadable or foreign config.json up there does not stop the layer loading
        run = _read_json(src.parent / "config.json") if (src.parent / "config.json").is_file() else {}
    except SaeError:
        run = {}
    run = run if "sae" in run else {}
    model = run.get("model") if isinstance(run.get("model"), str) else ""
    sae.cfg.hook_name, sae.cfg.model_name = src.name, model
    return sae, {**cfg, "run": run} if run else cfg, src.name, model


def _read_dictionary_learning(src: Path) -> tuple[Sae, dict, str, str]:
    """ae.pt (``trainSAE`` saves a state dict of CPU tensors) and its config.json; checkpoints/ae_<step>.pt
    finds the config.json one folder up. Mirrors each class's ``from_pretrained(path)`` then ``encode``/``decode``."""
    pt = src if src.is_file() else src / "ae.pt"
    cfg_p = next((p / "config.json" for p in (pt.parent, pt.parent.parent) if (p / "config.json").is_file()), None)
    if cfg_p is None:
        raise SaeError(
            f"{pt} has no config.json next to it: dictionary_learning's trainSAE writes one (its trainer.dict_class "
            "names the class, which the tensors alone do not tell); copy it from the training folder"
        )
    cfg = _read_json(cfg_p)
    trainer = cfg.get("trainer") if isinstance(cfg.get("trainer"), dict) else {}
    cls = trainer.get("dict_class")
    if cls not in _DL_CLASSES:
        raise SaeError(
            f"{cfg_p}: dictionary_learning class {cls!r} is not supported (it does not map onto one ReLU / TopK / "
            f"JumpReLU SAE); supported: {', '.join(_DL_CLASSES)}"
        )
    arch, shapes = _DL_CLASSES[cls]
    w = _torch_state_dict(pt)
    missing, extra = sorted(set(shapes) - set(w)), sorted(set(w) - set(shapes))
    if missing or extra:
        raise SaeError(
            f"{pt}: {cls}'s state dict holds exactly {sorted(shapes)}; this one lacks {missing} and has extra {extra}: "
            f"ae.pt and {cfg_p.name} do not belong together"
        )
    dims = _dims(pt, w, shapes)
    said = trainer.get("activation_dim"), trainer.get("dict_size")
    if said[0] not in (None, dims["d_in"]) or said[1] not in (None, dims["d_sae"]):
        raise SaeError(
            f"{cfg_p} says activation_dim={trainer.get('activation_dim')}, dict_size={trainer.get('dict_size')} but "
            f"{pt.name} has d_in={dims['d_in']}, d_sae={dims['d_sae']}: the two files do not belong together"
        )
    w = {k: v.float() for k, v in w.items()}
    if "encoder.weight" in w:  # nn.Linear layouts: encoder (d_sae, d_in), decoder (d_in, d_sae)
        W_enc, b_enc, W_dec = w["encoder.weight"].T, w["encoder.bias"], w["decoder.weight"].T
    else:
        W_enc, b_enc, W_dec = w["W_enc"], w["b_enc"], w["W_dec"]
    b_dec = w["bias"] if cls == "AutoEncoder" else w["b_dec"]
    if cls == "AutoEncoder":  # from_pretrained(normalize_decoder=True): unit decoder rows, latents scaled by n
        n = W_dec.norm(dim=1)
        W_enc, b_enc, W_dec = W_enc * n, b_enc * n, W_dec / n.clamp_min(1e-12)[:, None]
    if cls == "JumpReluAutoEncoder":  # apply_b_dec_to_input is False after from_pretrained(path)
        b_enc = b_enc + b_dec @ W_enc
    if cls == "MatryoshkaBatchTopKSAE" and int(w["group_sizes"].sum()) != dims["d_sae"]:
        raise SaeError(f"{pt}: group_sizes sum to {int(w['group_sizes'].sum())}, not d_sae={dims['d_sae']}")
    k = int(w["k"]) if "k" in w else 32
    if arch == "topk" and not 1 <= k <= dims["d_sae"]:
        raise SaeError(f"{pt}: k={k} must be between 1 and d_sae={dims['d_sae']}")
    hook = trainer.get("submodule_name") or ""
    model = trainer.get("lm_name") or ""
    sae = _build(arch, W_enc, b_enc, W_dec, b_dec, w.get("threshold"), k, pt, str(hook), str(model))
    return sae, cfg, str(hook), str(model)


def _torch_state_dict(pt: Path) -> dict[str, torch.Tensor]:
    try:
        w = torch.load(pt, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses any global outside torch's allow-list; garbage fails earlier
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if isinstance(e, pickle.UnpicklingError) and found:
            raise SaeError(
                f"{pt} holds pickled Python objects ({found[1]}), not just tensors, and is not unpickled "
                "(weights_only): re-save it as a state dict, torch.save(ae.state_dict(), path)"
            ) from None
        raise SaeError(
            f"{pt} is not a readable torch file ({type(e).__name__}); re-save or download it again"
        ) from None
    if not isinstance(w, dict) or not all(isinstance(v, torch.Tensor) for v in w.values()):
        raise SaeError(
            f"{pt} must hold a state dict (tensor name -> tensor); re-save it with torch.save(ae.state_dict())"
        )
    return w


def _read_gemma_scope(src: Path) -> tuple[Sae, dict, str, str]:
    """Gemma Scope's params.npz: the reference JumpReLU encodes pre = x @ W_enc + b_enc (no b_dec subtracted) and
    latents = relu(pre) * (pre > threshold); it names neither model nor site (only the download path does)."""
    npz = src if src.is_file() else src / "params.npz"
    again = "download params.npz again"
    try:
        z = np.load(npz, allow_pickle=False)
    except ValueError:  # neither a zip nor an .npy: numpy would have to unpickle it
        raise SaeError(
            f"{npz} is a pickle, not an .npz archive, and is not unpickled (allow_pickle=False); {again}"
        ) from None
    except Exception as e:  # not a zip, truncated
        raise SaeError(f"{npz} is not a readable .npz file ({e}); {again}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise SaeError(f"{npz} holds one array, not an .npz archive of {', '.join(_GEMMA)}; {again}")
    with z:
        try:
            arrays = {k: z[k] for k in z.files}
        except ValueError as e:
            if "allow_pickle" not in str(e):
                raise SaeError(f"{npz} is not a readable .npz file ({e}); {again}") from None
            raise SaeError(
                f"{npz} holds object arrays, which are not unpickled (allow_pickle=False); Gemma Scope's params.npz "
                "holds float arrays only: re-save it with np.savez(path, W_enc=..., ...)"
            ) from None
        except Exception as e:  # a corrupt member
            raise SaeError(f"{npz} is not a readable .npz file ({e}); {again}") from None
    missing = [k for k in _GEMMA if k not in arrays]
    if missing:
        raise SaeError(f"{npz}: Gemma Scope params lack {missing} (it needs {', '.join(_GEMMA)})")
    bad = [k for k in _GEMMA if not np.issubdtype(arrays[k].dtype, np.floating)]
    if bad:
        raise SaeError(f"{npz}: {bad} are not float arrays; Gemma Scope stores float32 weights")
    w = {k: torch.from_numpy(np.asarray(arrays[k], dtype=np.float32)) for k in _GEMMA}
    _dims(npz, w, _GEMMA)
    b_enc = w["b_enc"] + w["b_dec"] @ w["W_enc"]
    sae = _build("jumprelu", w["W_enc"], b_enc, w["W_dec"], w["b_dec"], w["threshold"], 32, npz, "", "")
    return sae, {"arrays": {k: list(v.shape) for k, v in arrays.items()}}, "", ""


# ---- shared ----------------------------------------------------------------------------------------------------
def _build(arch, W_enc, b_enc, W_dec, b_dec, threshold, k: int, src: Path, hook: str, model: str) -> Sae:
    """Our Sae from tensors already in our convention; a JumpReLU threshold t (scalar or per latent) is applied by
    the sources as relu(pre) * (pre > t), which is ours with max(t, 0)."""
    d_in, d_sae = W_enc.shape
    named = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if threshold is not None:
        named["threshold"] = threshold
    bad = [n for n, t in named.items() if not torch.isfinite(t).all()]
    if bad:
        raise SaeError(f"{src}: {bad} hold NaN or inf values; the SAE is broken, use another checkpoint")
    spec = SaeSpec(d_in=d_in, d_sae=d_sae, architecture=arch, k=min(k, d_sae), hook_name=hook, model_name=model)
    sae = Sae(spec)
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(b_dec)
        if arch == "jumprelu":
            sae.threshold.copy_(threshold.float().reshape(-1).expand(d_sae).clamp_min(0))
    return sae


_DROP = object()


def _small(v: Any, depth: int = 0) -> Any:
    """``v`` as small JSON: tensors, arrays and other objects dropped; strings cut at 300 characters, lists at 32
    items, dicts at 64 keys, nesting at 5 levels; non-finite floats as strings."""
    if v is None or isinstance(v, bool | int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, str):
        return v if len(v) <= 300 else v[:300] + "..."
    if depth >= 5 or not isinstance(v, dict | list | tuple):
        return _DROP
    if isinstance(v, dict):
        items = ((str(k), _small(x, depth + 1)) for k, x in list(v.items())[:64])
        return {k: x for k, x in items if x is not _DROP}
    return [x for x in (_small(x, depth + 1) for x in v[:32]) if x is not _DROP]


__all__ = ["FORMATS", "load_pretrained"]
