"""Do the decoder maps show structure? (issue 15: the old maps were structureless discs.)

    .venv/bin/python bench/bench_maps.py [--workspace workspaces/demo] [--saes general,batchtopk]

For each SAE, on the map the index holds (UMAP with the cosine metric, the settings of backend/index/maps.py), side by
side with the same layout of a random decoder of the same shape (Gaussian rows: what a map of an untrained SAE looks
like):

- **neighbours kept**: the share of each latent's 10 nearest decoder directions (cosine, in the full space) that are
  among its 10 nearest points on the map. A map with structure keeps many; chance is 10 / n.
- **same domain nearby**: over latents that fire, the share of each one's 10 map neighbours whose top domain (from the
  index) is the same as its own, against the share expected when the domains are shuffled over the same points.
  Only the trained SAE has domains, so this is against its own shuffle.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def knn(X: np.ndarray, k: int, cosine: bool) -> np.ndarray:
    """(n, k) indices of each row's k nearest other rows (cosine or Euclidean)."""
    if cosine:
        U = X / np.linalg.norm(X, axis=1, keepdims=True).clip(1e-8)
        D = -(U @ U.T)
    else:
        sq = (X**2).sum(1)
        D = sq[:, None] + sq[None, :] - 2 * X @ X.T
    np.fill_diagonal(D, np.inf)
    return np.argpartition(D, k, axis=1)[:, :k]


def kept(W: np.ndarray, xy: np.ndarray, k: int = 10) -> float:
    a, b = knn(W, k, cosine=True), knn(xy, k, cosine=False)
    return float(np.mean([len(set(a[i]) & set(b[i])) / k for i in range(len(W))]))


def same_domain(xy: np.ndarray, dom: np.ndarray, k: int = 10, seed: int = 0) -> tuple[float, float]:
    """(share of map neighbours with the same top domain, the same under shuffled domains) over firing latents."""
    ok = dom != ""
    xy, dom = xy[ok], dom[ok]
    nb = knn(xy, k, cosine=False)
    real = float((dom[nb] == dom[:, None]).mean())
    rng = np.random.default_rng(seed)
    shuf = [float((d[nb] == d[:, None]).mean()) for d in (rng.permutation(dom) for _ in range(20))]
    return real, float(np.mean(shuf))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", default=str(ROOT / "workspaces" / "demo"))
    ap.add_argument("--saes", default="", help="comma-separated (default: every indexed SAE)")
    args = ap.parse_args()
    import duckdb

    from backend.index.maps import layout
    from backend.sae.model import load_sae

    ws = Path(args.workspace)
    con = duckdb.connect(str(ws / "index.duckdb"), read_only=True)
    names = [s for s in con.execute("SELECT sae FROM saes ORDER BY sae").df()["sae"]]
    names = [n for n in names if not args.saes or n in args.saes.split(",")]
    print(f"{'SAE':14} {'n':>6} {'kept (map)':>11} {'kept (random)':>14} {'same domain':>12} {'shuffled':>9}")
    for name in names:
        m = con.execute("SELECT latent, x, y FROM map WHERE sae = ? ORDER BY latent", [name]).df()
        dom = con.execute("SELECT top_domain FROM latents WHERE sae = ? ORDER BY latent", [name]).df()["top_domain"]
        W = load_sae(ws / "saes" / name).W_dec.detach().numpy()
        if len(W) != len(m):  # a boosted SAE's map holds its base's rows too
            from backend.serve.service import _read_unit_decoder

            W = _read_unit_decoder(ws / "saes" / name)
        xy = m[["x", "y"]].to_numpy()
        R = np.random.default_rng(0).standard_normal(W.shape).astype(np.float32)
        k_map, k_rand = kept(W, xy), kept(R, layout(R, seed=0))
        real, shuf = same_domain(xy, dom.fillna("").to_numpy())
        print(f"{name:14} {len(W):>6} {k_map:>11.3f} {k_rand:>14.3f} {real:>12.3f} {shuf:>9.3f}", flush=True)


if __name__ == "__main__":
    main()
