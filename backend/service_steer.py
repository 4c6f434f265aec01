"""Steering and research views of the Backend facade (mixed into backend.service.Backend).

Plain Python values out; torch stays inside the backend. Needs from the host class:
``self.ws`` (the Workspace), ``self.adapter()`` (the model adapter, loaded lazily) and
``self.sae(name)`` (a loaded SAE, cached; raises BackendError for unknown names).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator

from .steering import Edit, SteeringError, firing_latents, fit_prompt, side_by_side, validate_edits

EDIT_MODES = ("clamp", "scale", "zero", "add")


@dataclass
class SteerUpdate:
    """One streamed step: both texts so far; ``done`` on the last one, with the latents firing."""

    baseline: str
    steered: str
    notice: str | None = None
    done: bool = False
    firing: list[tuple[int, float, int]] | None = None  # (latent, max act, tokens fired) on the steered text


def parse_edits(rows) -> list[Edit]:
    """Edits from table rows / dicts / (latent, mode, value) tuples; blank rows are skipped."""
    edits = []
    for r in rows or []:
        if isinstance(r, dict):
            r = (r.get("latent"), r.get("mode", "clamp"), r.get("value", 0.0))
        if r is None or len(r) == 0 or r[0] in (None, "") or (isinstance(r[0], float) and r[0] != r[0]):
            continue
        latent, mode, value = (list(r) + ["clamp", 0.0])[:3]
        try:
            latent_i = int(float(latent))
            value_f = 0.0 if value in (None, "") else float(value)
        except (TypeError, ValueError):
            raise SteeringError(f"edit {list(r)}: latent must be an integer and value a number") from None
        mode = str(mode or "clamp").strip().lower()
        edits.append(Edit(latent_i, mode, value_f))  # type: ignore[arg-type]
    return edits


class SteeringViews:
    def steer_stream(self, sae: str, prompt: str, edits, *, max_new_tokens: int = 48, temperature: float = 0.7,
                     seed: int = 0, chat: bool = True) -> Iterator[SteerUpdate]:
        """Baseline and steered generations from the same prompt and seed, streamed side by side."""
        model = self.sae(sae)
        checked = validate_edits(parse_edits(edits), int(model.W_dec.shape[0]))
        adapter = self.adapter()
        prompt, notice = fit_prompt(adapter, prompt)
        site = self.ws.config.activations.site
        base = steer = ""
        for base, steer in side_by_side(adapter, model, site, checked, prompt, max_new_tokens=int(max_new_tokens),
                                        temperature=float(temperature), seed=int(seed), chat=chat):
            yield SteerUpdate(base, steer, notice)
        yield SteerUpdate(base, steer, notice, True, firing_latents(adapter, model, site, steer))

    def steer(self, sae: str, prompt: str, edits, **kw) -> SteerUpdate:
        """The final update of ``steer_stream`` (for API clients)."""
        last = None
        for last in self.steer_stream(sae, prompt, edits, **kw):
            pass
        assert last is not None
        return last

    # ---- steering beyond text ---------------------------------------------------------
    def steer_outcome(self, sae: str, inputs: str, edits, *, k: int = 10, motif: str = "", n_iters: int = 50,
                      seed: int = 0) -> dict:
        """The model's output before and after latent edits, for workspaces whose model does not generate text.

        Protein (classifier head): class probabilities of ``inputs`` (a sequence) before and after, edits at
        the residues. Protein with a masked-LM head and a ``motif`` (regex): iterative masked resampling of
        the sequence with and without the edits, same seed. Recommender: the top-k next items after
        ``inputs`` (space-separated item ids, oldest first) before and after, with their genre mixes."""
        from .service import BackendError

        model, adapter = self.sae(sae), self.adapter()
        site = self.ws.config.activations.site
        try:
            checked = validate_edits(parse_edits(edits), int(model.W_dec.shape[0]))
            if self.modality == "protein":
                if motif and getattr(adapter, "head", "") == "mlm":
                    from .steering import make_intervention

                    runs = {name: adapter.steer_masked_resample(inputs, site, fn, motif, n_iters=int(n_iters),
                                                                seed=int(seed))
                            for name, fn in (("before", None), ("after", make_intervention(model, checked)))}
                    return {"kind": "resample", **{n: {"final": r.final, "matched_at": r.matched_at,
                                                       "changes": len(r.trajectory)} for n, r in runs.items()},
                            "start": runs["before"].start, "motif": motif}
                from .proteins import classifier_shift

                return {"kind": "classifier", **classifier_shift(adapter, model, site, inputs, checked)}
            if self.modality == "recsys":
                from .recsys import ablate_recommendations

                ids = adapter.encode_ids(inputs)
                out = ablate_recommendations(adapter, model, site, ids, checked, k=int(k))
                return {"kind": "recommendations", "history": adapter.token_strings(ids), **out}
        except BackendError:
            raise
        except ValueError as e:  # bad sequence letters, unknown item ids, bad edits, no head...
            raise BackendError(str(e)) from None
        raise BackendError("this is a text workspace: steer it by generation (the Steer tab, /steer)")

    # ---- research views --------------------------------------------------------------
    def subdomains(self) -> list[str]:
        return [p.stem for p in sorted((self.ws.path / "coverage").glob("*.json"))]

    def coverage(self, subdomain: str) -> dict:
        """The stored coverage analysis of one subdomain (see backend/coverage.py)."""
        p = self.ws.path / "coverage" / f"{subdomain}.json"
        if not p.exists():
            from .service import BackendError

            raise BackendError(f"no coverage for subdomain {subdomain!r}; available: {self.subdomains() or 'none'}")
        return json.loads(p.read_text())

    def shift_report(self) -> dict | None:
        p = self.ws.path / "shift" / "report.json"
        return json.loads(p.read_text()) if p.exists() else None

    def run_shift(self, sae_names: list[str], csv_path: str | None = None) -> dict:
        from .cli_research import shift_reports

        shift_reports(self.ws, sae_names, csv_path)
        return self.shift_report() or {}
