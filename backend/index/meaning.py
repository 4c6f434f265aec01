"""Search latents by meaning (issue 14): each latent is one MiniLM sentence vector made of its explanation and its
activation-weighted top contexts; a query is embedded the same way and latents are ranked by cosine (faiss
``IndexFlatIP``: exact inner products of unit vectors; 12k latents x 384 dims is a few ms per query).

Built with the feature index, per SAE (``build_meaning``, called by ``index/build.py`` after it writes the index,
and by ``python -m backend meaning`` for an index built before): ``<workspace>/meaning/<sae>.npz`` holds

- ``latents`` (n,) int64 and ``vectors`` (n, 384) float16, unit rows;
- ``fingerprint``: a hash of the texts embedded, so an unchanged SAE is not re-embedded.

A latent's vector: ``normalize(LABEL_WEIGHT * e(label) + (1 - LABEL_WEIGHT) * sum_j w_j e(snippet_j))`` over its
``N_CONTEXTS`` top contexts, where a snippet is the ``BEFORE`` tokens before the context's maximum, the maximum and
``AFTER`` tokens after it (the words that made it fire), and ``w_j`` is the context's max activation over their sum.
The explanation text has its bookkeeping removed (quotes, "bigram:", shares) so that its words carry the meaning.

Hazards: MiniLM on 2 busy CPU cores embeds ~100-300 short texts/s, so a 1,152-latent SAE costs 4,608 texts (~20 s);
the embedder is loaded once per process. Latents that never fired have no contexts: their label alone is embedded.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from backend.atomic import atomic_write

LABEL_WEIGHT = 0.5
N_CONTEXTS = 3
BEFORE, AFTER = 8, 3
FOLDER = "meaning"

SQL_TOP_CONTEXTS = """SELECT latent, rank, tokens, focus, max_act FROM contexts
    WHERE sae = ? AND kind = 'top' AND rank < ? ORDER BY latent, rank"""
SQL_LABEL_TEXT = "SELECT latent, label, top_domain FROM latents WHERE sae = ? ORDER BY latent"

_NOISE = re.compile(r"\(bigram:|mostly \w+ \(\d+%\)|\(never fires[^)]*\)|[\"'(),]")


def label_words(label: str) -> str:
    """An explanation as plain words for the embedder: quotes, brackets and the 'mostly X (62%)' bookkeeping go."""
    return re.sub(r"\s+", " ", _NOISE.sub(" ", str(label or ""))).strip()


def snippet(tokens: Sequence[str], focus: int) -> str:
    """The words around a context's maximum: BEFORE tokens, the maximum, AFTER tokens."""
    lo, hi = max(0, int(focus) - BEFORE), min(len(tokens), int(focus) + AFTER + 1)
    return "".join(str(t) for t in tokens[lo:hi]).strip()


def latent_documents(reader, sae: str) -> tuple[np.ndarray, list[str], list[list[tuple[str, float]]]]:
    """(latents, label words, per latent [(snippet, weight)]) of one indexed SAE."""
    lab = reader.df(SQL_LABEL_TEXT, (sae,))
    ctx = reader.df(SQL_TOP_CONTEXTS, (sae, N_CONTEXTS))
    snippets: dict[int, list[tuple[str, float]]] = {}
    for latent, _rank, tokens, focus, max_act in ctx.itertuples(index=False):
        text = snippet(list(tokens), focus)
        if text:
            snippets.setdefault(int(latent), []).append((text, float(max_act)))
    latents = lab["latent"].to_numpy(np.int64)
    return latents, [label_words(x) for x in lab["label"]], [snippets.get(int(j), []) for j in latents]


def fingerprint(labels: list[str], snippets: list[list[tuple[str, float]]]) -> str:
    h = hashlib.sha1()
    for lab, sn in zip(labels, snippets):
        h.update(lab.encode())
        for t, w in sn:
            h.update(f"\x00{t}\x01{w:.4g}".encode())
        h.update(b"\x02")
    return h.hexdigest()


def latent_vectors(labels: list[str], snippets: list[list[tuple[str, float]]], embed) -> np.ndarray:
    """(n, dim) unit vectors (see the module doc); ``embed(texts) -> (m, dim)`` unit rows."""
    texts, owner, weight = [], [], []
    for i, (lab, sn) in enumerate(zip(labels, snippets)):
        total = sum(w for _, w in sn) or 1.0
        if lab:
            texts.append(lab)
            owner.append(i)
            weight.append(LABEL_WEIGHT if sn else 1.0)
        for t, w in sn:
            texts.append(t)
            owner.append(i)
            weight.append((1 - LABEL_WEIGHT if lab else 1.0) * w / total)
    if not texts:
        return np.zeros((len(labels), 0), np.float32)
    uniq, inv = np.unique(np.array(texts, dtype=object), return_inverse=True)  # repeated snippets embed once
    e = np.asarray(embed(list(uniq)), np.float32)[inv]
    out = np.zeros((len(labels), e.shape[1]), np.float32)
    np.add.at(out, np.array(owner), e * np.array(weight, np.float32)[:, None])
    return out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-8)


def meaning_path(ws_path: str | Path, sae: str) -> Path:
    return Path(ws_path) / FOLDER / f"{sae}.npz"


def build_meaning(ws_path: str | Path, index_path: str | Path, saes: Sequence[str], progress: bool = True) -> list[str]:
    """Write (or keep, when its texts are unchanged) the meaning vectors of ``saes``; returns the SAEs embedded."""
    from backend.index.store import IndexReader
    from backend.research.retrieval import embed

    done = []
    reader = IndexReader(index_path)
    try:
        for sae in saes:
            latents, labels, snippets = latent_documents(reader, sae)
            fp = fingerprint(labels, snippets)
            path = meaning_path(ws_path, sae)
            if path.exists():
                with np.load(path) as old:
                    if str(old["fingerprint"]) == fp:
                        continue
            vec = latent_vectors(labels, snippets, lambda t: embed(t, progress=progress))

            def write(tmp: Path, latents=latents, vec=vec, fp=fp) -> None:
                with open(tmp, "wb") as f:
                    np.savez(f, latents=latents, vectors=vec.astype(np.float16), fingerprint=np.array(fp))

            atomic_write(path, write)
            done.append(sae)
            if progress:
                print(f"[meaning] {sae}: {len(latents):,} latents embedded", flush=True)
    finally:
        reader.close()
    return done


class MeaningIndex:
    """The meaning vectors of the served SAEs in one exact faiss inner-product index."""

    def __init__(self, ws_path: str | Path, saes: Sequence[str]):
        import faiss

        rows, mats, self.missing = [], [], []
        for sae in saes:
            p = meaning_path(ws_path, sae)
            if not p.exists():
                self.missing.append(sae)
                continue
            with np.load(p) as z:
                lat, vec = z["latents"], z["vectors"].astype(np.float32)
            if vec.shape[1] == 0:
                continue
            rows.append(np.stack([np.full(len(lat), len(mats)), lat], axis=1))
            mats.append((sae, vec))
        self.saes = [s for s, _ in mats]
        self.rows = np.concatenate(rows) if rows else np.zeros((0, 2), np.int64)
        dim = mats[0][1].shape[1] if mats else 384
        self.index = faiss.IndexFlatIP(dim)
        if mats:
            self.index.add(np.ascontiguousarray(np.concatenate([v for _, v in mats])))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, qvec: np.ndarray, sae: str | None, limit: int) -> list[tuple[str, int, float]]:
        """(sae, latent, cosine) of the best ``limit`` latents (of one SAE when ``sae``)."""
        if not len(self):
            return []
        q = np.ascontiguousarray(np.asarray(qvec, np.float32).reshape(1, -1))
        if sae is None:
            scores, ids = self.index.search(q, min(limit, len(self)))
            return [(self.saes[self.rows[i, 0]], int(self.rows[i, 1]), float(s)) for s, i in zip(scores[0], ids[0])]
        if sae not in self.saes:
            return []
        k = self.saes.index(sae)
        mine = np.nonzero(self.rows[:, 0] == k)[0]
        vec = self.index.reconstruct_n(int(mine[0]), len(mine))  # this SAE's rows are contiguous
        s = vec @ q[0]
        top = np.argsort(-s)[:limit]
        return [(sae, int(self.rows[mine[j], 1]), float(s[j])) for j in top]
