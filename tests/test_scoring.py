"""Scoring as the device does it: test-time flip, cohort S-norm, and the matching policy in force."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.core.config import parse_config
from edge.core.errors import InputError
from edge.core.inference import default_models_dir, load_model
from edge.core.types import Subject
from edge.core.vision.embed import Embedder
from edge.core.vision.scoring import CohortNorm, chip_landmarks, load_scoring
from edge.core.watchlist.match import Matcher
from edge.core.watchlist.model import Watchlist
from edge.core.watchlist.policy import policy_for, resolve_policy, warnings_for

ROOT = Path(__file__).resolve().parent.parent
EMBEDDER = "dlib_resnet_v1_int8"


@pytest.fixture(scope="module")
def astronaut_chip() -> np.ndarray:
    """The aligned chip of scikit-image's public-domain astronaut, as the device cuts it."""
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (test extra) provides astronaut()")
    from edge.core.vision.analyze import FaceAnalyzer

    face = FaceAnalyzer.from_config(parse_config({}, ROOT)).primary(
        np.ascontiguousarray(skimage_data.astronaut())
    )
    assert face is not None
    return np.ascontiguousarray(face.chip)


def _unit(rng: np.random.Generator, n: int, d: int = 128) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _watchlist(templates: np.ndarray) -> Watchlist:
    n = templates.shape[0]
    return Watchlist(
        version=1, created_at=0.0, expires_at=1e12,
        subjects=tuple(Subject(f"S{i}") for i in range(n)),
        templates=templates, template_subject=np.arange(n, dtype=np.int32),
    )  # fmt: skip


def test_cohort_statistics_are_the_top_k_mean_and_spread() -> None:
    rng = np.random.default_rng(0)
    cohort, x = _unit(rng, 300), _unit(rng, 5000)  # more rows than one block
    norm = CohortNorm(cohort, top_k=20)
    mu, sd = norm.stats(x)
    top = np.sort(x @ cohort.T, axis=1)[:, -20:]
    np.testing.assert_allclose(mu, top.mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(sd, top.std(axis=1), atol=1e-5)


def test_snorm_brings_down_a_subject_who_looks_like_everyone() -> None:
    """A 'hub' template close to many cohort faces no longer outscores a distinctive true match."""
    rng = np.random.default_rng(1)
    base = _unit(rng, 1)[0]
    # The cohort crowds around the hub's direction: strangers resemble the hub a lot.
    cohort = _unit(rng, 400) * 0.6 + base * 0.8
    cohort /= np.linalg.norm(cohort, axis=1, keepdims=True)
    hub = base
    person = _unit(rng, 1)[0]
    probe = person * 0.60 + base * 0.80  # the person, seen in a way that also resembles the hub
    probe /= np.linalg.norm(probe)
    templates = np.stack([hub, person]).astype(np.float32)
    raw = Matcher(_watchlist(templates), threshold=-1.0).subject_scores(probe[None])[0]
    assert raw[0] > raw[1]  # raw cosine: the hub wins, a false alert on the wrong subject
    normed = Matcher(_watchlist(templates), threshold=-100.0, norm=CohortNorm(cohort.astype(np.float32), 50))
    scores = normed.subject_scores(probe[None])[0]
    assert scores[1] > scores[0]  # S-norm: the distinctive true match wins
    m = normed.match(probe.astype(np.float32))
    assert m is not None and m.subject.subject_id == "S1"


def test_flip_makes_a_face_and_its_mirror_one_descriptor(astronaut_chip: np.ndarray) -> None:
    model = load_model(EMBEDDER, default_models_dir(), num_threads=1)
    plain, flipped = Embedder(model), Embedder(model, flip=True)
    mirror = np.ascontiguousarray(astronaut_chip[:, ::-1])
    a, b = flipped.embed(astronaut_chip)[0], flipped.embed(mirror)[0]
    assert float(a @ b) > 0.9999  # the same face mirrored is described identically
    both = plain.embed(astronaut_chip)[0] + plain.embed(mirror)[0]
    np.testing.assert_allclose(a, both / np.linalg.norm(both), atol=1e-6)
    assert abs(float(np.linalg.norm(a)) - 1.0) < 1e-5


def test_shipped_embedders_carry_a_calibrated_recipe() -> None:
    s = load_scoring(EMBEDDER)
    assert s.flip and s.norm is not None and s.units == "snorm"
    assert chip_landmarks(EMBEDDER) == "face_mesh_fp32"  # the cohort and thresholds are for mesh-placed chips
    assert s.norm.cohort.shape[1] == 128 and s.norm.cohort.shape[0] >= 1000
    strict, balanced = s.operating_point("strict"), s.operating_point("balanced")
    # Stricter means a higher threshold, fewer people found, and both above the floor.
    assert strict.threshold > balanced.threshold > s.floor
    assert strict.measured_tpir <= balanced.measured_tpir
    # The false-match curve falls as the threshold rises, and the estimate grows with the list.
    assert s.fmr(strict.threshold) < s.fmr(balanced.threshold) < s.fmr(s.floor)
    assert s.expected_fpir(strict.threshold, 5000) > s.expected_fpir(strict.threshold, 500)
    assert s.expected_false_alerts(strict.threshold, s.reference_list_size) == pytest.approx(1.0, rel=0.05)


def test_default_policy_is_the_strict_point_and_explicit_thresholds_override_it() -> None:
    cfg = parse_config({}, ROOT)
    p = policy_for(cfg)
    s = load_scoring(EMBEDDER)
    assert p.operating_point == "strict" and p.threshold == s.operating_point("strict").threshold
    d = p.describe(500)
    assert d["units"] == "snorm" and d["operating_point"] == "strict"
    assert 0.0 < d["expected_false_alerts_per_10k_faces"] <= 2.0
    assert warnings_for(p, 500) == [] or d["expected_false_alerts_per_10k_faces"] > 1.0
    bal = policy_for(parse_config({"matching": {"operating_point": "balanced"}}, ROOT))
    assert bal.threshold < p.threshold
    explicit = policy_for(parse_config({"matching": {"threshold": s.floor + 0.5}}, ROOT))
    assert explicit.operating_point is None and explicit.threshold == pytest.approx(s.floor + 0.5)


def test_a_threshold_below_the_floor_is_refused_unless_accepted_with_a_reason() -> None:
    s = load_scoring(EMBEDDER)
    low = round(s.floor - 1.0, 3)
    with pytest.raises(InputError, match=r"matching\.threshold: .* is below the floor"):
        resolve_policy(parse_config({"matching": {"threshold": low}}, ROOT).matching, s)
    with pytest.raises(InputError, match=r"matching\.category_thresholds\.missing"):
        resolve_policy(parse_config({"matching": {"category_thresholds": {"missing": low}}}, ROOT).matching, s)
    ok = resolve_policy(
        parse_config({"matching": {"threshold": low, "allow_below_floor": True,
                                   "below_floor_reason": "missing child, DCI approval 42"}}, ROOT).matching, s,
    )  # fmt: skip
    assert ok.below_floor == {"threshold": low} and "missing child" in ok.below_floor_reason
    # A loose threshold is warned about in check-config: its expected false alerts are stated.
    warning = warnings_for(ok, 500)
    assert warning and "false alerts per 10,000 faces" in warning[0]


def test_a_tampered_cohort_is_refused(tmp_path: Path) -> None:
    mdir = default_models_dir()
    out = tmp_path / "models"
    shutil.copytree(mdir, out)
    cohort = out / "cohort_dlib_resnet_v1_int8.npy"
    arr = np.load(cohort)
    arr[0] = -arr[0]
    np.save(cohort, arr)
    with pytest.raises(InputError, match="sha256"):
        load_scoring(EMBEDDER, out)
    data = json.loads((out / "MANIFEST.json").read_text())
    for m in data["models"]:
        if m["id"] == EMBEDDER:
            m["scoring"]["cohort"] = "no_such_cohort"
    (out / "MANIFEST.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="no_such_cohort"):
        load_scoring(EMBEDDER, out)


def test_a_recipe_whose_face_mesh_is_not_one_is_refused_naming_the_key(tmp_path: Path) -> None:
    """The device would otherwise cut chips unlike those its thresholds were measured on."""
    from edge.core.config import Config
    from edge.core.vision.stack import StackUse, build_vision_stack

    out = tmp_path / "models"
    shutil.copytree(default_models_dir(), out)
    data = json.loads((out / "MANIFEST.json").read_text())
    for m in data["models"]:
        if m["id"] == EMBEDDER:
            m["scoring"]["landmarks"] = "blazeface_full_range_int8"  # a detector, not a face mesh
    (out / "MANIFEST.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"dlib_resnet_v1_int8\.scoring\.landmarks: 'blazeface_full_range_int8' is not a face-mesh"):
        build_vision_stack(Config(), StackUse.CAMERA, models_dir=out)
