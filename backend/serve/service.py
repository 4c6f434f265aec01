"""The Backend facade: everything the UI and API clients ask of a workspace, as plain values.

Contract: docs/service_api.md. Torch stays inside the backend; the index is read through
store.IndexReader (one connection per Backend, a cursor per thread); the model and SAEs load lazily
on the first request that needs them (search by text, steering) and are cached.

Nearest directions: faiss IndexFlatIP over unit decoder rows (inner product = cosine), one index per
SAE, built on first use from sae_weights.safetensors (no torch). A boosted composite's latents are
its base's followed by its residual's, so its rows are the base's rows then the residual's.
The views are mixins by concern: steer.py (steering), research.py (coverage, SHIFT), meaning.py (search by
meaning), compare.py (nearest directions, maps, Compare); limits.py caps what one request may ask.

The index file can change while it is served (the staged build of app.py adds SAEs one by one by renaming a
new file over it): ``refresh`` opens the new file beside the old one (store.py: a reader never sees a stale
instance), switches to it, and closes the old reader at the next refresh, so requests in flight finish.

Hazards: user text is only ever a query parameter (store.py); text is capped at ``MAX_TEXT``
characters and at ``MAX_SEARCH_TOKENS`` tokens (or the model's own limit): longer input is cut by the
adapter's policy (first tokens for text, latest items for a recommender) and ``notice`` says so.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from backend import errors as check
from backend.errors import BackendError
from backend.index.store import SORT_KEYS, IndexReader
from backend.serve.compare import LEVEL_COLUMNS, CompareResult, CompareViews, flat_metrics
from backend.serve.limits import MAX_OFFSET, MAX_QUERY, MAX_RESULTS, MAX_ROWS, MAX_SEARCH_TOKENS, MAX_TEXT
from backend.serve.meaning import MeaningViews
from backend.serve.research import ResearchViews
from backend.serve.steer import SteeringViews
from backend.workspace import Workspace, open_workspace

__all__ = ["LEVEL_COLUMNS", "Backend", "BackendError", "CompareResult", "flat_metrics"]


@dataclass
class Context:
    tokens: list[str]
    acts: list[float]
    focus: int
    source: str
    domain: str
    max_act: float
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # protein annotations (start, end, concept)


@dataclass
class FeatureView:
    sae: str
    latent: int
    label: str
    confidence: float
    precision: float
    recall: float
    density: float
    mean_act: float
    max_act: float
    hist_edges: list[float]
    hist_counts: list[int]
    top_contexts: list[Context]
    quantiles: list[tuple[str, list[Context]]]
    logits_top: list[tuple[str, float]]
    logits_bottom: list[tuple[str, float]]
    domain_rates: dict[str, float]
    top_tokens: list[tuple[str, float]] = field(default_factory=list)
    concepts: list[dict[str, Any]] = field(default_factory=list)  # concept matches (protein, recommender)
    method: str = "statistical"  # who wrote the label: statistical | concept | llm | local
    scorer: str = "rule"  # who scored it: rule (held-out tokens) | concept | llm:<model> | local:<model>
    fuzz: float | None = None  # fuzzing balanced accuracy of the label (None: not scored)
    explanations: list[dict[str, Any]] = field(default_factory=list)  # every explanation, best detection first
    top_domain: str = ""  # the domain with the highest firing rate, and its share of the rates
    domain_share: float = 0.0
    top_corpus: str = ""  # the corpus (source) with the highest firing rate, and its share
    corpus_share: float = 0.0


@dataclass
class TextSearchResult:
    tokens: list[str]
    top_latents: pd.DataFrame
    per_token: list[list[tuple[int, float]]]
    acts: dict[int, list[float]]
    notice: str = ""  # e.g. the text was cut to MAX_SEARCH_TOKENS tokens


def source_line(src: dict[str, Any]) -> str:
    """Where an SAE came from, in one line: 'trained here', or a pretrained SAE's format, origin (path, SAELens
    release or hub folder) and what its own config says about it (model, hook, a few training settings)."""
    if not src:
        return "trained here"
    entry = src.get("entry") or {}
    origin = (
        f"SAELens release {entry['release']} / {entry.get('sae_id')}"
        if entry.get("release")
        else f"hf {entry['hf']}"
        if entry.get("hf")
        else src.get("path", "")
    )
    facts = [f"{k} {src[k]}" for k in ("model_name", "hook_name", "hookpoint") if src.get(k)]
    cfg = src.get("cfg") or {}
    facts += [f"{k} {cfg[k]}" for k in SOURCE_FACTS if k in cfg and not isinstance(cfg[k], (dict, list))][:6]
    return f"{src.get('format', 'pretrained')} from {origin}" + (f" ({'; '.join(facts)})" if facts else "")


SOURCE_FACTS = ("k", "l1_coefficient", "lr", "training_tokens", "context_size", "dataset_path", "expansion_factor")
"""Fields of a pretrained SAE's own config shown in its one-line source (when present)."""


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """A row with NaN as None (JSON-safe)."""
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in d.items()}


def _context(r: dict[str, Any]) -> Context:
    return Context(
        list(r["tokens"]), [float(a) for a in r["acts"]], int(r["focus"]), r["source"], r["domain"], float(r["max_act"])
    )


def _read_unit_decoder(folder: Path) -> np.ndarray:
    """Unit-norm decoder rows (d_sae, d_in) float32 of an SAE folder (a boosted one: base rows first)."""
    from safetensors.numpy import load_file

    W = load_file(str(folder / "sae_weights.safetensors"))["W_dec"].astype(np.float32)
    base = json.loads((folder / "cfg.json").read_text()).get("saex", {}).get("boost_base")
    W = W / np.linalg.norm(W, axis=1, keepdims=True).clip(1e-8)
    return np.ascontiguousarray(np.concatenate([_read_unit_decoder((folder / base).resolve()), W]) if base else W)


def _file_sig(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime ns, size) of a file, None when absent: a rename over it changes the inode."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class Backend(SteeringViews, ResearchViews, MeaningViews, CompareViews):
    def __init__(self, workspace: str | Path | Workspace):
        self.ws = workspace if isinstance(workspace, Workspace) else open_workspace(workspace)
        self.workspace_name = self.ws.config.name
        self.model_name = self.ws.config.model.id
        self._kind = self.ws.kind  # the model kind's record (backend/modalities)
        self.modality = self._kind.name  # 'text' | 'protein' | 'recsys'
        self.capabilities = self._kind.capabilities(self.ws.config.model)  # what the UI offers, as plain values
        self._windows: pd.DataFrame | None = None
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._retired: list[IndexReader] = []  # readers replaced by refresh(), closed at the next one
        self._saes: dict[str, Any] = {}
        self._faiss: dict[str, Any] = {}
        self._label_cache: dict[str, pd.Series] = {}
        self._match_cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._saes_table: tuple[list[str], pd.DataFrame] | None = None  # (sae_names it was read for, table)
        self._index_sig = _file_sig(self.ws.index_path)
        self.index = IndexReader(self.ws.index_path)
        try:
            self._serve(self._read_index(self.index))
        except BaseException:
            self.index.close()
            raise

    def _read_index(self, reader: IndexReader) -> dict[str, Any]:
        """What the Backend serves from an index: per-SAE widths, architectures and quantile bands, the SAEs
        whose files are sound (backend/integrity.py) in config order, and one line per broken one."""
        from backend.integrity import check_saes

        table = reader.saes()
        d_sae = dict(zip(table["sae"], table["d_sae"].astype(int)))
        n_q = table["n_quantiles"] if "n_quantiles" in table else [self.ws.config.index.n_quantiles] * len(table)
        broken = check_saes(self.ws, list(d_sae), index_d_sae=d_sae)
        problems = list(broken.values())  # one line per broken SAE: the file, what to run
        if broken and len(broken) == len(d_sae):
            more = f" (and {len(broken) - 1} more broken SAEs)" if len(broken) > 1 else ""
            raise BackendError(f"no SAE of {self.ws.path} can be served: {problems[0]}{more}")
        d_sae = {n: d for n, d in d_sae.items() if n not in broken}
        order = [s.name for s in self.ws.config.saes if s.name in d_sae]
        return {
            "d_sae": d_sae,
            "arch": dict(zip(table["sae"], table["architecture"])),
            "n_bands": dict(zip(table["sae"], [int(n) for n in n_q])),
            "problems": problems,
            "sae_names": order + sorted(n for n in d_sae if n not in order),
        }

    def _serve(self, state: dict[str, Any]) -> None:
        # lookups first, names last: a request checks a name against sae_names, then reads the lookups
        self._d_sae, self._arch, self._n_bands = state["d_sae"], state["arch"], state["n_bands"]
        self.problems: list[str] = state["problems"]
        self.sae_names: list[str] = state["sae_names"]

    def refresh(self) -> bool:
        """Serve the index file as it is now when it was replaced since it was opened (another inode, mtime or
        size: the staged build adds each SAE by renaming a new file over it). Returns whether it switched.

        The new file is opened beside the old one; requests in flight finish on the old reader, which is closed
        at the next refresh (or ``close``). Cached labels and decoder matches are dropped (an SAE may have been
        re-indexed); the model and SAE weights stay loaded. A new file that cannot be served (unreadable, every
        SAE broken) raises its one-line error and leaves the old one served."""
        if _file_sig(self.ws.index_path) == self._index_sig:
            return False
        with self._refresh_lock:
            sig = _file_sig(self.ws.index_path)
            if sig is None or sig == self._index_sig:
                return False
            self._reload_config()  # `add-sae` lists its SAE in workspace.yaml before it renames the new index
            reader = IndexReader(self.ws.index_path)
            try:
                state = self._read_index(reader)
            except BaseException:
                reader.close()
                raise
            for old in self._retired:
                old.close()
            self._retired = [self.index]
            self.index = reader
            with self._lock:
                self._label_cache, self._match_cache, self._faiss = {}, {}, {}
                self._saes_table = None
            self._serve(state)
            self._index_sig = sig
            return True

    def _reload_config(self) -> None:
        """Read workspace.yaml again when it changed (an SAE added to the built workspace); a config that does
        not load keeps the one in use."""
        from backend.config import ConfigError, WorkspaceConfig
        from backend.workspace import CONFIG_NAME

        try:
            cfg = WorkspaceConfig.load(self.ws.path / CONFIG_NAME)
        except (ConfigError, OSError):
            return
        if cfg != self.ws.config:
            self.ws.config = cfg

    def build_status(self) -> dict:
        """The staged build of this workspace in this process (backend/staged.py), after a ``refresh`` so that the
        SAEs it reports ready are served."""
        from backend.staged import build_status

        try:
            self.refresh()
        except (BackendError, RuntimeError, OSError):  # the old index stays served; the build reports the cause
            pass
        return build_status(self.ws.path)

    def close(self) -> None:
        """Release the index file (and the readers ``refresh`` replaced)."""
        for r in [*self._retired, self.index]:
            r.close()
        self._retired = []

    # ---- lazy heavy parts ----------------------------------------------------------------
    def adapter(self):
        with self._lock:
            return self.ws.adapter(verbose=False)

    def _check_sae(self, name: Any) -> str:
        """The name itself when it is one of this workspace's SAEs (the only way a name reaches a path)."""
        return check.choice("SAE", name, self.sae_names)

    def sae(self, name: str):
        """The loaded SAE (torch module), cached."""
        self._check_sae(name)
        with self._lock:
            if name not in self._saes:
                from backend.sae.model import load_sae

                self._saes[name] = load_sae(self.ws.sae_dir(name))
            return self._saes[name]

    def _directions(self, name: str):
        """faiss IndexFlatIP over the SAE's unit decoder rows (cached); ``.reconstruct_n`` gives them back."""
        self._check_sae(name)
        with self._lock:
            if name not in self._faiss:
                import faiss

                W = _read_unit_decoder(self.ws.sae_dir(name))
                index = faiss.IndexFlatIP(W.shape[1])
                index.add(W)
                self._faiss[name] = index
            return self._faiss[name]

    def _check_latent(self, sae: str, latent: Any) -> int:
        self._check_sae(sae)
        d_sae = self._d_sae[sae]
        try:
            i = check.whole("latent", latent, -(2**63), 2**63 - 1)
        except BackendError:
            raise BackendError(
                f"latent must be a whole number between 0 and {d_sae - 1}, got {check.shown(latent)}"
            ) from None
        if not 0 <= i < d_sae:
            raise BackendError(f"latent {i} is out of range: SAE {sae!r} has latents 0..{d_sae - 1}")
        return i

    def _metrics(self, name: str) -> dict[str, Any]:
        p = self.ws.sae_dir(name) / "metrics.json"
        return json.loads(p.read_text()) if p.exists() else {}

    # ---- browse --------------------------------------------------------------------------
    def saes(self) -> pd.DataFrame:
        """One row per served SAE (read from its cfg.json and metrics.json once per index file: the page load
        and the build timer ask for it often)."""
        names = list(self.sae_names)
        if self._saes_table is None or self._saes_table[0] != names:
            self._saes_table = (names, self._read_saes_table(names))
        return self._saes_table[1].copy()

    def _read_saes_table(self, names: list[str]) -> pd.DataFrame:
        rows = []
        for name in names:
            m = self._metrics(name)
            cfg_p = self.ws.sae_dir(name) / "cfg.json"
            cfg = json.loads(cfg_p.read_text()) if cfg_p.exists() else {}
            rows.append(
                {
                    "name": name,
                    "architecture": self._arch[name],
                    "d_sae": self._d_sae[name],
                    "k": cfg.get("k"),
                    "site": self.ws.site_of(name),
                    "source": source_line((cfg.get("saex") or {}).get("source") or {}),
                    "l0": m.get("l0"),
                    "fvu": m.get("fvu"),
                    "ce_recovered": m.get("ce_recovered"),
                    "dead_frac": m.get("dead_frac"),
                    "n_latents_indexed": self._d_sae[name],
                }
            )
        return pd.DataFrame(rows)

    def domains(self) -> list[str]:
        return self.index.domains()

    def latents(
        self,
        sae: str,
        *,
        sort_by: str = "density",
        descending: bool = True,
        domain: str | None = None,
        min_density: float = 0.0,
        query: str = "",
        limit: int = 200,
        offset: int = 0,
    ) -> pd.DataFrame:
        self._check_sae(sae)
        if sort_by not in SORT_KEYS:
            raise BackendError(f"sort_by must be one of {', '.join(SORT_KEYS)}, got {check.shown(sort_by)}")
        domain = check.choice("domain", domain, self.domains()) if domain else ""
        return self.index.latents(
            sae,
            sort_by,
            check.flag("descending", descending),
            domain,
            check.number("min_density", 0.0 if min_density is None else min_density, 0.0, 1.0),
            check.text("query", query, MAX_QUERY),
            check.whole("limit", limit, 1, MAX_ROWS),
            check.whole("offset", offset, 0, MAX_OFFSET),
        )

    def feature(self, sae: str, latent: int) -> FeatureView:
        i = self._check_latent(sae, latent)
        row = self.index.latent(sae, i)
        if row is None:
            raise BackendError(f"latent {i} of {sae!r} is not in the index; rebuild it with `python -m backend index`")
        by_kind: dict[str, list[Context]] = {}
        for r in self.index.contexts(sae, i):  # ordered by kind, then rank (activation, descending)
            c = _context(r)
            if self._kind.context_spans is not None and r.get("win_offset") is not None:
                c.spans = self._kind.context_spans(
                    self.ws, self.windows(), r["window_row"], r["win_offset"], len(c.tokens)
                )
            by_kind.setdefault(r["kind"], []).append(c)
        nb = self._n_bands[sae]
        bands = sorted((k for k in by_kind if k.startswith("q")), key=lambda k: -int(k[1:]))
        quantiles = [(f"{int(k[1:]) * 100 // nb}-{(int(k[1:]) + 1) * 100 // nb}% of max", by_kind[k]) for k in bands]
        toks = json.loads(row["top_tokens"])
        scores = json.loads(row.get("top_token_scores") or "[]") or [0.0] * len(toks)
        return FeatureView(
            sae=sae,
            latent=i,
            label=row["label"],
            confidence=float(row["confidence"]),
            precision=float(row["precision"]),
            recall=float(row["recall"]),
            density=float(row["density"]),
            mean_act=float(row["mean_act"]),
            max_act=float(row["max_act"]),
            hist_edges=[float(v) for v in row["hist_edges"]],
            hist_counts=[int(v) for v in row["hist_counts"]],
            top_contexts=by_kind.get("top", []),
            quantiles=quantiles,
            logits_top=[(t, float(v)) for t, v in json.loads(row["logit_top"])],
            logits_bottom=[(t, float(v)) for t, v in json.loads(row["logit_bottom"])],
            domain_rates=json.loads(row["domain_rates"]),
            top_tokens=[(t, float(s)) for t, s in zip(toks, scores)],
            concepts=[_plain({k: v for k, v in c.items() if k != "sae"}) for c in self.index.concepts(sae, i)],
            method=row.get("method") or "statistical",  # an index written before explanations had methods
            scorer=row.get("scorer") or "rule",
            fuzz=_plain({"f": row.get("fuzz")})["f"],
            explanations=[
                _plain({k: v for k, v in e.items() if k not in ("sae", "latent")})
                for e in self.index.explanations(sae, i).to_dict("records")
            ],
            top_domain=row.get("top_domain") or "",
            domain_share=float(row.get("domain_share") or 0.0),
            top_corpus=row.get("top_corpus") or "",
            corpus_share=float(row.get("corpus_share") or 0.0),
        )

    def example_input(self, n: int = 20) -> str:
        """A real input to steer with: a text prompt, a protein sequence (an annotated window's residues,
        SUMO site windows first) or a user's last ``n`` items as raw ids (recommender)."""
        return self._kind.example_input(self, n)

    def windows(self) -> pd.DataFrame:
        """The workspace's windows table (cached; for context provenance and annotation spans)."""
        if self._windows is None:
            self._windows = self.ws.windows()
        return self._windows

    # ---- search ----------------------------------------------------------------------------
    def search_text(self, sae: str, text: str, top_n: int = 10) -> TextSearchResult:
        """Latents firing on the text, ranked by max activation relative to each latent's indexed max
        (raw values favour a few latents that fire hard on the first token of any text). Latents that never
        fired on the index corpus get rel_act 0 and come last."""
        import torch

        self._check_sae(sae)
        top_n = check.whole("top_n", top_n, 1, MAX_RESULTS)
        if not isinstance(text, str) or not text.strip():
            raise BackendError("type some text to search")
        if len(text) > MAX_TEXT:
            raise BackendError(
                f"the text has {len(text):,} characters; the limit is {MAX_TEXT:,}: search a shorter passage"
            )
        model, adapter = self.sae(sae), self.adapter()
        batch = adapter.tokenize([text], MAX_SEARCH_TOKENS)  # the adapter's own truncation policy and limit
        n_all, n_kept = len(adapter.encode_ids(text)), int(batch.keep_mask.sum())
        notice = f"the text was cut: searched {n_kept:,} of its {n_all:,} tokens" if n_kept < n_all else ""
        with torch.inference_mode():
            acts = adapter.capture(batch, self.ws.site_of(sae))[batch.keep_mask.to(adapter.device)]
            lat = model.encode(acts.float().to(model.W_dec.device)).cpu()  # (n, d_sae)
        if len(lat) == 0:
            raise BackendError("the text has no tokens the model reads (only special tokens?): type some words")
        tokens = adapter.token_strings(batch.input_ids[batch.keep_mask].tolist())
        mx, mean, fired = lat.max(0).values, lat.mean(0), (lat > 0).sum(0)
        info = self.index.labels(sae).set_index("latent")
        ref = torch.zeros_like(mx)
        ref[torch.tensor(info.index.to_numpy())] = torch.tensor(info["max_act"].to_numpy(), dtype=mx.dtype)
        # a latent that never fired on the index corpus has no reference (and an empty dashboard): rank it last
        rel = torch.where(ref > 0, mx / ref.clamp_min(1e-12), torch.zeros_like(mx))
        top = [i for i in torch.topk(rel, min(top_n, len(rel))).indices.tolist() if mx[i] > 0]
        labels = info["label"]
        table = pd.DataFrame(
            {
                "latent": top,
                "label": [labels.get(i, "") for i in top],
                "max_act": [float(mx[i]) for i in top],
                "rel_act": [round(float(rel[i]), 3) for i in top],
                "mean_act": [float(mean[i]) for i in top],
                "n_tokens_fired": [int(fired[i]) for i in top],
            }
        )
        v, idx = lat.topk(min(3, lat.shape[1]), dim=1)
        per_token = [[(int(j), float(a)) for j, a in zip(ri, rv) if a > 0] for ri, rv in zip(idx.tolist(), v.tolist())]
        return TextSearchResult(tokens, table, per_token, {i: lat[:, i].tolist() for i in top}, notice)

    def search_features(self, query: str, sae: str | None = None, limit: int = 50) -> pd.DataFrame:
        q = check.text("query", query, MAX_QUERY).strip()
        if not q:
            raise BackendError("type a word to search the explanations for")
        if sae:
            self._check_sae(sae)
        df = self.index.search_labels(q, sae or "", check.whole("limit", limit, 1, MAX_RESULTS))
        df["score"] = df["confidence"]
        return df
