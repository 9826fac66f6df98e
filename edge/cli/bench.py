"""`lfr-edge bench …`: speed and memory, measured side by side in one run (never timed tests).

Each benchmark module adds its own subcommand via register_bench(subparsers); all are project code,
so one that fails to import is a bug and fails loudly. `lfr-edge bench --source FILE` is short for
`lfr-edge bench pipeline --source FILE`.
"""

from __future__ import annotations

import argparse
import importlib

BENCH_MODULES = (
    "edge.lab.bench.pipeline",
    "edge.lab.bench.models",
    "edge.lab.bench.match",
    "edge.lab.bench.alerts",
    "edge.lab.bench.recognition",
    "edge.lab.bench.console",
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="benchmarks: pipeline (default), models, match, alerts, recognition, console")
    bench_sub = p.add_subparsers(dest="bench", metavar="WHAT", required=True)
    for name in BENCH_MODULES:
        importlib.import_module(name).register_bench(bench_sub)
