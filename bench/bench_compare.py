"""The largest /compare a client can send: time, response bytes and memory growth (issue 11).

    .venv/bin/python bench/bench_compare.py [--workspace workspaces/demo]

A client can name every SAE of the workspace, repeat them (``["general"] * 400`` once cost 78 s, 477 MB
of JSON and +3.8 GB of memory), and ask for the largest page. The backend drops duplicates, caps the
page at ``MAX_RESULTS`` rows of matches and of unmatched latents, and computes each SAE pair's best
matches once. Measured through the same path as the endpoint (Backend.compare, then render.to_json and
json.dumps): the repeated request, the largest request cold (pairs computed) and warm (cached), and for
scale the size of the whole unpaged result the old endpoint returned.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
from backend.serve.service import MAX_RESULTS, Backend  # noqa: E402
from explorer.render import to_json  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(backend: Backend, saes, **kw) -> tuple[float, int, float]:
    """(seconds, response bytes, RSS growth in MB) of one request as the endpoint answers it."""
    before = rss_mb()
    t0 = time.perf_counter()
    try:
        body = json.dumps(to_json(backend.compare(saes, **kw)))
    except ValueError as e:
        body = json.dumps({"error": str(e)})
    return time.perf_counter() - t0, len(body), rss_mb() - before


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", default=str(ROOT / "workspaces" / "tiny"))
    args = ap.parse_args()
    if not (Path(args.workspace) / "index.duckdb").exists():
        from backend.build import build_workspace

        build_workspace(ROOT / "configs" / "tiny.yaml", args.workspace, verbose=False)
    b = Backend(args.workspace)
    names = b.sae_names
    total = sum(b._d_sae[n] for n in names[1:]) if len(names) > 1 else 0
    print(f"workspace {args.workspace}: {len(names)} SAEs, d_sae {[b._d_sae[n] for n in names]}")
    print(f"{'request':<44} {'seconds':>8} {'bytes':>11} {'RSS +MB':>8}")
    rows = [
        (f"[{names[0]!r}] * 400", [names[0]] * 400, {}),
        (f"all {len(names)} SAEs x 10 (repeated), cold", names * 10, {"limit": MAX_RESULTS}),
        (f"all {len(names)} SAEs, limit {MAX_RESULTS}, warm", names, {"limit": MAX_RESULTS}),
        (f"all {len(names)} SAEs, default page (100), warm", names, {}),
        (
            f"all {len(names)} SAEs, last page, warm",
            names,
            {"limit": MAX_RESULTS, "offset": max(total - MAX_RESULTS, 0)},
        ),
    ]
    for label, saes, kw in rows:
        s, n, m = timed(b, saes, **kw)
        print(f"{label:<44} {s:8.3f} {n:11,} {m:8.1f}")
    print(
        f"the unpaged result would hold {total:,} match rows plus their unmatched rows "
        f"({len(names) - 1} pairs x d_sae); a page holds at most {2 * MAX_RESULTS:,} rows"
    )


if __name__ == "__main__":
    main()
