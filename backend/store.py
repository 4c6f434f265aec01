"""The only module that touches DuckDB: the workspace's feature index.

Writing: ``IndexWriter`` opens a temporary database beside the target, bulk-inserts pandas
frames (never executemany), sorts the big tables by (sae, latent) so that a latent's rows are
contiguous (a per-latent query then reads one small range), and renames the file into place.

Reading: ``IndexReader`` holds one read-only connection and hands each thread its own cursor.
All SQL is constant text with ``?`` parameters; values are never formatted into SQL.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import duckdb
import pandas as pd

# Tables and the column order that defines them; created from frames by name.
TABLES = {
    "saes": ["sae", "architecture", "d_in", "d_sae", "n_tokens", "n_heldout"],
    "latents": ["sae", "latent", "density", "mean_act", "max_act", "hist_edges", "hist_counts", "label", "confidence",
                "precision", "recall", "top_domain", "top_tokens", "logit_top", "logit_bottom", "domain_rates"],
    "contexts": ["sae", "latent", "kind", "rank", "tokens", "acts", "focus", "source", "domain", "max_act"],
    "map": ["sae", "latent", "x", "y", "jx", "jy"],
}
_SORT = {"latents": "sae, latent", "contexts": "sae, latent, kind, rank", "map": "sae, latent", "saes": "sae"}

SQL_SAES = "SELECT * FROM saes ORDER BY sae"
SQL_DOMAINS = "SELECT DISTINCT top_domain AS d FROM latents WHERE top_domain <> '' ORDER BY d"
SQL_LATENT = "SELECT * FROM latents WHERE sae = ? AND latent = ?"
SQL_CONTEXTS = "SELECT * FROM contexts WHERE sae = ? AND latent = ? ORDER BY kind, rank"
_LATENTS_SQL = """SELECT latent, label, confidence, density, mean_act, max_act, top_domain FROM latents
    WHERE sae = ? AND density >= ? AND (? = '' OR top_domain = ?) AND (? = '' OR label ILIKE ? ESCAPE '\\')
    ORDER BY {col} {direction}, latent LIMIT ? OFFSET ?"""
SORT_KEYS = ("density", "confidence", "max_act", "latent")
# One constant query per (sort key, direction): column names come from this whitelist only.
SQL_LATENTS_BY = {(c, d): _LATENTS_SQL.format(col=c, direction=d) for c in SORT_KEYS for d in ("ASC", "DESC")}
SQL_SEARCH_LABELS = """SELECT sae, latent, label, confidence, density FROM latents
                       WHERE (? = '' OR sae = ?) AND label ILIKE ? ESCAPE '\\' ORDER BY confidence DESC, density DESC LIMIT ?"""
SQL_LABELS = "SELECT latent, label, confidence, density, max_act, top_tokens FROM latents WHERE sae = ?"
SQL_MAP = "SELECT m.sae, m.latent, m.x, m.y, m.jx, m.jy, l.density, l.top_domain, l.label, l.confidence " \
          "FROM map m JOIN latents l USING (sae, latent) WHERE (? = '' OR m.sae = ?) ORDER BY m.sae, m.latent"


def _contains(text: str) -> str:
    """An ILIKE pattern matching ``text`` literally anywhere (its %, _ and \\ escaped)."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class IndexWriter:
    """Context manager: collect frames, then write them all to ``path`` atomically."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.building")
        self.frames: dict[str, list[pd.DataFrame]] = {t: [] for t in TABLES}

    def add(self, table: str, df: pd.DataFrame) -> None:
        self.frames[table].append(df[TABLES[table]])

    def __enter__(self) -> "IndexWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.tmp.unlink(missing_ok=True)
            return
        self.tmp.unlink(missing_ok=True)
        con = duckdb.connect(str(self.tmp))
        try:
            for table, parts in self.frames.items():
                frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=TABLES[table])
                con.register("frame", frame)
                # Table names come from the TABLES constant above, never from input.
                con.execute(f"CREATE TABLE {table} AS SELECT * FROM frame ORDER BY {_SORT[table]}")  # noqa: S608
                con.unregister("frame")
            con.execute("CHECKPOINT")
        finally:
            con.close()
        os.replace(self.tmp, self.path)


class IndexReader:
    """One read-only connection per process; a cursor per thread."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no feature index at {self.path}: run `python -m backend index --workspace DIR`")
        self.con = duckdb.connect(str(self.path), read_only=True)
        self._local = threading.local()

    def _cur(self) -> duckdb.DuckDBPyConnection:
        cur = getattr(self._local, "cur", None)
        if cur is None:
            cur = self._local.cur = self.con.cursor()
        return cur

    def df(self, sql: str, params: list | tuple = ()) -> pd.DataFrame:
        return self._cur().execute(sql, list(params)).df()

    def saes(self) -> pd.DataFrame:
        return self.df(SQL_SAES)

    def domains(self) -> list[str]:
        return self.df(SQL_DOMAINS)["d"].tolist()

    def latent(self, sae: str, latent: int) -> dict | None:
        d = self.df(SQL_LATENT, (sae, latent))
        return None if d.empty else d.iloc[0].to_dict()

    def contexts(self, sae: str, latent: int) -> list[dict]:
        """A latent's context rows as dicts (no DataFrame: this is the feature page's hot path)."""
        cur = self._cur().execute(SQL_CONTEXTS, [sae, latent])
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def latents(self, sae: str, sort_by: str, descending: bool, domain: str, min_density: float, query: str,
                limit: int, offset: int) -> pd.DataFrame:
        sql = SQL_LATENTS_BY[(sort_by, "DESC" if descending else "ASC")]
        return self.df(sql, (sae, min_density, domain, domain, query, _contains(query), limit, offset))

    def search_labels(self, query: str, sae: str, limit: int) -> pd.DataFrame:
        return self.df(SQL_SEARCH_LABELS, (sae, sae, _contains(query), limit))

    def labels(self, sae: str) -> pd.DataFrame:
        return self.df(SQL_LABELS, (sae,))

    def feature_map(self, sae: str) -> pd.DataFrame:
        return self.df(SQL_MAP, (sae, sae))

    def close(self) -> None:
        self.con.close()
