"""`lfr-edge bench match`: watchlist matching speed, memory and load time at scale, beside FAISS.

For each size N it builds a signed, encrypted bundle of N synthetic subjects (random unit vectors,
since speed does not depend on whose face a vector is), installs it in a throw-away device store,
then measures: the time to load it back from disk as the service does at start (decrypt at rest,
verify the signature, unwrap, decrypt, parse, build the Matcher), ms per probe through
`Matcher.match`, and faiss-cpu IndexFlatIP (exact inner product, the usual reference) on the same
matrix and probes. FAISS is a benchmark peer only, never a runtime dependency.
"""

from __future__ import annotations

import gc
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.errors import InputError
from edge.core.sysinfo import cpu_model
from edge.core.timefmt import format_utc

DIM = 128


@dataclass(frozen=True, slots=True)
class MatchBenchParams:
    sizes: tuple[int, ...] = (1000, 10000, 100000, 1000000)
    probes: int = 0  # per size; 0: scaled to the size
    per_subject: int = 1
    dtype: str = "float32"
    faiss: bool = True

    def __post_init__(self) -> None:
        if not self.sizes or min(self.sizes) < 2:
            raise InputError("--sizes: each size must be at least 2")


Progress = Callable[[str], None]


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _percentiles(ms: list[float]) -> tuple[float, float]:
    a = np.asarray(ms)
    return float(np.median(a)), float(np.percentile(a, 95))


def _faiss_index(templates: np.ndarray[Any, Any]) -> Any:
    try:
        import faiss
    except ImportError:
        return None
    index = faiss.IndexFlatIP(templates.shape[1])
    index.add(templates)
    return index


def _faiss_search(index: Any, probe: np.ndarray[Any, Any]) -> int:
    _, idx = index.search(probe[None, :], 2)
    return int(idx[0, 0])


def _one_size(n: int, params: MatchBenchParams, root: Path, say: Progress) -> dict[str, Any]:
    from edge.core.keys import generate_backoffice_keys, generate_device_keys
    from edge.core.types import Subject
    from edge.core.watchlist.bundle import build_bundle
    from edge.device.watchlist.store import WatchlistStore

    rng = np.random.default_rng(n)
    k = max(1, params.per_subject)
    m = n * k
    say(f"{n}: making {m} templates")
    templates = rng.standard_normal((m, DIM), dtype=np.float32)
    templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    subjects = [Subject(f"s{i:07d}", "wanted", 1) for i in range(n)]
    d = root / f"n{n}"
    dev, bo = generate_device_keys(d / "dev"), generate_backoffice_keys(d / "bo")
    say(f"{n}: building bundle")
    t0 = time.perf_counter()
    bundle = build_bundle(
        subjects=subjects,
        templates=templates,
        template_subject=np.repeat(np.arange(n), k),
        signer=bo.ed25519,
        recipients=[dev.x25519_public],
        version=1,
        expires_at=time.time() + 3600,
        embedder_sha256="0" * 64,
        dtype=params.dtype,
    )
    build_s = time.perf_counter() - t0
    del subjects
    limit = len(bundle) + (1 << 20)
    # Measures the opt-in at-rest store (watchlist.at_rest): the load from the card is what is timed.
    WatchlistStore(d / "wl.enc", dev, [bo.ed25519_public], "0" * 64, max_bytes=limit, at_rest=True).install(bundle)
    bundle_mb = len(bundle) / 2**20
    del bundle
    gc.collect()

    say(f"{n}: loading from the encrypted store")
    rss0 = _rss_mb()
    store = WatchlistStore(d / "wl.enc", dev, [bo.ed25519_public], "0" * 64, max_bytes=limit, at_rest=True)
    t0 = time.perf_counter()
    wl = store.load()
    matcher = store.holder.matcher(0.5)
    load_s = time.perf_counter() - t0
    assert wl is not None and matcher is not None
    rss_load = _rss_mb() - rss0

    q = params.probes or int(min(300, max(30, 3e7 / m)))
    src = rng.choice(n, size=q, replace=n < q)
    probes = wl.templates[src * k] + rng.standard_normal((q, DIM), dtype=np.float32) * 0.02
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    index = _faiss_index(wl.templates) if params.faiss else None
    faiss_mod: Any = sys.modules.get("faiss")
    threads0 = faiss_mod.omp_get_max_threads() if index is not None else 1
    if index is not None:
        faiss_mod.omp_set_num_threads(1)
    say(f"{n}: matching {q} probes")
    for p in probes[:3]:
        matcher.match(p)
        if index is not None:
            _faiss_search(index, p)
    # Ours and FAISS (1 thread) alternate probe by probe, so both see the same machine load.
    ms, fms, hits, agree = [], [], 0, 0
    for i, p in enumerate(probes):
        t0 = time.perf_counter()
        r = matcher.match(p)
        ms.append((time.perf_counter() - t0) * 1e3)
        hits += r is not None and r.subject.subject_id == f"s{src[i]:07d}"
        if index is not None:
            t0 = time.perf_counter()
            top = _faiss_search(index, p)
            fms.append((time.perf_counter() - t0) * 1e3)
            agree += r is not None and top // k == int(r.subject.subject_id[1:])
    p50, p95 = _percentiles(ms)
    faiss_row: dict[str, Any] | str = "faiss-cpu not installed" if params.faiss else "skipped"
    if index is not None:
        f50, f95 = _percentiles(fms)
        faiss_row = {"version": getattr(faiss_mod, "__version__", "?"), "ms_p50_1t": f50, "ms_p95_1t": f95}
        if threads0 > 1:
            faiss_mod.omp_set_num_threads(threads0)
            tms = []
            for p in probes:
                t0 = time.perf_counter()
                _faiss_search(index, p)
                tms.append((time.perf_counter() - t0) * 1e3)
            faiss_row[f"ms_p50_{threads0}t"], faiss_row[f"ms_p95_{threads0}t"] = _percentiles(tms)
        faiss_row["ms_p50_best"] = min(v for key, v in faiss_row.items() if key.startswith("ms_p50_"))
        faiss_row = {key: (round(v, 3) if isinstance(v, float) else v) for key, v in faiss_row.items()}
        faiss_row["top1_agreement"] = round(agree / q, 4)
    row: dict[str, Any] = {
        "subjects": n,
        "templates": m,
        "bundle_mb": round(bundle_mb, 2),
        "build_s": round(build_s, 3),
        "load_s": round(load_s, 3),
        "ms_per_probe_p50": round(p50, 3),
        "ms_per_probe_p95": round(p95, 3),
        "probes": q,
        "top1_correct": round(hits / q, 4),
        "matrix_mb": round(wl.templates.nbytes / 2**20, 1),
        "load_rss_delta_mb": round(rss_load, 1),
    }
    row["faiss"] = faiss_row
    if isinstance(faiss_row, dict):
        row["ratio_vs_faiss_1t"] = round(p50 / faiss_row["ms_p50_1t"], 2)
        row["ratio_vs_faiss_best"] = round(p50 / faiss_row["ms_p50_best"], 2)
    del wl, matcher, store, templates, index
    gc.collect()
    return row


def run(params: MatchBenchParams, progress: Progress | None = None) -> dict[str, Any]:
    """The bench's JSON document (docs/BENCHMARKS.md): one row per size."""
    say: Progress = progress or (lambda _msg: None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lfr-bench-match-") as tmp:
        for n in params.sizes:
            rows.append(_one_size(n, params, Path(tmp), say))
    return {
        "bench": "match",
        "dim": DIM,
        "dtype": params.dtype,
        "per_subject": params.per_subject,
        "machine": f"{os.cpu_count()} cpu, {cpu_model()}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": format_utc(time.time()),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "sizes": rows,
    }


def format_text(result: dict[str, Any]) -> str:
    lines = [f"watchlist matching, {DIM}-d {result['dtype']} bundles, {result['per_subject']} template(s)/subject",
             f"machine: {result['machine']}, load average {result['load_average']}, {result['date']}"]  # fmt: skip
    head = f"{'subjects':>9} {'bundle MB':>9} {'load s':>7} {'ms/probe':>9} {'p95':>7} {'FAISS ms':>9} {'ratio':>6}"
    lines.append(head + f" {'matrix MB':>9} {'top-1':>6}")
    for r in result["sizes"]:
        f = r.get("faiss")
        fms = f"{f['ms_p50_best']:.3f}" if isinstance(f, dict) else "-"
        ratio = f"{r['ratio_vs_faiss_best']:.2f}" if "ratio_vs_faiss_best" in r else "-"
        lines.append(
            f"{r['subjects']:>9} {r['bundle_mb']:>9.1f} {r['load_s']:>7.3f} {r['ms_per_probe_p50']:>9.3f} "
            f"{r['ms_per_probe_p95']:>7.3f} {fms:>9} {ratio:>6} {r['matrix_mb']:>9.1f} {r['top1_correct']:>6.3f}"
        )
    lines.append(f"peak RSS {result['peak_rss_mb']:.0f} MB; FAISS = IndexFlatIP, faster of 1 thread (run alternately with ours) and default threads")
    return "\n".join(lines)
