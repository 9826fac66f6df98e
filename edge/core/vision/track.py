"""Follow faces across frames so each person is embedded a few times and matched once.

Association is one vectorised score matrix (IoU plus a centre-distance term, gated) and a
greedy assignment on it: with a handful of faces per frame greedy equals Hungarian in practice
and costs microseconds. A track tolerates a few frames without a detection (blinks, a missed
small face, a dropped frame) before it ends.

Privacy: a track's embeddings live only in its preallocated buffer; when the track ends the
buffer is zeroed and dropped, and only counts survive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edge.core.types import F32
from edge.core.vision.detect import iou_matrix

EMBED_DIM = 128  # the shipped dlib descriptor; the pipeline passes the loaded embedder's dim
RANK_IMPROVEMENT = 1.10  # a view must be 10 % better than the best so far to earn an extra embedding


@dataclass(slots=True, eq=False)
class Track:
    id: int
    box: F32  # (4,) last matched box, frame pixels
    born: int  # tracker frame index when created
    last_seen: int
    best_k: int
    dim: int = EMBED_DIM
    missed: int = 0
    hits: int = 1
    best_rank: float = -1.0
    last_embed: int = -(10**9)
    embeddings: int = 0  # embeddings computed for this track (not only the ones kept)
    alerted: set[str] = field(default_factory=set)  # subjects already matched (or suppressed)
    weighted: bool = False  # fuse the kept views weighted by their quality rank (else a plain mean)
    _emb: F32 = field(init=False)
    _ranks: F32 = field(init=False)
    _n: int = 0

    def __post_init__(self) -> None:
        self._emb = np.zeros((self.best_k, self.dim), np.float32)
        self._ranks = np.full((self.best_k,), -np.inf, np.float32)

    def wants_embedding(self, rank: float, frame_idx: int, every_n: int) -> bool:
        """Embed when this view is clearly better than any so far, or every Nth frame."""
        if self.embeddings == 0:
            return True
        return rank > self.best_rank * RANK_IMPROVEMENT or frame_idx - self.last_embed >= every_n

    def add_embedding(self, vec: F32, rank: float, frame_idx: int) -> None:
        """Keep the best K views by quality rank."""
        self.embeddings += 1
        self.last_embed = frame_idx
        self.best_rank = max(self.best_rank, rank)
        if self._n < self.best_k:
            slot = self._n
            self._n += 1
        else:
            slot = int(np.argmin(self._ranks))
            if rank <= float(self._ranks[slot]):
                return
        self._emb[slot] = vec
        self._ranks[slot] = rank

    @property
    def n_kept(self) -> int:
        return self._n

    def fused(self) -> F32:
        """Mean of the kept L2-normalised embeddings (rank-weighted when `weighted`), renormalised."""
        rows = self._emb[: self._n]
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        unit = rows / np.maximum(norms, 1e-12)
        if self.weighted:
            w = np.maximum(self._ranks[: self._n], 0.0)
            mean = (unit * (w / max(float(w.sum()), 1e-12))[:, None]).sum(axis=0)
        else:
            mean = unit.mean(axis=0)
        out: F32 = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
        return out

    def wipe(self) -> None:
        self._emb.fill(0.0)
        self._ranks.fill(-np.inf)
        self._n = 0


def association_scores(track_boxes: F32, det_boxes: F32, iou_thr: float, max_centre_dist: float) -> F32:
    """(T, N) score, -inf where a pair is not plausible.

    A pair is plausible when the boxes overlap enough or the detection's centre lies within
    `max_centre_dist` face widths of the track's (fast motion, or a face at low frame rate).
    """
    iou = iou_matrix(track_boxes, det_boxes)
    tc = 0.5 * (track_boxes[:, 0:2] + track_boxes[:, 2:4])
    dc = 0.5 * (det_boxes[:, 0:2] + det_boxes[:, 2:4])
    width = np.maximum(track_boxes[:, 2] - track_boxes[:, 0], 1.0)
    dist = np.linalg.norm(tc[:, None, :] - dc[None, :, :], axis=2) / width[:, None]
    # Size must be comparable too, or a small face passing a big one would steal its track.
    tw = width[:, None]
    dw = np.maximum(det_boxes[:, 2] - det_boxes[:, 0], 1.0)[None, :]
    size_ok = np.maximum(tw, dw) / np.minimum(tw, dw) < 2.0
    ok = ((iou >= iou_thr) | (dist <= max_centre_dist)) & size_ok
    score = iou + np.clip(1.0 - dist / max(max_centre_dist, 1e-6), 0.0, 1.0)
    out: F32 = np.where(ok, score, -np.inf).astype(np.float32)
    return out


def greedy_assign(scores: F32) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Pairs (rows, cols) taken best-first; each row and column used at most once."""
    t, n = scores.shape
    if t == 0 or n == 0:
        empty = np.zeros((0,), np.intp)
        return empty, empty
    flat = np.flatnonzero(np.isfinite(scores))
    order = flat[np.argsort(-scores.ravel()[flat], kind="stable")]
    rows_used = np.zeros(t, bool)
    cols_used = np.zeros(n, bool)
    rows: list[int] = []
    cols: list[int] = []
    for k in order:  # at most T*N plausible pairs, a handful per frame
        r, c = divmod(int(k), n)
        if rows_used[r] or cols_used[c]:
            continue
        rows_used[r] = cols_used[c] = True
        rows.append(r)
        cols.append(c)
    return np.asarray(rows, np.intp), np.asarray(cols, np.intp)


class Tracker:
    def __init__(
        self,
        iou_threshold: float = 0.3,
        max_centre_dist: float = 1.0,
        max_missed_frames: int = 10,
        best_k: int = 3,
        max_tracks: int = 64,
        dim: int = EMBED_DIM,
    ) -> None:
        self.iou_threshold = iou_threshold
        self.max_centre_dist = max_centre_dist
        self.max_missed_frames = max_missed_frames
        self.best_k = best_k
        self.max_tracks = max_tracks
        self.dim = dim
        self.tracks: dict[int, Track] = {}
        self.frame_idx = -1
        self._next_id = 1

    def update(self, boxes: F32) -> tuple[list[Track], list[Track]]:
        """Assign this frame's detections; returns (track per detection, tracks that ended)."""
        self.frame_idx += 1
        live = list(self.tracks.values())
        n = int(boxes.shape[0])
        assigned: list[Track | None] = [None] * n
        if live and n:
            tb = np.stack([t.box for t in live]).astype(np.float32)
            rows, cols = greedy_assign(
                association_scores(tb, boxes, self.iou_threshold, self.max_centre_dist)
            )
            for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
                tr = live[r]
                tr.box = boxes[c].astype(np.float32, copy=True)
                tr.last_seen = self.frame_idx
                tr.missed = 0
                tr.hits += 1
                assigned[c] = tr
        ended: list[Track] = []
        for tr in live:
            if tr.last_seen != self.frame_idx:
                tr.missed += 1
                if tr.missed > self.max_missed_frames:
                    ended.append(self.tracks.pop(tr.id))
        out: list[Track] = []
        for i in range(n):
            tr = assigned[i]
            if tr is None:
                if len(self.tracks) >= self.max_tracks:
                    ended.append(self._evict())
                tr = Track(
                    id=self._next_id, box=boxes[i].astype(np.float32, copy=True), born=self.frame_idx,
                    last_seen=self.frame_idx, best_k=self.best_k, dim=self.dim,
                )  # fmt: skip
                self._next_id += 1
                self.tracks[tr.id] = tr
            out.append(tr)
        return out, ended

    def _evict(self) -> Track:
        """At the cap, the track unseen for longest goes first (bounded memory on crowds)."""
        victim = min(self.tracks.values(), key=lambda t: (t.last_seen, t.hits))
        return self.tracks.pop(victim.id)

    def end_all(self) -> list[Track]:
        ended = list(self.tracks.values())
        self.tracks.clear()
        return ended
