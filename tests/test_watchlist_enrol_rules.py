"""The two enrolment rules on their own: which face a custody photo is of, and which photos disagree.

Boxes and unit vectors stand in for detections and templates here; the same rules on real photos,
through `watchlist build`, are in test_watchlist_enrol_custody.py.
"""

from __future__ import annotations

import math

import numpy as np

from edge.core.vision.analyze import PrimaryChoice, choose_primary, primary_index

W, H = 640, 480
SUBJECT = [220, 140, 420, 340]  # 200 px face in the middle


def _pick(*boxes: list[int]) -> tuple[PrimaryChoice, int | None, float]:
    b = np.array(boxes, np.float32).reshape(-1, 4)
    p = choose_primary(b, W, H)
    return p.choice, p.index, p.runner_up_area_ratio


def test_a_portrait_without_anyone_else_is_of_that_person() -> None:
    assert _pick(SUBJECT)[:2] == (PrimaryChoice.ONE_FACE, 0)
    assert _pick()[:2] == (PrimaryChoice.NO_FACE, None)


def test_a_much_smaller_bystander_at_the_edge_is_background() -> None:
    choice, index, ratio = _pick([560, 20, 640, 100], SUBJECT)  # 80 px face in the top corner
    assert (choice, index) == (PrimaryChoice.WITH_BACKGROUND, 1)
    assert math.isclose(ratio, 80 * 80 / (200 * 200), rel_tol=1e-6)


def test_two_faces_of_similar_size_leave_it_open_who_the_photo_is_of() -> None:
    choice, _, ratio = _pick(SUBJECT, [440, 150, 620, 330])  # a 180 px face beside the subject
    assert choice is PrimaryChoice.AMBIGUOUS and ratio > 0.5


def test_a_smaller_face_nearer_the_centre_than_the_largest_is_ambiguous() -> None:
    # The largest face sits off-centre; a smaller one is right in the middle.
    choice, _, ratio = _pick([0, 0, 200, 200], [290, 210, 350, 270])
    assert choice is PrimaryChoice.AMBIGUOUS and ratio < 0.5


def test_the_face_chosen_is_always_primary_index_s() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        xy = rng.uniform(0, 500, (4, 2))
        size = rng.uniform(20, 200, (4, 1))
        boxes = np.hstack([xy, xy + size]).astype(np.float32)
        assert choose_primary(boxes, W, H).index == primary_index(boxes, W, H)


def test_photos_that_disagree_are_flagged_and_a_single_photo_is_not() -> None:
    from edge.backoffice.enrolment.consistency import inconsistent

    rng = np.random.default_rng(3)
    person = rng.standard_normal(128)
    same = person + 0.1 * rng.standard_normal((3, 128))
    stranger = rng.standard_normal((1, 128))
    t = np.vstack([same, stranger]).astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    best, flagged = inconsistent(t, 0.9)
    assert flagged.tolist() == [False, False, False, True]
    assert best[3] < 0.5 < 0.9 < best[:3].min()
    # Two photos that disagree: nothing says which is wrong, so both are flagged.
    assert inconsistent(t[[0, 3]], 0.9)[1].tolist() == [True, True]
    best1, flagged1 = inconsistent(t[:1], 0.9)
    assert flagged1.tolist() == [False] and math.isnan(float(best1[0]))
