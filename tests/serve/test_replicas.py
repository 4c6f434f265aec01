"""Replicas behind a load balancer: several app processes open ONE index file read-only at once and serve it.

store.IndexReader ATTACHes the file READ_ONLY to a private in-memory DuckDB instance: DuckDB then takes a shared
file lock, so readers in other processes never exclude each other (only a writer holding the file would, and the
builder never writes the served file: it renames a finished one over it)."""

from __future__ import annotations

import multiprocessing as mp

from backend.serve.service import Backend

pytest_plugins = ("tests._index_fixtures",)  # synth_ws: a small real index, no model
LATENTS = [0, 5, 11, 23]


def _page(b: Backend, latent: int) -> tuple:
    f = b.feature("a", latent)
    return f.label, f.density, [c.max_act for c in f.top_contexts], [len(q) for _, q in f.quantiles]


def _replica(path: str, barrier, q) -> None:
    b = Backend(path)
    try:
        barrier.wait(timeout=300)  # every replica holds the file open before any reads
        q.put([_page(b, j) for j in LATENTS])
        barrier.wait(timeout=300)  # ... and keeps it open while the others read
    finally:
        b.close()


def test_three_replica_processes_serve_one_index_read_only(synth_ws):
    here = Backend(synth_ws)  # this process holds the file open too
    try:
        want = [_page(here, j) for j in LATENTS]
        ctx = mp.get_context("spawn")
        barrier, q = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_replica, args=(str(synth_ws.path), barrier, q)) for _ in range(3)]
        for p in procs:
            p.start()
        got = [q.get(timeout=300) for _ in procs]
        for p in procs:
            p.join(timeout=300)
        assert [p.exitcode for p in procs] == [0, 0, 0]
        assert got == [want] * 3
        assert _page(here, 0) == want[0]  # the first reader is unaffected
    finally:
        here.close()
