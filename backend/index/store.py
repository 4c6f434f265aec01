"""The only module that touches DuckDB: the workspace's feature index (one file, ``index.duckdb``).

Tables (schemas in ``SCHEMA``; small nested values are JSON text, token/activation lists are native):
- ``saes``: one row per SAE: architecture, widths, indexed and held-out token counts, quantile bands;
- ``latents``: one row per (sae, latent): density, mean/max activation, histogram, THE label with its
  detection precision/recall/confidence (F1), fuzzing score, method and scorer, top domain and corpus with their
  shares of the firing rate, top tokens (+ log-odds), logit lens, domain rates;
- ``explanations``: every explanation of a latent (statistical, concept, llm, local) per scorer, with its
  detection F1, precision, recall and fuzzing (backend/index/relabel.py picks THE label from them);
- ``contexts``: one row per (sae, latent, kind, rank): kind ``top``, ``q<band>`` or the held-out scoring
  contexts ``hpos`` / ``hneg``, the rendered tokens
  and the latent's activation on each, the focus (max) position, source, domain;
- ``map``: per-SAE (x, y) and joint (jx, jy) 2-D coordinates of the decoder directions;
- ``concepts`` (protein and recommender workspaces): latent-concept matches with train F1 / enrichment
  and held-out confidence (backend/index/matches.py ``concept_matches``); empty for text workspaces.

Writing: ``IndexWriter`` appends frames (pandas or Arrow, never executemany) to a private staging
database as they come, so memory stays bounded by one SAE; on a clean exit it copies every table,
sorted by (sae, latent), into a fresh file and renames that over the target. A latent's rows are then
contiguous, and a per-latent query reads one small range (measured 1.6 ms, against 29 ms unsorted).
Hazard: readers that hold the old file open keep reading the old inode until they reopen. DuckDB shares one
database instance per path within a process (``duckdb.connect(path)`` while another connection to the path
is open returns that connection's instance, i.e. the OLD file), so ``IndexReader`` does not connect to the
path: it opens a private in-memory instance and ATTACHes the file read-only, which always opens the file
as it is now. A reader opened after a swap therefore sees the new file even while older readers are still
open (the staged build relies on this: ``Backend.refresh`` opens a new reader beside the one requests use).

Adding SAEs to an existing index (``IndexWriter.copy_from``): the other SAEs' rows are copied from the
current file into the staging database (ATTACHed read-only there), then the whole file is written and
renamed as above, so the swap stays atomic and untouched SAEs keep their rows exactly.

Reading: ``IndexReader`` holds one read-only connection and hands each thread its own cursor. Several processes
may hold one index open at once (replicas behind a load balancer): a READ_ONLY attach takes a shared file lock, and
nothing ever opens the served file for writing (tests/serve/test_replicas.py; bench/bench_serve.py times it).
All SQL is constant text with ``?`` parameters; values are never formatted into SQL (table and
column names come only from the constant whitelists below).
"""

from __future__ import annotations

import os
import shlex
import threading
from pathlib import Path
from typing import Any, Self

import duckdb
import pandas as pd
import pyarrow as pa

SCHEMA: dict[str, str] = {
    "saes": "sae VARCHAR, architecture VARCHAR, d_in INTEGER, d_sae INTEGER, n_tokens BIGINT, n_heldout BIGINT, "
    "n_quantiles INTEGER",
    "latents": "sae VARCHAR, latent INTEGER, density DOUBLE, mean_act DOUBLE, max_act DOUBLE, hist_edges DOUBLE[], "
    "hist_counts BIGINT[], label VARCHAR, confidence DOUBLE, precision DOUBLE, recall DOUBLE, "
    "top_domain VARCHAR, top_tokens VARCHAR, top_token_scores VARCHAR, logit_top VARCHAR, "
    "logit_bottom VARCHAR, domain_rates VARCHAR, fuzz DOUBLE, method VARCHAR, scorer VARCHAR, domain_share DOUBLE, "
    "top_corpus VARCHAR, corpus_share DOUBLE",
    "contexts": "sae VARCHAR, latent INTEGER, kind VARCHAR, rank INTEGER, window_row BIGINT, win_offset INTEGER, "
    "tokens VARCHAR[], "
    "acts FLOAT[], focus INTEGER, source VARCHAR, domain VARCHAR, max_act FLOAT",
    "map": "sae VARCHAR, latent INTEGER, x FLOAT, y FLOAT, jx FLOAT, jy FLOAT",
    "concepts": "sae VARCHAR, latent INTEGER, concept VARCHAR, method VARCHAR, threshold DOUBLE, precision DOUBLE, "
    "recall DOUBLE, f1 DOUBLE, share DOUBLE, lift DOUBLE, q_value DOUBLE, conf_precision DOUBLE, "
    "conf_recall DOUBLE, confidence DOUBLE, support BIGINT",
    "explanations": "sae VARCHAR, latent INTEGER, method VARCHAR, model VARCHAR, label VARCHAR, scorer VARCHAR, "
    "detection DOUBLE, precision DOUBLE, recall DOUBLE, fuzz DOUBLE",
}
LATER = {"latents": ("fuzz", "method", "scorer", "domain_share", "top_corpus", "corpus_share")}
"""Columns added after indexes were already written: readers treat them as optional."""
TABLES: dict[str, list[str]] = {t: [c.split()[0] for c in s.split(", ")] for t, s in SCHEMA.items()}
_SORT = {
    "saes": "sae",
    "latents": "sae, latent",
    "contexts": "sae, latent, kind, rank",
    "map": "sae, latent",
    "concepts": "sae, latent, confidence DESC",
    "explanations": "sae, latent, detection DESC, method",
}
# DDL/DML constants, one per table, built once from the whitelists above (never from input).
SQL_CREATE = {t: f"CREATE TABLE {t} ({s})" for t, s in SCHEMA.items()}
SQL_APPEND = {t: f"INSERT INTO {t} BY NAME SELECT * FROM frame" for t in SCHEMA}
SQL_COPY_SORTED = {t: f"CREATE TABLE out.{t} AS SELECT * FROM {t} ORDER BY {_SORT[t]}" for t in SCHEMA}
SQL_ATTACH = "ATTACH ? AS out"
SQL_DETACH = "DETACH out"
# copying the rows of some SAEs from a previous index (IndexWriter.copy_from); ? = the SAE names (a list)
SQL_ATTACH_PREV = "ATTACH ? AS prev (READ_ONLY)"
SQL_DETACH_PREV = "DETACH prev"
SQL_PREV_TABLES = "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'prev'"
SQL_COPY_PREV = {
    t: f"INSERT INTO {t} BY NAME SELECT * FROM prev.{t} WHERE list_contains(?::VARCHAR[], sae)"
    for t in SCHEMA
    if t != "map"
}
# relabelling (``rewrite_labels``): every row copied, then the label columns and explanations of some latents replaced
SQL_COPY_ALL = {t: f"INSERT INTO {t} BY NAME SELECT * FROM prev.{t}" for t in SCHEMA}
SQL_DELETE_EXPLANATIONS = (
    "DELETE FROM explanations USING frame f WHERE explanations.sae = f.sae AND explanations.latent = f.latent"
)
SQL_UPDATE_LABELS = """UPDATE latents SET label = f.label, confidence = f.confidence, precision = f.precision,
    recall = f.recall, fuzz = f.fuzz, method = f.method, scorer = f.scorer
    FROM frame f WHERE latents.sae = f.sae AND latents.latent = f.latent"""
LABEL_COLUMNS = ["sae", "latent", "label", "confidence", "precision", "recall", "fuzz", "method", "scorer"]
SQL_PREV_LAYOUT = "SELECT sae, latent, x, y FROM prev.map WHERE list_contains(?::VARCHAR[], sae) ORDER BY sae, latent"
# reading: a private in-memory instance with the index ATTACHed read-only (see the hazard in the module doc)
SQL_ATTACH_INDEX = "ATTACH ? AS idx (READ_ONLY)"
SQL_USE_INDEX = "USE idx"

SQL_SAES = "SELECT * FROM saes ORDER BY sae"
SQL_DOMAINS = "SELECT DISTINCT top_domain AS d FROM latents WHERE top_domain <> '' ORDER BY d"
SQL_LATENT = "SELECT * FROM latents WHERE sae = ? AND latent = ?"
SQL_CONCEPTS = "SELECT * FROM concepts WHERE sae = ? AND latent = ? ORDER BY confidence DESC"
SQL_LABEL_CONCEPTS = """SELECT DISTINCT c.sae, c.latent, c.concept FROM concepts c JOIN latents l
    ON c.sae = l.sae AND c.latent = l.latent AND c.concept = l.label WHERE (? = '' OR c.sae = ?)"""
SQL_TABLE_NAMES = "SELECT table_name FROM information_schema.tables"
SQL_COLUMNS = "SELECT column_name FROM information_schema.columns WHERE table_name = ?"
REQUIRED_TABLES = ("saes", "latents", "contexts", "map")  # concepts is optional (older indexes lack it)
SQL_CONTEXTS = "SELECT * FROM contexts WHERE sae = ? AND latent = ? ORDER BY kind, rank"
_LATENTS_SQL = """SELECT latent, label, confidence, density, mean_act, max_act, top_domain FROM latents
    WHERE sae = ? AND density >= ? AND (? = '' OR top_domain = ?) AND (? = '' OR label ILIKE ? ESCAPE '\\')
    ORDER BY {col} {direction}, latent LIMIT ? OFFSET ?"""
SORT_KEYS = ("density", "confidence", "max_act", "latent")
# One constant query per (sort key, direction): column names come from this whitelist only.
SQL_LATENTS_BY = {(c, d): _LATENTS_SQL.format(col=c, direction=d) for c in SORT_KEYS for d in ("ASC", "DESC")}
SQL_SEARCH_LABELS = """SELECT sae, latent, label, confidence, density FROM latents
    WHERE (? = '' OR sae = ?) AND label ILIKE ? ESCAPE '\\'
    ORDER BY confidence DESC, density DESC LIMIT ?"""
# the domain and the corpus are fields, not words of the label: a word equal to a domain (or corpus) name also
# matches the latents specific to it (more than half of their firing rate there)
DOMAIN_SPECIFIC = 0.5
SQL_SEARCH_LABELS_AND_DOMAINS = f"""SELECT sae, latent, label, confidence, density FROM latents
    WHERE (? = '' OR sae = ?) AND (label ILIKE ? ESCAPE '\\'
        OR (lower(top_domain) = lower(?) AND domain_share > {DOMAIN_SPECIFIC})
        OR (lower(top_corpus) = lower(?) AND corpus_share > {DOMAIN_SPECIFIC}))
    ORDER BY confidence DESC, density DESC LIMIT ?"""
SQL_EXPLANATIONS = "SELECT * FROM explanations WHERE sae = ? AND latent = ? ORDER BY detection DESC, method"
SQL_SAE_EXPLANATIONS = "SELECT * FROM explanations WHERE sae = ? ORDER BY latent, detection DESC, method"
SQL_SAE_LATENTS = "SELECT latent, label, confidence, density FROM latents WHERE sae = ? ORDER BY latent"
SQL_SAE_CONTEXTS = """SELECT latent, kind, rank, tokens, acts, focus FROM contexts
    WHERE sae = ? AND list_contains(?::INTEGER[], latent) ORDER BY latent, kind, rank"""
SQL_HAS_HELDOUT = "SELECT count(*) AS n FROM contexts WHERE kind = 'hpos' LIMIT 1"
SQL_LABELS = "SELECT latent, label, confidence, density, max_act, top_tokens FROM latents WHERE sae = ?"
SQL_MAP = (
    "SELECT m.sae, m.latent, m.x, m.y, m.jx, m.jy, l.density, l.top_domain, l.label, l.confidence "
    "FROM map m JOIN latents l USING (sae, latent) WHERE (? = '' OR m.sae = ?) ORDER BY m.sae, m.latent"
)

Frame = pd.DataFrame | pa.Table


def _contains(text: str) -> str:
    """An ILIKE pattern matching ``text`` literally anywhere (its %, _ and \\ escaped)."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _first_line(e: BaseException) -> str:
    """DuckDB's message, one line, without its category prefix ('IO Error: ...')."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg.split(": ", 1)[1] if msg.split(": ", 1)[0].endswith("Error") and ": " in msg else msg


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)


class IndexWriter:
    """Context manager: ``add`` frames table by table; the index appears at ``path`` only on success.

    Nothing half-written is ever at ``path``: an exception inside the block (or in the final copy)
    removes the staging and output files and leaves any previous index untouched.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        tag = f"{os.getpid()}-{threading.get_ident()}"
        self.staging = self.path.with_name(f".{self.path.name}.{tag}.staging")
        self.tmp = self.path.with_name(f".{self.path.name}.{tag}.building")
        self.con: duckdb.DuckDBPyConnection | None = None

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove(self.staging)
        _remove(self.tmp)
        self.con = duckdb.connect(str(self.staging))
        for sql in SQL_CREATE.values():
            self.con.execute(sql)
        return self

    def add(self, table: str, frame: Frame) -> None:
        """Append a frame holding the columns of ``table`` (those added to the schema later, ``LATER``, may be
        missing: they stay NULL, as in an index written before them); types are cast to the schema."""
        assert self.con is not None, "use IndexWriter as a context manager"
        have = set(frame.column_names if isinstance(frame, pa.Table) else frame.columns)
        cols = [c for c in TABLES[table] if c in have or c not in LATER.get(table, ())]
        data = frame.select(cols) if isinstance(frame, pa.Table) else frame[cols]
        self.con.register("frame", data)
        try:
            self.con.execute(SQL_APPEND[table])
        finally:
            self.con.unregister("frame")

    def copy_from(self, prev: str | Path, saes: list[str]) -> pd.DataFrame:
        """Copy every row of the SAEs ``saes`` from the index at ``prev`` (every table but ``map``, whose joint
        coordinates depend on which SAEs are indexed together); returns their per-SAE map coordinates
        (sae, latent, x, y) for the caller to write with the new joint ones. ``prev`` is only read."""
        assert self.con is not None, "use IndexWriter as a context manager"
        self.con.execute(SQL_ATTACH_PREV, [str(prev)])
        try:
            tables = set(self.con.execute(SQL_PREV_TABLES).df()["table_name"])
            for table, sql in SQL_COPY_PREV.items():
                if table in tables:  # an index written before the concepts table existed lacks it
                    self.con.execute(sql, [list(saes)])
            return self.con.execute(SQL_PREV_LAYOUT, [list(saes)]).df()
        finally:
            self.con.execute(SQL_DETACH_PREV)

    def copy_all(self, prev: str | Path) -> None:
        """Copy every row of every table of the index at ``prev`` (columns it lacks stay NULL)."""
        assert self.con is not None, "use IndexWriter as a context manager"
        self.con.execute(SQL_ATTACH_PREV, [str(prev)])
        try:
            tables = set(self.con.execute(SQL_PREV_TABLES).df()["table_name"])
            for table, sql in SQL_COPY_ALL.items():
                if table in tables:
                    self.con.execute(sql)
        finally:
            self.con.execute(SQL_DETACH_PREV)

    def replace_labels(self, labels: Frame, explanations: Frame) -> None:
        """Set the label columns (``LABEL_COLUMNS``) of the latents in ``labels``, and replace every explanation
        of the (sae, latent) pairs in ``explanations`` by its rows."""
        assert self.con is not None, "use IndexWriter as a context manager"
        for sql, frame in ((SQL_DELETE_EXPLANATIONS, explanations), (SQL_UPDATE_LABELS, labels)):
            self.con.register("frame", frame)
            try:
                self.con.execute(sql)
            finally:
                self.con.unregister("frame")
        self.add("explanations", explanations)

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.con is not None
        done = False
        try:
            if exc_type is None:
                self.con.execute(SQL_ATTACH, [str(self.tmp)])
                for sql in SQL_COPY_SORTED.values():
                    self.con.execute(sql)
                self.con.execute(SQL_DETACH)
                done = True
        finally:
            self.con.close()
            _remove(self.staging)
            if done:
                os.replace(self.tmp, self.path)
            _remove(self.tmp)


def rewrite_labels(path: str | Path, labels: Frame, explanations: Frame) -> None:
    """The index at ``path`` with some latents' labels and explanations replaced (``IndexWriter.replace_labels``),
    written aside and renamed over it: readers see the old labels or the new ones, never a mix."""
    with IndexWriter(path) as writer:
        writer.copy_all(path)
        writer.replace_labels(labels, explanations)


class IndexUnreadable(RuntimeError):
    """The index file is not a DuckDB database, is truncated, or lacks a table: it must be rebuilt."""


def _unreadable(path: Path, why: str) -> IndexUnreadable:
    why = why.replace(f'"{path}"', path.name)
    return IndexUnreadable(
        f"{path.name} in {path.parent} cannot be read ({why}): rebuild it with "
        f"`python -m backend index --workspace {shlex.quote(str(path.parent))} --force`"
    )


class IndexReader:
    """One read-only connection per reader; a cursor per thread (DuckDB cursors are not thread-safe).

    The file is ATTACHed read-only to a private in-memory instance (not ``duckdb.connect(path)``, whose
    per-path instance cache would hand a reader opened after a swap the old file: see the module doc).
    Opening checks that the file is a DuckDB database holding the tables the Backend reads (the
    ``saes`` table with its key columns); anything else is one ``IndexUnreadable`` line saying how to rebuild."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no feature index at {self.path}: run `python -m backend index --workspace DIR`")
        self.con = duckdb.connect(":memory:")
        try:
            self.con.execute(SQL_ATTACH_INDEX, [str(self.path)])
            self.con.execute(SQL_USE_INDEX)  # unqualified names mean the index (and writes fail: read-only)
        except duckdb.Error as e:  # not a DuckDB file, truncated, or written by an incompatible DuckDB
            self.con.close()
            raise _unreadable(self.path, _first_line(e)) from None
        self._local = threading.local()
        try:
            # an index written before the concepts table existed simply has no concept matches
            self.tables = set(self.df(SQL_TABLE_NAMES)["table_name"])
            self.latent_cols = set(self.df(SQL_COLUMNS, ("latents",))["column_name"])
            missing = [t for t in REQUIRED_TABLES if t not in self.tables]
            cols = set(self.df(SQL_COLUMNS, ("saes",))["column_name"]) if not missing else set()
        except duckdb.Error as e:
            self.con.close()
            raise _unreadable(self.path, _first_line(e)) from None
        if missing:
            self.con.close()
            raise _unreadable(self.path, f"it has no {', '.join(missing)} table{'s' if len(missing) > 1 else ''}")
        if lack := [c for c in ("sae", "architecture", "d_sae") if c not in cols]:
            self.con.close()
            raise _unreadable(self.path, f"its saes table lacks {', '.join(lack)}")

    def _cur(self) -> duckdb.DuckDBPyConnection:
        cur = getattr(self._local, "cur", None)
        if cur is None:
            cur = self.con.cursor()
            cur.execute(SQL_USE_INDEX)  # a cursor starts in the instance's default (in-memory) catalog
            self._local.cur = cur
        return cur

    def df(self, sql: str, params: list | tuple = ()) -> pd.DataFrame:
        return self._cur().execute(sql, list(params)).df()

    def rows(self, sql: str, params: list | tuple = ()) -> list[dict[str, Any]]:
        """Rows as dicts, without a DataFrame (the feature page's hot path)."""
        cur = self._cur().execute(sql, list(params))
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def saes(self) -> pd.DataFrame:
        return self.df(SQL_SAES)

    def domains(self) -> list[str]:
        return self.df(SQL_DOMAINS)["d"].tolist()

    def latent(self, sae: str, latent: int) -> dict[str, Any] | None:
        r = self.rows(SQL_LATENT, (sae, latent))
        return r[0] if r else None

    def contexts(self, sae: str, latent: int) -> list[dict[str, Any]]:
        return self.rows(SQL_CONTEXTS, (sae, latent))

    def concepts(self, sae: str, latent: int) -> list[dict[str, Any]]:
        """Concept matches of one latent (protein and recommender workspaces), best confidence first."""
        return self.rows(SQL_CONCEPTS, (sae, latent)) if "concepts" in self.tables else []

    def label_concepts(self, sae: str) -> pd.DataFrame:
        """(sae, latent, concept) of the latents whose label is one of their concept matches ('' sae: all)."""
        if "concepts" not in self.tables:
            return pd.DataFrame(columns=["sae", "latent", "concept"])
        return self.df(SQL_LABEL_CONCEPTS, (sae, sae))

    def latents(
        self,
        sae: str,
        sort_by: str,
        descending: bool,
        domain: str,
        min_density: float,
        query: str,
        limit: int,
        offset: int,
    ) -> pd.DataFrame:
        sql = SQL_LATENTS_BY[(sort_by, "DESC" if descending else "ASC")]
        return self.df(sql, (sae, min_density, domain, domain, query, _contains(query), limit, offset))

    def search_labels(self, query: str, sae: str, limit: int) -> pd.DataFrame:
        """Latents whose label contains ``query``, or specific to the domain or corpus it names (an index written
        before those columns existed: the label only)."""
        if {"domain_share", "top_corpus", "corpus_share"} <= self.latent_cols:
            return self.df(SQL_SEARCH_LABELS_AND_DOMAINS, (sae, sae, _contains(query), query, query, limit))
        return self.df(SQL_SEARCH_LABELS, (sae, sae, _contains(query), limit))

    def explanations(self, sae: str, latent: int | None = None) -> pd.DataFrame:
        """Every explanation of one latent (or of every latent of an SAE) with its method, scorer and scores,
        best detection first; empty for an index written before the table existed."""
        if "explanations" not in self.tables:
            return pd.DataFrame(columns=TABLES["explanations"])
        if latent is None:
            return self.df(SQL_SAE_EXPLANATIONS, (sae,))
        return self.df(SQL_EXPLANATIONS, (sae, latent))

    def sae_latents(self, sae: str) -> pd.DataFrame:
        """latent, label, confidence, density of every latent of an SAE, in latent order."""
        return self.df(SQL_SAE_LATENTS, (sae,))

    def sae_contexts(self, sae: str, latents: list[int]) -> pd.DataFrame:
        """The contexts (latent, kind, rank, tokens, acts, focus) of some latents of an SAE."""
        return self.df(SQL_SAE_CONTEXTS, (sae, [int(x) for x in latents]))

    def has_heldout_contexts(self) -> bool:
        """Whether the index holds held-out scoring contexts (indexes written before them do not)."""
        return bool(self.df(SQL_HAS_HELDOUT)["n"].iat[0])

    def labels(self, sae: str) -> pd.DataFrame:
        return self.df(SQL_LABELS, (sae,))

    def feature_map(self, sae: str) -> pd.DataFrame:
        return self.df(SQL_MAP, (sae, sae))

    def close(self) -> None:
        self.con.close()


# ---- the per-workspace cache of LLM replies (backend/index/explain.py) ------------------------------------
SQL_CACHE_CREATE = """CREATE TABLE IF NOT EXISTS llm_cache (sae VARCHAR, latent INTEGER, prompt_hash VARCHAR,
    model VARCHAR, kind VARCHAR, response VARCHAR, prompt_tokens INTEGER, completion_tokens INTEGER,
    created TIMESTAMP DEFAULT current_timestamp, PRIMARY KEY (sae, latent, prompt_hash, model))"""
SQL_CACHE_GET = "SELECT latent, prompt_hash, response FROM llm_cache WHERE sae = ? AND model = ?"
SQL_CACHE_PUT = """INSERT OR REPLACE INTO llm_cache (sae, latent, prompt_hash, model, kind, response, prompt_tokens,
    completion_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"""


class LabelCache:
    """LLM replies of one workspace (``<ws>/label_cache.duckdb``), keyed by (SAE, latent, prompt hash, model):
    a re-run asks the endpoint nothing it has already answered. Written by one thread (the caller's)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.con = duckdb.connect(str(self.path))
            self.con.execute(SQL_CACHE_CREATE)
        except duckdb.Error as e:
            raise IndexUnreadable(
                f"the label cache {self.path} cannot be used ({_first_line(e)}): delete it (it only saves LLM calls) "
                "and run again"
            ) from None

    def get(self, sae: str, model: str) -> dict[tuple[int, str], str]:
        """{(latent, prompt hash): reply} of every cached call of ``model`` about ``sae``."""
        rows = self.con.execute(SQL_CACHE_GET, [sae, model]).fetchall()
        return {(int(latent), h): r for latent, h, r in rows}

    def put(
        self,
        sae: str,
        latent: int,
        prompt_hash: str,
        model: str,
        kind: str,
        reply: str,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        self.con.execute(
            SQL_CACHE_PUT,
            [sae, int(latent), prompt_hash, model, kind, reply, int(prompt_tokens), int(completion_tokens)],
        )

    def close(self) -> None:
        self.con.close()
