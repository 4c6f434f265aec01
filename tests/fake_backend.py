"""A small in-memory stand-in for backend.serve.service.Backend, following docs/service_api.md.

Used by the handler tests so that they need no built workspace: it returns the contract's
dataclasses and DataFrames with the contract's columns, and raises BackendError with one-line
messages for bad input, like the real facade.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from backend import errors as check
from backend.modalities import get_modality
from backend.sae import steering
from backend.serve.service import (
    LEVEL_COLUMNS,
    BackendError,
    CompareResult,
    Context,
    FeatureView,
    TextSearchResult,
)
from backend.serve.steer import MAX_INPUT_CHARS, MAX_MOVERS, SteerUpdate, parse_edits

MAX_TEXT = 20_000
DOMAINS = ["general", "code", "legal"]
WORDS = [" the", " <b>", " &", "\n", " Paris", " def", " licence", " of", "(", " x", " -", " and"]


class FakeBackend:
    """Three SAEs of 40 latents each with deterministic pseudo-random statistics."""

    workspace_name = "fake"
    model_name = "fake-lm"
    modality = "text"
    capabilities = get_modality("text").capabilities()  # as Backend builds it from the kind's record
    D_SAE = 40
    MAX_TOKENS = 64

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self._saes = ["topk", "relu", "boost"]
        self._lat = {}
        for s in self._saes:
            n = self.D_SAE
            self._lat[s] = pd.DataFrame(
                {
                    "latent": np.arange(n),
                    "label": [
                        f"{WORDS[i % len(WORDS)].strip() or 'newline'} tokens in {DOMAINS[i % 3]} text"
                        for i in range(n)
                    ],
                    "confidence": rng.uniform(0, 1, n).round(3),
                    "density": rng.uniform(0, 0.05, n),
                    "mean_act": rng.uniform(0.5, 2, n),
                    "max_act": rng.uniform(2, 8, n),
                    "top_domain": [DOMAINS[i % 3] for i in range(n)],
                }
            )

    _NO_LATENT = object()

    def _check(self, sae: str, latent=_NO_LATENT) -> pd.DataFrame:
        """The same checks as the real facade (backend/errors.py), so handlers see the same errors."""
        check.choice("SAE", sae, self._saes)
        if latent is not self._NO_LATENT:
            i = check.whole("latent", latent, -(2**63), 2**63 - 1)
            if not 0 <= i < self.D_SAE:
                raise BackendError(f"latent {latent} is out of range for SAE {sae!r} (0..{self.D_SAE - 1})")
        return self._lat[sae]

    def saes(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "name": self._saes,
                "architecture": ["topk", "relu", "batchtopk"],
                "d_sae": [self.D_SAE] * 3,
                "k": [8, None, 4],
                "l0": [8.0, 20.5, 4.0],
                "fvu": [0.3, 0.25, 0.4],
                "ce_recovered": [0.8, 0.85, 0.7],
                "dead_frac": [0.0, 0.1, 0.02],
                "n_latents_indexed": [self.D_SAE] * 3,
            }
        )

    def domains(self) -> list[str]:
        return list(DOMAINS)

    def subdomains(self) -> list[str]:
        return []

    def coverage(self, subdomain: str) -> dict:
        raise BackendError(f"no subdomain {subdomain!r}: this workspace has no subdomain SAEs")

    def shift_report(self) -> dict | None:
        return None

    # what build_status answers: set ``status`` (and ``_saes``) to play a staged build in a UI test
    status = {"workspace": "fake", "active": False, "step": "", "line": "", "saes": [], "others": []}

    def build_status(self) -> dict:
        return dict(self.status)

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
        df = self._check(sae)
        df = df[df["density"] >= min_density]
        if domain:
            df = df[df["top_domain"] == domain]
        if query:
            df = df[df["label"].str.contains(query, case=False, regex=False)]
        return df.sort_values(sort_by, ascending=not descending).iloc[offset : offset + limit].reset_index(drop=True)

    def _context(self, latent: int, r: int, scale: float) -> Context:
        tokens = [WORDS[(latent + r + i) % len(WORDS)] for i in range(12)]
        acts = [round(scale * max(0.0, np.sin(i + latent + r)), 3) for i in range(12)]
        focus = int(np.argmax(acts))
        return Context(tokens, acts, focus, f"doc-{r}", DOMAINS[r % 3], acts[focus])

    def feature(self, sae: str, latent: int) -> FeatureView:
        row = self._check(sae, latent).iloc[int(latent)]
        top = [self._context(int(latent), r, float(row.max_act)) for r in range(4)]
        bands = [
            (f"{lo}-{lo + 20}% of max", [self._context(int(latent), lo, row.max_act * lo / 100)]) for lo in (0, 40, 80)
        ]
        return FeatureView(
            sae,
            int(latent),
            str(row.label),
            float(row.confidence),
            0.7,
            0.6,
            float(row.density),
            float(row.mean_act),
            float(row.max_act),
            [0.0, 1.0, 2.0, 3.0],
            [30, 10, 2],
            top,
            bands,
            [(" Paris", 2.5), ("<", 1.0)],
            [(" &", -1.5)],
            {d: 0.01 * (i + 1) for i, d in enumerate(DOMAINS)},
            [(" Paris", 3.2)],
        )

    def example_input(self, n: int = 20) -> str:
        return get_modality(self.modality).example_input(self, n)  # text: a prompt, no windows needed

    def _text(self, text: str) -> str:
        if not text.strip():
            raise BackendError("the text is empty: type something to search")
        if len(text) > MAX_TEXT:
            raise BackendError(f"the text has {len(text):,} characters; the limit is {MAX_TEXT:,}")
        return text

    def search_text(self, sae: str, text: str, top_n: int = 10) -> TextSearchResult:
        self._check(sae)
        tokens = [" " + w if i else w for i, w in enumerate(self._text(text).split())]
        notice = ""
        if len(tokens) > self.MAX_TOKENS:
            tokens, notice = tokens[: self.MAX_TOKENS], f"the text was cut to its first {self.MAX_TOKENS} tokens"
        lat = list(range(min(top_n, 3)))
        acts = {k: [float((i + k) % 3) for i in range(len(tokens))] for k in lat}
        top = pd.DataFrame(
            {
                "latent": lat,
                "label": [self._lat[sae].label[k] for k in lat],
                "max_act": [max(acts[k]) for k in lat],
                "mean_act": [float(np.mean(acts[k])) for k in lat],
                "n_tokens_fired": [sum(a > 0 for a in acts[k]) for k in lat],
            }
        )
        per_token = [[(k, acts[k][i]) for k in lat if acts[k][i] > 0] for i in range(len(tokens))]
        return TextSearchResult(tokens, top, per_token, acts, notice)

    def search_features(self, query: str, sae: str | None = None, limit: int = 50) -> pd.DataFrame:
        q = self._text(query)
        names = [sae] if sae else self._saes
        frames = [self._check(s).assign(sae=s) for s in names]
        df = pd.concat(frames)
        df = df[df["label"].str.contains(q, case=False, regex=False)].assign(score=1.0)
        return df[["sae", "latent", "label", "confidence", "density", "score"]].head(limit).reset_index(drop=True)

    def search_meaning(self, query: str, sae: str = "", limit: int = 20) -> pd.DataFrame:
        """Words of the query found in labels rank first (a stand-in for embeddings: no model in UI tests)."""
        q = self._text(query)
        names = [sae] if sae else self._saes
        df = pd.concat([self._check(s).assign(sae=s) for s in names])
        words = [w for w in q.lower().split() if w]
        df = df.assign(score=df["label"].str.lower().map(lambda lab: sum(w in lab for w in words) / max(len(words), 1)))
        df = df.sort_values(["score", "latent"], ascending=[False, True]).head(int(limit))
        out = df[["sae", "latent", "label", "score", "top_domain"]].reset_index(drop=True)
        out.attrs["notice"] = ""
        return out

    def nearest(self, sae: str, latent: int, k: int = 10, other_sae: str | None = None) -> pd.DataFrame:
        self._check(sae, latent)
        target = other_sae or sae
        lab = self._check(target)
        ids = [(int(latent) + j) % self.D_SAE for j in range(1, k + 1)]
        return pd.DataFrame(
            {
                "sae": target,
                "latent": ids,
                "cosine": [1 - 0.05 * j for j in range(k)],
                "label": [lab.label[i] for i in ids],
            }
        )

    def feature_map(self, sae: str | None = None) -> pd.DataFrame:
        names = [sae] if sae else self._saes
        frames = []
        for s in names:
            df = self._check(s)
            t = np.arange(len(df))
            frames.append(df.assign(sae=s, x=np.cos(t), y=np.sin(t) * (1 + names.index(s))))
        return pd.concat(frames)[["sae", "latent", "x", "y", "density", "top_domain", "label", "confidence"]]

    # metrics.json values the real compare adds to saes()' columns (flattened as backend.serve.service.flat_metrics)
    EXTRA_METRICS = {
        "topk": {"kl": 0.9, "decoder_max_cos_mean": 0.2, "absorption_rate": 0.15, "stability": 0.8},
        "relu": {"kl": 0.7, "decoder_max_cos_mean": 0.25, "absorption_rate": 0.05},
        "boost": {"kl": 1.2, "decoder_max_cos_mean": 0.18, "absorption_rate": 0.2},
    }
    MATRYOSHKA = {"boost": {10: 0.6, 20: 0.5, 40: 0.4}}  # prefix width -> FVU with that prefix only

    def compare(self, saes: list[str], threshold: float = 0.7, limit: int = 100, offset: int = 0) -> CompareResult:
        saes = check.names("SAEs", saes, self._saes, at_least=0)
        if len(saes) < 2:
            raise BackendError("pick at least two SAEs to compare")
        for s in saes:
            self._check(s)
        metrics = self.saes().set_index("name").loc[saes].reset_index().drop(columns=["k", "n_latents_indexed"])
        extra = [
            {
                **self.EXTRA_METRICS.get(s, {}),
                "reconstruction_on": "held-out windows",
                **{f"matryoshka_fvu_{w}": v for w, v in self.MATRYOSHKA.get(s, {}).items()},
            }
            for s in saes
        ]
        metrics = pd.concat([metrics, pd.DataFrame(extra)], axis=1)
        a, n = saes[0], self.D_SAE
        pairs, every = [], []
        for j, b in enumerate(saes[1:]):
            cos = np.linspace(1.0 - 0.1 * j, 0.2, n)  # latent i of a matches latent (i + j) % n of b
            pairs.append(
                {
                    "sae_a": a,
                    "sae_b": b,
                    "n_latents": n,
                    "n_matched": int((cos >= threshold).sum()),
                    "share_matched": float((cos >= threshold).mean()),
                    "median_cosine": float(np.median(cos)),
                    "hist_counts": np.histogram(cos, bins=20, range=(0, 1))[0].tolist(),
                }
            )
            other = (np.arange(n) + j) % n
            every.append(
                pd.DataFrame(
                    {
                        "sae_a": a,
                        "latent_a": range(n),
                        "label_a": self._lat[a].label,
                        "sae_b": b,
                        "latent_b": other,
                        "label_b": self._lat[b].label.to_numpy()[other],
                        "cosine": cos,
                    }
                )
            )
        both = pd.concat(every, ignore_index=True)
        matches = both[both.cosine >= threshold].sort_values(["cosine", "latent_a"], ascending=[False, True])
        low = both[both.cosine < threshold].sort_values(["cosine", "latent_a"])
        unmatched = pd.DataFrame(
            {"sae": a, "latent": low.latent_a, "label": low.label_a, "best_cosine": low.cosine, "vs": low.sae_b}
        )
        hit = np.zeros(n, dtype=bool)
        hit[matches.latent_a.to_numpy()] = True
        levels = [
            (s, i + 1, start, end, fvu, round(float(hit[start:end].mean()), 4) if s == a else None)
            for s in saes
            for i, (start, (end, fvu)) in enumerate(
                zip([0, *self.MATRYOSHKA.get(s, {})], self.MATRYOSHKA.get(s, {}).items())
            )
        ]
        page = slice(offset, offset + limit)
        return CompareResult(
            metrics,
            matches.iloc[page].reset_index(drop=True),
            unmatched.iloc[page].reset_index(drop=True),
            pd.DataFrame(pairs),
            len(matches),
            len(unmatched),
            pd.DataFrame(levels, columns=LEVEL_COLUMNS),
        )

    # ---- steering: deterministic stand-ins with the real edit checks -------------------------------------
    def steer_stream(
        self,
        sae: str,
        prompt: str,
        edits,
        *,
        max_new_tokens: int = 48,
        temperature: float = 0.7,
        seed: int = 0,
        chat: bool = True,
    ) -> Iterator[SteerUpdate]:
        """The prompt's words echoed (baseline) and upper-cased (steered), a word per step, as the real stream."""
        self._check(sae)
        checked, notice = parse_edits(edits)
        steering.validate_edits(checked, self.D_SAE)
        if not (prompt or "").strip():
            raise BackendError("the prompt is empty: type a prompt to generate from")
        words = prompt.split()[: check.whole("max_new_tokens", max_new_tokens, 1, steering.MAX_NEW_TOKENS)]
        base = steer = ""
        for w in words:
            base, steer = f"{base} {w}".strip(), f"{steer} {w.upper()}".strip()
            yield SteerUpdate(base, steer, notice)
        yield SteerUpdate(base, steer, notice, True, [(e.latent, 1.0, len(words)) for e in checked])

    def steer(self, sae: str, prompt: str, edits, **kw) -> SteerUpdate:
        *_, last = self.steer_stream(sae, prompt, edits, **kw)
        return last

    def steer_outcome(
        self, sae: str, inputs: str, edits, *, k: int = 10, motif: str = "", n_iters: int = 50, seed: int = 0
    ) -> dict:
        raise BackendError("this is a text workspace: steer it by generation (the Steer tab, /steer)")

    def classifier_movers(self, sae: str, sequence: str, limit: int = 8) -> dict:
        """The real argument checks, in the real order; then, where the capabilities offer movers (a subclass
        flips them), ``limit`` deterministic rows over the SAE's first latents; else the real refusal."""
        if not self.capabilities.get("classifier_movers"):
            raise BackendError(
                f"this is a {self.modality} workspace: it has no classifier to move; "
                "finding movers needs a protein workspace whose model has a classifier head"
            )
        lat = self._check(sae)
        n = check.whole("limit", limit, 1, MAX_MOVERS)
        seq = check.text("sequence", sequence, MAX_INPUT_CHARS)
        if not seq.strip():
            raise BackendError("the sequence is empty: paste a protein sequence (one-letter amino-acid codes)")
        bad = sorted({c for c in "".join(seq.split()).upper() if c not in "ACDEFGHIKLMNPQRSTVWYXBZUO"})
        if bad:
            raise BackendError(f"protein sequence has letter(s) outside the amino-acid alphabet: {bad}")
        rows = []
        for i in range(n):
            measured = round((-1) ** i * 0.3 / (i + 1), 4)
            delta = [-measured, measured]
            rows.append(
                {
                    "latent": i,
                    "label": str(lat["label"].iloc[i]),
                    "direction": "raise" if measured > 0 else "lower",
                    "value": round(2 * float(lat["max_act"].iloc[i]), 2),
                    "max_act": float(lat["max_act"].iloc[i]),
                    "predicted": round(measured * 0.8, 4),
                    "measured": measured,
                    "delta": delta,
                }
            )
        return {
            "classes": ["non-hemolytic", "hemolytic"],
            "predicted": "hemolytic",
            "before": [0.4, 0.6],
            "factor": 2.0,
            "n_ranked": self.D_SAE,
            "rows": rows,
            "largest": max(abs(r["measured"]) for r in rows),
            "sign_agreement": [n, n],
            "notice": None,
        }
