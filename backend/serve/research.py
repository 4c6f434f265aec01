"""Research views of the Backend facade (mixed into backend.serve.service.Backend): coverage and SHIFT reports.

Read-only: these views serve what the CLI (``python -m backend coverage`` / ``shift``) stored in the
workspace. A subdomain name from a request is looked up among the files the workspace has; it is
never joined into a path.
"""

from __future__ import annotations

import json
from pathlib import Path

from backend.errors import BackendError


class ResearchViews:
    def _coverage_files(self) -> dict[str, Path]:
        """subdomain name -> its stored coverage analysis (the workspace's own list)."""
        return {p.stem: p for p in sorted((self.ws.path / "coverage").glob("*.json"))}

    def subdomains(self) -> list[str]:
        return list(self._coverage_files())

    def coverage(self, subdomain: str) -> dict:
        """The stored coverage analysis of one subdomain (see backend/research/coverage.py)."""
        files = self._coverage_files()
        if not isinstance(subdomain, str) or subdomain not in files:
            shown = repr(subdomain) if len(repr(subdomain)) <= 60 else repr(subdomain)[:57] + "..."
            raise BackendError(f"no coverage for subdomain {shown}; available: {', '.join(files) or 'none'}")
        return json.loads(files[subdomain].read_text())

    def shift_report(self) -> dict | None:
        """The last SHIFT report (written by ``python -m backend shift``), or None."""
        p = self.ws.path / "shift" / "report.json"
        return json.loads(p.read_text()) if p.exists() else None
