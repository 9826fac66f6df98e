"""`lfr-edge bench …`: speed and memory, measured side by side in one run (never timed tests).

Each benchmark lives in edge/lab/bench/ as typed parameters → a run → its JSON document (schemas in
docs/BENCHMARKS.md) and a text rendering; this module parses the arguments, calls the run and prints
(text, or one JSON document with --json). Progress goes to stderr, and only on a terminal.
`lfr-edge bench --source FILE` is short for `lfr-edge bench pipeline --source FILE`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeAlias

from edge.cli.options import add_config_option, resolve_config
from edge.core.config import ConfigRole
from edge.core.errors import EXIT_OK, InputError
from edge.core.logsetup import say

Progress = Callable[[str], None]
Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def register(sub: Sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: pipeline (default), models, match, alerts, recognition, console")
    bench_sub = p.add_subparsers(dest="bench", metavar="WHAT", required=True)
    for add in (_pipeline, _models, _match, _alerts, _recognition, _console):
        add(bench_sub)


@contextmanager
def _status_line(enabled: bool) -> Iterator[Progress | None]:
    """A one-line status on stderr, rewritten in place, ended with a newline; None when not a terminal."""
    if not (enabled and sys.stderr.isatty()):
        yield None
        return
    shown = False

    def show(msg: str) -> None:
        nonlocal shown
        shown = True
        sys.stderr.write(f"\r  {msg:<70}")
        sys.stderr.flush()

    try:
        yield show
    finally:
        if shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _emit(doc: Any, as_json: bool, text: Callable[[], str]) -> int:
    print(json.dumps(doc, indent=2) if as_json else text(), flush=True)
    return EXIT_OK


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected comma-separated integers like 1,2") from None


# ------------------------------------------------------------------------------------- pipeline


def _pipeline(sub: Sub) -> None:
    p = sub.add_parser("pipeline", help="camera loop: per-stage ms, end-to-end fps, optional face_recognition peer")
    p.add_argument("--source", required=True, action="append",
                   help="video file or folder of frames (PATH, file:PATH or dir:PATH); give it again for more "
                        "cameras, run together in one process with fps reported per camera")  # fmt: skip
    p.add_argument("--interpreters", choices=["per-camera", "shared"], default="per-camera",
                   help="several sources: one interpreter set per camera (what the device does) or one shared "
                        "behind a lock")  # fmt: skip
    add_config_option(p, ConfigRole.DEVICE, "device-style config for models, detection, quality, tracking, matching",
                      optional=True)  # fmt: skip
    p.add_argument("--frames", type=int, default=None, help="stop after N frames")
    p.add_argument("--enrol", type=Path, help="folder of <subject>/<image> used to build the watchlist (needed for agreement)")
    p.add_argument("--threshold", type=float, default=None, help="override matching.threshold")
    p.add_argument("--detector", help="override models.detector id")
    p.add_argument("--embedder", help="override models.embedder id")
    p.add_argument("--peer", choices=["face_recognition"], help="also run this peer on the same frames")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout, no progress")
    p.set_defaults(handler=_run_pipeline)


def _run_pipeline(args: argparse.Namespace) -> int:
    # Models, OpenCV and the peer load only when the benchmark runs, not on every CLI start.
    from edge.lab.bench.pipeline_run import PipelineBenchParams, format_text, run

    params = PipelineBenchParams(
        source=args.source[0], more_sources=tuple(args.source[1:]), shared_interpreters=args.interpreters == "shared",
        config=resolve_config(args, optional=True), frames=args.frames, enrol=args.enrol, threshold=args.threshold,
        detector=args.detector, embedder=args.embedder, peer=args.peer,
    )  # fmt: skip
    with _status_line(not args.json) as progress:
        doc = run(params, progress)
    return _emit(doc, args.json, lambda: format_text(doc))


# ------------------------------------------------------------------------------------- models


def _models(sub: Sub) -> None:
    p = sub.add_parser("models", help="median and p95 ms per inference of each manifest model at 1 and 2 threads")
    p.add_argument("--models-dir", type=Path)
    p.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default 1,2)")
    p.add_argument("--repeats", type=int, default=100, help="timed invokes per model and thread count")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--only", help="comma-separated model ids (default: every manifest model)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from edge.core.inference import default_models_dir
    from edge.lab.bench.models import ModelsBenchParams, format_text, run

    params = ModelsBenchParams(
        models_dir=args.models_dir or default_models_dir(),
        threads=_ints(args.threads, "--threads"),
        repeats=args.repeats,
        warmup=args.warmup,
        only=tuple(m.strip() for m in args.only.split(",")) if args.only else None,
    )
    with _status_line(not args.json) as progress:
        result = run(params, progress)
    return _emit(result.to_json(), args.json, lambda: format_text(result))


# ------------------------------------------------------------------------------------- match


def _match(sub: Sub) -> None:
    p = sub.add_parser("match", help="watchlist matching: ms per probe, memory, load time, FAISS side by side")
    p.add_argument("--sizes", default="1000,10000,100000,1000000", help="comma-separated subject counts")
    p.add_argument("--probes", type=int, default=0, help="probes per size (default: scaled to the size)")
    p.add_argument("--per-subject", type=int, default=1, help="templates per subject")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="bundle template dtype")
    p.add_argument("--no-faiss", action="store_true", help="skip the FAISS peer")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout, no progress")
    p.set_defaults(handler=_run_match)


def _run_match(args: argparse.Namespace) -> int:
    from edge.lab.bench.match import MatchBenchParams, format_text, run

    params = MatchBenchParams(
        sizes=_ints(str(args.sizes), "--sizes"), probes=args.probes, per_subject=args.per_subject,
        dtype=args.dtype, faiss=not args.no_faiss,
    )  # fmt: skip
    with _status_line(not args.json) as progress:
        doc = run(params, progress)
    return _emit(doc, args.json, lambda: format_text(doc))


# ------------------------------------------------------------------------------------- alerts


def _alerts(sub: Sub) -> None:
    p = sub.add_parser("alerts", help="alerts/s and match→PUBACK latency through TLS to a local broker")
    p.add_argument("--count", type=int, default=500, help="alerts in the flat-out phase (default 500)")
    p.add_argument("--paced", type=int, default=100, help="alerts in the paced phase (default 100)")
    p.add_argument("--rate", type=float, default=20.0, help="alerts/s in the paced phase (default 20)")
    p.add_argument("--no-crop", action="store_true", help="alerts without the probe face crop")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_run_alerts)


def _run_alerts(args: argparse.Namespace) -> int:
    from edge.lab.bench.alerts import AlertsBenchParams, format_text, run

    params = AlertsBenchParams(count=args.count, paced=args.paced, rate=args.rate, crop=not args.no_crop)
    with _status_line(not args.json) as progress:
        result = run(params, progress)
    return _emit(result.to_json(), args.json, lambda: format_text(result))


# ------------------------------------------------------------------------------------- recognition


def _recognition(sub: Sub) -> None:
    p = sub.add_parser("recognition", help="end to end: enrolled people alerted and strangers falsely alerted on")
    p.add_argument("--faces", type=Path, required=True, help="labelled faces in <identity>/<image> layout (LFW)")
    # An overlay on the bench's own generated device config, not a config file of its own.
    p.add_argument("--config", type=Path, help="YAML merged into the bench's device config "
                   "(e.g. matching: {operating_point: balanced})")  # fmt: skip
    p.add_argument("--enrol-max", type=int, default=5, help="enrolment photos per subject at most (default 5)")
    p.add_argument("--limit", type=int, help="use a seeded subset of this many identities")
    p.add_argument("--frames-per-person", type=int, default=24)
    p.add_argument("--gap", type=int, default=12, help="empty frames between people in a cell (tracks end)")
    p.add_argument("--face-min", type=float, default=70.0, help="face width in px when a person appears")
    p.add_argument("--face-max", type=float, default=130.0, help="face width in px when they leave")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, help="keep the run's files here")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--half", choices=["eval", "fit"], default="eval",
                   help="identity half of the cast: eval (every reported figure) or fit (tuning only)")  # fmt: skip
    p.add_argument("--diagnose", type=Path, metavar="OUT.npz",
                   help="no device run: embed every face of the video with the camera stack and save per-face records")
    p.add_argument("--align", choices=["ours", "mesh"], default="mesh",
                   help="with --diagnose: the chips' alignment (mesh: as the device cuts them; ours: keypoints alone)")
    p.add_argument("--levers", type=Path, metavar="FILE.npz",
                   help="replay a --diagnose file under each loop lever (gate, embedding schedule, fusion); no video")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_run_recognition)


def _run_recognition(args: argparse.Namespace) -> int:
    from edge.lab.bench.recognition import RecognitionBenchParams, format_text, run

    if args.levers is not None:
        from edge.lab.bench.recognition_diag import format_levers, run_levers

        lv = run_levers(args.levers)
        return _emit(lv, args.json, lambda: format_levers(lv))

    params = RecognitionBenchParams(
        faces=args.faces, config=args.config, enrol_max=args.enrol_max, limit=args.limit,
        frames_per_person=args.frames_per_person, gap=args.gap, face_min=args.face_min, face_max=args.face_max,
        seed=args.seed, work=args.work, keep=args.keep, half=args.half,
    )  # fmt: skip
    progress = None if args.quiet else (lambda msg: say(f"[bench recognition] {msg}", logging.INFO))
    if args.diagnose is not None:
        from edge.lab.bench.recognition_diag import diagnose

        dg = diagnose(params, args.diagnose, progress, args.align)
        return _emit(dg, args.json, lambda: "\n".join(f"{k}: {v}" for k, v in dg.items()))
    doc = run(params, progress)
    return _emit(doc, args.json, lambda: format_text(doc))


# ------------------------------------------------------------------------------------- console


def _console(sub: Sub) -> None:
    p = sub.add_parser("console", help="review console: alerts/s ingested and page load p95 on a 10,000-alert DB")
    p.add_argument("--alerts", type=int, default=1000, help="alerts in the ingest burst (default 1000)")
    p.add_argument("--db-alerts", type=int, default=10_000, help="alerts in the page-load database (default 10000)")
    p.add_argument("--requests", type=int, default=100, help="requests per page kind (default 100)")
    p.add_argument(
        "--database-url",
        help="SQLAlchemy URL of an empty scratch database to bench instead of SQLite in a temp dir (it is filled)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_run_console)


def _run_console(args: argparse.Namespace) -> int:
    from edge.cli.backoffice import require_backoffice_extra
    from edge.lab.bench.console import ConsoleBenchParams, format_text, run

    require_backoffice_extra("bench console")
    params = ConsoleBenchParams(
        alerts=args.alerts, db_alerts=args.db_alerts, requests=args.requests, database_url=args.database_url
    )
    doc = run(params)
    return _emit(doc, args.json, lambda: format_text(doc))
