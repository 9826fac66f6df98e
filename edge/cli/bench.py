"""`lfr-edge bench …`: speed and memory, measured side by side in one run (never timed tests).

Each capability adds its own bench subcommand here via register_bench(subparsers);
`lfr-edge bench --source FILE` is short for `lfr-edge bench pipeline --source FILE`.
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
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        module.register_bench(bench_sub)
