"""Steering a protein classifier: class probabilities before and after latent edits, and the latents that move it.

Edits act at the residues of the SAE's site with the error kept (backend/sae/steering.py): clamping latent i at
value v on every residue t adds (v - z_i(t)) W_dec[i] to the residual x_t, and nothing else changes.

Finding movers (``classifier_movers``): with p the probability of the class predicted for the sequence and
g_t = dp/dx_t at the site (one forward and one backward pass, ``ProteinAdapter.class_prob_grad``), the change a
clamp at v_i makes is, to first order,

    Delta_i ~= sum_t (g_t . W_dec[i]) (v_i - z_i(t))        (t over the residues)

computed for every latent at once: G = g @ W_dec.T (n, d_sae), Delta = sum_t G * (v - z). Every latent is ranked
that way, in both directions (the clamps estimated to lower p most and to raise it most), and the top candidates
are then clamped for real (one forward pass each) and their measured change reported beside the estimate.
v_i = ``MOVER_FACTOR`` x the latent's largest activation in the index: the Steer tab's default clamp
(explorer/tabs/steer.py CLAMP_MULTIPLE), so a row added to the edits table reproduces its measured change.

Hazards (bench/RESULTS.md, "Classifier movers"): the estimate is linear, the network is not. On the tiny protein
workspace its sign is right for the lowering candidates at every factor tried (0.5x to 4x) but for the raising ones
only at small clamps (0.5x); at 2x many "raising" clamps lower p too (as do most random 2x clamps). The measured
change is the answer; the estimate only picks whom to measure. Latents that never fired in the index have no scale
and are not ranked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch

from backend.adapters.base import TokenBatch
from backend.adapters.protein import ProteinAdapter, check_sequence, compile_motif, residue_mask_fn
from backend.modalities.base import MoversRequest, OutcomeRequest, join_notices
from backend.sae.steering import MAX_ABS_VALUE, Edit, make_intervention, validate_edits

MOVER_FACTOR = 2.0  # = explorer/tabs/steer.py CLAMP_MULTIPLE (explorer never imports the backend; a test checks)
MAX_MOVERS = 10  # candidates verified by clamping per request (one forward pass each)


def fit_sequence(adapter: ProteinAdapter, text: str) -> tuple[str, str | None]:
    """(residues the model reads, notice): the sequence normalised (SequenceError on bad letters), cut to
    its first ``context_limit - 2`` residues (room for <cls> and <eos>); the notice says so when cut."""
    seq = check_sequence(text, adapter.allowed)
    room = adapter.context_limit - 2
    if len(seq) <= room:
        return seq, None
    return seq[:room], (
        f"The sequence has {len(seq):,} residues; only its first {room:,} were used (the model's length limit)."
    )


@torch.inference_mode()
def _probs_after(
    adapter: ProteinAdapter, sae, site: str, batch: TokenBatch, edits: Sequence[Edit], residues_only: bool = True
) -> torch.Tensor:
    """(n_classes,) class probabilities of a one-sequence batch with ``edits`` applied at ``site``."""
    fn = make_intervention(sae, edits)
    if residues_only:
        fn = residue_mask_fn(fn, batch.keep_mask)
    with adapter.intervene(site, fn):
        return adapter.class_probs(batch)[0]


@torch.inference_mode()
def classifier_shift(adapter: ProteinAdapter, sae, site: str, seq: str, edits, residues_only: bool = True) -> dict:
    """Class probabilities of one sequence before and after latent edits at ``site``.

    The edit uses steering.make_intervention (error kept: x' = x + decode(z') - decode(z)),
    applied at residue positions only by default (the SAE never saw <cls>/<eos>). Hazard: the
    classifier reads <cls> after the last layer, so residue edits at the last block cannot reach
    it; steer an earlier block (or pass residues_only=False)."""
    edits = validate_edits(edits, int(sae.W_dec.shape[0]))
    batch = adapter.tokenize([seq], adapter.context_limit)
    before = adapter.class_probs(batch)[0]
    after = _probs_after(adapter, sae, site, batch, edits, residues_only)
    return {
        "classes": adapter.class_names,
        "before": before.tolist(),
        "after": after.tolist(),
        "delta": (after - before).tolist(),
    }


def steer_outcome(req: OutcomeRequest) -> dict:
    """/steer_outcome of a protein model: class probabilities of the sequence before and after the edits at the
    residues (``classifier_shift``); with a masked-LM head and a motif, masked resampling with and without the
    edits, same seed (``ProteinAdapter.steer_masked_resample``)."""
    adapter = req.adapter
    seq, cut = fit_sequence(adapter, req.inputs)
    rows, blank = req.parse_edits()
    matcher = compile_motif(req.motif) if req.motif else None
    model, checked = req.load_sae(rows)
    if matcher is not None and getattr(adapter, "head", "") == "mlm":
        runs = {}
        for name, fn in (("before", None), ("after", make_intervention(model, checked))):
            with req.turn():
                runs[name] = adapter.steer_masked_resample(
                    seq, req.site, fn, matcher, n_iters=req.n_iters, seed=req.seed
                )
        return {
            "kind": "resample",
            **{
                n: {"final": r.final, "matched_at": r.matched_at, "changes": len(r.trajectory)} for n, r in runs.items()
            },
            "start": runs["before"].start,
            "motif": req.motif,
            "notice": join_notices(cut, blank),
        }
    ignored = (
        "This model has no masked-LM head, so the motif was ignored: the classifier's probabilities are shown."
        if req.motif
        else None
    )
    with req.turn():
        out = classifier_shift(adapter, model, req.site, seq, checked)
    return {"kind": "classifier", **out, "notice": join_notices(cut, blank, ignored)}


# ---- the latents that move the classifier ----------------------------------------------------------------
def first_order_deltas(
    grad: torch.Tensor, latents: torch.Tensor, W_dec: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """(d_sae,) first-order change of p when latent i is clamped at values[i] on every residue.

    grad (n, d) = dp/dx at the residues, latents (n, d_sae) = z(t), W_dec (d_sae, d_in), values (d_sae,):
    Delta_i = sum_t (grad_t . W_dec[i]) (values_i - z_i(t)). Pure."""
    G = grad.float() @ W_dec.float().T  # (n, d_sae)
    return (G * (values.float()[None, :] - latents.float())).sum(0)


def pick_candidates(delta: torch.Tensor, rankable: torch.Tensor, top: int) -> list[tuple[int, str]]:
    """(latent, 'lower' | 'raise') of the ``top`` candidates: the half (rounded up) with the most negative
    estimate, the rest with the most positive; a side short of latents is filled by the other's next best."""
    est = delta.masked_fill(~rankable, 0.0)
    order = torch.argsort(est).tolist()  # ascending: most lowering first
    lower = [i for i in order if est[i] < 0]
    raise_ = [i for i in reversed(order) if est[i] > 0]
    n_lower = min(len(lower), top - min(len(raise_), top // 2))
    picked = [(i, "lower") for i in lower[:n_lower]] + [(i, "raise") for i in raise_[: top - n_lower]]
    return picked


def classifier_movers(
    adapter: ProteinAdapter,
    sae,
    site: str,
    seq: str,
    max_acts: np.ndarray,
    factor: float = MOVER_FACTOR,
    top: int = 8,
    turn: Callable[[], AbstractContextManager] = nullcontext,
) -> dict:
    """The latents whose clamp at ``factor`` x their max activation moves the predicted class's probability most.

    Every latent is ranked by ``first_order_deltas`` (one forward and backward pass), ``pick_candidates`` picks
    ``top`` in both directions, and each is then clamped for real at the residues (one forward pass each, as
    ``classifier_shift`` does) and its measured change reported. Returns classes, predicted (class name), before
    (probabilities), factor, n_ranked (latents with a scale), rows (latent, direction, value, max_act, predicted,
    measured, delta per class; largest |measured| first), largest (the largest |measured|, 0.0 with no rows) and
    sign_agreement ([candidates whose measured change has the estimate's sign, candidates])."""
    d_sae = int(sae.W_dec.shape[0])
    W_dec = sae.W_dec.detach()
    batch = adapter.tokenize([seq], adapter.context_limit)
    with turn():
        probs, x, grad = adapter.class_prob_grad(batch, site)
    keep = batch.keep_mask[0].to(x.device)
    c = int(probs[0].argmax())
    mx = torch.as_tensor(np.asarray(max_acts, dtype=np.float32)[:d_sae]).to(W_dec.device)
    values = (factor * mx).clamp(-MAX_ABS_VALUE, MAX_ABS_VALUE)  # the bound validate_edits enforces
    values = torch.round(values * 100) / 100  # as the Steer tab shows them (2 decimals)
    with torch.no_grad():
        acts = x[0][keep].to(W_dec.device, W_dec.dtype)  # (n, d)
        delta = first_order_deltas(grad[0][keep].to(W_dec.device), sae.encode(acts), W_dec, values).cpu()
    rankable = (mx > 0).cpu() & (values != 0).cpu()
    rows = []
    for i, direction in pick_candidates(delta, rankable, top):
        edit = [Edit(i, "clamp", float(values[i]))]
        with turn():
            after = _probs_after(adapter, sae, site, batch, edit)
        d = (after - probs[0].to(after.device)).tolist()
        rows.append(
            {
                "latent": i,
                "direction": direction,
                "value": round(float(values[i]), 2),
                "max_act": round(float(mx[i]), 4),
                "predicted": round(float(delta[i]), 4),
                "measured": round(d[c], 4),
                "delta": [round(v, 4) for v in d],
            }
        )
    rows.sort(key=lambda r: -abs(r["measured"]))
    agree = sum(np.sign(r["predicted"]) == np.sign(r["measured"]) for r in rows)
    return {
        "classes": list(adapter.class_names),
        "predicted": adapter.class_names[c],
        "before": probs[0].tolist(),
        "factor": factor,
        "n_ranked": int(rankable.sum()),
        "rows": rows,
        "largest": max((abs(r["measured"]) for r in rows), default=0.0),
        "sign_agreement": [int(agree), len(rows)],
    }


def movers(req: MoversRequest) -> dict:
    """/classifier_movers of a protein model: ``classifier_movers`` on the sequence (cut to the model's length, with
    a notice), each row with its explanation from the index. A model without a classifier head is a ValueError."""
    adapter = req.adapter
    seq, cut = fit_sequence(adapter, req.inputs)
    if getattr(adapter, "head", "") != "classifier":
        raise ValueError(
            f"model {adapter.model_id!r} has no classifier head (head: {adapter.head}): there is no class probability "
            "to move; steer it with the edits table instead"
        )
    out = classifier_movers(adapter, req.sae, req.site, seq, req.max_acts, top=req.limit, turn=req.turn)
    for r in out["rows"]:
        r["label"] = req.labels(r["latent"])
    unscaled = len(req.max_acts) - out["n_ranked"]
    skipped = (
        f"{unscaled:,} latents never fired in the index (no scale to clamp at) and were not ranked."
        if unscaled
        else None
    )
    return {**out, "notice": join_notices(cut, skipped)}
