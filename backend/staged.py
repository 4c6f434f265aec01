"""The staged build (``StagedBuilder``, what ``python app.py`` runs): the same steps, SAE by SAE. After windows
and activations, each SAE of the config in turn is trained, evaluated and added to the index
(index/build.py ``add_to_index``), so an app can serve a workspace as soon as its first SAE is indexed
while one background thread trains and indexes the rest, then the next workspaces. It holds each
workspace's lock while it builds it; its progress (a state per SAE: waiting, training, evaluating,
indexing, ready, failed with a one-line error) is read through ``build_status`` (Backend.build_status).
A failed SAE does not stop the others (an SAE boosted on it fails too, saying why). The outputs are the
full build's, so a restarted app resumes where the last one stopped.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backend.build import evaluate_one, evaluated, train_one, train_twin
from backend.workspace import Workspace, create_workspace, workspace_lock

SAE_STATES = ("waiting", "importing", "training", "evaluating", "indexing", "ready", "failed")
log = logging.getLogger(__name__)


class BuildStopped(Exception):
    """StagedBuilder.stop() was called: the build ends at the next batch or step (nothing half-written)."""


def one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


STEP_TEXT = {
    "waiting": "waiting for the workspaces before it",
    "windows": "cutting context windows",
    "activations": "capturing activations",
    "saes": "",
    "subdomains": "retrieving subdomain windows",
    "coverage": "computing coverage",
    "twin": "training {detail}",
}


class WorkspaceProgress:
    """Where a staged build of one workspace stands: its step and each SAE's state (thread-safe)."""

    def __init__(self, name: str, saes: list[str]):
        self.name = name
        self._lock = threading.Lock()
        self.step, self.error, self.note, self.detail = "waiting", "", "", ""
        self.saes: dict[str, list[str]] = {n: ["waiting", ""] for n in saes}

    def set_step(self, step: str, error: str = "", detail: str = "") -> None:
        with self._lock:
            self.step, self.error, self.detail = step, error, detail

    def set_sae(self, name: str, state: str, detail: str = "") -> None:
        assert state in SAE_STATES, state
        with self._lock:
            self.saes[name] = [state, detail]

    def state(self, name: str) -> str:
        with self._lock:
            return self.saes[name][0]

    def snapshot(self) -> dict:
        """{workspace, active, step, line, saes: [{name, state, detail}]}: plain values for the UI."""
        with self._lock:
            step, error, note, detail = self.step, self.error, self.note, self.detail
            saes = [{"name": n, "state": s, "detail": d} for n, (s, d) in self.saes.items()]
        n, ready = len(saes), sum(s["state"] == "ready" for s in saes)
        failed = [s for s in saes if s["state"] == "failed"]
        count = f"{ready} of {n} SAE{'s' if n != 1 else ''} ready"
        bad = f"; {len(failed)} failed ({', '.join(s['name'] for s in failed)})" if failed else ""
        active = step not in ("done", "failed")
        if step == "failed":
            line = f"build failed: {error}" + (f" ({count})" if ready else "")
        elif step == "done":  # quiet once all went well; failures and notes stay said
            line = f"built: {count}{bad}" + (f"; {note}" if note else "") if failed or note else ""
        elif step == "waiting":
            line = f"waiting: builds after the workspaces before it ({count})"
        else:
            doing = next((s for s in saes if s["state"] in ("importing", "training", "evaluating", "indexing")), None)
            what = STEP_TEXT.get(step, step).format(detail=detail)
            if doing is not None:
                what = f"{doing['state']} {doing['name']}" + (f" ({doing['detail']})" if doing["detail"] else "")
            line = f"building: {count}{bad}" + (f"; {what}..." if what else "")
        return {"workspace": self.name, "active": active, "step": step, "line": line, "saes": saes}


_REGISTRY: dict[Path, WorkspaceProgress] = {}  # resolved workspace path -> its staged build in this process
_REGISTRY_GUARD = threading.Lock()


def build_status(path: str | Path) -> dict:
    """The staged build of the workspace at ``path`` in this process (``WorkspaceProgress.snapshot``; inactive
    with an empty line when there is none), and ``others``: the snapshots of this process' other builds."""
    key = Path(path).resolve()
    with _REGISTRY_GUARD:
        mine, others = _REGISTRY.get(key), [p for k, p in _REGISTRY.items() if k != key]
    out = mine.snapshot() if mine else {"workspace": "", "active": False, "step": "", "line": "", "saes": []}
    out["others"] = [p.snapshot() for p in others]
    return out


class BuildClock:
    """When a staged build reached each step, in seconds since its builder started (which includes earlier
    workspaces' builds): written to ``build_times.json`` in the workspace after each step, atomically, so that
    ``make bench-demo`` can report time to first serve and to completion. A resumed build writes its own run."""

    def __init__(self, path: Path, t0: float):
        import datetime

        self.path, self.t0 = Path(path) / "build_times.json", t0
        started = datetime.datetime.fromtimestamp(t0, datetime.UTC).isoformat(timespec="seconds")
        self.times: dict[str, Any] = {"builder_started": started, "resumed_with": [], "at_s": {}}

    def mark(self, what: str, first: str | None = None) -> None:
        import json

        from backend.atomic import atomic_write_text

        now = round(time.time() - self.t0, 1)
        self.times["at_s"][what] = now
        if first and first not in self.times:
            self.times[first + "_s"] = now
            self.times[first] = what
        atomic_write_text(self.path, json.dumps(self.times, indent=1))


class StagedWorkspace:
    """One config of a StagedBuilder: its workspace (None when the config cannot be opened), progress, error."""

    def __init__(self, config: str | Path, path: str | Path | None):
        self.config = config
        self.error: BaseException | None = None
        self.settled = threading.Event()  # servable (an index exists) or never will be by this build
        self.finished = threading.Event()
        try:
            self.ws: Workspace | None = create_workspace(config, path)
        except Exception as e:  # a bad config, or the workspace is busy: one line, the others go on
            self.ws, self.error = None, e
            self.settled.set()
            self.finished.set()
            self.progress = WorkspaceProgress(Path(config).stem, [])
            self.progress.set_step("failed", one_line(e))
            return
        self.progress = WorkspaceProgress(self.ws.config.name, [s.name for s in self.ws.config.saes])
        with _REGISTRY_GUARD:
            _REGISTRY[self.ws.path.resolve()] = self.progress

    @property
    def path(self) -> Path | None:
        return self.ws.path if self.ws is not None else None

    def servable(self) -> bool:
        return self.ws is not None and self.ws.index_path.exists()


class StagedBuilder:
    """Builds the workspaces of ``configs`` ((config, folder or None) pairs) SAE by SAE in one daemon thread.

    ``on_indexed(sw)`` is called (in the builder's thread) after each SAE is added to ``sw``'s index,
    ``on_failed(sw, error)`` when a workspace cannot be built at all. ``wait(sw)`` blocks until ``sw`` can be
    served (its index exists) or its build ended. ``stop()`` ends the build at the next training batch or
    step; what is finished stays (every step writes atomically), so the next start resumes there."""

    def __init__(
        self,
        configs: list[tuple[str | Path, str | Path | None]],
        *,
        verbose: bool = True,
        on_indexed: Callable[[StagedWorkspace], None] | None = None,
        on_failed: Callable[[StagedWorkspace, BaseException], None] | None = None,
    ):
        self.verbose = verbose
        self.on_indexed, self.on_failed = on_indexed, on_failed
        self.builds = [StagedWorkspace(c, p) for c, p in configs]
        self._stop = threading.Event()
        self.t0 = time.time()  # reset by start()
        self._thread = threading.Thread(target=self._run, name="staged-build", daemon=True)

    def start(self) -> StagedBuilder:
        self.t0 = time.time()
        for sw in self.builds:
            if sw.error is not None and self.on_failed:
                self.on_failed(sw, sw.error)
            elif sw.servable():
                sw.settled.set()  # a restart: what is indexed is served at once
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the whole build; True when it ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait(self, sw: StagedWorkspace, timeout: float | None = None) -> bool:
        return sw.settled.wait(timeout)

    # ---- the worker ------------------------------------------------------------------------------
    def _check_stop(self, _n: int = 0) -> None:
        if self._stop.is_set():
            raise BuildStopped("the app stopped before the build finished; the next start resumes it")

    def _say(self, text: str) -> None:
        if self.verbose:
            print(text, flush=True)

    def _run(self) -> None:
        for sw in self.builds:
            if sw.ws is None:
                continue
            try:
                self._check_stop()
                with workspace_lock(sw.ws.path):
                    self._build(sw)
            except Exception as e:  # the workspace as a whole (windows, activations, the lock): one line
                sw.error = e
                sw.progress.set_step("failed", one_line(e))
                if not isinstance(e, BuildStopped):
                    log.warning("staged build of %s failed", sw.ws.path, exc_info=True)
                    if self.on_failed:
                        self.on_failed(sw, e)
            finally:
                sw.settled.set()
                sw.finished.set()

    def _build(self, sw: StagedWorkspace) -> None:
        from backend.index.build import add_to_index, index_inputs, indexed_saes
        from backend.research.subdomain import build_subdomain

        ws, p, t0 = sw.ws, sw.progress, time.time()
        assert ws is not None
        self._say(f"[build] workspace {ws.config.name} in {ws.path}, SAE by SAE")
        from backend.sae.pretrained import preflight

        preflight(ws)  # a pretrained SAE that cannot be read fails the workspace now, before any work
        clock = BuildClock(ws.path, self.t0)
        for name in indexed_saes(ws.index_path):  # a restart: these are served already
            if name in p.saes:
                p.set_sae(name, "ready")
                clock.times["resumed_with"].append(name)
        p.set_step("windows")
        ws.build_windows(verbose=self.verbose)
        clock.mark("windows")
        p.set_step("activations")
        ws.build_activations(verbose=self.verbose)
        clock.mark("activations")
        subdomains = {sd.name: sd for sd in ws.config.subdomains}
        inputs = None  # the indexing activations, collected once for all of this workspace's SAEs
        for s in ws.config.saes:
            if p.state(s.name) == "ready":
                continue
            p.set_step("saes")
            try:
                self._check_stop()
                if s.data in subdomains:
                    p.set_sae(s.name, "training", f"retrieving its {s.data} windows")
                    build_subdomain(ws, subdomains[s.data], verbose=self.verbose)
                p.set_sae(s.name, "importing" if s.pretrained else "training")
                train_one(ws, s, verbose=self.verbose, watch=self._watcher(ws, s, p), twin=False)
                self._check_stop()
                p.set_sae(s.name, "evaluating")
                if not evaluated(ws, s.name):
                    evaluate_one(ws, s, verbose=self.verbose)
                self._check_stop()
                p.set_sae(s.name, "indexing")
                inputs = inputs or index_inputs(ws, progress=self.verbose)
                add_to_index(ws, [s.name], inputs=inputs, progress=self.verbose)
            except BuildStopped:
                raise
            except Exception as e:  # this SAE only: the next ones are built
                p.set_sae(s.name, "failed", one_line(e))
                log.warning("staged build of %s: SAE %s failed", ws.path, s.name, exc_info=True)
                print(f"[build] {ws.config.name}: SAE {s.name} failed: {one_line(e)}", file=sys.stderr, flush=True)
                continue
            p.set_sae(s.name, "ready")
            clock.mark(s.name, first="first_served")
            self._say(f"[build] {ws.config.name}: {s.name} ready ({time.time() - t0:.0f} s into this workspace)")
            sw.settled.set()
            if self.on_indexed:
                try:
                    self.on_indexed(sw)
                except Exception:  # a listener's fault must not stop the build
                    log.warning("on_indexed(%s) failed", ws.path, exc_info=True)
        del inputs
        self._finish(sw, clock)
        clock.mark("done")
        self._say(f"[build] {ws.config.name} done in {time.time() - t0:.0f} s")

    def _finish(self, sw: StagedWorkspace, clock: BuildClock) -> None:
        """The steps after the SAEs: every subdomain's training set (as the full build), then coverage once every
        SAE is ready. A failure here is noted on the status line; the SAEs stay served."""
        from backend.research.coverage import build_coverage
        from backend.research.subdomain import build_subdomain

        ws, p = sw.ws, sw.progress
        assert ws is not None
        try:
            for s in ws.config.saes:  # seed stability: twins train once every SAE is served
                if s.stability_twin and p.state(s.name) == "ready":
                    self._check_stop()
                    p.set_step("twin", detail=f"{s.name}'s seed-stability twin")
                    if train_twin(ws, s, verbose=self.verbose, watch=self._twin_watcher(ws, s, p)) and self.on_indexed:
                        self.on_indexed(sw)  # the served metrics now carry the stability
                    clock.mark(f"{s.name}@twin")
            p.set_step("subdomains")
            for sd in ws.config.subdomains:
                self._check_stop()
                build_subdomain(ws, sd, verbose=self.verbose)
            if ws.config.subdomains:
                p.set_step("coverage")
                if all(p.state(s.name) == "ready" for s in ws.config.saes):
                    build_coverage(ws, verbose=self.verbose)
                else:
                    p.note = "coverage not computed (an SAE failed)"
        except BuildStopped:
            raise
        except Exception as e:
            p.note = f"{p.step} failed: {one_line(e)}"
            log.warning("staged build of %s: %s failed", ws.path, p.step, exc_info=True)
        p.set_step("done")

    def _steps(self, ws: Workspace, s) -> int:
        """Optimizer steps of one SAE's training (from the config's token budget)."""
        source = ws.activation_source(s.data)
        per_pass = s.tokens or ws.config.train.tokens or getattr(source, "n_normal", source.n_tokens)
        return max(1, math.ceil(per_pass / ws.config.train.batch_size))

    def _watcher(self, ws: Workspace, s, p: WorkspaceProgress) -> Callable[[int], None]:
        """Training progress as 'step i of n'."""
        total, seen = self._steps(ws, s), [0]

        def watch(n: int) -> None:
            self._check_stop()
            seen[0] += 1
            p.set_sae(s.name, "training", f"step {min(seen[0], total)} of {total}")

        return watch

    def _twin_watcher(self, ws: Workspace, s, p: WorkspaceProgress) -> Callable[[int], None]:
        """The stability twin's progress on the status line (its SAE stays served)."""
        total, seen = self._steps(ws, s), [0]

        def watch(n: int) -> None:
            self._check_stop()
            seen[0] += 1
            p.set_step("twin", detail=f"{s.name}'s seed-stability twin, step {min(seen[0], total)} of {total}")

        return watch
