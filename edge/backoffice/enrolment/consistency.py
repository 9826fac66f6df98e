"""Does each image of a subject look like the subject's other images?

A wrong photo in a custody folder would enrol an innocent person, who would then raise alerts. So
every usable image is compared with the subject's other usable images; one whose best cosine to
them is below the embedder's `enrolment.consistency_min_cosine` (models/MANIFEST.json, measured by
models/measure_enrolment.py on genuine LFW pairs) is flagged.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edge.core.errors import InputError
from edge.core.inference import MANIFEST_NAME, ModelEntry
from edge.core.types import F32


def consistency_min_cosine(entry: ModelEntry, models_dir: Path) -> float | None:
    """The embedder's `enrolment.consistency_min_cosine`, or None when its entry has no figure."""
    where = f"{models_dir / MANIFEST_NAME}: {entry.id}.enrolment"
    section = entry.raw.get("enrolment")
    if section is None:
        return None
    if not isinstance(section, dict):
        raise InputError(f"{where} must be a mapping")
    value = section.get("consistency_min_cosine")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= float(value) <= 1.0:
        raise InputError(f"{where}.consistency_min_cosine: {value!r} is not a cosine in [-1, 1]")
    if math.isnan(float(value)):
        raise InputError(f"{where}.consistency_min_cosine is NaN")
    return float(value)


def best_other_cosine(templates: F32) -> F32:
    """(k,) each template's highest cosine to the other k-1 (L2-normalised rows; k >= 2)."""
    t = np.asarray(templates, dtype=np.float32)
    if t.ndim != 2 or t.shape[0] < 2:
        raise ValueError(f"need at least two templates to cross-check, got shape {t.shape}")
    sims = t @ t.T
    np.fill_diagonal(sims, -np.inf)
    return np.asarray(sims.max(axis=1), dtype=np.float32)


def inconsistent(templates: F32, min_cosine: float) -> tuple[F32, np.ndarray[tuple[int], np.dtype[np.bool_]]]:
    """(best cosine to the others, flagged) per template; nothing is flagged with fewer than two."""
    k = int(templates.shape[0])
    if k < 2:
        return np.full(k, np.nan, np.float32), np.zeros(k, dtype=bool)
    best = best_other_cosine(templates)
    return best, best < min_cosine
