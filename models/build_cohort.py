"""The score-normalisation cohorts of the shipped dlib embedders (edge/lab/cohort.py does the work).

    python models/build.py --only cohort [--faces ../shared/data/faces]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge.lab.cohort import build_cohort

EMBEDDERS = ("dlib_resnet_v1_int8", "dlib_resnet_v1_fp32")


def build(out_dir: Path, faces_dir: Path) -> list[dict[str, Any]]:
    return build_cohort(out_dir, faces_dir / "lfw", EMBEDDERS, build_command="python models/build.py --only cohort")
