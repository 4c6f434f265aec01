"""`python -m backend label`: explain latents with an LLM (or the in-process model), score every explanation of
a latent with one scorer, and make the best-scoring one THE label, in the index, atomically.

Per SAE, for the latents chosen (those that fire, in id order, the first ``limit``):
1. explain (``--explainer llm|local``): one prompt per latent from its top and quantile contexts (explain.py);
2. score: EVERY explanation the latent has (the statistical one from the index build, a concept match, earlier
   LLM ones, the new one) is scored by the run's chat model on the latent's held-out contexts, detection and
   fuzzing (score.py), so the numbers compare; without a chat model (``--explainer statistical`` and no
   endpoint) the stored rule scores are the scores;
3. THE label of the latent is its explanation with the best detection F1 under this run's scorer (ties: fuzzing
   when detection is above 0, then the statistical explanation);
   the ``explanations`` table keeps every explanation with its method, model, scorer and scores.
Requests go through explain.Runner: cached replies (``<ws>/label_cache.duckdb``) cost nothing, so a run resumes
where the last one stopped. The index is rewritten aside and renamed (store.rewrite_labels) under the workspace
lock; a failing endpoint stops the run before that with one line, and the labels stay as they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from backend.config import EXPLAINERS, ExplainerConfig, ModelConfig
from backend.index.explain import (
    ChatModel,
    ExplainerError,
    LocalChat,
    OpenAIChat,
    Request,
    Runner,
    explain_examples,
    explain_prompt,
    parse_explanation,
)
from backend.index.label import NEVER_FIRES
from backend.index.score import (
    Example,
    balanced_accuracy,
    batches,
    detect_prompt,
    detection_items,
    detection_metrics,
    fuzz_items,
    fuzz_prompt,
    parse_bits,
)
from backend.index.store import LABEL_COLUMNS, TABLES, IndexReader, LabelCache, rewrite_labels

CACHE_NAME = "label_cache.duckdb"
RULE_SCORERS = ("rule", "concept")  # the scorers of the index build (no LLM)


@dataclass
class SaeSummary:
    sae: str
    latents: int  # latents relabelled
    explained: int  # new explanations written
    scorer: str
    by_method: dict[str, int]  # THE labels per method
    good: float  # share of the relabelled latents whose label has detection F1 >= 0.5


def make_chat(explainer: str, cfg: ExplainerConfig, ws: Any) -> ChatModel | None:
    """The run's chat model: the endpoint (llm, or statistical with an endpoint configured: the statistical
    explanations are then scored by it), the in-process model (local), or None (statistical, no endpoint)."""
    if explainer not in EXPLAINERS:
        raise ExplainerError(f"--explainer {explainer!r}: use one of {', '.join(EXPLAINERS)}")
    if explainer == "llm" or (explainer == "statistical" and cfg.base_url):
        return OpenAIChat(cfg)
    if explainer == "local":
        from backend.adapters import load_adapter

        mc = ws.config.model
        model_id = cfg.model or (mc.id if mc.kind == "causal_lm" else "smollm2")
        adapter = load_adapter(ModelConfig(id=model_id, dtype="float32", device=mc.device), verbose=False)
        if not hasattr(adapter, "chat"):
            raise ExplainerError(f"model {model_id!r} cannot chat: use --explainer local --model smollm2")
        return LocalChat(adapter, model_id)
    return None


def _examples(rows: list[dict], kind: str, n: int) -> list[Example]:
    """Up to n held-out contexts of one kind, evenly spaced over their ranks (over the activation bands)."""
    got = [r for r in rows if r["kind"] == kind]
    pick = np.unique(np.linspace(0, len(got) - 1, min(n, len(got))).round().astype(int)) if got else []
    return [Example(list(got[i]["tokens"]), [float(a) for a in got[i]["acts"]]) for i in pick]


class _Scoring:
    """The scoring requests of one explanation and, from the replies, its detection and fuzzing scores."""

    def __init__(self, sae: str, latent: int, label: str, rows: list[dict], cfg: ExplainerConfig):
        pos, neg = _examples(rows, "hpos", cfg.score_contexts), _examples(rows, "hneg", cfg.score_contexts)
        self.det = batches(detection_items(pos, neg, seed=latent), cfg.score_batch)
        self.fuzz = batches(fuzz_items(pos, seed=latent), cfg.score_batch)
        self.requests = [Request(sae, latent, "detect", detect_prompt(label, b), 4 * len(b) + 8) for b in self.det] + [
            Request(sae, latent, "fuzz", fuzz_prompt(label, b), 4 * len(b) + 8) for b in self.fuzz
        ]

    def scores(self, replies: list[str]) -> dict[str, float]:
        d_pred, d_true, f_pred, f_true = [], [], [], []
        for b, text in zip(self.det, replies[: len(self.det)]):
            d_pred += parse_bits(text, len(b))
            d_true += [ex.fires for ex in b]
        for b, text in zip(self.fuzz, replies[len(self.det) :]):
            f_pred += parse_bits(text, len(b))
            f_true += [it.correct for it in b]
        p, r, f1 = detection_metrics(d_pred, d_true)
        return {
            "detection": f1,
            "precision": p,
            "recall": r,
            "fuzz": balanced_accuracy(f_pred, f_true) if f_true else 0.0,
        }


def _stored(reader: IndexReader, sae: str, latents: pd.DataFrame) -> pd.DataFrame:
    """The SAE's explanations; an index written before the explanations table: its labels, as rule-scored ones."""
    ex = reader.explanations(sae)
    if len(ex):
        return ex
    return pd.DataFrame(
        {
            "sae": sae,
            "latent": latents["latent"],
            "method": "statistical",
            "model": "",
            "label": latents["label"],
            "scorer": "rule",
            "detection": latents["confidence"],
            "precision": np.nan,
            "recall": np.nan,
            "fuzz": np.nan,
        }
    )


def label_sae(
    reader: IndexReader,
    sae: str,
    explainer: str,
    chat: ChatModel | None,
    runner: Runner | None,
    cfg: ExplainerConfig,
    limit: int | None,
) -> tuple[pd.DataFrame, pd.DataFrame, SaeSummary]:
    """(label rows, explanation rows, summary) of the chosen latents of one SAE (see the module doc)."""
    lat = reader.sae_latents(sae)
    chosen = lat.loc[lat["density"] > 0, "latent"].astype(int).tolist()[: limit or None]
    stored = _stored(reader, sae, lat)
    ex = stored[stored["latent"].isin(chosen)].copy()
    explained = 0
    if chat is not None and runner is not None and chosen:
        ctx: dict[int, list[dict]] = {}
        for r in reader.sae_contexts(sae, chosen).to_dict("records"):
            ctx.setdefault(int(r["latent"]), []).append(r)
        if explainer in ("llm", "local"):
            reqs = [
                Request(
                    sae, l, "explain", explain_prompt(explain_examples(ctx.get(l, []), cfg.examples)), cfg.max_tokens
                )
                for l in chosen
            ]
            texts = [parse_explanation(t) for t in runner.run(reqs, f"explain {sae}")]
            new = pd.DataFrame(
                [
                    {"sae": sae, "latent": l, "method": explainer, "model": chat.model, "label": t}
                    for l, t in zip(chosen, texts)
                    if t
                ],
                columns=["sae", "latent", "method", "model", "label"],
            )
            explained = len(new)
            same = ex.set_index(["latent", "method", "model"]).index.isin(
                new.set_index(["latent", "method", "model"]).index
            )
            ex = pd.concat([ex[~same], new], ignore_index=True)
        # score every explanation of the chosen latents with this run's chat model
        todo = ex[(ex["label"] != NEVER_FIRES) & (ex["label"].fillna("") != "")]
        todo = todo.drop_duplicates(["latent", "method", "model"])
        jobs = [_Scoring(sae, int(r.latent), str(r.label), ctx.get(int(r.latent), []), cfg) for r in todo.itertuples()]
        replies = runner.run([q for j in jobs for q in j.requests], f"score {sae}")
        scored, at = [], 0
        for (_, r), j in zip(todo.iterrows(), jobs):
            scored.append({**r.to_dict(), **j.scores(replies[at : at + len(j.requests)]), "scorer": chat.name})
            at += len(j.requests)
        keep = ex["scorer"].fillna("").ne(chat.name) & ex["scorer"].notna()  # other scorers' rows stay
        ex = pd.concat([ex[keep], pd.DataFrame(scored, columns=TABLES["explanations"])], ignore_index=True)
    ex = ex.assign(sae=sae).reindex(columns=TABLES["explanations"])
    scorer = chat.name if chat is not None else "rule"
    pool = ex[ex["scorer"] == chat.name] if chat is not None else ex[ex["scorer"].isin(RULE_SCORERS)]
    # best detection F1; ties broken by fuzzing where detection saw something, then in favour of the statistical
    # (or concept) explanation, whose rule is checked on every held-out token: a scorer that answers nothing
    # useful (every detection 0) leaves the statistical label in place
    best = (
        pool.assign(
            _f=pool["fuzz"].fillna(0.0).where(pool["detection"] > 0, -1.0),
            _rule=pool["method"].isin(["statistical", "concept"]),
        )
        .sort_values(["latent", "detection", "_f", "_rule"], ascending=[True, False, False, False], kind="stable")
        .drop_duplicates("latent")
    )
    labels = best.rename(columns={"detection": "confidence"}).reindex(columns=LABEL_COLUMNS)
    summary = SaeSummary(
        sae,
        len(chosen),
        explained,
        scorer,
        labels["method"].value_counts().to_dict(),
        float((labels["confidence"] >= 0.5).mean()) if len(labels) else 0.0,
    )
    return labels, ex, summary


def label_workspace(
    ws: Any,
    explainer: str = "statistical",
    cfg: ExplainerConfig | None = None,
    saes: list[str] | None = None,
    limit: int | None = None,
    progress: bool = True,
    chat: ChatModel | None = None,
) -> tuple[list[SaeSummary], str]:
    """(Re)label the workspace's SAEs (all, or ``saes``) and rewrite its index; returns the per-SAE summaries and
    the run's cost line ('' without a chat model). Holds the workspace lock. ``chat``: a ready chat model (tests)."""
    from backend.atomic import workspace_lock

    cfg = cfg or ws.config.label.explainer
    if limit is not None and limit < 1:
        raise ExplainerError(f"--limit must be >= 1, got {limit}")
    with workspace_lock(ws.path):
        reader = IndexReader(ws.index_path)
        cache = None
        try:
            known = reader.saes()["sae"].tolist()
            if unknown := [s for s in saes or [] if s not in known]:
                raise ExplainerError(f"SAE(s) {', '.join(unknown)} are not in the index (it holds {', '.join(known)})")
            chat = chat or make_chat(explainer, cfg, ws)
            if chat is not None and not reader.has_heldout_contexts():
                raise ExplainerError(
                    f"the index at {ws.index_path} has no held-out scoring contexts (an older build): rebuild it with "
                    f"`python -m backend index --workspace {ws.path} --force`, then label again"
                )
            cache = LabelCache(Path(ws.path) / CACHE_NAME) if chat is not None else None
            runner = Runner(chat, cache, progress) if chat is not None else None
            parts = [label_sae(reader, s, explainer, chat, runner, cfg, limit) for s in saes or known]
        finally:
            reader.close()
            if cache is not None:
                cache.close()
        labels = pd.concat([p[0] for p in parts], ignore_index=True)
        expl = pd.concat([p[1] for p in parts], ignore_index=True)
        rewrite_labels(ws.index_path, labels, expl)
    return [p[2] for p in parts], runner.cost() if runner is not None else ""
