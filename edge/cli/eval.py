"""`lfr-edge eval`: accuracy on a labelled face folder (detection, verification, identification).

--calibrate writes the measured operating points into MANIFEST.json (docs/EVAL.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from edge.cli.options import add_config_option, resolve_config
from edge.core.config import ConfigRole
from edge.core.errors import EXIT_OK, InputError
from edge.core.logsetup import say


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    e = sub.add_parser("eval", help="accuracy on a labelled face folder: detection, verification, identification")
    e.add_argument("--faces", type=Path, required=True, help="folder of <identity>/<image> (LFW layout)")
    e.add_argument("--pairs", type=Path, help="pairs CSV fold,is_same,path_a,path_b (default: all genuine + sampled impostors)")
    e.add_argument("--variants", default="int8,fp32", help="embedder precisions, comma-separated (default int8,fp32)")
    e.add_argument("--align", default="ours,dlib", help="alignments: ours (detector keypoints), mesh (face-mesh refined), dlib (5-point); default ours,dlib")
    e.add_argument("--scoring", default="raw,device",
                   help="scoring modes: raw (cosine), flip (chip + mirror), snorm (cohort S-norm), device "
                        "(flip + snorm, what the appliance does); default raw,device")
    e.add_argument("--half", default="eval", choices=["eval", "fit", "all"],
                   help="identities to use: eval (default; never fitted on), fit (built the cohort), all")
    e.add_argument("--calibrate", action="store_true",
                   help="write the measured operating points of each embedder's device scoring into "
                        "MANIFEST.json (needs --half eval, the device scoring and the alignment the device cuts with)")
    e.add_argument("--limit", type=int, help="seeded subset of about N images (whole identities)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--impostors", type=int, default=500_000, help="sampled impostor pairs without --pairs")
    e.add_argument("--enrol-fraction", type=float, default=0.25,
                   help="share of identities with ≥2 images put on the watchlist (default 0.25)")
    e.add_argument("--gallery-photos", type=int, default=1,
                   help="photos per enrolled identity, fused into one template as watchlist build does (default 1)")
    e.add_argument("--id-splits", type=int, default=10,
                   help="identity splits (seeds seed..seed+N-1) for the TPIR spread (default 10)")
    e.add_argument("--detector", help="detector model id (default: the config's models.detector)")
    e.add_argument("--gate", action="store_true",
                   help="apply the quality gate as the device does (refused faces count as not acquired)")
    e.add_argument("--models-dir", type=Path)
    add_config_option(e, ConfigRole.DEVICE, "device config for thresholds and models", optional=True)
    e.add_argument("--json", action="store_true", help="print the JSON result (schema: docs/EVAL.md)")
    e.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    from edge.core.config import Config, load_config
    from edge.lab.eval import format_text, run_eval

    path = resolve_config(args, optional=True)
    cfg = load_config(path) if path else Config()
    if not 0.0 < args.enrol_fraction < 1.0:
        raise InputError(f"--enrol-fraction {args.enrol_fraction}: must be between 0 and 1 (exclusive)")
    if args.gallery_photos < 1:
        raise InputError(f"--gallery-photos {args.gallery_photos}: must be at least 1")
    if args.id_splits < 1:
        raise InputError(f"--id-splits {args.id_splits}: must be at least 1")
    if args.limit is not None and args.limit < 2:
        raise InputError(f"--limit {args.limit}: need at least 2 images")
    scorings = [s.strip() for s in args.scoring.split(",") if s.strip()]
    aligns = [a.strip() for a in args.align.split(",") if a.strip()]
    if args.calibrate and (args.half != "eval" or "device" not in scorings):
        raise InputError("--calibrate needs --half eval and device in --scoring (and the device's alignment in --align)")
    result = run_eval(
        args.faces,
        pairs=args.pairs,
        variants=[v.strip() for v in args.variants.split(",") if v.strip()],
        aligns=aligns,
        scorings=scorings,
        half=args.half,
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
        calibrate=args.calibrate,
        gallery_photos=args.gallery_photos,
    )
    print(json.dumps(result, indent=2) if args.json else format_text(result))
    if args.calibrate:
        from edge.core.inference import default_models_dir

        mdir = args.models_dir or cfg.models.dir or default_models_dir()
        written = write_calibration(mdir, result["calibration"], _eval_command(args))
        say(f"calibration written to {mdir / 'MANIFEST.json'}: {', '.join(written)}", logging.INFO)
    return EXIT_OK


def _eval_command(args: argparse.Namespace) -> str:
    parts = ["lfr-edge eval", f"--faces {args.faces}", f"--variants {args.variants}", f"--align {args.align}",
             f"--scoring {args.scoring}", f"--half {args.half}", f"--seed {args.seed}",
             f"--id-splits {args.id_splits}", "--calibrate"]  # fmt: skip
    if args.limit is not None:
        parts.append(f"--limit {args.limit}")
    return " ".join(parts)


def write_calibration(models_dir: Path, calibration: dict[str, Any], command: str) -> list[str]:
    """Merge each embedder's measured scoring into its manifest entry, keeping the recipe."""
    from edge.core.inference import write_manifest_entries
    from edge.lab.cohort import RECIPE_KEYS

    data = json.loads((models_dir / "MANIFEST.json").read_text())
    updated = []
    for m in data["models"]:
        measured = calibration.get(m["id"])
        if measured is None:
            continue
        # What was measured is the device scoring (flip, and S-norm when there is a cohort): the
        # recipe written beside it says so, so the device scores the way it was calibrated.
        recipe = {k: v for k, v in (m.get("scoring") or {}).items() if k in RECIPE_KEYS}
        measured["calibrated"]["command"] = command
        updated.append({**m, "scoring": {**recipe, "flip": True, **measured}})
    write_manifest_entries(models_dir, updated)
    return [m["id"] for m in updated]
