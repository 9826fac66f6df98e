"""Build → install → match with real face images (LFW developer split), through the CLI.

Enrolment runs the device's own detector, aligner, quality gate and embedder; images with no face,
two faces of similar size or poor quality are refused with a per-image report; held-out photos of
enrolled people match the right subject and nobody else's. Custody folders with bystanders, wrong
photos and unusable subjects are in test_watchlist_enrol_custody.py.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml

from edge.cli.main import main
from edge.core.config import load_config
from tests.watchlist_kit import make_kit

N_SUBJECTS = 4


def _analyzer(cfg_path: Path) -> object:
    from edge.core.vision.analyze import FaceAnalyzer

    return FaceAnalyzer.from_config(load_config(cfg_path))


def _identities(faces_dir: Path, min_images: int) -> list[tuple[str, list[Path]]]:
    by_id: dict[str, list[Path]] = defaultdict(list)
    with (faces_dir / "lfw" / "labels.csv").open() as f:
        for row in csv.DictReader(f):
            by_id[row["identity"]].append(faces_dir / "lfw" / row["path"])
    return [(k, sorted(v)) for k, v in sorted(by_id.items()) if len(v) >= min_images]


def _usable_people(analyzer: object, people: list[tuple[str, list[Path]]], n: int) -> list[tuple[str, list[Path]]]:
    """People with at least 4 photos showing exactly one face that passes the quality gate
    (single-face photos keep this round trip about matching; bystanders are
    test_watchlist_enrol_custody.py's business)."""
    from edge.core.imageio import decode_rgb as read_image

    out = []
    for name, images in people[::5]:
        good = []
        for img in images[:8]:
            faces = analyzer.analyze(read_image(img))  # type: ignore[attr-defined]
            if len(faces) == 1 and faces[0].quality.accepted:
                good.append(img)
            if len(good) == 4:
                out.append((name, good))
                break
        if len(out) == n:
            return out
    # LFW has hundreds of such identities: finding too few means the analyzer stopped finding faces.
    raise AssertionError(f"only {len(out)} of {n} LFW identities with 4 clean single-face photos")


@pytest.fixture(scope="module")
def enrolled(faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    import cv2

    root = tmp_path_factory.mktemp("enrol")
    kit = make_kit(root)
    cfg_path = root / "lfr-edge.yaml"
    cfg_path.write_text(
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
    analyzer = _analyzer(cfg_path)
    people = _usable_people(analyzer, _identities(faces_dir, 4), N_SUBJECTS + 1)
    enrol, stranger = people[:N_SUBJECTS], people[N_SUBJECTS]
    faces = root / "faces"
    for name, images in enrol:
        (faces / name).mkdir(parents=True)
        for img in images[:2]:  # two custody images each: two templates
            (faces / name / img.name).symlink_to(img)  # read in place, never copied
    # Refusal cases in the first subject's folder.
    first = faces / enrol[0][0]
    cv2.imwrite(str(first / "blank.png"), np.full((250, 250, 3), 128, np.uint8))
    sharp = cv2.imread(str(enrol[0][1][0]))
    cv2.imwrite(str(first / "blurred.png"), cv2.GaussianBlur(sharp, (0, 0), 2.5))
    multi = faces_dir / "small" / "multi_face" / "face_recognition_two_people.jpg"
    (first / "two_people.jpg").symlink_to(multi)
    (first / "notes.txt").write_text("not an image")  # ignored: not an image extension
    (first / "broken.jpg").write_bytes(b"not really a jpeg")
    meta = root / "meta.csv"
    meta.write_text(f"subject_id,category,priority,threshold\n{enrol[1][0]},missing,2,7.5\n")
    return {
        "kit": kit,
        "root": root,
        "cfg": cfg_path,
        "faces": faces,
        "meta": meta,
        "enrol": enrol,
        "stranger": stranger,
        "analyzer": analyzer,
    }


def test_build_install_match_round_trip(enrolled: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    root: Path = enrolled["root"]  # type: ignore[assignment]
    enrol: list[tuple[str, list[Path]]] = enrolled["enrol"]  # type: ignore[assignment]
    out = root / "v1.wl"
    rc = main(
        [
            "watchlist", "build", "--faces", str(enrolled["faces"]), "--meta", str(enrolled["meta"]),
            "--sign", str(root / "backoffice-keys"),
            "--to", str(root / "device-keys" / "device_x25519.pub.pem"),
            "--to", str(root / "other-device-keys" / "device_x25519.pub.pem"),
            "--expires", "2999-01-01T00:00:00Z", "--version", "1", "--out", str(out), "--json",
            "--config", str(enrolled["cfg"]),
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(captured.out)
    status = {Path(r["image"]).name: r["status"] for r in report["images"]}
    assert status["blank.png"] == "no_face"
    assert status["two_people.jpg"] == "several_faces"
    assert status["blurred.png"] == "poor_quality"
    assert status["broken.jpg"] == "unreadable"
    assert "notes.txt" not in status
    assert report["accepted"] == 2 * N_SUBJECTS
    data = out.read_bytes()
    for name, _ in enrol:
        assert name.encode() not in data  # subject ids only inside the ciphertext
    # The header names the face mesh the chips were cut with, as the device will cut its probes.
    from edge.core.inference import default_models_dir, load_manifest
    from edge.core.keys import load_backoffice_keys
    from edge.core.watchlist.bundle import read_header

    header = read_header(data, [load_backoffice_keys(root / "backoffice-keys").ed25519_public], 1 << 30)
    assert header.landmarks_sha256 == load_manifest(default_models_dir())["face_mesh_fp32"].sha256

    assert main(["watchlist", "install", str(out), "--config", str(enrolled["cfg"])]) == 0
    assert f"{N_SUBJECTS} subjects, {N_SUBJECTS} templates" in capsys.readouterr().out  # photos fused

    from edge.device.watchlist.store import store_from_config

    store = store_from_config(load_config(enrolled["cfg"]))  # type: ignore[arg-type]
    wl = store.load()
    assert wl is not None and wl.n_templates == N_SUBJECTS
    by_id = {s.subject_id: s for s in wl.subjects}
    assert by_id[enrol[1][0]].category == "missing" and by_id[enrol[1][0]].threshold == 7.5
    # Scored as the device scores (flip, cohort S-norm) at the balanced operating point.
    from edge.core.watchlist.policy import policy_for

    cfg = load_config(enrolled["cfg"])  # type: ignore[arg-type]
    matcher = store.holder.matcher(*policy_for(cfg.model_copy(update={"matching": cfg.matching.model_copy(
        update={"operating_point": "balanced"})})).matcher_args())  # fmt: skip
    assert matcher is not None
    analyzer = enrolled["analyzer"]

    def probe(path: Path) -> np.ndarray:  # type: ignore[type-arg]
        from edge.core.imageio import decode_rgb as read_image

        face = analyzer.primary(read_image(path))  # type: ignore[attr-defined]
        assert face is not None and face.embedding is not None, path
        return face.embedding  # type: ignore[no-any-return]

    # Held-out photos (never enrolled) of each enrolled person: right subject on top, never a wrong match.
    right = 0
    for name, images in enrol:
        for img in images[2:4]:
            p = probe(img)
            scores = matcher.subject_scores(p[None, :])[0]
            assert wl.subjects[int(np.argmax(scores))].subject_id == name, img.name
            m = matcher.match(p)
            assert m is None or m.subject.subject_id == name
            right += m is not None
    # The balanced point finds about half of single held-out photos on LFW (docs/BENCHMARKS.md).
    assert right >= N_SUBJECTS // 2
    # Someone not on the list is not matched.
    stranger = enrolled["stranger"]
    for img in stranger[1][:2]:  # type: ignore[index]
        assert matcher.match(probe(img)) is None


def test_build_report_table_and_failure_when_no_subject_is_usable(
    enrolled: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    root: Path = enrolled["root"]  # type: ignore[assignment]
    faces = root / "faces-bad"
    (faces / "only_blank").mkdir(parents=True)
    import cv2

    cv2.imwrite(str(faces / "only_blank" / "a.png"), np.full((200, 200, 3), 90, np.uint8))
    rc = main(
        [
            "watchlist", "build", "--faces", str(faces), "--sign", str(root / "backoffice-keys"),
            "--to", str(root / "device-keys" / "device_x25519.pub.pem"),
            "--expires", "2999-01-01T00:00:00Z", "--version", "2", "--out", str(root / "bad.wl"),
            "--config", str(enrolled["cfg"]),
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 2
    assert "only_blank/a.png" in captured.out and "no_face" in captured.out  # the table
    assert "no subject has a usable image (only_blank)" in captured.err
    assert not (root / "bad.wl").exists()
