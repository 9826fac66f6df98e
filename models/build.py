"""Build every model the appliance ships, reproducibly, from public weights; write MANIFEST.json.

    python models/build.py [--only embedder|detector|landmarks|cohort] [--faces DIR] [--out models/]

Off-device only (needs the `build` extra: torch, litert-torch, ai-edge-quantizer). Each builder
returns manifest entries; entries for ids not rebuilt by this invocation are kept, so
`--only embedder` never drops the detector (and vice versa).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # Run as a script (`python models/build.py`), sys.path[0] is models/; the builders import
    # `models.*` and `edge.*` from the checkout.
    sys.path.insert(0, str(ROOT))

from edge.core.inference import write_manifest_entries  # noqa: E402
from models.golden_inputs import record_entry  # noqa: E402

MANIFEST = "MANIFEST.json"
Builder = Callable[[Path, Path], list[dict[str, Any]]]


def _default_faces() -> Path:
    return ROOT.parent / "shared" / "data" / "faces"


def _load_builder(name: str) -> Builder | None:
    """models/build_<name>.py exposing build(out_dir, faces_dir) -> list[dict]; None if absent."""
    if not (ROOT / "models" / f"build_{name}.py").exists():
        return None
    mod = importlib.import_module(f"models.build_{name}")
    fn = getattr(mod, "build", None)
    if not callable(fn):
        raise SystemExit(f"models/build_{name}.py has no build(out_dir, faces_dir) function")
    return fn  # type: ignore[no-any-return]


# Written by calibration (`lfr-edge eval --calibrate`), not by the builders: a rebuild that
# reproduces the same file keeps them, a rebuild that changes the file drops them (recalibrate).
CALIBRATION_KEYS = ("scoring", "enrolment")


def write_manifest(out_dir: Path, new: list[dict[str, Any]]) -> dict[str, Any]:
    """Replace the rebuilt entries in out_dir/MANIFEST.json, keep the rest, return the manifest."""
    path = out_dir / MANIFEST
    try:
        by_id = {m.get("id"): m for m in json.loads(path.read_text()).get("models", [])}
    except FileNotFoundError:
        by_id = {}
    for m in new:
        prev = by_id.get(m["id"])
        if prev is not None and prev.get("sha256") == m.get("sha256"):
            for k in CALIBRATION_KEYS:
                if k in prev:
                    m.setdefault(k, prev[k])
    return write_manifest_entries(out_dir, new)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["embedder", "detector", "landmarks", "cohort"], help="build just one family")
    ap.add_argument("--faces", type=Path, default=_default_faces(), help="public face data (has lfw/)")
    ap.add_argument("--out", type=Path, default=ROOT / "models", help="where .tflite + MANIFEST.json go")
    args = ap.parse_args(argv)

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cmd = "python models/build.py" + (f" --only {args.only}" if args.only else "")
    new: list[dict[str, Any]] = []
    # The cohort is described by the embedders and cut with the face mesh, so it comes last.
    for name in ("embedder", "detector", "landmarks", "cohort"):
        if args.only and args.only != name:
            continue
        fn = _load_builder(name)
        if fn is None:
            print(f"[build] models/build_{name}.py not present yet: skipping the {name}")
            continue
        print(f"[build] {name} -> {out}")
        entries = fn(out, args.faces.resolve())
        for e in entries:
            e.setdefault("build_command", cmd)
            record_entry(out, e)  # golden output for `lfr-edge models verify` (models/golden_inputs.py)
        new += entries
    if not new:
        print("[build] nothing built; manifest left unchanged")
        return 1
    manifest = write_manifest(out, new)
    print(f"[build] {out / MANIFEST}: {', '.join(m['id'] for m in manifest['models'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
