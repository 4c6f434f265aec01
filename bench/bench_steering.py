"""Time per generated token with a latent clamp on a workspace SAE, against plain generation, one run.

    .venv/bin/python bench/bench_steering.py --workspace workspaces/demo --sae general [--tokens 48]

The clamp keeps the SAE error term (x + decode(clamped) - decode(latents)), so each step encodes
the new token's activation with the full SAE. Rounds alternate plain / steered to share noise.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from backend.sae.model import load_sae  # noqa: E402
from backend.sae.steering import Edit, steered_pieces  # noqa: E402
from backend.workspace import open_workspace  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", default="workspaces/demo")
    ap.add_argument("--sae", default="general")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    ws = open_workspace(args.workspace)
    adapter, site = ws.adapter(verbose=False), ws.config.activations.site
    sae = load_sae(ws.sae_dir(args.sae))
    prompt = "Write a short story about a lighthouse keeper."
    kw = dict(max_new_tokens=args.tokens, temperature=0.0, seed=0, chat=True, stop_at_eos=False)
    edits = [Edit(1, "clamp", 10.0), Edit(2, "zero")]

    def timed(gen) -> float:
        t = time.perf_counter()
        for _ in gen:
            pass
        return (time.perf_counter() - t) / args.tokens * 1e3

    timed(adapter.generate(prompt, **kw))  # warm-up
    plain, steer = [], []
    for _ in range(args.rounds):
        plain.append(timed(adapter.generate(prompt, **kw)))
        steer.append(timed(steered_pieces(adapter, sae, site, edits, prompt, **kw)))
    p, s = min(plain), min(steer)
    print(f"SAE {args.sae}: d_sae {sae.cfg.d_sae}, site {site}, {args.tokens} new tokens, best of {args.rounds}")
    print(f"plain generation:   {p:.1f} ms/token")
    print(f"with clamp (2 latents, error kept): {s:.1f} ms/token")
    print(f"ratio: {s / p:.3f}x (goal <= 1.25x)")


if __name__ == "__main__":
    main()
