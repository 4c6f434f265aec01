"""CLI: `train` and `eval`, from an activation array file or a workspace."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .config import SaeConfig, TrainConfig


def _train(args: argparse.Namespace) -> None:
    from .train import ArrayActivations, train_sae

    tcfg = TrainConfig(tokens=args.tokens, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                       checkpoint_every=args.checkpoint_every)
    if args.workspace:
        from .build import train_all
        from .workspace import open_workspace

        train_all(open_workspace(args.workspace), force=args.force, only=args.sae)
        return
    if not (args.activations and args.out):
        raise ValueError("train needs --activations FILE and --out DIR, or --workspace DIR")
    widths = [int(w) for w in args.matryoshka_widths.split(",")] if args.matryoshka_widths else []
    cfg = SaeConfig(name=Path(args.out).name, architecture=args.architecture, d_sae=args.d_sae, k=args.k,
                    l1_coef=args.l1_coef, l0_coef=args.l0_coef, auxk_coef=args.auxk_coef, matryoshka_widths=widths,
                    ortho_coef=args.ortho_coef, term_tilt=args.term_tilt)
    sae = train_sae(cfg, tcfg, ArrayActivations(args.activations), args.out, hook_name=args.hook_name,
                    model_name=args.model_name)
    print(json.dumps(json.loads((Path(args.out) / "metrics.json").read_text())["train"], indent=1))
    print(f"saved {sae.cfg.architecture} SAE ({sae.cfg.d_in} -> {sae.cfg.d_sae}) to {args.out}")


def _eval(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_folder, evaluate_workspace

    if args.workspace:
        from .workspace import open_workspace

        evaluate_workspace(open_workspace(args.workspace), force=True)
        return
    if not (args.sae and args.activations):
        raise ValueError("eval needs --sae DIR and --activations FILE, or --workspace DIR")
    from .train import ArrayActivations

    src = ArrayActivations(args.activations)
    x = torch.from_numpy(src.data[: args.max_tokens].astype("float32"))
    m = evaluate_folder(Path(args.sae), x)
    print(json.dumps({k: v for k, v in m.items() if not isinstance(v, dict)}, indent=1))


def add_commands(sub) -> None:
    t = sub.add_parser("train", help="train an SAE on an (N, d) .npy/.safetensors file, or a workspace's SAEs")
    t.add_argument("--activations", help="(N, d) activations: .npy or .safetensors")
    t.add_argument("--out", help="output SAE folder (SAELens layout)")
    t.add_argument("--workspace", help="train the SAEs of this workspace instead")
    t.add_argument("--sae", help="with --workspace: only this SAE")
    t.add_argument("--force", action="store_true", help="with --workspace: retrain SAEs that exist")
    t.add_argument("--architecture", default="topk", choices=["relu", "topk", "batchtopk", "jumprelu"])
    t.add_argument("--d-sae", type=int, default=4608)
    t.add_argument("--k", type=int, default=32)
    t.add_argument("--l1-coef", type=float, default=5.0)
    t.add_argument("--l0-coef", type=float, default=0.002)
    t.add_argument("--auxk-coef", type=float, default=1 / 32)
    t.add_argument("--matryoshka-widths", help="comma list of nested prefix widths, e.g. 256,1024")
    t.add_argument("--ortho-coef", type=float, default=0.0)
    t.add_argument("--term-tilt", type=float, default=0.0)
    t.add_argument("--tokens", type=int, help="training tokens (default: one pass over the file)")
    t.add_argument("--batch-size", type=int, default=4096)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint-every", type=int, default=200)
    t.add_argument("--hook-name", default="", help="metadata: the hook site the activations came from")
    t.add_argument("--model-name", default="", help="metadata: the model the activations came from")
    t.set_defaults(func=_train)
    e = sub.add_parser("eval", help="metrics.json for an SAE folder on an activation file, or for a workspace")
    e.add_argument("--sae")
    e.add_argument("--activations")
    e.add_argument("--workspace")
    e.add_argument("--max-tokens", type=int, default=50_000)
    e.set_defaults(func=_eval)
