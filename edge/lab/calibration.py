"""Operating points for an embedder's scoring, measured on the evaluation half (`eval --calibrate`).

The false-match rate per single comparison (FMR) is measured on every impostor pair of the
evaluation half (about 9 M pairs on the LFW developer split), so it is resolved down to ~1e-5
with at least a hundred pairs above each threshold. Named operating points need rates far below
that (a 500-subject list at one false alert in 10,000 faces is an FMR of 2e-7), where a handful
of pairs, and LFW's own label errors, would set the threshold. Below the resolved range the curve
is therefore an exponential tail fitted to the deepest well-populated part (log FMR linear in the
score, the usual extreme-value model for S-norm scores); those points are marked extrapolated.

A stranger's face matches a list of N subjects with probability 1 − (1 − FMR)^N if the
comparisons are independent; the operating points are set for a reference list size with that
model, and `lfr-edge eval` reports the identification FPIR measured at each, so the model can
be checked against the data.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.core.errors import InputError
from edge.core.types import F32
from edge.core.vision.scoring import CohortNorm

REFERENCE_LIST_SIZE = 500
# (name, per-face FPIR with the reference list); the floor is the 1e-2 point. Strict is one false
# alert in 10,000 stranger faces: a track is matched several times as its view improves, so per
# track the rate is higher than per face, and strict keeps it under the 1/6000 an LFR
# deployment is judged by (docs/BENCHMARKS.md, "Recognition", end to end).
TARGETS = (("strict", 1e-4), ("balanced", 1e-3))
FLOOR_FPIR = 1e-2
# Pairs that must lie above a threshold for its empirical FMR to be trusted.
MIN_PAIRS_ABOVE = 100
# The tail is fitted between these many pairs above and FMR 1e-4.
FIT_MIN_PAIRS = 30
FIT_MAX_FMR = 1e-4
CURVE_DECADES = np.arange(-1.0, -9.01, -0.25)  # log10 FMR at which the curve is sampled
BLOCK = 1024  # probe rows per block of the all-pairs score matrix


def fmr_for_fpir(fpir: float, list_size: int) -> float:
    """Per-comparison rate that gives `fpir` per face with `list_size` independent comparisons."""
    return float(-math.expm1(math.log1p(-fpir) / list_size))


def impostor_scores(
    emb: F32, identity: npt.NDArray[np.int64], stats: tuple[F32, F32] | None
) -> npt.NDArray[np.float32]:
    """Every impostor pair's score (each unordered pair once), S-normalised when `stats` is given."""
    n = emb.shape[0]
    out: list[npt.NDArray[np.float32]] = []
    for s in range(0, n, BLOCK):
        e = min(s + BLOCK, n)
        sc = emb[s:e] @ emb.T
        if stats is not None:
            mu, sd = stats
            sc = CohortNorm.apply(sc, mu, sd, mu[s:e], sd[s:e])
        cols = np.arange(n)[None, :]
        keep = (cols > np.arange(s, e)[:, None]) & (identity[None, :] != identity[s:e, None])
        out.append(sc[keep].astype(np.float32))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def fmr_curve(imp: npt.NDArray[np.float32]) -> tuple[list[list[float]], dict[str, float]]:
    """[[threshold, fmr, extrapolated 0/1], ...] with ascending thresholds, and the tail fit."""
    desc = np.sort(imp)[::-1]
    n = desc.size
    if n * FIT_MAX_FMR < 3 * FIT_MIN_PAIRS:
        raise InputError(
            f"calibration: {n} impostor pairs are too few to fit the false-match tail; need at least "
            f"{math.ceil(3 * FIT_MIN_PAIRS / FIT_MAX_FMR):,} (use more images: the whole eval half has about 9 M)"
        )
    ks = np.arange(FIT_MIN_PAIRS, math.floor(FIT_MAX_FMR * n) + 1)
    # log10 FMR = a + b · threshold, fitted where ≥ FIT_MIN_PAIRS pairs lie above.
    b, a = np.polyfit(desc[ks], np.log10(ks / n), 1)
    points: list[list[float]] = []
    for dec in CURVE_DECADES:
        rate = 10.0**dec
        k = math.floor(rate * n)
        if k >= MIN_PAIRS_ABOVE:
            points.append([round(float(desc[k]), 4), float(rate), 0])
        elif b < 0:
            points.append([round(float((dec - a) / b), 4), float(rate), 1])
    points.sort(key=lambda p: p[0])
    # Thresholds must rise strictly as the rate falls; equal rounded values would make a step.
    clean: list[list[float]] = []
    for p in points:
        if not clean or p[0] > clean[-1][0]:
            clean.append(p)
    return clean, {"slope_log10_per_unit": float(b), "intercept": float(a), "impostor_pairs": int(n)}


def threshold_for(curve: list[list[float]], fmr: float) -> float:
    """The threshold whose FMR on the curve is `fmr` (log-linear between points)."""
    t = np.array([p[0] for p in curve])
    r = np.log10(np.array([p[1] for p in curve]))
    # r falls as t rises; interpolate t as a function of r on the reversed (ascending r) arrays.
    return float(np.interp(math.log10(fmr), r[::-1], t[::-1]))


def calibrate_scoring(
    emb: F32,
    has_face: npt.NDArray[np.bool_],
    identity: npt.NDArray[np.int64],
    stats: tuple[F32, F32] | None,
    norm: CohortNorm | None,
    splits: list[Any],
    result: dict[str, Any],
    list_size: int = REFERENCE_LIST_SIZE,
) -> dict[str, Any]:
    """The measured part of a scoring block: FMR curve, floor, operating points, with evidence."""
    idx = np.flatnonzero(has_face)
    sub_stats = (stats[0][idx], stats[1][idx]) if stats is not None else None
    imp = impostor_scores(emb[idx], identity[idx], sub_stats)
    curve, fit = fmr_curve(imp)
    points: dict[str, Any] = {}
    for name, fpir in TARGETS:
        # Rounded up: a threshold stored a hair low would promise a rate it does not keep.
        thr = math.ceil(threshold_for(curve, fmr_for_fpir(fpir, list_size)) * 1e4) / 1e4
        points[name] = {"threshold": thr, "target_fpir": fpir}
    floor = round(threshold_for(curve, fmr_for_fpir(FLOOR_FPIR, list_size)), 4)
    # Evidence: at each point, TPIR and FPIR measured by open-set identification on this half
    # (its own, smaller list), beside what the independence model predicts for that list.
    for p in points.values():
        tpir, fpir_meas, gal = [], [], []
        for sp in splits:
            r = identification_at(emb, has_face, identity, sp, stats, norm, p["threshold"])
            tpir.append(r[0])
            fpir_meas.append(r[1])
            gal.append(sp.gallery.shape[0])
        g = int(np.mean(gal))
        p["measured_tpir"] = round(float(np.mean(tpir)), 4)
        p["evidence"] = {
            "identification_list_size": g,
            "fpir_measured": round(float(np.mean(fpir_meas)), 6),
            "fpir_predicted": round(1.0 - (1.0 - _curve_fmr(curve, p["threshold"])) ** g, 6),
        }
    return {
        "reference_list_size": list_size,
        "floor": floor,
        "operating_points": points,
        "fmr_curve": curve,
        "tail_fit": fit,
        "calibrated": {
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "verification_tar_at_far": result["verification"]["tar_at_far"],
        },
    }


def _curve_fmr(curve: list[list[float]], threshold: float) -> float:
    t = np.array([p[0] for p in curve])
    r = np.log10(np.array([p[1] for p in curve]))
    return float(10.0 ** np.interp(threshold, t, r))


def identification_at(
    emb: F32,
    has_face: npt.NDArray[np.bool_],
    identity: npt.NDArray[np.int64],
    split: Any,
    stats: tuple[F32, F32] | None,
    norm: CohortNorm | None,
    threshold: float,
) -> tuple[float, float]:
    """(TPIR, FPIR) of one identity split at a fixed threshold."""
    from edge.lab.eval import top1_scores

    ms, mi = top1_scores(emb, has_face, split, split.mated, stats, norm)
    ns, _ = top1_scores(emb, has_face, split, split.non_mated, stats, norm)
    hit = mi == identity[split.mated]
    return float(np.mean(hit & (ms > threshold))), float(np.mean(ns > threshold))
