"""`lfr-edge demo`: the real path end to end on public-domain data and a local Mosquitto."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the whole appliance on a generated video with a local broker")
    p.add_argument("--out", type=Path, help="keep the demo's files here (default: a temporary folder)")
    p.add_argument("--frames", type=int, default=90, help="length of the generated video (default 90)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument(
        "--no-console", action="store_true", help="end after the audit check instead of serving the review console"
    )
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from edge.lab.demo import run_demo

    console = not args.no_console
    if console:
        try:
            import sqlalchemy  # noqa: F401  (the console's extra)
        except ModuleNotFoundError:
            print("demo: review console skipped (install the backoffice extra to see it)", flush=True)
            console = False
    return run_demo(args.out, args.frames, args.keep, console)
