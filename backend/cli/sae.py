"""CLI: `train` and `eval`, from an activation array file or a workspace.

    python -m backend train --activations acts.npy --architecture topk --d-sae 4608 --k 32 --out saes/general
    python -m backend train --workspace workspaces/demo [--sae general] [--force]
    python -m backend eval --sae saes/general --activations acts.npy
    python -m backend eval --workspace workspaces/demo

User errors raise SaeError / ConfigError (ValueError): __main__ prints one line and exits with code 2.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from backend.config import SaeConfig, TrainConfig
from backend.sae.model import SaeError


def _widths(text: str | None) -> list[int]:
    try:
        return [int(w) for w in text.split(",")] if text else []
    except ValueError:
        raise SaeError(f"--matryoshka-widths {text!r}: give comma-separated integers, e.g. 512,1024") from None


def _train(args: argparse.Namespace) -> None:
    from backend.sae.train import ArrayActivations, train_sae

    if args.workspace:
        from backend.build import train_all
        from backend.workspace import open_workspace

        train_all(open_workspace(args.workspace), force=args.force, only=args.sae)
        return
    if not (args.activations and args.out):
        raise SaeError("train needs --activations FILE and --out DIR, or --workspace DIR")
    tcfg = TrainConfig(tokens=args.tokens, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                       checkpoint_every=args.checkpoint_every, dtype=args.dtype)
    cfg = SaeConfig(name=Path(args.out).name, architecture=args.architecture, d_sae=args.d_sae, k=args.k,
                    l1_coef=args.l1_coef, l0_coef=args.l0_coef, auxk_coef=args.auxk_coef,
                    matryoshka_widths=_widths(args.matryoshka_widths), ortho_coef=args.ortho_coef,
                    term_tilt=args.term_tilt)
    base = None
    if args.boost_base:
        import os

        from backend.sae.model import load_sae

        base = load_sae(args.boost_base)
        # the residual folder names its base relative to itself, so that load_sae returns the composite
        cfg.boost_base = os.path.relpath(Path(args.boost_base).resolve(), Path(args.out).resolve().parent)
    sae = train_sae(cfg, tcfg, ArrayActivations(args.activations), args.out, base=base, hook_name=args.hook_name,
                    model_name=args.model_name)
    print(json.dumps(json.loads((Path(args.out) / "metrics.json").read_text())["train"], indent=1))
    print(f"saved {sae.cfg.architecture} SAE ({sae.cfg.d_in} -> {sae.cfg.d_sae}) to {args.out}")


def _eval(args: argparse.Namespace) -> None:
    from backend.sae.evaluate import evaluate_folder, evaluate_workspace

    if args.workspace:
        from backend.workspace import open_workspace, workspace_lock

        ws = open_workspace(args.workspace)
        with workspace_lock(ws.path):
            evaluate_workspace(ws, force=True)
        return
    if not (args.sae and args.activations):
        raise SaeError("eval needs --sae DIR and --activations FILE, or --workspace DIR")
    import torch

    from backend.sae.train import ArrayActivations

    src = ArrayActivations(args.activations)
    m = evaluate_folder(Path(args.sae), torch.from_numpy(src.data[: args.max_tokens].astype("float32")))
    print(json.dumps({k: v for k, v in m.items() if not isinstance(v, dict)}, indent=1))


def add_commands(sub) -> None:
    """Register `train` and `eval` on the argparse subparsers of `python -m backend`."""
    t = sub.add_parser("train", help="train an SAE on an (N, d) .npy/.safetensors file, or a workspace's SAEs")
    t.add_argument("--activations", help="(N, d) activations: .npy or .safetensors")
    t.add_argument("--out", help="output SAE folder (SAELens layout)")
    t.add_argument("--workspace", help="train the SAEs of this workspace instead")
    t.add_argument("--sae", help="with --workspace: only this SAE")
    t.add_argument("--force", action="store_true", help="with --workspace: retrain SAEs that exist")
    t.add_argument("--architecture", default="topk", choices=["relu", "topk", "batchtopk", "jumprelu"])
    t.add_argument("--d-sae", type=int, default=4608)
    t.add_argument("--k", type=int, default=32, help="active latents per token (topk/batchtopk; jumprelu's initial L0)")
    t.add_argument("--l1-coef", type=float, default=5.0, help="relu: decoder-norm-weighted L1 coefficient")
    t.add_argument("--l0-coef", type=float, default=0.002, help="jumprelu: L0 coefficient")
    t.add_argument("--auxk-coef", type=float, default=1 / 32, help="topk/batchtopk: AuxK coefficient (0 = off)")
    t.add_argument("--matryoshka-widths", help="comma list of nested prefix widths, e.g. 256,1024")
    t.add_argument("--ortho-coef", type=float, default=0.0, help="OrtSAE decoder orthogonality coefficient")
    t.add_argument("--term-tilt", type=float, default=0.0, help="TERM tilt over per-token losses (0 = mean)")
    t.add_argument("--boost-base", help="a trained SAE folder: train a residual SAE on its error (SAE Boost)")
    t.add_argument("--tokens", type=int, help="training tokens (default: one pass over the file)")
    t.add_argument("--batch-size", type=int, default=4096)
    t.add_argument("--lr", type=float, help="Adam learning rate (default 2e-4 / sqrt(d_sae / 2^14))")
    t.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dense encoder matmul dtype")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint-every", type=int, default=200, help="steps between resumable checkpoints (0 = never)")
    t.add_argument("--hook-name", default="", help="metadata: the hook site the activations came from")
    t.add_argument("--model-name", default="", help="metadata: the model the activations came from")
    t.set_defaults(func=_train)
    e = sub.add_parser("eval", help="metrics.json for an SAE folder on an activation file, or for a workspace")
    e.add_argument("--sae", help="an SAE folder")
    e.add_argument("--activations", help="(N, d) activations: .npy or .safetensors")
    e.add_argument("--workspace", help="evaluate every SAE of this workspace (with the model: CE, KL, absorption)")
    e.add_argument("--max-tokens", type=int, default=50_000)
    e.set_defaults(func=_eval)
