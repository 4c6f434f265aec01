"""Cheap integrity checks of a workspace's SAE folders, run when the workspace opens (no weights loaded).

For every SAE served from the index, ``check_saes`` reads ``cfg.json`` and only the *header* of its
safetensors file (an 8-byte little-endian length, then a JSON table of name -> dtype, shape and byte
offsets) and checks, without reading a tensor:

- ``cfg.json`` is a JSON object and its ``d_in`` / ``d_sae`` are integers;
- the safetensors file is complete: the header parses, each tensor's byte range matches its dtype and
  shape, and the file size is exactly 8 + header + the data the offsets describe (a truncated copy fails);
- shapes agree: W_dec (d_sae, d_in) and, when present, W_enc (d_in, d_sae), b_enc (d_sae,), b_dec (d_in,)
  (sparsify layout: encoder.weight (d_sae, d_in)), with cfg.json's d_in / d_sae, and with the model's
  width at the hook site as recorded in the activation cache's ``meta.json`` (skipped when there is none);
- a boosted SAE (cfg.json ``saex.boost_base``) is broken when its base is; its d_in must be its base's;
- the index's latent count for the SAE equals the weights' (base + residual for a boosted one).

W_dec alone is enough to browse, compare and map an SAE (nearest directions read only W_dec); the encoder
tensors are shape-checked when present, and search and steering name a missing one when they load it.

Each problem is one line that names the file (relative to the workspace) and the command that repairs it.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header
WEIGHT_FILES = ("sae_weights.safetensors", "sae.safetensors")  # SAELens layout, sparsify layout


class IntegrityError(ValueError):
    """One broken file: ``file`` relative to the workspace, ``what`` is wrong with it."""

    def __init__(self, file: str, what: str):
        super().__init__(f"{file} {what}")
        self.file, self.what = file, what


def safetensors_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) of a safetensors file, from its header alone; ``ValueError`` (what is wrong,
    without the file name) when the file is truncated, padded or not safetensors."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"is truncated ({size} bytes; not even a safetensors header)")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, MAX_HEADER):
            raise ValueError(
                f"is truncated or not a safetensors file (its header claims {n:,} bytes; the file has {size:,})"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"is not a safetensors file (its header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise ValueError("is not a safetensors file (its header is not a JSON object)")
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    end = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = str(t["dtype"]), tuple(int(s) for s in t["shape"])
            begin, stop = (int(o) for o in t["data_offsets"])
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"has a corrupt header (tensor {name!r} lacks dtype, shape or data_offsets)") from None
        width = DTYPE_BYTES.get(dtype)
        if stop < begin or (width is not None and stop - begin != math.prod(shape) * width):
            raise ValueError(
                f"has a corrupt header (tensor {name!r}: {dtype} {list(shape)} does not fit bytes {begin}..{stop})"
            )
        out[name] = (dtype, shape)
        end = max(end, stop)
    data = size - 8 - n
    if data < end:
        raise ValueError(f"is truncated: its header describes {end:,} bytes of tensors but the file holds {data:,}")
    if data > end:
        raise ValueError(f"is corrupt: {data - end:,} bytes follow the tensors its header describes")
    return out


def model_width(ws) -> tuple[int, str] | None:
    """(d, file) the model's width at the workspace's hook site, as recorded by the general activation
    cache (``activations/<site>/meta.json``, written from the model's own output); None when absent."""
    meta = ws.cache_dir() / "meta.json"
    try:
        d = json.loads(meta.read_text()).get("d_in")
    except (OSError, ValueError, AttributeError):
        return None
    return (int(d), _rel(ws, meta)) if isinstance(d, int) and d > 0 else None


def check_saes(ws, names: Iterable[str] | None = None, index_d_sae: dict[str, int] | None = None) -> dict[str, str]:
    """name -> one problem line, for each broken SAE among ``names`` (default: the config's SAEs).

    ``index_d_sae`` (name -> latents in the index) adds the check that the index was built from these
    weights. Reads cfg.json files and safetensors headers only (milliseconds for a workspace)."""
    names = [s.name for s in ws.config.saes] if names is None else list(names)
    width = model_width(ws)
    problems: dict[str, str] = {}
    for name in names:
        folder = ws.sae_dir(name)
        try:
            d_in, d_sae = _inspect(ws, folder, width, seen=())
        except _BaseBroken as e:
            problems[name] = (
                f"{_rel(ws, folder)} is boosted on {e.base}, which is broken ({e.cause}): "
                f"{_fix_boosted(ws, e.base_name, name)}"
            )
            continue
        except IntegrityError as e:
            problems[name] = f"{e}: {_fix_sae(ws, name)}"
            continue
        if index_d_sae is not None and name in index_d_sae and int(index_d_sae[name]) != d_sae:
            problems[name] = (
                f"index.duckdb lists {int(index_d_sae[name]):,} latents for SAE {name} but "
                f"{_rel(ws, folder)} has {d_sae:,}: the SAE changed after the index was built; "
                f"{_reindex(ws)}"
            )
    return problems


# ---- internals ------------------------------------------------------------------------------------
class _BaseBroken(Exception):
    def __init__(self, base: str, base_name: str, cause: str):
        super().__init__(cause)
        self.base, self.base_name, self.cause = base, base_name, cause


def _rel(ws, p: Path) -> str:
    """``p`` relative to the workspace, lexically (a symlinked saes/ folder keeps its workspace name)."""
    r = os.path.relpath(os.path.normpath(p), os.path.normpath(ws.path))
    return str(p) if r.startswith("..") else r.replace(os.sep, "/")


def _cmd(ws) -> str:
    return shlex.quote(str(ws.path))


def _reindex(ws) -> str:
    return f"rebuild the index with `python -m backend index --workspace {_cmd(ws)} --force`"


def _train(ws, name: str) -> str:
    return f"`python -m backend train --workspace {_cmd(ws)} --sae {shlex.quote(name)} --force`"


def _fix_sae(ws, name: str) -> str:
    if name in {s.name for s in ws.config.saes}:
        return f"retrain it with {_train(ws, name)}, then {_reindex(ws)}"
    return f"replace {_rel(ws, ws.sae_dir(name))} with a working SAE folder or remove it, then {_reindex(ws)}"


def _fix_boosted(ws, base: str, name: str) -> str:
    """Repairing a boosted SAE's base changes the error the residual was trained on: retrain both."""
    known = {s.name for s in ws.config.saes}
    if base in known and name in known:
        return f"retrain the base with {_train(ws, base)}, then this SAE with {_train(ws, name)}, then {_reindex(ws)}"
    return f"repair or replace {_rel(ws, ws.sae_dir(base))}, then retrain this SAE, then {_reindex(ws)}"


def _int(cfg: dict, key: str, file: str) -> int | None:
    v = cfg.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise IntegrityError(file, f"has {key}={v!r}; it must be a positive integer")
    return v


def _inspect(ws, folder: Path, width: tuple[int, str] | None, seen: tuple[Path, ...]) -> tuple[int, int]:
    """(d_in, d_sae) of the SAE folder (a boosted one: its base's d_in, base + residual latents);
    raises IntegrityError naming the first broken file, _BaseBroken when a boosted SAE's base is."""
    cfg_p = folder / "cfg.json"
    cfg_rel = _rel(ws, cfg_p)
    if not cfg_p.exists():
        raise IntegrityError(cfg_rel, "is missing")
    try:
        cfg: Any = json.loads(cfg_p.read_text())
    except UnicodeDecodeError as e:
        raise IntegrityError(cfg_rel, f"is not valid JSON (not UTF-8 text: {e.reason})") from None
    except json.JSONDecodeError as e:
        raise IntegrityError(cfg_rel, f"is not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    except OSError as e:
        raise IntegrityError(cfg_rel, f"cannot be read ({e.strerror or e})") from None
    if not isinstance(cfg, dict):
        raise IntegrityError(cfg_rel, f"must hold a JSON object, not {type(cfg).__name__}")
    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).exists()), None)
    if weights is None:
        raise IntegrityError(_rel(ws, folder / WEIGHT_FILES[0]), "is missing")
    w_rel = _rel(ws, weights)
    try:
        t = safetensors_header(weights)
    except OSError as e:
        raise IntegrityError(w_rel, f"cannot be read ({e.strerror or e})") from None
    except ValueError as e:
        raise IntegrityError(w_rel, str(e)) from None
    d_in, d_sae = _weight_dims(t, weights.name, w_rel, cfg)
    cfg_d_in, cfg_d_sae = _int(cfg, "d_in", cfg_rel), _int(cfg, "d_sae", cfg_rel)
    sparsify = weights.name == "sae.safetensors"
    for key, said, has in (("d_in", cfg_d_in, d_in), ("d_sae", None if sparsify else cfg_d_sae, d_sae)):
        if said is not None and said != has:
            raise IntegrityError(
                cfg_rel,
                f"says {key}={said} but {w_rel} has {key}={has} (W_dec is {d_sae}x{d_in}): "
                "the two files do not belong together",
            )
    if width is not None and d_in != width[0]:
        raise IntegrityError(
            w_rel,
            f"has d_in={d_in} but the model's activations at "
            f"{ws.config.activations.site} have d={width[0]} ({width[1]})",
        )
    saex = cfg.get("saex")
    base_rel = saex.get("boost_base") if isinstance(saex, dict) else None
    if not base_rel:
        return d_in, d_sae
    base = folder / str(base_rel)
    key = Path(os.path.normpath(base))
    if key in seen or key == Path(os.path.normpath(folder)):
        raise IntegrityError(cfg_rel, f"names boost_base {base_rel!r}, which leads back to itself")
    try:
        b_in, b_sae = _inspect(ws, base, width, seen + (Path(os.path.normpath(folder)),))
    except _BaseBroken:
        raise  # name the broken SAE at the root of the chain
    except IntegrityError as e:
        raise _BaseBroken(_rel(ws, key), key.name, str(e)) from None
    if b_in != d_in:
        raise IntegrityError(w_rel, f"has d_in={d_in} but its base {_rel(ws, key)} has d_in={b_in}")
    return d_in, b_sae + d_sae


def _weight_dims(t: dict[str, tuple[str, tuple[int, ...]]], fname: str, w_rel: str, cfg: dict) -> tuple[int, int]:
    """(d_in, d_sae) from W_dec's shape; every other tensor present must agree with it."""
    if "W_dec" not in t:
        raise IntegrityError(w_rel, f"has no W_dec tensor (it holds {', '.join(sorted(t)) or 'nothing'})")
    shape = t["W_dec"][1]
    if len(shape) != 2 or 0 in shape:
        raise IntegrityError(w_rel, f"has W_dec of shape {list(shape)}; it must be (d_sae, d_in)")
    d_sae, d_in = shape
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "b_dec": (d_in,)}
    if fname == "sae.safetensors":  # sparsify: encoder.weight (d_sae, d_in), encoder.bias (d_sae,)
        want = {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "b_dec": (d_in,)}
    for name, s in want.items():
        if name in t and t[name][1] != s:
            raise IntegrityError(
                w_rel,
                f"has {name} of shape {list(t[name][1])} but W_dec {list(shape)} needs "
                f"{list(s)}: the tensors do not belong together",
            )
    arch = str(cfg.get("architecture") or cfg.get("activation_fn_str") or "")
    if arch == "jumprelu" and "W_enc" in t:
        theta = t.get("threshold") or t.get("log_threshold")
        if theta is None:
            raise IntegrityError(w_rel, "is a jumprelu SAE without a threshold tensor")
        if math.prod(theta[1]) not in (1, d_sae):
            raise IntegrityError(w_rel, f"has a threshold of shape {list(theta[1])}; it must be ({d_sae},)")
    return d_in, d_sae


__all__ = ["IntegrityError", "check_saes", "model_width", "safetensors_header"]
