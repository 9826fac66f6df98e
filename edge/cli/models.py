"""`lfr-edge models verify|cohort|build|import`: the shipped models, checked, rebuilt or imported."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import re
import runpy
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.errors import EXIT_INPUT, EXIT_OK, InputError
from edge.core.logsetup import say

BUILD_MODULES = ("torch", "litert_torch", "ai_edge_quantizer")
IMPORT_MODULES = (*BUILD_MODULES, "onnx", "onnx2torch")
_NAME = re.compile(r"^[a-z][a-z0-9_]{1,47}$")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", help="verify the shipped models (sha256 + one inference) or rebuild them")
    msub = p.add_subparsers(dest="models_cmd", metavar="ACTION", required=True)

    v = msub.add_parser(
        "verify", help="check every manifest sha256 and each model's golden output (exit 2 on any mismatch)"
    )
    v.add_argument("--models-dir", type=Path, help="models folder (default: the shipped models)")
    v.add_argument("--json", action="store_true", help="machine-readable result")
    v.set_defaults(handler=_verify)

    c = msub.add_parser(
        "cohort",
        help="build an embedder's score cohort from the fit half of a labelled face folder (then eval --calibrate)",
    )
    c.add_argument("--embedder", action="append", required=True, help="manifest embedder id (repeatable)")
    c.add_argument("--faces", type=Path, required=True, help="folder of <identity>/<image> (LFW layout)")
    c.add_argument("--models-dir", type=Path, help="models folder (default: the shipped models)")
    c.add_argument("--json", action="store_true", help="the cohort entries written, as one JSON document")
    c.set_defaults(handler=_cohort)

    b = msub.add_parser("build", help="rebuild the models from public weights (checkout + the [build] extra)")
    b.add_argument("--only", choices=["embedder", "detector", "cohort"], help="build just one family")
    b.add_argument("--faces", type=Path, help="public face data for calibration (has lfw/)")
    b.add_argument("--out", type=Path, help="where .tflite files and MANIFEST.json go (default models/)")
    b.set_defaults(handler=_build)

    i = msub.add_parser(
        "import",
        help="import a licensed ONNX face embedder: fp32 + calibrated int8 TFLite and manifest entries (checkout + [build] extra)",
    )
    i.add_argument("--onnx", type=Path, required=True, help="the ONNX file (one NCHW or NHWC image in, [N,D] out)")
    # Checked in _import (parse_template), not by choices=: the enum lives beside OpenCV, which no
    # command but this one should pay for at start-up.
    i.add_argument("--template", required=True,
                   help="chip template the network was trained on: dlib150, or arcface112 (InsightFace 5-point)")  # fmt: skip
    i.add_argument("--input", dest="channels", required=True, choices=["rgb", "bgr"], help="channel order it expects")
    i.add_argument("--mean", required=True, help="per-channel mean subtracted from 0..255 pixels, R,G,B order of --input")
    i.add_argument("--std", required=True, help="per-channel divisor after the mean, e.g. 127.5,127.5,127.5")
    i.add_argument("--id", dest="name", required=True, help="model name; entries NAME_fp32 and NAME_int8")
    i.add_argument("--licence", help="REQUIRED: the licence under which this force may run the weights")
    i.add_argument("--source", help="where the weights came from (vendor, version, contract), kept in the manifest")
    i.add_argument("--faces", type=Path, required=True, help="public labelled faces for calibration (folder with labels.csv, e.g. faces/lfw)")
    i.add_argument("--models-dir", type=Path, help="where the .tflite files and MANIFEST.json go (default: the shipped models)")
    i.add_argument("--calib", type=int, default=128, help="calibration chips, one per identity (default 128)")
    i.add_argument("--held-out", type=int, default=64, help="chips of other identities for the int8 check (default 64)")
    i.add_argument("--min-int8-cosine", type=float, default=0.98,
                   help="refuse the int8 model below this worst-case cosine to fp32 (default 0.98)")  # fmt: skip
    i.set_defaults(handler=_import)


# ------------------------------------------------------------------------------------------------
def verify_models(models_dir: Path) -> dict[str, Any]:
    """Every manifest entry: file present, sha256 equal, one inference on zeros in this runtime, and
    its golden input giving its recorded output within the stated tolerance (edge.core.golden)."""
    from edge.core import golden
    from edge.core.inference import TFLiteModel, load_manifest, runtime_name, sha256_file

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
        if entry.role == "cohort":
            # Not a network: the score-normalisation cohort loads through the scoring module.
            from edge.core.vision.scoring import load_cohort

            try:
                shape = list(load_cohort(entry, models_dir).shape)
                want = list(entry.raw.get("shape") or [])
                row.update(ok=shape == want, inference={"inputs": [], "outputs": [shape]},
                           golden=f"cohort of {shape[0]}x{shape[1]} finite descriptors (manifest: {want})")  # fmt: skip
                if shape != want:
                    row["problem"] = f"cohort shape {shape} is not the manifest's {want}"
            except InputError as e:
                row.update(ok=False, problem=str(e))
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
    from edge.core.inference import default_models_dir

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
                say(f"error: {r['file']}: model {r['id']}: {r['problem']}")
        return EXIT_INPUT
    return EXIT_OK


def _build(args: argparse.Namespace) -> int:
    script = Path(__file__).resolve().parent.parent.parent / "models" / "build.py"
    if not script.exists():
        raise InputError(
            "lfr-edge models build runs models/build.py from a source checkout; this install has none "
            "(clone the repository and run it there)"
        )
    # The cohort is made by the device's own runtime: it needs no torch.
    missing = [m for m in BUILD_MODULES if importlib.util.find_spec(m) is None] if args.only != "cohort" else []
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
        say(f"error: {code}")
        return 1
    finally:
        sys.argv = old_argv
    return EXIT_OK


def _import(args: argparse.Namespace) -> int:
    """Arguments checked here, cheaply and before any heavy import; the work is models/import_onnx.py."""
    from edge.core.inference import default_models_dir
    from edge.core.vision.align import parse_template
    from edge.core.vision.embed import Preprocess

    template = parse_template(args.template, "--template")
    licence = (args.licence or "").strip()
    if not licence:
        raise InputError("--licence is required: state the licence under which the weights may be run "
                         "(it goes into the manifest with the model)")  # fmt: skip
    if not _NAME.match(args.name):
        raise InputError(f"--id {args.name!r}: use 2-48 lowercase letters, digits and _, starting with a letter")
    if args.name.startswith("dlib_resnet") or args.name.startswith("blazeface"):
        raise InputError(f"--id {args.name!r}: that name belongs to a shipped model")
    onnx_path: Path = args.onnx
    if not onnx_path.is_file():
        raise InputError(f"--onnx {onnx_path}: no such file")
    pre = Preprocess.from_manifest(
        {"channels": args.channels, "mean": _floats(args.mean, "--mean"), "std": _floats(args.std, "--std")}, "--mean/--std"
    )
    faces: Path = args.faces
    if not (faces / "labels.csv").exists():
        raise InputError(f"--faces {faces}: no labels.csv (path,identity) there; give the LFW folder, e.g. faces/lfw")
    if args.calib < 8 or args.held_out < 4:
        raise InputError(f"--calib {args.calib} / --held-out {args.held_out}: need at least 8 and 4 chips")
    root = Path(__file__).resolve().parent.parent.parent
    if not (root / "models" / "import_onnx.py").exists():
        raise InputError("lfr-edge models import runs models/import_onnx.py from a source checkout; this install has none")
    missing = [m for m in IMPORT_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(
            f"the [build] extra is missing ({', '.join(missing)}): pip install -e '.[build]' in the checkout"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from models.import_onnx import ImportRequest, import_model

    import_model(ImportRequest(
        onnx=onnx_path.resolve(), template=template, preprocess=pre, name=args.name,
        licence=licence, source=args.source, faces=faces.resolve(),
        models_dir=(args.models_dir or default_models_dir()).resolve(), n_calib=args.calib,
        n_held_out=args.held_out, min_int8_cosine=args.min_int8_cosine,
        command=(f"lfr-edge models import --onnx {onnx_path.name} --template {args.template} --input {args.channels} "
                 f"--mean {args.mean} --std {args.std} --id {args.name} --faces {faces} --calib {args.calib} "
                 f"--held-out {args.held_out} --licence … (see licence)"),
    ))  # fmt: skip
    return EXIT_OK


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected three numbers, e.g. 127.5,127.5,127.5") from None


def _cohort(args: argparse.Namespace) -> int:
    from edge.core.inference import default_models_dir, write_manifest_entries
    from edge.lab.cohort import build_cohort

    mdir = args.models_dir or default_models_dir()
    entries = build_cohort(mdir, args.faces, args.embedder, say=lambda m: say(m, logging.INFO))
    write_manifest_entries(mdir, entries)
    if args.json:
        print(json.dumps([{"id": e["id"], "shape": e["shape"], "sha256": e["sha256"]}
                          for e in entries if e["role"] == "cohort"], indent=2))  # fmt: skip
        return EXIT_OK
    for e in entries:
        if e["role"] == "cohort":
            print(f"{e['id']}: {e['shape'][0]} identities, sha256 {e['sha256'][:12]}… (now run eval --calibrate)")
    return EXIT_OK
