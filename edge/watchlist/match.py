"""Vectorised matching of fused probe embeddings against the watchlist matrix.

One matrix product gives every template's cosine; a segmented max (templates are grouped by
subject) gives each subject's best score; argpartition gives top-1 and top-2 without sorting.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from edge.types import Match
from edge.watchlist.model import Watchlist


class Matcher:
    def __init__(
        self,
        watchlist: Watchlist,
        threshold: float,
        category_thresholds: Mapping[str, float] | None = None,
        min_margin: float = 0.0,
    ) -> None:
        self.watchlist = watchlist
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
        ts = watchlist.template_subject
        self._starts = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]]) if ts.size else np.zeros(0, np.intp)
        self._seg_subject = ts[self._starts] if ts.size else np.zeros(0, np.int32)

    def subject_scores(self, probes: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(P, D) L2-normalised probes → (P, S) best cosine per subject."""
        sims = probes @ self.watchlist.templates.T
        if sims.shape[1] == 0:
            return np.zeros((probes.shape[0], len(self.watchlist.subjects)), np.float32)
        seg = np.maximum.reduceat(sims, self._starts, axis=1)
        out = np.full((probes.shape[0], len(self.watchlist.subjects)), -1.0, np.float32)
        out[:, self._seg_subject] = seg
        return out

    def match(self, probe: npt.NDArray[np.float32], now: float | None = None) -> Match | None:
        """Best subject for one probe, or None when below its threshold, too close to the runner-up,
        or when the list has expired."""
        wl = self.watchlist
        if not wl.subjects or wl.expired(time.time() if now is None else now):
            return None
        scores = self.subject_scores(probe[None, :])[0]
        if scores.shape[0] >= 2:
            top2 = np.argpartition(-scores, 1)[:2]
            best, second = (top2 if scores[top2[0]] >= scores[top2[1]] else top2[::-1])
            margin = float(scores[best] - scores[second])
        else:
            best, margin = 0, 1.0
        score = float(scores[best])
        threshold = float(self._thresholds[best])
        if score < threshold or margin < self.min_margin:
            return None
        return Match(subject=wl.subjects[int(best)], score=score, margin=margin, threshold=threshold)
