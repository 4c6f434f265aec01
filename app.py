"""SAE Explorer: open a workspace (building it first from a config if needed) and serve the UI.

    python app.py                                   # the demo workspace (configs/demo.yaml), built if absent
    python app.py --workspace workspaces/tiny       # an existing workspace
    python app.py --config my.yaml --port 7861 --host 0.0.0.0 --auth me:secret

Binds 127.0.0.1 unless --host says otherwise. The backend (torch, DuckDB) is opened here and
handed to ``explorer.ui.build_app``; the model itself loads on the first request that needs it.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_CONFIG = "configs/demo.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python app.py",
                                description="SAE Explorer: browse, search, map and compare SAE latents.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--workspace", help="an existing workspace folder (with index.duckdb)")
    src.add_argument("--config",
                     help=f"a workspace config; the workspace is built first if absent (default {DEFAULT_CONFIG})")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--auth", help="require a login, given as user:password")
    args = p.parse_args(argv)
    if args.auth is not None and (":" not in args.auth or not args.auth.split(":", 1)[0]):
        p.error("--auth must look like user:password")
    return args


def open_workspace_dir(args: argparse.Namespace) -> Path:
    """The workspace folder to serve; builds it from the config when its index is missing."""
    if args.workspace:
        path = Path(args.workspace)
        if not (path / "index.duckdb").exists():
            raise FileNotFoundError(f"{path} has no index.duckdb: build it with `python -m backend build CONFIG` "
                                    "or start with --config CONFIG")
        return path
    from backend.workspace import create_workspace

    config = args.config or DEFAULT_CONFIG
    ws = create_workspace(config)
    if not ws.index_path.exists():
        from backend.build import build_workspace

        print(f"[app] building workspace {ws.path} from {config} (first run only)...", flush=True)
        build_workspace(config, ws.path, verbose=True)
    return ws.path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        path = open_workspace_dir(args)
        from backend.service import Backend

        backend = Backend(path)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from explorer.ui import build_app, launch_options

    demo = build_app(backend)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    print(f"[app] serving workspace {backend.workspace_name} on http://{args.host}:{args.port}", flush=True)
    demo.launch(server_name=args.host, server_port=args.port, auth=auth, show_error=True, **launch_options())
    return 0


if __name__ == "__main__":
    sys.exit(main())
