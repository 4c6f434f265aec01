"""Pretrained SAEs in a workspace: an entry ``saes: - {name, path | release + sae_id | hf, [hookpoint], [site]}``
is imported instead of trained.

Import reads the outside SAE with ``backend.sae.formats.load_pretrained`` (SAELens, sparsify, dictionary_learning,
Gemma Scope; their conventions folded into the weights), checks it against the model (the site exists, d_in equals
the model's width), and writes it into ``saes/<name>`` in this project's layout with its provenance under
``cfg.json`` ``saex.source`` (format, where it came from, its site, the metadata of its own config). From there
it is evaluated, indexed, labelled, mapped, compared and steered like a trained SAE.

The site: the entry's ``site:``, else the one the SAE's files name (translated to ``blocks.<L>.hook_<kind>``),
else activations.site. Hub sources (release, hf) are checked before any work starts (``preflight``): offline
they fail at once with one line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from backend.sae.model import SaeError

_HOOK_PATTERNS = (  # the naming of other packages -> this project's SAELens-style site names
    (re.compile(r"^blocks\.(\d+)\.hook_(resid_post|mlp_out)$"), None),
    (re.compile(r"^(?:model\.|gpt_neox\.|transformer\.)?(?:layers|h)\.(\d+)$"), "resid_post"),  # sparsify, HF
    (re.compile(r"^(?:model\.|gpt_neox\.|transformer\.)?(?:layers|h)\.(\d+)\.mlp$"), "mlp_out"),
    (re.compile(r"^resid_post_layer_(\d+)$"), "resid_post"),  # dictionary_learning's submodule names
    (re.compile(r"^mlp_out_layer_(\d+)$"), "mlp_out"),
    (re.compile(r"(?:^|/)layer_(\d+)(?:/|$)"), "resid_post"),  # Gemma Scope's res folders: layer_12/width_16k/...
)


def site_from_hook(hook: str) -> str | None:
    """This project's site name for a hook named by another package, or None when it is not a residual-stream or
    MLP-output site this project can hook."""
    for pat, kind in _HOOK_PATTERNS:
        if m := pat.search(hook.strip()):
            return f"blocks.{m.group(1)}.hook_{kind or m.group(2)}"
    return None


def imported_site(sae_dir: str | Path) -> str | None:
    """The site recorded when a pretrained SAE was imported (None before its import)."""
    p = Path(sae_dir) / "cfg.json"
    try:
        return (json.loads(p.read_text()).get("saex", {}).get("source") or {}).get("site")
    except (OSError, ValueError):
        return None


def source_of(sae_dir: str | Path) -> dict[str, Any]:
    """The provenance of a workspace SAE (cfg.json ``saex.source``); {} for SAEs trained here."""
    p = Path(sae_dir) / "cfg.json"
    try:
        return dict(json.loads(p.read_text()).get("saex", {}).get("source") or {})
    except (OSError, ValueError):
        return {}


def _spec(s) -> dict[str, Any]:
    """What identifies an entry's source (a changed one is imported again)."""
    return {k: getattr(s, k) for k in ("path", "release", "sae_id", "hf", "hookpoint", "site") if getattr(s, k)}


def preflight(ws) -> None:
    """Fail before any work when a pretrained entry cannot be read: a path that does not exist, or a hub source
    while the hub is unreachable. Imported entries whose source is unchanged are not checked again."""
    for s in ws.config.saes:
        if not s.pretrained or source_of(ws.sae_dir(s.name)).get("entry") == _spec(s):
            continue
        where = f"saes[{s.name}]"
        if s.path and not Path(s.path).expanduser().exists():
            raise SaeError(f"{where}.path {s.path}: no such file or folder (a relative path is read from {Path.cwd()})")
        if (s.release or s.hf) and not _download_dir(s).exists():
            from backend.adapters.causal_lm import hub_reachable

            if not hub_reachable():
                what = f"release {s.release!r} / {s.sae_id!r}" if s.release else f"hf {s.hf!r}"
                raise SaeError(
                    f"{where}: {what} must be downloaded, but the Hugging Face hub is unreachable (offline); "
                    "download the SAE elsewhere and give its folder as path:"
                )


def _download_dir(s) -> Path:
    from backend.data.assets import cache_root

    key = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{s.release}__{s.sae_id}" if s.release else str(s.hf))
    return cache_root() / "saes" / key


def _fetch(s) -> Path:
    """The local folder of a hub source, downloaded once into <cache>/saes/."""
    out = _download_dir(s)
    if out.exists():
        return out
    from huggingface_hub import snapshot_download

    if s.release:
        try:
            from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
        except ImportError:
            raise SaeError(
                f"saes[{s.name}]: release names are resolved with SAELens' table: `pip install sae-lens`, or name the "
                "files directly with hf: owner/repo/folder"
            ) from None
        rel = get_pretrained_saes_directory().get(s.release)
        if rel is None or s.sae_id not in rel.saes_map:
            raise SaeError(f"saes[{s.name}]: SAELens knows no SAE {s.sae_id!r} in release {s.release!r}")
        repo, sub = rel.repo_id, rel.saes_map[s.sae_id]
    else:
        parts = s.hf.strip("/").split("/")
        repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
    from backend.atomic import atomic_dir

    with atomic_dir(out) as tmp:
        got = Path(snapshot_download(repo, allow_patterns=[f"{sub}/*"] if sub else None, local_dir=tmp / "repo"))
        if sub and not (got / sub).exists():
            raise SaeError(f"saes[{s.name}]: {repo} has no folder {sub!r}")
        (tmp / "where.txt").write_text(sub)
    return out


def _local(s) -> Path:
    if s.path:
        return Path(s.path).expanduser().resolve()
    out = _fetch(s)
    sub = (out / "where.txt").read_text()
    return out / "repo" / sub if sub else out / "repo"


def import_pretrained(ws, s, force: bool = False, verbose: bool = True) -> bool:
    """Import the pretrained entry ``s`` into ``saes/<name>`` unless it is imported from the same source; returns
    whether it imported. Raises SaeError (one line: the file and the fix) on a mismatch with the model."""
    from backend.adapters.base import Site
    from backend.sae.formats import load_pretrained
    from backend.sae.model import check_site

    out = ws.sae_dir(s.name)
    if not force and source_of(out).get("entry") == _spec(s):
        return False
    src = _local(s)
    sae, prov = load_pretrained(src, hookpoint=s.hookpoint)
    named = prov.get("hook_name") or prov.get("hookpoint") or ""
    if not named and site_from_hook(str(src)):  # Gemma Scope's files name no hook; its folders do (layer_12/...)
        named = str(src)
    site = s.site or site_from_hook(named) or ws.config.activations.site
    adapter = ws.adapter(verbose=False)
    try:
        Site.parse(site, adapter.n_layers)
    except ValueError as e:
        raise SaeError(
            f"saes[{s.name}] ({src}): site {site} {e}; set site: to the site this SAE was trained at"
            if s.site or not named
            else f"saes[{s.name}] ({src}): its files name the hook {named!r} ({site}), which this model lacks ({e}); "
            "set site: to override"
        ) from None
    check_site(sae, adapter.d_model, f"{ws.config.model.id} at {site} ({src})")
    if named and not s.site and site_from_hook(named) is None and verbose:
        print(f"[import] {s.name}: its hook {named!r} has no site name here; using {site}", flush=True)
    sae.cfg.hook_name = site
    sae.cfg.model_name = prov.get("model_name") or ws.config.model.id
    sae.cfg.meta = {**sae.cfg.meta, "source": {**prov, "site": site, "entry": _spec(s)}}
    (out / "metrics.json").unlink(missing_ok=True)  # a changed source: its old metrics no longer apply
    sae.save(out)  # replaces the folder atomically
    if verbose:
        print(
            f"[import] {s.name}: {prov['format']} {prov['architecture']} SAE ({prov['d_in']} -> {prov['d_sae']}) "
            f"from {src}, at {site}",
            flush=True,
        )
    return True
