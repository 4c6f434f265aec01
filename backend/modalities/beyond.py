"""Workspaces beyond text: protein (ESM-2, residues are tokens) and recommender (SASRec, items are tokens).

What differs from a text workspace is only where windows and token concepts come from; activations,
SAEs, the index and the UI are shared code:

- ``modality_windows``: corpora -> windows (same columns as ``corpora.make_windows``). Protein
  corpora are the registry's 'pfam', 'sumo', 'swissprot' (backend/modalities/protein.py) or a user FASTA file
  with an optional annotation table (``annotations:`` in the corpus config); their per-residue
  annotations are written to ``<ws>/corpora/annotations.parquet``. The recommender corpus is
  'ml-100k': one document per MovieLens user (items in time order, the test item held out).
- ``token_concepts``: boolean concept labels for indexed tokens, given each token's window row and
  its offset among the window's kept tokens. Protein: the residue lies in an annotated span
  (Pfam domain, SUMO site, Swiss-Prot feature). Recommender: the item's genres, decade and
  popularity band and its user's age band, gender and occupation. Text workspaces have none.
The index (backend/index/build.py) turns these labels into per-latent concept matches (backend/index/concepts.py).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from backend.config import CorpusConfig
from backend.data.corpora import CorpusError, Doc

MODALITY = {"causal_lm": "text", "protein": "protein", "recsys": "recsys"}
RECSYS_CORPORA = {"ml-100k": "MovieLens-100k user histories (recbole wheel), one window per <= 50 items"}


def modality(ws) -> str:
    return MODALITY[ws.config.model.kind]


def annotations_path(ws) -> Path:
    return ws.path / "corpora" / "annotations.parquet"


# ---- protein corpora --------------------------------------------------------------------------
def protein_corpus(c: CorpusConfig) -> tuple[list[Doc], pd.DataFrame]:
    """(docs, annotations) of one protein corpus config: a registry corpus or a user FASTA file."""
    from backend.adapters.protein import SequenceError, check_sequence
    from backend.modalities.protein import ANNOTATION_COLUMNS, PROTEIN_CORPORA, read_annotations, read_fasta

    if c.path is None:
        if c.name not in PROTEIN_CORPORA:
            raise CorpusError(f"unknown protein corpus {c.name!r}; registry: {', '.join(PROTEIN_CORPORA)}; "
                              "or give path: a FASTA file (and annotations: a csv/tsv/parquet/jsonl span table)")
        docs, ann = PROTEIN_CORPORA[c.name][0]()
    else:
        p = Path(c.path)
        if not p.is_file():
            raise CorpusError(f"protein corpus {c.name!r}: {p} is not a file; give a FASTA file")
        docs = [Doc(pid, f"{p.name} {pid}", c.name, seq) for pid, seq in read_fasta(p)]
        if not docs:
            raise CorpusError(f"protein corpus {c.name!r}: {p.name} holds no sequences")
        ann = read_annotations(c.annotations, docs) if c.annotations else pd.DataFrame(columns=ANNOTATION_COLUMNS)
    for d in docs:
        try:
            check_sequence(d.text)
        except SequenceError as e:
            raise SequenceError(f"protein corpus {c.name!r}, sequence {d.doc_id}: {e}") from None
    if c.domain:
        docs = [Doc(d.doc_id, d.source, c.domain, d.text) for d in docs]
    if c.max_docs:  # annotated proteins first (they carry the concepts), then file order
        hit = set(ann["protein_id"])
        docs = sorted(docs, key=lambda d: d.doc_id not in hit)[: c.max_docs]
        ann = ann[ann["protein_id"].isin({d.doc_id for d in docs})]
    return docs, ann.reset_index(drop=True)


def modality_windows(ws, adapter, verbose: bool = True) -> pd.DataFrame | None:
    """Windows of a protein or recommender workspace (None for text: corpora.make_windows does it)."""
    kind, ctx = modality(ws), ws.config.activations.context_len
    if kind == "text":
        return None
    frames, anns = [], []
    for c in ws.config.corpora:
        if kind == "protein":
            from backend.modalities.protein import protein_windows

            docs, ann = protein_corpus(c)
            w = protein_windows(docs, adapter, ctx, corpus=c.name, max_windows=c.max_windows)
            anns.append(ann)
        else:
            from backend.modalities.recsys import load_ml100k, recsys_windows, user_docs

            if c.name not in RECSYS_CORPORA or c.path is not None:
                raise CorpusError(f"recommender corpus {c.name!r}: use one of {', '.join(RECSYS_CORPORA)} "
                                  "(its items are the embedded recommender's catalogue)")
            docs = user_docs(load_ml100k())[: c.max_docs or None]
            w = recsys_windows(docs, adapter, ctx, corpus=c.name)
            w = w.head(c.max_windows) if c.max_windows else w
            if c.domain:
                w["domain"] = c.domain
        if verbose:
            print(f"[corpora] {c.name}: {len(docs)} {kind} documents -> {len(w)} windows", flush=True)
        frames.append(w)
    if kind == "protein":
        from backend.workspace import atomic_write_parquet

        atomic_write_parquet(pd.concat(anns, ignore_index=True).drop_duplicates(), annotations_path(ws))
    return pd.concat(frames, ignore_index=True)


# ---- token concepts ---------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _recsys_concepts() -> tuple[pd.DataFrame, pd.DataFrame]:
    from backend.modalities.recsys import concept_table, load_ml100k

    return concept_table(load_ml100k())


def token_concepts(ws, windows: pd.DataFrame, window: np.ndarray, offset: np.ndarray,
                   token: np.ndarray) -> tuple[np.ndarray, list[str]] | None:
    """(n, C) bool labels and C concept names for tokens given by window row, offset among the
    window's kept tokens and token id; None when the workspace has no token concepts (text)."""
    kind = modality(ws)
    if kind == "protein":
        from backend.modalities.protein import residue_labels

        p = annotations_path(ws)
        ann = pd.read_parquet(p) if p.exists() else pd.DataFrame()
        if ann.empty:
            return None
        # residue_labels counts positions with <cls> at 0: the kept token at offset o is residue start + o
        return residue_labels(windows, torch.from_numpy(window), torch.from_numpy(offset + 1), ann)
    if kind == "recsys":
        from backend.modalities.recsys import position_concepts

        items, users = _recsys_concepts()
        return position_concepts(windows, torch.from_numpy(window), torch.from_numpy(token), items, users)
    return None


def context_spans(ws, windows: pd.DataFrame, window_row: int, offset: int, n: int) -> list[tuple[int, int, str]]:
    """Annotation spans (start, end, concept) over a context of n kept tokens starting at ``offset`` of
    window ``window_row``, in context coordinates (clipped); empty for non-protein workspaces."""
    if modality(ws) != "protein":
        return []
    ann = _annotations(str(annotations_path(ws)))
    if ann is None:
        return []
    row = windows.iloc[int(window_row)]
    lo = int(row["start"]) + int(offset)
    hi = lo + int(n)
    a = ann.get(str(row["doc_id"]))
    if a is None:
        return []
    hit = a[(a["start"] < hi) & (a["end"] > lo)]
    return [(max(int(s) - lo, 0), min(int(e) - lo, n), str(c)) for s, e, c in hit[["start", "end", "concept"]].itertuples(index=False)]


@lru_cache(maxsize=4)
def _annotations(path: str) -> dict[str, pd.DataFrame] | None:
    p = Path(path)
    if not p.exists():
        return None
    return dict(tuple(pd.read_parquet(p).groupby("protein_id")))
