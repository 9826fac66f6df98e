"""Tracking: identities persist across motion and short misses; best views are kept and fused."""

from __future__ import annotations

import numpy as np

from edge.core.vision.track import Tracker


def _box(cx: float, cy: float, s: float) -> list[float]:
    return [cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2]


def test_two_moving_faces_keep_their_tracks_through_misses() -> None:
    tr = Tracker(iou_threshold=0.3, max_centre_dist=1.0, max_missed_frames=3)
    ids_a, ids_b = set(), set()
    for f in range(40):
        a = _box(100 + 8 * f, 200, 80)  # moving right, 0.1 face widths per frame
        b = _box(900 - 6 * f, 400, 60)  # moving left
        boxes = [a, b] if f % 7 != 3 else [b]  # A missed now and then (a blink, a small face)
        tracks, ended = tr.update(np.array(boxes, np.float32))
        assert not ended
        if len(boxes) == 2:
            ids_a.add(tracks[0].id)
        ids_b.add(tracks[-1].id)
    assert len(ids_a) == 1 and len(ids_b) == 1 and ids_a != ids_b


def test_fast_motion_is_followed_by_centre_distance() -> None:
    tr = Tracker(iou_threshold=0.3, max_centre_dist=1.0)
    ids = {tr.update(np.array([_box(100 + 50 * f, 300, 80)], np.float32))[0][0].id for f in range(10)}
    assert len(ids) == 1  # 0.6 face widths per frame: no IoU overlap to speak of, same track


def test_track_ends_after_max_missed_and_a_new_face_gets_a_new_track() -> None:
    tr = Tracker(max_missed_frames=2)
    first = tr.update(np.array([_box(300, 300, 100)], np.float32))[0][0]
    ended_all = []
    for _ in range(3):
        _, ended = tr.update(np.zeros((0, 4), np.float32))
        ended_all += ended
    assert ended_all == [first]
    again = tr.update(np.array([_box(300, 300, 100)], np.float32))[0][0]
    assert again.id != first.id


def test_tracks_are_capped() -> None:
    tr = Tracker(max_tracks=5, max_missed_frames=100)
    ended_total = 0
    for f in range(20):
        _, ended = tr.update(np.array([_box(60 * f + 50, 50 + 30 * (f % 2), 40)], np.float32))
        ended_total += len(ended)
    assert len(tr.tracks) == 5 and ended_total == 15


def test_best_k_views_kept_and_fused_then_wiped() -> None:
    tr = Tracker(best_k=3)
    t = tr.update(np.array([_box(300, 300, 100)], np.float32))[0][0]
    rng = np.random.default_rng(0)
    base = rng.normal(size=128).astype(np.float32)
    vecs = []
    for i, rank in enumerate([1.0, 5.0, 2.0, 9.0, 0.5]):
        v = base + rng.normal(scale=0.5, size=128).astype(np.float32)
        v /= np.linalg.norm(v)
        vecs.append((rank, v))
        t.add_embedding(v, rank, i)
    best = [v for r, v in sorted(vecs, key=lambda rv: -rv[0])[:3]]
    expect = np.mean(best, axis=0)
    expect /= np.linalg.norm(expect)
    fused = t.fused()
    assert t.n_kept == 3 and t.embeddings == 5
    np.testing.assert_allclose(fused, expect, atol=1e-5)
    assert abs(float(np.linalg.norm(fused)) - 1.0) < 1e-5
    t.wipe()
    assert t.n_kept == 0 and not t._emb.any()


def test_embedding_policy_better_view_or_every_nth_frame() -> None:
    tr = Tracker()
    t = tr.update(np.array([_box(300, 300, 100)], np.float32))[0][0]
    assert t.wants_embedding(10.0, 0, every_n=5)
    t.add_embedding(np.ones(128, np.float32) / np.sqrt(128), 10.0, 0)
    assert not t.wants_embedding(10.5, 1, every_n=5)  # not clearly better, too soon
    assert t.wants_embedding(12.0, 1, every_n=5)  # clearly better view
    assert t.wants_embedding(5.0, 5, every_n=5)  # periodic refresh


def test_weighted_fusion_leans_on_the_better_views() -> None:
    tr = Tracker(best_k=3)
    t = tr.update(np.array([_box(300, 300, 100)], np.float32))[0][0]
    t.weighted = True
    a, b = np.eye(128, dtype=np.float32)[0], np.eye(128, dtype=np.float32)[1]
    t.add_embedding(a, 3.0, 0)
    t.add_embedding(b, 1.0, 1)
    fused = t.fused()
    expect = (3.0 * a + 1.0 * b) / np.linalg.norm(3.0 * a + 1.0 * b)
    np.testing.assert_allclose(fused, expect, atol=1e-6)
    t.weighted = False
    np.testing.assert_allclose(t.fused(), (a + b) / np.sqrt(2.0), atol=1e-6)
