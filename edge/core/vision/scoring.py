"""How a probe descriptor is scored against watchlist templates: the embedder's scoring recipe.

Raw cosines of dlib descriptors sit high and unevenly: some enrolled faces resemble many
strangers (every impostor scores high against them), others resemble nobody. One global cosine
threshold therefore either misses the distinctive faces or alerts on the common-looking ones.
Adaptive symmetric S-norm fixes that by scoring each comparison against a cohort of impostors:

    s_norm = ½ · ((s − μ_g) / σ_g + (s − μ_p) / σ_p)

where μ, σ are the mean and spread of the K highest cosines of the gallery template (g) and of
the probe (p) against the cohort. The cohort is identity-mean descriptors of public faces whose
identities are disjoint from any evaluation (models/build_cohort.py), shipped as a file with its
sha256 in the manifest. Gallery statistics are computed once per watchlist; a probe costs one
(C × D) product and a partial sort.

Each embedder's manifest entry carries a `scoring` block: test-time flip, the cohort and K, the
measured false-match curve and named operating points (`lfr-edge eval --calibrate`). A threshold
is in the units of that recipe (S-norm units when a cohort is used, cosine otherwise).
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.core.errors import InputError
from edge.core.inference import MANIFEST_NAME, ModelEntry, default_models_dir, load_manifest, sha256_file
from edge.core.types import F32

# Rows of the gallery statistics per block: bounds the (rows × cohort) scratch matrix at ~16 MB.
_STATS_BLOCK = 2048
# Faces per report unit for the expected false-alert figure in status and deployment records.
FACES_PER_REPORT = 10_000


class OperatingPointName(str, enum.Enum):
    """Named thresholds calibrated per embedder by `lfr-edge eval --calibrate`."""

    STRICT = "strict"  # per-face FPIR ≤ 1e-4 with a reference list (the shipped default)
    BALANCED = "balanced"  # per-face FPIR ≤ 1e-3 with the same list


class ScoreUnits(str, enum.Enum):
    """What a threshold is measured in, for the embedder in force."""

    SNORM = "snorm"  # S-normalised against the embedder's cohort
    COSINE = "cosine"  # raw cosine of L2-normalised descriptors (an embedder without a cohort)


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    name: str
    threshold: float
    target_fpir: float  # per non-mated face, at the reference list size
    measured_tpir: float  # mean over identity splits on the evaluation half (docs/BENCHMARKS.md)


class CohortNorm:
    """Adaptive symmetric S-norm against a fixed impostor cohort (module docstring)."""

    def __init__(self, cohort: F32, top_k: int) -> None:
        if cohort.ndim != 2 or cohort.shape[0] < top_k or top_k < 1:
            raise InputError(f"cohort of shape {cohort.shape} cannot give top {top_k} statistics")
        self.cohort = np.ascontiguousarray(cohort, np.float32)
        self.top_k = int(top_k)
        self.dim = int(cohort.shape[1])

    def stats(self, x: F32) -> tuple[F32, F32]:
        """(N, D) L2-normalised rows → mean and spread of each row's top-K cohort cosines."""
        n = int(x.shape[0])
        mu = np.empty(n, np.float32)
        sd = np.empty(n, np.float32)
        k = self.top_k
        for s in range(0, n, _STATS_BLOCK):
            sims = x[s : s + _STATS_BLOCK] @ self.cohort.T
            # The K largest per row, unordered: a partial sort is all the statistics need.
            top = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:]
            mu[s : s + _STATS_BLOCK] = top.mean(axis=1)
            sd[s : s + _STATS_BLOCK] = top.std(axis=1)
        # A spread of zero cannot come from real faces; the floor keeps a degenerate row finite.
        np.maximum(sd, np.float32(1e-4), out=sd)
        return mu, sd

    @staticmethod
    def apply(raw: F32, g_mu: F32, g_sd: F32, p_mu: F32, p_sd: F32) -> F32:
        """(P, M) raw cosines → S-norm scores, given gallery (M,) and probe (P,) statistics."""
        return snorm(raw, g_mu[None, :], g_sd[None, :], p_mu[:, None], p_sd[:, None])


def snorm(raw: F32, mu_a: F32, sd_a: F32, mu_b: F32, sd_b: F32) -> F32:
    """The S-norm of raw cosines between sides a and b, elementwise (numpy broadcasting): one
    formula for a probe against a list, a list of pairs, or a block of all pairs."""
    return np.asarray(0.5 * ((raw - mu_a) / sd_a + (raw - mu_b) / sd_b), np.float32)


@dataclass(frozen=True, slots=True)
class Scoring:
    """One embedder's scoring recipe, from its manifest entry."""

    embedder_id: str
    flip: bool
    norm: CohortNorm | None
    units: ScoreUnits
    floor: float  # below this the per-face FPIR with the reference list passes 1e-2
    operating_points: dict[str, OperatingPoint]
    reference_list_size: int  # watchlist size the operating points were calibrated with
    # False-match rate per single comparison (one probe, one template) against threshold,
    # measured on impostor pairs of the evaluation half: thresholds ascending, rates descending.
    fmr_thresholds: npt.NDArray[np.float64]
    fmr_rates: npt.NDArray[np.float64]

    def fmr(self, threshold: float) -> float:
        """Per-comparison false-match rate at `threshold` (interpolated in log space)."""
        t, r = self.fmr_thresholds, self.fmr_rates
        if t.size == 0:
            return float("nan")
        if threshold <= t[0]:
            return float(r[0])
        if threshold >= t[-1]:
            return float(r[-1])
        return float(np.exp(np.interp(threshold, t, np.log(np.maximum(r, 1e-12)))))

    def expected_fpir(self, threshold: float, list_size: int) -> float:
        """Chance that a stranger's face matches some entry of a list of `list_size` subjects.

        Treats the comparisons as independent: 1 − (1 − FMR)^N. An estimate, stated as one
        wherever it is shown; `lfr-edge eval` measures FPIR directly.
        """
        f = self.fmr(threshold)
        return float(1.0 - (1.0 - f) ** max(list_size, 0))

    def expected_false_alerts(self, threshold: float, list_size: int) -> float:
        """Expected false alerts per FACES_PER_REPORT stranger faces, an estimate. Per face: a track
        is matched several times as its view improves and runs higher (docs/BENCHMARKS.md)."""
        return FACES_PER_REPORT * self.expected_fpir(threshold, list_size)

    def operating_point(self, name: str) -> OperatingPoint:
        try:
            return self.operating_points[name]
        except KeyError:
            known = ", ".join(sorted(self.operating_points)) or "none"
            raise InputError(
                f"matching.operating_point: {name!r} is not calibrated for embedder {self.embedder_id} (known: {known})"
            ) from None


def chip_landmarks(embedder_id: str, models_dir: Path | None = None) -> str | None:
    """The face mesh the embedder's recipe cuts its chips with (scoring.landmarks; None: the
    detector's keypoints alone). The cohort and thresholds were measured on chips cut that way.
    Read without loading the cohort, which a cohort build is about to replace."""
    entry = _landmarks_entry(embedder_id, models_dir)
    return None if entry is None else entry.id


def chip_landmarks_sha256(embedder_id: str, models_dir: Path | None = None) -> str | None:
    """sha256 of that face mesh: what a watchlist bundle names, so a device cutting its chips
    another way refuses the list."""
    entry = _landmarks_entry(embedder_id, models_dir)
    return None if entry is None else entry.sha256


def _landmarks_entry(embedder_id: str, models_dir: Path | None) -> ModelEntry | None:
    mdir = models_dir or default_models_dir()
    manifest = load_manifest(mdir)
    entry = manifest.get(embedder_id)
    if entry is None:
        raise InputError(f"models.embedder: {embedder_id!r} is not in {mdir}/MANIFEST.json")
    value = (entry.raw.get("scoring") or {}).get("landmarks")
    if value is None:
        return None
    found = manifest.get(str(value))
    if found is None or found.role != "landmarks":
        where = f"{mdir}/MANIFEST.json {embedder_id}.scoring.landmarks"
        raise InputError(f"{where}: {value!r} is not a face-mesh model in the manifest")
    return found


def load_cohort(entry: ModelEntry, models_dir: Path) -> F32:
    """The cohort file, sha256-checked, rows L2-normalised."""
    path = models_dir / entry.file
    if not path.exists():
        raise InputError(f"{path}: cohort file missing (manifest id {entry.id})")
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise InputError(f"{path}: sha256 {digest[:12]}… does not match the manifest ({entry.sha256[:12]}…)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise InputError(f"{path}: not a numpy array file ({e})") from None
    if arr.ndim != 2 or not np.isfinite(arr).all():
        raise InputError(f"{path}: cohort must be a finite 2-D array, got shape {arr.shape}")
    norms = np.linalg.norm(arr.astype(np.float32), axis=1, keepdims=True)
    out: F32 = (arr.astype(np.float32) / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


def load_scoring(embedder_id: str, models_dir: Path | None = None) -> Scoring:
    """The embedder's scoring block; an embedder without one scores raw cosines, no flip.

    Cached per (embedder, folder, manifest version): the loop, the audit records and the status
    share one cohort, and a manifest rewritten by calibration is read afresh.
    """
    mdir = models_dir or default_models_dir()
    try:
        st = (mdir / MANIFEST_NAME).stat()
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = (0, 0)  # load_manifest names the missing file
    return _load_scoring(embedder_id, str(mdir), stamp)


@functools.lru_cache(maxsize=8)
def _load_scoring(embedder_id: str, models_dir: str, _stamp: tuple[int, int]) -> Scoring:
    mdir = Path(models_dir)
    manifest = load_manifest(mdir)
    entry = manifest.get(embedder_id)
    if entry is None:
        raise InputError(f"models.embedder: {embedder_id!r} is not in {mdir}/MANIFEST.json")
    block: dict[str, Any] = entry.raw.get("scoring") or {}
    where = f"{mdir}/MANIFEST.json {embedder_id}.scoring"
    try:
        norm = None
        cohort_id = block.get("cohort")
        if cohort_id is not None:
            c_entry = manifest.get(str(cohort_id))
            if c_entry is None or c_entry.role != "cohort":
                raise InputError(f"{where}.cohort: {cohort_id!r} is not a cohort in the manifest")
            norm = CohortNorm(load_cohort(c_entry, mdir), int(block["top_k"]))
        points = {
            str(name): OperatingPoint(
                str(name), float(p["threshold"]), float(p["target_fpir"]), float(p.get("measured_tpir", float("nan")))
            )
            for name, p in (block.get("operating_points") or {}).items()
        }
        curve = block.get("fmr_curve") or []
        t = np.array([float(c[0]) for c in curve], np.float64)
        r = np.array([float(c[1]) for c in curve], np.float64)
        if t.size and not np.all(np.diff(t) > 0):
            raise InputError(f"{where}.fmr_curve: thresholds must be strictly ascending")
        return Scoring(
            embedder_id=embedder_id,
            flip=bool(block.get("flip", False)),
            norm=norm,
            units=ScoreUnits.SNORM if norm is not None else ScoreUnits.COSINE,
            floor=float(block.get("floor", -np.inf)),
            operating_points=points,
            reference_list_size=int(block.get("reference_list_size", 0)),
            fmr_thresholds=t,
            fmr_rates=r,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{where}: malformed ({e})") from None
