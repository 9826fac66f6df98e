"""`lfr-edge bench models`: milliseconds per inference of every manifest model, at 1 and 2 threads.

Each model is invoked on a fixed random input (after warm-up) in the installed runtime; median
and 95th percentile are reported per thread count. Nothing here is a test: speed is a figure to
record (docs/BENCHMARKS.md), not an assertion.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.core.errors import InputError


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


@dataclass(frozen=True, slots=True)
class ModelsBenchParams:
    models_dir: Path
    threads: tuple[int, ...] = (1, 2)
    repeats: int = 100
    warmup: int = 10
    only: tuple[str, ...] | None = None  # model ids; None: every manifest model

    def __post_init__(self) -> None:
        if not self.threads or min(self.threads) < 1 or self.repeats < 1 or self.warmup < 0:
            raise InputError("--threads must be ≥1, --repeats ≥1, --warmup ≥0")


@dataclass(frozen=True, slots=True)
class ThreadRun:
    threads: int
    median_ms: float
    p95_ms: float
    min_ms: float
    n: int


@dataclass(frozen=True, slots=True)
class ModelTimes:
    id: str
    role: str
    precision: str
    runs: tuple[ThreadRun, ...]


@dataclass(frozen=True, slots=True)
class ModelsBench:
    runtime: str
    cpu: str
    models_dir: str
    models: tuple[ModelTimes, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def bench_model(path: Path, model_id: str, threads: int, repeats: int, warmup: int) -> ThreadRun:
    from edge.core.inference import TFLiteModel

    model = TFLiteModel(path, num_threads=threads, model_id=model_id)
    rng = np.random.default_rng(0)
    xs = [_input(d, rng) for d in model.inputs]
    ms = time_ms(lambda: model.invoke(*xs), repeats, warmup)
    return ThreadRun(
        threads=threads,
        median_ms=round(float(np.median(ms)), 3),
        p95_ms=round(float(np.percentile(ms, 95)), 3),
        min_ms=round(float(ms.min()), 3),
        n=repeats,
    )


def run(params: ModelsBenchParams, progress: Callable[[str], None] | None = None) -> ModelsBench:
    from edge.core.inference import load_manifest, runtime_name, sha256_file
    from edge.core.sysinfo import cpu_model

    manifest = load_manifest(params.models_dir)
    rows: list[ModelTimes] = []
    for mid, entry in sorted(manifest.items()):
        if params.only and mid not in params.only:
            continue
        path = params.models_dir / entry.file
        if not path.exists():
            raise InputError(f"{path}: model file missing (manifest id {mid!r})")
        if sha256_file(path) != entry.sha256:
            raise InputError(f"{path}: sha256 does not match the manifest; run `lfr-edge models verify`")
        runs = []
        for t in params.threads:
            runs.append(bench_model(path, mid, t, params.repeats, params.warmup))
            if progress is not None:
                progress(f"bench: {mid} @ {t} threads")
        rows.append(ModelTimes(mid, entry.role, entry.precision, tuple(runs)))
    return ModelsBench(runtime_name(), cpu_model(), str(params.models_dir), tuple(rows))


def format_text(result: ModelsBench) -> str:
    lines = [f"runtime: {result.runtime}  cpu: {result.cpu}",
             f"{'model':<30} {'prec':<5} {'threads':>7} {'median ms':>10} {'p95 ms':>8}"]  # fmt: skip
    for r in result.models:
        for t in r.runs:
            lines.append(f"{r.id:<30} {r.precision:<5} {t.threads:>7} {t.median_ms:>10.2f} {t.p95_ms:>8.2f}")
    return "\n".join(lines)
