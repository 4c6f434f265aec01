"""The Backend facade: everything the UI and API clients ask of a workspace, as plain values.

Contract: docs/service_api.md. Torch stays inside the backend; the index is read through
store.IndexReader (one connection, a cursor per thread); the model and SAEs load lazily on
the first request that needs them (search by text, steering) and are cached.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .service_steer import SteeringViews
from .store import SORT_KEYS, IndexReader
from .workspace import Workspace, open_workspace

MAX_TEXT = 20_000


class BackendError(ValueError):
    """A request the backend cannot serve; the message says what to change."""


@dataclass
class Context:
    tokens: list[str]
    acts: list[float]
    focus: int
    source: str
    domain: str
    max_act: float


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


@dataclass
class TextSearchResult:
    tokens: list[str]
    top_latents: pd.DataFrame
    per_token: list[list[tuple[int, float]]]
    acts: dict[int, list[float]]


@dataclass
class CompareResult:
    metrics: pd.DataFrame
    matches: pd.DataFrame
    unmatched: pd.DataFrame


class Backend(SteeringViews):
    def __init__(self, workspace: str | Path | Workspace):
        self.ws = workspace if isinstance(workspace, Workspace) else open_workspace(workspace)
        self.workspace_name = self.ws.config.name
        self.model_name = self.ws.config.model.id
        self.index = IndexReader(self.ws.index_path)
        self._saes: dict[str, object] = {}
        self._dec: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._sae_table = self.index.saes()
        self.sae_names = self._sae_table["sae"].tolist()
        order = [s.name for s in self.ws.config.saes if s.name in self.sae_names]
        self.sae_names = order + [n for n in self.sae_names if n not in order]

    # ---- lazy heavy parts ----------------------------------------------------------------
    def adapter(self):
        with self._lock:
            return self.ws.adapter(verbose=False)

    def _check_sae(self, name: str) -> None:
        if name not in self.sae_names:
            raise BackendError(f"unknown SAE {name!r}; this workspace has: {', '.join(self.sae_names)}")

    def sae(self, name: str):
        self._check_sae(name)
        with self._lock:
            if name not in self._saes:
                from .sae import load_sae

                self._saes[name] = load_sae(self.ws.sae_dir(name))
            return self._saes[name]

    def _unit_decoder(self, name: str) -> np.ndarray:
        self._check_sae(name)
        if name not in self._dec:
            from safetensors.numpy import load_file

            d = self.ws.sae_dir(name)
            W = load_file(str(d / "sae_weights.safetensors"))["W_dec"]
            cfg = json.loads((d / "cfg.json").read_text())
            base = cfg.get("saex", {}).get("boost_base")
            if base:  # a boosted composite's latents are the base's followed by the residual's
                W = np.concatenate([self._unit_decoder(Path(base).name), W])
            self._dec[name] = W / np.linalg.norm(W, axis=1, keepdims=True).clip(1e-8)
        return self._dec[name]

    def _check_latent(self, sae: str, latent) -> int:
        self._check_sae(sae)
        d_sae = int(self._sae_table.set_index("sae").loc[sae, "d_sae"])
        try:
            i = int(latent)
        except (TypeError, ValueError):
            raise BackendError(f"latent must be an integer between 0 and {d_sae - 1}, got {latent!r}") from None
        if not 0 <= i < d_sae:
            raise BackendError(f"latent {i} is out of range: SAE {sae!r} has latents 0..{d_sae - 1}")
        return i

    # ---- browse --------------------------------------------------------------------------
    def saes(self) -> pd.DataFrame:
        rows = []
        for name in self.sae_names:
            p = self.ws.sae_dir(name) / "metrics.json"
            m = json.loads(p.read_text()) if p.exists() else {}
            t = self._sae_table.set_index("sae").loc[name]
            rows.append({"name": name, "architecture": t["architecture"], "d_sae": int(t["d_sae"]),
                         "k": (json.loads((self.ws.sae_dir(name) / "cfg.json").read_text()).get("k")),
                         "l0": m.get("l0"), "fvu": m.get("fvu"), "ce_recovered": m.get("ce_recovered"),
                         "dead_frac": m.get("dead_frac"), "n_latents_indexed": int(t["d_sae"])})
        return pd.DataFrame(rows)

    def domains(self) -> list[str]:
        return self.index.domains()

    def latents(self, sae: str, *, sort_by: str = "density", descending: bool = True, domain: str | None = None,
                min_density: float = 0.0, query: str = "", limit: int = 200, offset: int = 0) -> pd.DataFrame:
        self._check_sae(sae)
        if sort_by not in SORT_KEYS:
            raise BackendError(f"sort_by must be one of {', '.join(SORT_KEYS)}")
        return self.index.latents(sae, sort_by, descending, domain or "", float(min_density or 0), (query or "")[:200],
                                  max(1, min(int(limit), 100_000)), max(0, int(offset)))

    def feature(self, sae: str, latent: int) -> FeatureView:
        i = self._check_latent(sae, latent)
        row = self.index.latent(sae, i)
        if row is None:
            raise BackendError(f"latent {i} of {sae!r} is not in the index; rebuild it with `python -m backend index`")
        ctx = self.index.contexts(sae, i)

        def contexts(kind: str) -> list[Context]:
            sub = sorted((r for r in ctx if r["kind"] == kind), key=lambda r: -r["max_act"])
            return [Context(list(r["tokens"]), [float(a) for a in r["acts"]], int(r["focus"]), r["source"], r["domain"],
                            float(r["max_act"])) for r in sub]

        bands = sorted({r["kind"] for r in ctx if r["kind"].startswith("q")}, key=lambda k: -int(k[1:]))
        n_bands = max((int(k[1:]) for k in bands), default=0) + 1
        quantiles = [(f"{int(k[1:]) * 100 // n_bands}-{(int(k[1:]) + 1) * 100 // n_bands}% of max", contexts(k)) for k in bands]
        return FeatureView(
            sae=sae, latent=i, label=row["label"], confidence=float(row["confidence"]), precision=float(row["precision"]),
            recall=float(row["recall"]), density=float(row["density"]), mean_act=float(row["mean_act"]),
            max_act=float(row["max_act"]), hist_edges=[float(v) for v in row["hist_edges"]],
            hist_counts=[int(v) for v in row["hist_counts"]], top_contexts=contexts("top"), quantiles=quantiles,
            logits_top=[(t, v) for t, v in json.loads(row["logit_top"])],
            logits_bottom=[(t, v) for t, v in json.loads(row["logit_bottom"])],
            domain_rates=json.loads(row["domain_rates"]),
            top_tokens=[(t, 0.0) for t in json.loads(row["top_tokens"])],
        )

    # ---- search ----------------------------------------------------------------------------
    def search_text(self, sae: str, text: str, top_n: int = 10) -> TextSearchResult:
        import torch

        self._check_sae(sae)
        if not text or not text.strip():
            raise BackendError("type some text to search")
        if len(text) > MAX_TEXT:
            raise BackendError(f"the text has {len(text):,} characters; the limit is {MAX_TEXT:,}: search a shorter passage")
        model, adapter = self.sae(sae), self.adapter()
        batch = adapter.tokenize([text], 512)
        with torch.inference_mode():
            acts = adapter.capture(batch, self.ws.config.activations.site)[batch.keep_mask]
            lat = model.encode(acts.float())  # (n, d_sae)
        tokens = adapter.token_strings(batch.input_ids[batch.keep_mask].tolist())
        mx, mean = lat.max(0).values, lat.mean(0)
        fired = (lat > 0).sum(0)
        # Rank by activation relative to each latent's max on the index corpus: raw values are dominated
        # by a few latents that fire very strongly on the first token of any text.
        info = self.index.labels(sae).set_index("latent")
        ref = torch.ones_like(mx)
        ref[torch.tensor(info.index.to_numpy())] = torch.tensor(info["max_act"].to_numpy(), dtype=mx.dtype).clamp_min(1e-6)
        rel = mx / ref
        top = [i for i in torch.topk(rel, min(top_n, len(rel))).indices.tolist() if mx[i] > 0]
        labels = info["label"]
        table = pd.DataFrame({"latent": top, "label": [labels.get(i, "") for i in top],
                              "max_act": [float(mx[i]) for i in top], "rel_act": [round(float(rel[i]), 3) for i in top],
                              "mean_act": [float(mean[i]) for i in top], "n_tokens_fired": [int(fired[i]) for i in top]})
        v, idx = lat.topk(min(3, lat.shape[1]), dim=1)
        per_token = [[(int(j), float(a)) for j, a in zip(ri, rv) if a > 0] for ri, rv in zip(idx.tolist(), v.tolist())]
        return TextSearchResult(tokens, table, per_token, {i: lat[:, i].tolist() for i in top})

    def search_features(self, query: str, sae: str | None = None, limit: int = 50) -> pd.DataFrame:
        q = (query or "").strip()
        if not q:
            raise BackendError("type a word to search the explanations for")
        if sae:
            self._check_sae(sae)
        df = self.index.search_labels(q[:200], sae or "", max(1, min(int(limit), 1000)))
        df["score"] = df["confidence"]
        return df

    def nearest(self, sae: str, latent: int, k: int = 10, other_sae: str | None = None) -> pd.DataFrame:
        i = self._check_latent(sae, latent)
        target = other_sae or sae
        W_t = self._unit_decoder(target)
        cos = W_t @ self._unit_decoder(sae)[i]
        if target == sae:
            cos[i] = -np.inf
        top = np.argsort(-cos)[: max(1, min(int(k), 200))]
        labels = self.index.labels(target).set_index("latent")["label"]
        return pd.DataFrame({"sae": target, "latent": top, "cosine": cos[top].round(4),
                             "label": [labels.get(int(j), "") for j in top]})

    def feature_map(self, sae: str | None = None) -> pd.DataFrame:
        if sae:
            self._check_sae(sae)
        df = self.index.feature_map(sae or "")
        if not sae:
            df["x"], df["y"] = df["jx"], df["jy"]
        return df.drop(columns=["jx", "jy"])

    # ---- compare ----------------------------------------------------------------------------
    def compare(self, saes: list[str], threshold: float = 0.7) -> CompareResult:
        saes = [s for s in (saes or []) if s]
        if len(saes) < 2:
            raise BackendError("pick at least two SAEs to compare")
        for s in saes:
            self._check_sae(s)
        metrics = self.saes().set_index("name").loc[saes].reset_index()
        a = saes[0]
        Wa = self._unit_decoder(a)
        la = self.index.labels(a).set_index("latent")["label"]
        matches, unmatched = [], []
        for b in saes[1:]:
            Wb = self._unit_decoder(b)
            best = np.zeros(len(Wa))
            arg = np.zeros(len(Wa), dtype=int)
            for s in range(0, len(Wa), 2048):
                c = Wa[s : s + 2048] @ Wb.T
                arg[s : s + 2048], best[s : s + 2048] = c.argmax(1), c.max(1)
            lb = self.index.labels(b).set_index("latent")["label"]
            order = np.argsort(-best)
            matches.append(pd.DataFrame({"sae_a": a, "latent_a": order, "label_a": [la.get(int(i), "") for i in order],
                                         "sae_b": b, "latent_b": arg[order], "label_b": [lb.get(int(j), "") for j in arg[order]],
                                         "cosine": best[order].round(4)}))
            miss = np.nonzero(best < threshold)[0]
            unmatched.append(pd.DataFrame({"sae": a, "latent": miss, "label": [la.get(int(i), "") for i in miss],
                                           "best_cosine": best[miss].round(4), "vs": b}))
        return CompareResult(metrics, pd.concat(matches, ignore_index=True), pd.concat(unmatched, ignore_index=True))
