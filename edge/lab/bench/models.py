"""`lfr-edge bench models`: milliseconds per inference of every manifest model, at 1 and 2 threads.

Each model is invoked on a fixed random input (after warm-up) in the installed runtime; median
and 95th percentile are reported per thread count. Nothing here is a test: speed is a figure to
record (docs/BENCHMARKS.md), not an assertion.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.core.errors import EXIT_OK, InputError


def _input(detail: dict[str, Any], rng: np.random.Generator) -> npt.NDArray[Any]:
    shape = tuple(int(s) for s in detail["shape"])
    dtype = np.dtype(detail["dtype"])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)
    return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)


def time_ms(fn: Callable[[], object], repeats: int, warmup: int) -> npt.NDArray[np.float64]:
    """Wall time of each of `repeats` calls of fn, in ms, after `warmup` untimed calls.

    The one timing loop for this bench and the model build scripts (models/build_*.py).
    """
    for _ in range(warmup):
        fn()
    ms = np.empty(repeats, np.float64)
    for i in range(repeats):
        t = time.perf_counter()
        fn()
        ms[i] = (time.perf_counter() - t) * 1000.0
    return ms


def bench_model(path: Path, model_id: str, threads: int, repeats: int, warmup: int) -> dict[str, Any]:
    from edge.core.inference import TFLiteModel

    model = TFLiteModel(path, num_threads=threads, model_id=model_id)
    rng = np.random.default_rng(0)
    xs = [_input(d, rng) for d in model.inputs]
    ms = time_ms(lambda: model.invoke(*xs), repeats, warmup)
    return {
        "threads": threads,
        "median_ms": round(float(np.median(ms)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "min_ms": round(float(ms.min()), 3),
        "n": repeats,
    }


def run(models_dir: Path, threads: list[int], repeats: int, warmup: int, only: list[str] | None) -> dict[str, Any]:
    from edge.core.inference import load_manifest, runtime_name, sha256_file
    from edge.core.sysinfo import cpu_model

    manifest = load_manifest(models_dir)
    rows: list[dict[str, Any]] = []
    for mid, entry in sorted(manifest.items()):
        if only and mid not in only:
            continue
        path = models_dir / entry.file
        if not path.exists():
            raise InputError(f"{path}: model file missing (manifest id {mid!r})")
        if sha256_file(path) != entry.sha256:
            raise InputError(f"{path}: sha256 does not match the manifest; run `lfr-edge models verify`")
        row: dict[str, Any] = {"id": mid, "role": entry.role, "precision": entry.precision, "runs": []}
        for t in threads:
            row["runs"].append(bench_model(path, mid, t, repeats, warmup))
            if sys.stderr.isatty():
                print(f"\rbench: {mid} @ {t} threads   ", end="", file=sys.stderr, flush=True)
        rows.append(row)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return {"runtime": runtime_name(), "cpu": cpu_model(), "models_dir": str(models_dir), "models": rows}


def register_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", help="median and p95 ms per inference of each manifest model at 1 and 2 threads")
    p.add_argument("--models-dir", type=Path)
    p.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default 1,2)")
    p.add_argument("--repeats", type=int, default=100, help="timed invokes per model and thread count")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--only", help="comma-separated model ids (default: every manifest model)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_handler)


def _handler(args: argparse.Namespace) -> int:
    from edge.core.inference import default_models_dir

    try:
        threads = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        raise InputError(f"--threads {args.threads!r}: expected integers like 1,2") from None
    if not threads or min(threads) < 1 or args.repeats < 1 or args.warmup < 0:
        raise InputError("--threads must be ≥1, --repeats ≥1, --warmup ≥0")
    only = [m.strip() for m in args.only.split(",")] if args.only else None
    result = run(args.models_dir or default_models_dir(), threads, args.repeats, args.warmup, only)
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    print(f"runtime: {result['runtime']}  cpu: {result['cpu']}")
    print(f"{'model':<30} {'prec':<5} {'threads':>7} {'median ms':>10} {'p95 ms':>8}")
    for r in result["models"]:
        for run_ in r["runs"]:
            print(f"{r['id']:<30} {r['precision']:<5} {run_['threads']:>7} {run_['median_ms']:>10.2f} {run_['p95_ms']:>8.2f}")
    return EXIT_OK
