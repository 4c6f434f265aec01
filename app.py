"""SAE Explorer: open workspaces (building them from their configs SAE by SAE) and serve the UI.

    python app.py                                   # text, protein and recommender demo workspaces, built if absent
    python app.py --workspace workspaces/tiny       # an existing workspace (repeat --workspace to serve several)
    python app.py --config my.yaml --port 7861 --host 0.0.0.0 --auth me:secret

Staged start: a config's workspace is built by one background thread (backend/staged.py ``StagedBuilder``:
windows, activations, then each SAE trained, evaluated and added to the index, then the next workspace).
The app opens as soon as the first config's workspace has one indexed SAE; each further SAE is served
when it is indexed (``Backend.refresh``; the page's header and SAE pickers follow, explorer/ui.py), and a
workspace that had no index at the start is mounted at /<name>/ when its first SAE is. Stopping the app
stops the build between two batches; the next start resumes it (every step is skipped when its output exists).

Binds 127.0.0.1 unless --host says otherwise. The backend (torch, DuckDB) is opened here and
handed to ``explorer.ui.build_app``; the model itself loads on the first request that needs it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import threading
from pathlib import Path

DEFAULT_CONFIGS = ["configs/demo.yaml", "configs/protein.yaml", "configs/recsys.yaml"]
log = logging.getLogger("app")


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
        help="a workspace config; the workspace is built SAE by SAE in the background, served from its first "
        f"indexed SAE; repeat to serve several (default: {' '.join(DEFAULT_CONFIGS)})",
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


def _configs(args: argparse.Namespace) -> list[str]:
    return args.config or ([] if args.workspace else DEFAULT_CONFIGS)


def start_builder(args: argparse.Namespace, on_indexed=None):
    """The staged build of the configs' workspaces (started; None without configs). A workspace whose build
    fails is reported with one line when there are other workspaces to serve."""
    configs = _configs(args)
    if not configs:
        return None
    from backend.staged import StagedBuilder

    several = len(configs) + len(args.workspace) > 1
    return StagedBuilder(
        [(c, None) for c in configs],
        on_indexed=on_indexed,
        on_failed=(lambda sw, e: _skip(str(sw.config), e)) if several else None,
    ).start()


def workspace_dirs(args: argparse.Namespace, builder=None) -> list[Path]:
    """The workspace folders to serve now, in order: each --workspace folder (it must hold an index), then each
    config's workspace that has one. Without --workspace folders this waits until the first config's workspace
    can be served (its first SAE is indexed; when its build fails, the next config's, and so on). ``builder``:
    from ``start_builder`` (started here when not given)."""
    out = []
    configs = _configs(args)
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
    if configs:
        builder = builder or start_builder(args)
        if not out:
            for sw in builder.builds:
                if sw.ws is not None and not sw.servable():
                    print(f"[app] building workspace {sw.ws.path} from {sw.config} (first run only)...", flush=True)
                builder.wait(sw)
                if sw.servable():
                    break
        out += [sw.path for sw in builder.builds if sw.servable()]
        if not out and len(configs) == 1 and builder.builds[0].error is not None:
            raise builder.builds[0].error
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


class Serving:
    """The workspaces this process serves (a Backend each, by folder) and the staged build's hooks into them:
    after each SAE the builder indexes, its workspace's Backend switches to the new index (``refresh``), or,
    for a workspace that had no index when the app started, a Backend and app are mounted at /<name>/."""

    def __init__(self, args: argparse.Namespace, builder=None):
        self.args, self.builder = args, builder
        self.auth = tuple(args.auth.split(":", 1)) if args.auth else None
        self.backends: dict[Path, object] = {}
        self.paths: list[tuple[str, str, str]] = []
        self.app = None  # the FastAPI app when several workspaces are (or will be) served
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's, once it runs
        self._lock = threading.Lock()
        self._mounting = threading.Lock()  # one late mount at a time

    def links(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return list(self.paths)

    def add(self, backends: list) -> None:
        with self._lock:
            self.paths = mount_paths(backends)
            self.backends = {Path(b.ws.path).resolve(): b for b in backends}

    def on_indexed(self, sw) -> None:
        """The builder added an SAE to ``sw``'s index (called in the builder's thread)."""
        with self._lock:
            b = self.backends.get(Path(sw.path).resolve())
        if b is not None:
            b.refresh()
        elif self.loop is not None:
            self.mount_late(sw.path)

    def mount_late(self, path: Path) -> None:
        """Open and mount a workspace while the server runs: Gradio's mount appends the route after the app at /
        (which would catch its requests), so it is moved first, and the mounted app's startup (its queue)
        runs in the server's event loop, as mount_gradio_app's lifespan would have at start."""
        import gradio as gr

        from backend.serve.service import Backend
        from explorer.ui import build_app, launch_options

        with self._mounting:
            with self._lock:
                if Path(path).resolve() in self.backends:
                    return
            b = Backend(path)
            name = b.workspace_name
            with self._lock:
                if any(n == name for n, _, _ in self.paths):
                    b.close()
                    _skip(str(path), ValueError(f"a workspace named {name!r} is served already"))
                    return
                self.paths.append((name, b.capabilities["display_name"], f"/{name}/"))
                self.backends[Path(path).resolve()] = b
            gr.mount_gradio_app(
                self.app,
                build_app(b, self.links),
                path=f"/{name}",
                auth=self.auth,
                show_error=False,
                **launch_options(),
            )

            routes = self.app.router.routes
            route = routes[-1]  # the mount just appended

            async def start() -> None:
                routes.remove(route)
                routes.insert(0, route)
                blocks = route.app.get_blocks()
                blocks.run_startup_events()
                await blocks.run_extra_startup_events()

            asyncio.run_coroutine_threadsafe(start(), self.loop).result(60)
        print(f"[app] workspace {name} ({b.modality}) at http://{self.args.host}:{self.args.port}/{name}/", flush=True)

    def catch_up(self) -> None:
        """Mount the workspaces whose first SAE was indexed before the server ran (their on_indexed came early)."""
        for sw in self.builder.builds if self.builder is not None else []:
            if sw.servable():
                _catch_up(self, sw)

    def serve(self, backends: list, later: bool) -> None:
        """Serve ``backends`` (the first at /); ``later``: workspaces still being built may be mounted while it runs."""
        from explorer.ui import build_app, launch_options

        self.add(backends)
        args = self.args
        if len(backends) == 1 and not later:
            print(f"[app] serving workspace {backends[0].workspace_name} on http://{args.host}:{args.port}", flush=True)
            build_app(backends[0]).launch(
                server_name=args.host, server_port=args.port, auth=self.auth, show_error=False, **launch_options()
            )
            return
        import gradio as gr
        import uvicorn
        from fastapi import FastAPI

        @contextlib.asynccontextmanager
        async def lifespan(_app):
            self.loop = asyncio.get_running_loop()
            threading.Thread(target=self.catch_up, name="catch-up", daemon=True).start()
            yield
            self.loop = None

        self.app = FastAPI(lifespan=lifespan)
        # mount the sub-paths first: the app at "/" would otherwise catch their requests
        for b, (name, _, path) in sorted(zip(backends, self.paths), key=lambda bp: bp[1][2] == "/"):
            gr.mount_gradio_app(
                self.app,
                build_app(b, self.links),
                path=path.rstrip("/") or "/",
                auth=self.auth,
                show_error=False,
                **launch_options(),
            )
            print(f"[app] workspace {name} ({b.modality}) at http://{args.host}:{args.port}{path}", flush=True)
        uvicorn.run(self.app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # clients get one user-level line per error (show_error=False); tracebacks go to this log only
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serving = Serving(args)
    builder = None
    try:
        builder = serving.builder = start_builder(args, on_indexed=lambda sw: _catch_up(serving, sw))
        backends = open_backends(workspace_dirs(args, builder))
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        if builder is not None:
            builder.stop()
        return 2
    except KeyboardInterrupt:  # stopped while the first workspace builds: the next start resumes it
        print("[app] stopped; the next start resumes the build", file=sys.stderr)
        if builder is not None:
            builder.stop()
        return 130
    names = [b.workspace_name for b in backends]
    if len(set(names)) != len(names):
        print(f"error: workspace names must differ to be served together, got {names}", file=sys.stderr)
        if builder is not None:
            builder.stop()
        return 2
    try:
        pending = builder is not None and any(sw.ws is not None and not sw.servable() for sw in builder.builds)
        serving.serve(backends, later=pending)
    finally:
        if builder is not None:
            builder.stop()
    return 0


def _catch_up(serving: Serving, sw) -> None:
    try:
        serving.on_indexed(sw)
    except Exception:  # the build goes on; the workspace is served after a restart
        log.warning("could not serve the new index of %s", sw.path, exc_info=True)


if __name__ == "__main__":
    sys.exit(main())
