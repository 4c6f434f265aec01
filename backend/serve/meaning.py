"""Search by meaning, a view of the Backend facade (mixed into backend.serve.service.Backend; see
backend/index/meaning.py for how latents become vectors).

The query is embedded with the shipped MiniLM (loaded on the first query, ~2 s; embeddings of recent queries are
cached) and matched by cosine against every served latent's vector. The vectors are read from the workspace when
the first query comes and again after the served index changes (``refresh``). SAEs indexed before vectors existed
are named in the result's notice, with the command that makes them.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import pandas as pd

from backend import errors as check
from backend.errors import BackendError
from backend.index.meaning import SQL_LABEL_TEXT, MeaningIndex

MAX_MEANING_QUERY = 300  # characters
MAX_MEANING_RESULTS = 200


@functools.lru_cache(maxsize=256)
def _query_vector(q: str) -> np.ndarray:
    from backend.research.retrieval import embed

    return embed([q])[0]


class MeaningViews:
    _meaning_guard = threading.Lock()

    def _meaning(self) -> MeaningIndex:
        """The served SAEs' meaning vectors (rebuilt when the served index object changes)."""
        with self._meaning_guard:
            key = (id(self.index), tuple(self.sae_names))
            if getattr(self, "_meaning_key", None) != key:
                self._meaning_index = MeaningIndex(self.ws.path, self.sae_names)
                self._meaning_text: dict[str, pd.DataFrame] = {}
                self._meaning_key = key
            return self._meaning_index

    def _latent_text(self, sae: str) -> pd.DataFrame:
        with self._meaning_guard:
            if sae not in self._meaning_text:
                self._meaning_text[sae] = self.index.df(SQL_LABEL_TEXT, (sae,)).set_index("latent")
            return self._meaning_text[sae]

    def search_meaning(self, query: str, sae: str = "", limit: int = 20) -> pd.DataFrame:
        """Latents whose explanation and top contexts are closest in meaning to ``query``: columns sae, latent,
        label, score (cosine), top_domain, best first; ``.attrs['notice']`` names SAEs that have no vectors."""
        q = check.text("query", query, MAX_MEANING_QUERY).strip()
        if not q:
            raise BackendError("type what you are looking for, e.g. 'insulin and blood sugar'")
        name = self._check_sae(sae) if sae else None
        limit = check.whole("limit", limit, 1, MAX_MEANING_RESULTS)
        idx = self._meaning()
        if not len(idx):
            raise BackendError(
                "no latent has a meaning vector yet: run `python -m backend meaning --workspace DIR` (the index "
                "was built before search by meaning existed)"
            )
        if name is not None and name not in idx.saes:
            raise BackendError(f"SAE {name!r} has no meaning vectors yet: run `python -m backend meaning`")
        hits = idx.search(_query_vector(q), name, limit)
        rows = []
        for s, latent, score in hits:
            t = self._latent_text(s)
            rows.append(
                {
                    "sae": s,
                    "latent": latent,
                    "label": str(t["label"].get(latent, "")),
                    "score": round(score, 4),
                    "top_domain": str(t["top_domain"].get(latent, "")),
                }
            )
        df = pd.DataFrame(rows, columns=["sae", "latent", "label", "score", "top_domain"])
        missing = [s for s in idx.missing if name is None or s == name]
        df.attrs["notice"] = (
            f"{', '.join(missing)} not searched (no meaning vectors: run `python -m backend meaning`)"
            if missing
            else ""
        )
        return df
