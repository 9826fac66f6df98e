"""Vectorised matching of fused probe embeddings against the watchlist matrix.

Matrix products give every template's cosine; a segmented max (templates are grouped by subject)
gives each subject's best score, skipped when every subject has exactly one template; two argmax
passes give top-1 and top-2 without sorting. With a cohort (edge.core.vision.scoring.CohortNorm) the
template cosines are S-normalised before the segmented max: gallery statistics once per list,
probe statistics once per probe.

The template matrix is multiplied in blocks of rows. A single large product hands the work to
OpenBLAS's thread pool, which on a small, busy CPU (the camera loop and TFLite already use the
cores) spins and waits: measured here, one 100k×128 product took ~20 ms threaded against ~5 ms as
512-row blocks, small enough that OpenBLAS does them on the calling thread (docs/BENCHMARKS.md).
Large lists split the blocks between the caller and one worker thread that sleeps when idle.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from edge.core.types import Match
from edge.core.vision.scoring import CohortNorm
from edge.core.watchlist.model import Watchlist

BLOCK_ROWS = 512
# Below this a second thread's hand-off costs more than it saves (measured: 100k rows 2.0 → 1.4 ms).
PARALLEL_MIN_ROWS = 32_768
_N_CPUS = os.cpu_count() or 1
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lfr-match")
        return _POOL


class Matcher:
    def __init__(
        self,
        watchlist: Watchlist,
        threshold: float,
        category_thresholds: Mapping[str, float] | None = None,
        min_margin: float = 0.0,
        norm: CohortNorm | None = None,
        floor: float = -np.inf,
    ) -> None:
        self.watchlist = watchlist
        self.norm = norm
        self.threshold = threshold
        self.min_margin = min_margin
        cats = dict(category_thresholds or {})
        # Per-subject threshold resolved once: subject override > category override > default.
        self._thresholds = np.array(
            [
                s.threshold if s.threshold is not None else cats.get(s.category, threshold)
                for s in watchlist.subjects
            ],
            dtype=np.float32,
        )
        # A per-subject threshold in a bundle cannot take the device below its floor: that
        # needs the operator's audited override (the caller then passes no floor).
        np.maximum(self._thresholds, np.float32(floor), out=self._thresholds)
        self._templates = np.ascontiguousarray(watchlist.templates, dtype=np.float32)
        ts = watchlist.template_subject
        n_subjects = len(watchlist.subjects)
        # One template per subject, in subject order: template scores are subject scores.
        self._identity = bool(ts.size == n_subjects and np.array_equal(ts, np.arange(n_subjects)))
        self._starts = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]]) if ts.size else np.zeros(0, np.intp)
        self._seg_subject = ts[self._starts] if ts.size else np.zeros(0, np.int32)
        # Segment k is subject k (every subject has templates, grouped in subject order, as built
        # bundles are): the segmented max is already the (P, S) answer, no scatter per probe.
        self._dense = bool(np.array_equal(self._seg_subject, np.arange(n_subjects)))
        if norm is not None and self._templates.shape[0]:
            if norm.dim != self._templates.shape[1]:
                raise ValueError(f"cohort dim {norm.dim} != template dim {self._templates.shape[1]}")
            self._g_mu, self._g_sd = norm.stats(self._templates)

    def _dot_rows(self, p: npt.NDArray[np.float32], row: npt.NDArray[np.float32], lo: int, hi: int) -> None:
        t = self._templates
        for s in range(lo, hi, BLOCK_ROWS):
            e = min(s + BLOCK_ROWS, hi)
            np.dot(t[s:e], p, out=row[s:e])

    def _template_scores(self, probes: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(P, D) → (P, M) cosines, computed block by block."""
        t = self._templates
        m = t.shape[0]
        out = np.empty((probes.shape[0], m), np.float32)
        if probes.shape[0] == 1:
            p, row = probes[0], out[0]
            if m >= PARALLEL_MIN_ROWS and _N_CPUS > 1:
                # Half the rows on a second thread (np.dot releases the GIL). Unlike BLAS's own pool,
                # an idle worker sleeps, so it takes nothing from TFLite between matches.
                mid = (m // 2) // BLOCK_ROWS * BLOCK_ROWS
                other = _pool().submit(self._dot_rows, p, row, mid, m)
                self._dot_rows(p, row, 0, mid)
                other.result()
            else:
                self._dot_rows(p, row, 0, m)
        else:
            for s in range(0, m, BLOCK_ROWS):
                out[:, s : s + BLOCK_ROWS] = probes @ t[s : s + BLOCK_ROWS].T
        return out

    def subject_scores(self, probes: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(P, D) L2-normalised probes → (P, S) best cosine per subject."""
        probes = np.ascontiguousarray(probes, dtype=np.float32)
        n_subjects = len(self.watchlist.subjects)
        if self._templates.shape[0] == 0:
            return np.full((probes.shape[0], n_subjects), -1.0, np.float32)
        sims = self._template_scores(probes)
        if self.norm is not None:
            p_mu, p_sd = self.norm.stats(probes)
            sims = CohortNorm.apply(sims, self._g_mu, self._g_sd, p_mu, p_sd)
        if self._identity:
            return sims
        seg = np.maximum.reduceat(sims, self._starts, axis=1)
        if self._dense:
            return seg
        out = np.full((probes.shape[0], n_subjects), -1.0, np.float32)
        out[:, self._seg_subject] = seg
        return out

    def match(self, probe: npt.NDArray[np.float32], now: float | None = None) -> Match | None:
        """Best subject for one probe, or None when below its threshold, too close to the runner-up,
        or when the list has expired."""
        wl = self.watchlist
        if not wl.subjects or wl.expired(time.time() if now is None else now):
            return None
        scores = self.subject_scores(probe.reshape(1, -1))[0]
        best = int(np.argmax(scores))
        score = float(scores[best])
        if scores.shape[0] >= 2:
            scores[best] = -np.inf  # scores is our own buffer; the runner-up is the next argmax
            margin = score - float(scores[int(np.argmax(scores))])
        else:
            margin = 1.0
        threshold = float(self._thresholds[best])
        if score < threshold or margin < self.min_margin:
            return None
        return Match(subject=wl.subjects[best], score=score, margin=margin, threshold=threshold)
