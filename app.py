"""SAE Explorer: open a workspace (building it first from a config if needed) and serve the UI.

    python app.py                                   # text, protein and recommender demo workspaces, built if absent
    python app.py --workspace workspaces/tiny       # an existing workspace (repeat --workspace to serve several)
    python app.py --config my.yaml --port 7861 --host 0.0.0.0 --auth me:secret

Binds 127.0.0.1 unless --host says otherwise. The backend (torch, DuckDB) is opened here and
handed to ``explorer.ui.build_app``; the model itself loads on the first request that needs it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

DEFAULT_CONFIGS = ["configs/demo.yaml", "configs/protein.yaml", "configs/recsys.yaml"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python app.py", description="SAE Explorer: browse, search, map, compare and steer SAE latents."
    )
    p.add_argument(
        "--workspace",
        action="append",
        default=[],
        help="an existing workspace folder (with index.duckdb); repeat to serve several",
    )
    p.add_argument(
        "--config",
        action="append",
        default=[],
        help="a workspace config; the workspace is built first if absent; repeat to serve several "
        f"(default: {' '.join(DEFAULT_CONFIGS)})",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--auth", help="require a login, given as user:password")
    args = p.parse_args(argv)
    if args.auth is not None and (":" not in args.auth or not args.auth.split(":", 1)[0]):
        p.error("--auth must look like user:password")
    return args


def _skip(what: str, e: BaseException) -> None:
    """One workspace that cannot be opened or built does not keep the others from being served."""
    print(f"[app] skipping {what}: {e}", file=sys.stderr, flush=True)


def workspace_dirs(args: argparse.Namespace) -> list[Path]:
    """The workspace folders to serve, in order; builds each config's workspace when its index is missing."""
    out = []
    configs = args.config or ([] if args.workspace else DEFAULT_CONFIGS)
    for w in args.workspace:
        path = Path(w)
        if not (path / "index.duckdb").exists():
            e = FileNotFoundError(
                f"{path} has no index.duckdb: build it with `python -m backend build CONFIG` "
                "or start with --config CONFIG"
            )
            if len(args.workspace) + len(configs) == 1:
                raise e
            _skip(str(path), e)
            continue
        out.append(path)
    from backend.workspace import create_workspace

    for config in configs:
        try:
            ws = create_workspace(config)
            if not ws.index_path.exists():
                from backend.build import build_workspace

                print(f"[app] building workspace {ws.path} from {config} (first run only)...", flush=True)
                build_workspace(config, ws.path, verbose=True)
        except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
            if len(configs) == 1 and not out:
                raise
            _skip(config, e)
            continue
        out.append(ws.path)
    if not out:
        raise RuntimeError(f"none of the workspaces could be opened or built ({', '.join(configs + args.workspace)})")
    return out


def open_backends(dirs: list[Path]) -> list:
    """A Backend per workspace folder. A workspace whose index cannot be read is skipped with one line when
    there are others (alone, its error is raised); each broken SAE is reported and left out of its Backend."""
    from backend.serve.service import Backend

    backends = []
    for path in dirs:
        try:
            b = Backend(path)
        except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
            if len(dirs) == 1:
                raise
            _skip(str(path), e)
            continue
        for problem in getattr(b, "problems", []):
            print(f"[app] {b.workspace_name}: not serving an SAE: {problem}", file=sys.stderr, flush=True)
        backends.append(b)
    if not backends:
        raise RuntimeError(f"none of the workspaces could be opened ({', '.join(map(str, dirs))})")
    return backends


def mount_paths(backends: list) -> list[tuple[str, str, str]]:
    """(name, kind of model as shown, url path): the first workspace at /, the others at /<name>/."""
    return [
        (b.workspace_name, b.capabilities["display_name"], "/" if i == 0 else f"/{b.workspace_name}/")
        for i, b in enumerate(backends)
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # clients get one user-level line per error (show_error=False); tracebacks go to this log only
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        backends = open_backends(workspace_dirs(args))
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = [b.workspace_name for b in backends]
    if len(set(names)) != len(names):
        print(f"error: workspace names must differ to be served together, got {names}", file=sys.stderr)
        return 2
    from explorer.ui import build_app, launch_options

    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    paths = mount_paths(backends)
    if len(backends) == 1:
        print(f"[app] serving workspace {names[0]} on http://{args.host}:{args.port}", flush=True)
        build_app(backends[0]).launch(
            server_name=args.host, server_port=args.port, auth=auth, show_error=False, **launch_options()
        )
        return 0
    import gradio as gr
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()
    # mount the sub-paths first: the app at "/" would otherwise catch their requests
    for b, (name, _, path) in sorted(zip(backends, paths), key=lambda bp: bp[1][2] == "/"):
        gr.mount_gradio_app(
            app, build_app(b, paths), path=path.rstrip("/") or "/", auth=auth, show_error=False, **launch_options()
        )
        print(f"[app] workspace {name} ({b.modality}) at http://{args.host}:{args.port}{path}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
