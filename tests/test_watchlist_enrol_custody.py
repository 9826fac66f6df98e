"""Enrolment as a back office meets it: custody folders with bystanders, wrong photos and dead subjects.

Real LFW photos (read in place through symlinks, never copied), the device's own vision stack, and
the `lfr-edge watchlist build` CLI. LFW photos often show a second person in the background, which
is exactly the custody-like case.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from edge.backoffice.enrolment.image import Analyse, FaceVerdict, ImageStatus, analyzer_adapter
from edge.cli.main import main
from edge.core.config import load_config
from edge.core.imageio import decode_rgb
from tests.watchlist_kit import make_kit

IMAGE_EXTS = (".jpg", ".png")


def _people(faces_dir: Path) -> list[tuple[str, list[Path]]]:
    by_id: dict[str, list[Path]] = defaultdict(list)
    with (faces_dir / "lfw" / "labels.csv").open() as f:
        for row in csv.DictReader(f):
            by_id[row["identity"]].append(faces_dir / "lfw" / row["path"])
    return [(k, sorted(v)) for k, v in sorted(by_id.items()) if len(v) >= 4]


def _verdicts(analyse: Analyse, images: list[Path]) -> list[FaceVerdict]:
    out = []
    for p in images:
        rgb = decode_rgb(p)
        assert rgb is not None, p
        out.append(analyse(rgb))
    return out


def _clean(vs: list[FaceVerdict]) -> list[int]:
    return [i for i, v in enumerate(vs) if v.status is ImageStatus.OK and not v.warnings]


@pytest.fixture(scope="module")
def office(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A back office with keys, a device config and a custody tree of real photos:

    wanted_a  3 clean photos of one person + 1 photo of someone else (a filing mistake)
    wanted_b  2 clean photos + 1 photo of the same person with a bystander in the background
    wanted_c  a photo of two people of similar size + a blank frame: nothing usable
    wanted_d  an empty folder
    """
    import cv2

    root = tmp_path_factory.mktemp("custody")
    make_kit(root)
    cfg = root / "lfr-edge.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "device": {"id": "van7", "data_dir": str(root / "data"), "keys_dir": str(root / "device-keys")},
                "watchlist": {
                    "trusted_signers": [str(root / "backoffice-keys" / "backoffice_ed25519.pub.pem")],
                    "at_rest": True,
                },
            }
        )
    )
    from edge.core.vision.analyze import FaceAnalyzer

    analyse = analyzer_adapter(FaceAnalyzer.from_config(load_config(cfg)))

    people = _people(faces_dir)
    a = b = other = None
    background: Path | None = None
    for name, images in people[::3]:
        vs = _verdicts(analyse, images[:8])
        clean = _clean(vs)
        with_bg = [i for i, v in enumerate(vs) if v.status is ImageStatus.OK and v.warnings]
        if b is None and with_bg and len(clean) >= 2:
            b, background = (name, [images[i] for i in clean[:2]]), images[with_bg[0]]
        elif a is None and len(clean) >= 3:
            a = (name, [images[i] for i in clean[:3]])
        elif a is not None and other is None and clean:
            other = (name, images[clean[0]])
        if a and b and other:
            break
    # LFW holds many such photos: not finding them means the analyzer or the verdicts changed.
    assert a and b and other and background, "the LFW photos this scenario needs were not found"

    faces = root / "faces"
    for sid in ("wanted_a", "wanted_b", "wanted_c", "wanted_d"):
        (faces / sid).mkdir(parents=True)
    for i, img in enumerate(a[1]):
        (faces / "wanted_a" / f"custody_{i}.jpg").symlink_to(img)
    (faces / "wanted_a" / "custody_9.jpg").symlink_to(other[1])
    for i, img in enumerate(b[1]):
        (faces / "wanted_b" / f"custody_{i}.jpg").symlink_to(img)
    (faces / "wanted_b" / "custody_bystander.jpg").symlink_to(background)
    (faces / "wanted_c" / "two_people.jpg").symlink_to(
        faces_dir / "small" / "multi_face" / "face_recognition_two_people.jpg"
    )
    cv2.imwrite(str(faces / "wanted_c" / "blank.png"), np.full((250, 250, 3), 128, np.uint8))
    return {"root": root, "cfg": cfg, "faces": faces, "a": a, "b": b, "other": other}


def _build(office: dict[str, Any], out: Path, *extra: str, faces: Path | None = None) -> list[str]:
    root: Path = office["root"]
    return [
        "watchlist", "build", "--faces", str(faces or office["faces"]),
        "--sign", str(root / "backoffice-keys"), "--to", str(root / "device-keys" / "device_x25519.pub.pem"),
        "--expires", "2999-01-01T00:00:00Z", "--version", "1", "--out", str(out), "--config", str(office["cfg"]),
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def default_build(office: dict[str, Any]) -> dict[str, Any]:
    """`watchlist build --json` with no other option, run once for the checks below."""
    out = office["root"] / "list-1.wl"
    with pytest.MonkeyPatch.context() as mp:
        import io
        import sys

        stdout, stderr = io.StringIO(), io.StringIO()
        mp.setattr(sys, "stdout", stdout)
        mp.setattr(sys, "stderr", stderr)
        rc = main(_build(office, out, "--json"))
    return {"rc": rc, "report": json.loads(stdout.getvalue()), "err": stderr.getvalue(), "out": out}


def _images(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["image"]: r for r in report["images"]}


def _subjects(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["subject_id"]: s for s in report["subjects"]}


def test_build_goes_ahead_without_the_unusable_subjects_and_says_who_is_missing(
    default_build: dict[str, Any], office: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert default_build["rc"] == 0, default_build["err"]
    assert default_build["out"].exists()
    report = default_build["report"]
    subjects = _subjects(report)
    assert subjects["wanted_a"]["status"] == "enrolled" and subjects["wanted_a"]["photos_fused"] == 3
    assert subjects["wanted_b"]["status"] == "enrolled" and subjects["wanted_b"]["photos_fused"] == 3
    assert subjects["wanted_c"]["status"] == "left_out" and subjects["wanted_c"]["photos_fused"] == 0
    assert "1 no_face" in subjects["wanted_c"]["reason"] and "1 several_faces" in subjects["wanted_c"]["reason"]
    assert subjects["wanted_d"]["status"] == "left_out" and subjects["wanted_d"]["reason"] == "no image in the folder"
    assert report["subjects_without_template"] == ["wanted_c", "wanted_d"]
    assert report["bundle"]["subjects"] == 2 and report["bundle"]["templates"] == 2
    assert "left out of the bundle" in default_build["err"] and "wanted_c, wanted_d" in default_build["err"]

    # The device gets exactly the enrolled people, never an empty subject.
    assert main(["watchlist", "install", str(default_build["out"]), "--config", str(office["cfg"])]) == 0
    assert "2 subjects, 2 templates" in capsys.readouterr().out
    from edge.device.watchlist.store import store_from_config

    wl = store_from_config(load_config(office["cfg"])).load()
    assert wl is not None
    assert sorted(s.subject_id for s in wl.subjects) == ["wanted_a", "wanted_b"]


def test_report_names_every_custody_image(default_build: dict[str, Any], office: dict[str, Any]) -> None:
    faces: Path = office["faces"]
    on_disk = {p.relative_to(faces).as_posix() for p in faces.rglob("*") if p.suffix in IMAGE_EXTS}
    assert set(_images(default_build["report"])) == on_disk
    assert default_build["report"]["n_images"] == len(on_disk) == 9


def test_custody_photo_with_a_bystander_in_the_background_is_enrolled_with_a_warning(
    default_build: dict[str, Any],
) -> None:
    row = _images(default_build["report"])["wanted_b/custody_bystander.jpg"]
    assert row["status"] == "ok" and row["in_bundle"]
    assert any("background face" in w for w in row["warnings"]), row


def test_photo_of_two_people_of_similar_size_is_refused_as_several_faces(default_build: dict[str, Any]) -> None:
    row = _images(default_build["report"])["wanted_c/two_people.jpg"]
    assert row["status"] == "several_faces" and not row["in_bundle"]
    assert "2 faces of similar size" in row["detail"]


def test_photo_of_another_person_in_a_subject_folder_is_flagged_and_left_out(default_build: dict[str, Any]) -> None:
    report = default_build["report"]
    images = _images(report)
    wrong = images["wanted_a/custody_9.jpg"]
    assert wrong["status"] == "inconsistent" and not wrong["in_bundle"]
    assert wrong["best_cosine_to_others"] < report["consistency_min_cosine"]
    assert "--keep-inconsistent wanted_a/custody_9.jpg" in wrong["detail"]
    for i in range(3):  # the right photos match each other
        right = images[f"wanted_a/custody_{i}.jpg"]
        assert right["status"] == "ok" and right["best_cosine_to_others"] >= report["consistency_min_cosine"]
    assert any("left out for not matching" in w for w in _subjects(report)["wanted_a"]["warnings"])


def test_operator_can_keep_a_checked_photo_that_does_not_match(
    office: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    out = office["root"] / "list-kept.wl"
    rc = main(_build(office, out, "--json", "--keep-inconsistent", "wanted_a/custody_9.jpg"))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(captured.out)
    row = _images(report)["wanted_a/custody_9.jpg"]
    assert row["status"] == "ok" and any("kept by --keep-inconsistent" in w for w in row["warnings"])
    assert _subjects(report)["wanted_a"]["photos_fused"] == 4

    rc = main(_build(office, out, "--keep-inconsistent", "wanted_a/no_such.jpg"))
    assert rc == 2
    assert "--keep-inconsistent wanted_a/no_such.jpg: no such image" in capsys.readouterr().err


def test_strict_build_refuses_while_any_subject_is_unusable(
    office: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    out = office["root"] / "list-strict.wl"
    rc = main(_build(office, out, "--strict"))
    captured = capsys.readouterr()
    assert rc == 2
    assert "--strict: 2 subject(s) without a usable template: wanted_c, wanted_d" in captured.err
    assert not out.exists()
    # The terminal report still shows every subject, with how many templates each would get.
    lines = {ln.split()[0]: ln for ln in captured.out.splitlines() if ln.startswith("wanted_")}
    assert "enrolled" in lines["wanted_a"] and "3/4" in lines["wanted_a"]
    assert "left_out" in lines["wanted_d"] and "no image in the folder" in lines["wanted_d"]

    # Only the usable subjects: --strict builds.
    usable = office["root"] / "faces-usable"
    for sid in ("wanted_a", "wanted_b"):
        shutil.copytree(office["faces"] / sid, usable / sid, symlinks=True)
    assert main(_build(office, out, "--strict", faces=usable)) == 0, capsys.readouterr().err
    assert out.exists()


def test_no_bundle_when_no_subject_is_usable(office: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    faces = office["root"] / "faces-hopeless"
    shutil.copytree(office["faces"] / "wanted_c", faces / "wanted_c", symlinks=True)
    out = office["root"] / "list-none.wl"
    assert main(_build(office, out, faces=faces)) == 2
    captured = capsys.readouterr()
    assert "no subject has a usable image (wanted_c)" in captured.err
    assert "wanted_c/blank.png" in captured.out and "no_face" in captured.out
    assert not out.exists()


def _models_with_enrolment(root: Path, name: str, enrolment: object | None) -> Path:
    """The shipped models (symlinked) under a manifest whose embedders carry `enrolment` (None: no key)."""
    from edge.core.inference import default_models_dir

    models = root / name
    models.mkdir()
    src = default_models_dir()
    manifest = json.loads((src / "MANIFEST.json").read_text())
    for entry in manifest["models"]:  # networks and the score cohorts alike
        (models / entry["file"]).symlink_to(src / entry["file"])
    for entry in manifest["models"]:
        if entry["role"] == "embedder":
            entry.pop("enrolment", None)
            if enrolment is not None:
                entry["enrolment"] = enrolment
    (models / "MANIFEST.json").write_text(json.dumps(manifest))
    return models


def test_a_malformed_consistency_figure_in_the_manifest_is_named(
    office: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    models = _models_with_enrolment(office["root"], "models-bad", {"consistency_min_cosine": "high"})
    out = office["root"] / "list-bad.wl"
    assert main(_build(office, out, "--models-dir", str(models))) == 2
    err = capsys.readouterr().err
    assert ".enrolment.consistency_min_cosine: 'high' is not a cosine in [-1, 1]" in err
    assert str(models / "MANIFEST.json") in err
    assert not out.exists()


def test_an_embedder_without_a_consistency_figure_builds_with_a_warning_and_no_cross_check(
    office: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    models = _models_with_enrolment(office["root"], "models-unmeasured", None)
    out = office["root"] / "list-unchecked.wl"
    assert main(_build(office, out, "--json", "--models-dir", str(models))) == 0
    captured = capsys.readouterr()
    assert "images were not cross-checked for a wrong photo" in captured.err
    report = json.loads(captured.out)
    assert report["consistency_min_cosine"] is None
    a = _subjects(report)["wanted_a"]
    assert not a["cross_checked"] and a["photos_fused"] == 4  # nothing flagged the other person's photo
    assert any("not cross-checked" in w for w in a["warnings"])
