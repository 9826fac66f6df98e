"""`lfr-edge models verify|build` and `lfr-edge eval`: the models and how accurate they are."""

from __future__ import annotations

import argparse
import importlib.util
import json
import runpy
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import EXIT_INPUT, EXIT_OK, InputError

BUILD_MODULES = ("torch", "litert_torch", "ai_edge_quantizer")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", help="verify the shipped models (sha256 + one inference) or rebuild them")
    msub = p.add_subparsers(dest="models_cmd", metavar="ACTION", required=True)

    v = msub.add_parser(
        "verify", help="check every manifest sha256 and each model's golden output (exit 2 on any mismatch)"
    )
    v.add_argument("--models-dir", type=Path, help="models folder (default: the shipped models)")
    v.add_argument("--json", action="store_true", help="machine-readable result")
    v.set_defaults(handler=_verify)

    b = msub.add_parser("build", help="rebuild the models from public weights (checkout + the [build] extra)")
    b.add_argument("--only", choices=["embedder", "detector"], help="build just one family")
    b.add_argument("--faces", type=Path, help="public face data for calibration (has lfw/)")
    b.add_argument("--out", type=Path, help="where .tflite files and MANIFEST.json go (default models/)")
    b.set_defaults(handler=_build)

    e = sub.add_parser("eval", help="accuracy on a labelled face folder: detection, verification, identification")
    e.add_argument("--faces", type=Path, required=True, help="folder of <identity>/<image> (LFW layout)")
    e.add_argument("--pairs", type=Path, help="pairs CSV fold,is_same,path_a,path_b (default: all genuine + sampled impostors)")
    e.add_argument("--variants", default="int8,fp32", help="embedder precisions, comma-separated (default int8,fp32)")
    e.add_argument("--align", default="ours,dlib", help="alignments: ours (detector keypoints), mesh (face-mesh refined), dlib (5-point); default ours,dlib")
    e.add_argument("--limit", type=int, help="seeded subset of about N images (whole identities)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--impostors", type=int, default=500_000, help="sampled impostor pairs without --pairs")
    e.add_argument("--enrol-fraction", type=float, default=0.25,
                   help="share of identities with ≥2 images put on the watchlist (default 0.25)")
    e.add_argument("--id-splits", type=int, default=10,
                   help="identity splits (seeds seed..seed+N-1) for the TPIR spread (default 10)")
    e.add_argument("--detector", help="detector model id (default: the config's models.detector)")
    e.add_argument("--gate", action="store_true",
                   help="apply the quality gate as the device does (refused faces count as not acquired)")
    e.add_argument("--models-dir", type=Path)
    e.add_argument("--config", help="config file for thresholds and models (default: built-in defaults)")
    e.add_argument("--json", action="store_true", help="print the JSON result (schema: docs/EVAL.md)")
    e.set_defaults(handler=_eval)


# ------------------------------------------------------------------------------------------------
def verify_models(models_dir: Path) -> dict[str, Any]:
    """Every manifest entry: file present, sha256 equal, one inference on zeros in this runtime, and
    its golden input giving its recorded output within the stated tolerance (edge.golden)."""
    from edge import golden
    from edge.inference import TFLiteModel, load_manifest, runtime_name, sha256_file

    manifest = load_manifest(models_dir)
    if not manifest:
        raise InputError(f"{models_dir / 'MANIFEST.json'}: lists no models")
    rows: list[dict[str, Any]] = []
    for mid, entry in sorted(manifest.items()):
        path = models_dir / entry.file
        row: dict[str, Any] = {"id": mid, "file": str(path), "role": entry.role, "precision": entry.precision}
        if not path.exists():
            row.update(ok=False, problem="file missing")
            rows.append(row)
            continue
        digest = sha256_file(path)
        row["sha256"] = digest
        if digest != entry.sha256:
            row.update(ok=False, problem=f"sha256 {digest[:12]}… does not match the manifest ({entry.sha256[:12]}…)")
            rows.append(row)
            continue
        try:
            model = TFLiteModel(path, num_threads=1, model_id=mid, entry=entry)
            xs = [np.zeros(tuple(int(s) for s in d["shape"]), d["dtype"]) for d in model.inputs]
            outs = model.invoke(*xs)
            finite = all(np.isfinite(o.astype(np.float64)).all() for o in outs)
            row.update(
                ok=finite,
                inference={"inputs": [list(x.shape) for x in xs], "outputs": [list(o.shape) for o in outs]},
            )
            if not finite:
                row["problem"] = "inference produced NaN or inf"
            else:
                result = golden.check(model, entry, models_dir)
                row.update(ok=result.ok, golden=result.figure)
                if not result.ok:
                    row["problem"] = result.figure
        except InputError as e:
            row.update(ok=False, problem=str(e))
        rows.append(row)
    return {"models_dir": str(models_dir), "runtime": runtime_name(), "models": rows,
            "ok": all(r["ok"] for r in rows)}  # fmt: skip


def _verify(args: argparse.Namespace) -> int:
    from edge.inference import default_models_dir

    result = verify_models(args.models_dir or default_models_dir())
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"runtime: {result['runtime']}  models: {result['models_dir']}")
        for r in result["models"]:
            status = "OK " if r["ok"] else "BAD"
            detail = r.get("problem") or f"sha256 ok, {r['golden']}"
            print(f"{status} {r['id']:<28} {r['precision']:<5} {detail}")
    if not result["ok"]:
        for r in result["models"]:
            if not r["ok"]:
                print(f"error: {r['file']}: model {r['id']}: {r['problem']}", file=sys.stderr)
        return EXIT_INPUT
    return EXIT_OK


def _build(args: argparse.Namespace) -> int:
    script = Path(__file__).resolve().parent.parent.parent / "models" / "build.py"
    if not script.exists():
        raise InputError(
            "lfr-edge models build runs models/build.py from a source checkout; this install has none "
            "(clone the repository and run it there)"
        )
    missing = [m for m in BUILD_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(
            f"the [build] extra is missing ({', '.join(missing)}): pip install -e '.[build]' in the checkout"
        )
    extra: list[str] = []
    for opt in ("only", "faces", "out"):
        value = getattr(args, opt)
        if value is not None:
            extra += [f"--{opt}", str(value)]
    old_argv = sys.argv
    sys.argv = [str(script), *extra]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        code = e.code
        if code is None:
            return EXIT_OK
        if isinstance(code, int):
            return code
        print(f"error: {code}", file=sys.stderr)
        return 1
    finally:
        sys.argv = old_argv
    return EXIT_OK


def _eval(args: argparse.Namespace) -> int:
    from edge.config import Config, load_config
    from edge.eval import format_text, run_eval

    cfg = load_config(args.config) if args.config else Config()
    if not 0.0 < args.enrol_fraction < 1.0:
        raise InputError(f"--enrol-fraction {args.enrol_fraction}: must be between 0 and 1 (exclusive)")
    if args.id_splits < 1:
        raise InputError(f"--id-splits {args.id_splits}: must be at least 1")
    if args.limit is not None and args.limit < 2:
        raise InputError(f"--limit {args.limit}: need at least 2 images")
    result = run_eval(
        args.faces,
        pairs=args.pairs,
        variants=[v.strip() for v in args.variants.split(",") if v.strip()],
        aligns=[a.strip() for a in args.align.split(",") if a.strip()],
        limit=args.limit,
        seed=args.seed,
        impostors=args.impostors,
        enrol_fraction=args.enrol_fraction,
        id_splits=args.id_splits,
        detector_id=args.detector,
        models_dir=args.models_dir,
        cfg=cfg,
        progress=sys.stderr.isatty() and not args.json,
        apply_gate=args.gate,
    )
    print(json.dumps(result, indent=2) if args.json else format_text(result))
    return EXIT_OK
