"""A workspace: one folder built from a config by the CLI.

Layout::

    <ws>/workspace.yaml        the config it was built from
    <ws>/corpora/windows.parquet   context windows (token ids, doc id, source, domain)
    <ws>/activations/<site>/   shard cache (meta.json + shards)
    <ws>/saes/<name>/          SAELens layout + metrics.json
    <ws>/index.duckdb          the feature index
    <ws>/.lock                 the write lock every build step and CLI command holds (atomic.workspace_lock)

Models are cached outside the workspace (``<cache>/models``), shared by all workspaces.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import yaml

from backend import dist
from backend.atomic import WorkspaceBusy, atomic_write_parquet, atomic_write_text, workspace_lock  # noqa: F401
from backend.config import WorkspaceConfig
from backend.data.activations import ShardCache
from backend.data.corpora import load_docs, make_windows
from backend.modalities import Modality, get_modality

REPO = Path(__file__).resolve().parent.parent
CONFIG_NAME = "workspace.yaml"


class Workspace:
    def __init__(self, path: str | Path, config: WorkspaceConfig):
        self.path = Path(path)
        self.config = config
        self._adapter = None
        self._imported_sites: dict[tuple[str, int], str | None] = {}  # (SAE, cfg.json mtime) -> recorded site

    @property
    def kind(self) -> Modality:
        """The record of the workspace's model kind (backend/modalities): what differs between text, protein
        and recommender workspaces."""
        return get_modality(self.config.model.kind)

    @property
    def modality(self) -> str:
        """'text', 'protein' or 'recsys' (from model.kind)."""
        return self.kind.name

    # ---- paths ----------------------------------------------------------------------
    @property
    def windows_path(self) -> Path:
        return self.path / "corpora" / "windows.parquet"

    def cache_dir(self, data: str = "general", site: str | None = None) -> Path:
        """Shard cache folder of the general activations at ``site`` (default activations.site) or of a
        subdomain's (``<site>@<name>``)."""
        base = (site or self.config.activations.site).replace("/", "_")
        return self.path / "activations" / (base if data == "general" else f"{base}@{data}")

    def site_of(self, name: str) -> str:
        """The hook site of the workspace's SAE ``name``: its entry's ``site``, else the one a pretrained SAE's
        files name (recorded when it was imported), else activations.site."""
        s = next((s for s in self.config.saes if s.name == name), None)
        if s is not None and s.site:
            return s.site
        if s is not None and s.pretrained:
            from backend.sae.pretrained import imported_site

            try:  # read once per version of its cfg.json (a re-import rewrites it)
                key = (name, (self.sae_dir(name) / "cfg.json").stat().st_mtime_ns)
            except OSError:
                return self.config.activations.site  # not imported yet
            if key not in self._imported_sites:
                self._imported_sites[key] = imported_site(self.sae_dir(name))
            return self._imported_sites[key] or self.config.activations.site
        return self.config.activations.site

    def sites(self) -> list[str]:
        """Every site some SAE reads, activations.site first (each gets its own activation cache)."""
        out = [self.config.activations.site]
        for s in self.config.saes:
            if (site := self.site_of(s.name)) not in out:
                out.append(site)
        return out

    @property
    def index_path(self) -> Path:
        return self.path / "index.duckdb"

    def sae_dir(self, name: str) -> Path:
        return self.path / "saes" / name

    # ---- parts ----------------------------------------------------------------------
    def adapter(self, verbose: bool = True):
        if self._adapter is None:
            from backend.adapters import load_adapter

            self._adapter = load_adapter(self.config.model, verbose=verbose)
            from backend.adapters.base import Site

            Site.parse(self.config.activations.site, self._adapter.n_layers)
        return self._adapter

    def windows(self) -> pd.DataFrame:
        return pd.read_parquet(self.windows_path)

    def activation_source(self, data: str = "general", site: str | None = None) -> ShardCache:
        """The shard cache of the general activations (at ``site``, default activations.site), or of a subdomain's
        retrieved windows, serving normal tokens only: the attention-sink rule of ``activations`` is decided on
        each cache once (recorded in its meta.json; under torchrun by rank 0, before the other ranks open it)."""
        ac = self.config.activations

        def open_cache() -> ShardCache:
            cache = ShardCache(self.cache_dir(data, site))
            cache.ensure_exclusion(ac.exclude_first_positions, ac.sink_norm_factor)
            return cache

        return dist.rank0_first(open_cache)

    # ---- build steps ------------------------------------------------------------------
    def build_windows(self, force: bool = False, verbose: bool = True) -> pd.DataFrame:
        if self.windows_path.exists() and not force:
            return self.windows()
        a = self.adapter(verbose)
        if self.kind.windows is not None:  # protein / recommender corpora (text: the corpora registry below)
            df = self.kind.windows(self, a, verbose)
            atomic_write_parquet(df, self.windows_path)
            return df
        frames = []
        for c in self.config.corpora:
            t0 = time.time()
            docs = load_docs(c)
            w = make_windows(docs, c.name, a.encode_ids, self.config.activations.context_len, c.max_windows)
            if verbose:
                print(
                    f"[corpora] {c.name}: {len(docs)} docs -> {len(w)} windows ({time.time() - t0:.1f} s)", flush=True
                )
            frames.append(w)
        df = pd.concat(frames, ignore_index=True)
        atomic_write_parquet(df, self.windows_path)
        return df

    def build_activations(self, force: bool = False, verbose: bool = True, site: str | None = None) -> ShardCache:
        """The activation cache at ``site`` (default activations.site), captured unless it exists (under torchrun
        by every rank, each its share of the shards: ShardCache.build)."""
        site = site or self.config.activations.site
        if (self.cache_dir(site=site) / "meta.json").exists() and not force:
            return self.activation_source(site=site)
        a, ac = self.adapter(verbose), self.config.activations
        from backend.adapters.base import Site

        Site.parse(site, a.n_layers)
        w = self.windows()
        # Train on a shuffled order of windows so every corpus is represented within the budget.
        w = w.sample(frac=1.0, random_state=self.config.train.seed)
        return ShardCache.build(
            a,
            w,
            site,
            self.cache_dir(site=site),
            batch_size=ac.batch_size,
            max_tokens=ac.max_tokens,
            shard_tokens=ac.shard_tokens,
            dtype=ac.cache_dtype,
            progress=verbose,
        )


def create_workspace(config_path: str | Path, path: str | Path | None = None) -> Workspace:
    """Open (or create) the workspace for a config file; the folder defaults to workspaces/<name>."""
    cfg = WorkspaceConfig.load(config_path)
    ws_path = Path(path) if path else REPO / "workspaces" / cfg.name
    ws_path.mkdir(parents=True, exist_ok=True)
    cfg_file = ws_path / CONFIG_NAME
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    if not cfg_file.exists() or cfg_file.read_text() != text:
        with workspace_lock(ws_path):  # a build running from another config must not see its config change
            atomic_write_text(cfg_file, text)
    return Workspace(ws_path, cfg)


def open_workspace(path: str | Path) -> Workspace:
    p = Path(path)
    if not (p / CONFIG_NAME).exists():
        raise FileNotFoundError(
            f"{p} is not a workspace (no {CONFIG_NAME}); build one with `python -m backend build CONFIG`"
        )
    return Workspace(p, WorkspaceConfig.load(p / CONFIG_NAME))
