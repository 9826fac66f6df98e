"""The score-normalisation cohorts of the shipped dlib embedders (edge/lab/cohort.py does the work).

    python models/build.py --only cohort [--faces ../shared/data/faces]

The chips are placed by the face mesh (models/build_landmarks.py), as the device places them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge.lab.cohort import build_cohort
from models.build_landmarks import MESH_ID

EMBEDDERS = ("dlib_resnet_v1_int8", "dlib_resnet_v1_fp32")
# The shipped cohorts' provenance, stated for LFW rather than as the build machine's path.
DATASET = "LFW deep-funneled, developer split, fit half (../shared/data/faces/lfw)"
LICENCE = "derived descriptors of LFW (University of Massachusetts Amherst, for research); no image ships"


def build(out_dir: Path, faces_dir: Path) -> list[dict[str, Any]]:
    entries = build_cohort(
        out_dir, faces_dir / "lfw", EMBEDDERS, build_command="python models/build.py --only cohort", landmarks=MESH_ID
    )
    for e in entries:
        if e["role"] == "cohort":
            e["source"]["dataset"] = DATASET
            e["licence"] = LICENCE
    return entries
