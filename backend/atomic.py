"""Atomic writes, the workspace lock, and the clean-up of what killed builds leave behind.

Every file or folder the backend produces is written under a temporary name beside its target
and renamed into place only when complete (a rename is atomic within one filesystem). A build that
is killed (SIGKILL, power loss) cannot remove its temporaries; they are recognisable by name:

    .<name>-<pid>-XXXXXXXX/                 atomic_dir's folder (older builds: .<name>-XXXXXXXX/)
    .<name>.<pid>.tmp                       atomic_write_text's / atomic_write_parquet's file (older: .<name>.tmp)
    .index.duckdb.<pid>-<tid>.staging|.building[.wal|.tmp]   store.IndexWriter's databases (+ DuckDB's)

Every command that writes into a workspace holds ``workspace_lock(ws)`` (an exclusive ``flock`` on
``<ws>/.lock``, which records the holder's pid, command and start time). Whoever takes the lock is the
only writer, so any temporary of another process found then is stale: ``remove_stale_files`` deletes
those, never one named with the current process's pid. A second build of the same workspace fails at
once with ``WorkspaceBusy`` naming the holder; the CLI turns it into one line and exit code 2.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

LOCK_NAME = ".lock"


class WorkspaceBusy(RuntimeError):
    """Another process is writing into the workspace (it holds ``<ws>/.lock``)."""


@contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``dest``; on success it replaces ``dest``, on error it is removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-{os.getpid()}-"))
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` to a temporary beside ``path`` (the name stale-file cleanup knows), then rename it over
    ``path``: readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    """Write a DataFrame (no index) as parquet atomically (``atomic_write``)."""
    atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


# ---- the workspace lock -----------------------------------------------------------------------------
_held: dict[Path, list[int]] = {}  # resolved workspace -> [fd, depth]: re-entrant within this process
_held_guard = threading.Lock()
_follower = [False]  # a torchrun rank other than 0 (backend/dist.py): rank 0 holds the locks for the group


def follow_group_leader(on: bool) -> None:
    """Mark this process as a torchrun rank other than 0 (``on``) or not. A follower's ``workspace_lock`` takes
    nothing and removes nothing: rank 0 holds the lock for the whole group, and the group's temporaries are
    rank 0's (named with its pid)."""
    _follower[0] = on


def _command() -> str:
    argv = list(sys.argv) or ["python"]
    if argv[0] == "-c":
        argv[0:1] = ["python", "-c"]
    elif argv[0].endswith(os.path.join("backend", "__main__.py")):
        argv[0:1] = ["python", "-m", "backend"]
    elif argv[0].endswith(".py"):
        argv[0:1] = ["python", os.path.basename(argv[0])]
    return " ".join(argv)[:300]


def lock_holder(path: str | Path) -> dict:
    """What ``<ws>/.lock`` says about its holder: pid, command, started (epoch s); {} when unreadable."""
    try:
        d = json.loads((Path(path) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _busy_message(ws: Path) -> str:
    h = lock_holder(ws)
    if not h.get("pid"):
        return (
            f"workspace {ws} is being written by another process (it holds {ws / LOCK_NAME}): "
            "wait for it to finish, then run this again"
        )
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(h.get("started") or 0)))
    return (
        f"workspace {ws} is being written by process {h['pid']} (`{h.get('command', '?')}`, started {started}): "
        f"wait for it to finish or stop it (kill {h['pid']}), then run this again"
    )


@contextmanager
def workspace_lock(path: str | Path, wait_s: float = 0.0) -> Iterator[Path]:
    """Hold the workspace's write lock for the block; ``WorkspaceBusy`` when another process has it
    (at once by default; ``wait_s`` > 0 polls that long first, e.g. for test sessions sharing a workspace).

    Re-entrant within one process (a build step inside ``build`` takes it again for free). Under torchrun only
    rank 0 takes it, for the whole group (``follow_group_leader``). Taking it
    first removes the temporaries left by killed writers (``remove_stale_files``). The ``.lock`` file stays
    after release (unlinking a lock file races with the next taker); only its holder record is cleared.
    """
    ws = Path(path)
    if _follower[0]:
        yield ws
        return
    key = ws.resolve()
    first = False
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
        else:
            ws.mkdir(parents=True, exist_ok=True)
            fd = os.open(ws / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            deadline = time.monotonic() + wait_s
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:  # another process holds it
                        if time.monotonic() >= deadline:
                            raise WorkspaceBusy(_busy_message(ws)) from None
                        time.sleep(0.2)
            except WorkspaceBusy:
                os.close(fd)
                raise
            except OSError as e:  # a filesystem without flock (some network mounts): guard lost, work goes on
                print(
                    f"warning: cannot lock {ws / LOCK_NAME} ({e.strerror or e}); two builds of {ws} at once "
                    "would not be stopped",
                    file=sys.stderr,
                    flush=True,
                )
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": _command(), "started": time.time()}).encode(), 0)
            _held[key] = entry = [fd, 1]
            first = True
    try:
        if first:
            remove_stale_files(ws)
        yield ws
    finally:
        with _held_guard:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                try:
                    os.ftruncate(entry[0], 0)
                finally:
                    os.close(entry[0])  # closing the last descriptor releases the flock


# ---- stale temporaries -------------------------------------------------------------------------------
_STAGING = re.compile(r"^\..+\.(\d+)-\d+\.(staging|building)(\.wal|\.tmp)?$")  # store.IndexWriter (+ DuckDB's)
_TMP_FILE = re.compile(r"^\..+?(?:\.(\d+))?\.tmp(\.[A-Za-z0-9]+)?$")  # atomic_write_text, .x.tmp.npy
_TMP_DIR = re.compile(r"^\..+?-(?:(\d+)-)?[a-z0-9_]{8}$")  # atomic_dir (tempfile.mkdtemp)


def stale_files(path: str | Path) -> list[Path]:
    """Temporaries under the workspace left by other processes (see the module docstring for the names).

    Symlinked folders are not entered (a linked workspace shares them; their owner cleans them)."""
    ws, me, out = Path(path), str(os.getpid()), []
    for root, dirs, files in os.walk(ws):
        r = Path(root)
        for d in list(dirs):
            m = _STAGING.match(d) or _TMP_DIR.match(d)
            if m and not (r / d).is_symlink() and m.group(1) != me:
                out.append(r / d)
                dirs.remove(d)  # removed whole; not walked
        for f in files:
            m = _STAGING.match(f) or _TMP_FILE.match(f)
            if m and m.group(1) != me and not (r / f).is_symlink():
                out.append(r / f)
    return sorted(out)


def remove_stale_files(path: str | Path) -> list[Path]:
    """Delete the temporaries that killed writers left in the workspace; returns what was removed.
    Call it only while holding ``workspace_lock(path)`` (``workspace_lock`` does, when first taken)."""
    gone = []
    for p in stale_files(path):
        try:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            gone.append(p)
        except FileNotFoundError:
            pass
    return gone
