"""`lfr-edge bench recognition` end to end on a small cast: who is alerted, judged against the video."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.cli.main import main
from edge.lab.bench.recognition import Appearance, Cast, judge


def test_alerts_are_judged_by_who_was_there() -> None:
    cast = Cast(
        enrolled={"Ann": ["Ann/1.jpg"], "Bob": ["Bob/1.jpg"]},
        shown=[Appearance("Ann", "Ann/2.jpg", True, 0, 0, 9), Appearance("Cy", "Cy/1.jpg", False, 1, 0, 9),
               Appearance("Bob", "Bob/2.jpg", True, 2, 0, 9), Appearance("Dee", "Dee/2.jpg", True, 3, 0, 9)],
    )  # fmt: skip
    size = (1280, 720)
    alerts = [
        {"subject_id": "Ann", "frame_seq": 5, "bbox": [100, 100, 200, 200]},  # Ann, in cell 0: right
        {"subject_id": "Bob", "frame_seq": 5, "bbox": [500, 100, 600, 200]},  # Cy the stranger, cell 1: false
        {"subject_id": "Ann", "frame_seq": 6, "bbox": [900, 100, 1000, 200]},  # Bob shown, Ann named: wrong
        {"subject_id": "Ann", "frame_seq": 300, "bbox": [100, 100, 200, 200]},  # nobody there then
    ]
    o = judge(cast, size, alerts, in_list={"Ann", "Bob"})
    assert (o.enrolled_shown, o.failed_to_enrol_shown, o.enrolled_alerted) == (2, 1, 1)
    assert (o.strangers_shown, o.strangers_alerted) == (1, 1)
    assert (o.false_alerts, o.wrong_subject_alerts, o.unplaced_alerts) == (3, 1, 1)


def test_bench_recognition_runs_the_real_path(
    faces_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge.lab.localbroker import mosquitto_available

    if not mosquitto_available():
        pytest.skip("Debian's mosquitto is not installed")
    code = main(["bench", "recognition", "--faces", str(faces_dir / "lfw"), "--limit", "40", "--quiet",
                 "--work", str(tmp_path / "run"), "--json"])  # fmt: skip
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    o = r["outcome"]
    assert o["enrolled_shown"] >= 5 and o["strangers_shown"] >= 20
    # Nothing lost between the device and the back office, nothing forged.
    assert o["alerts"] == r["device_alerts_raised"] and r["listener_rejected"] == 0
    assert r["matching"]["operating_point"] == "strict" and r["matching"]["units"] == "snorm"
    assert o["false_alerts"] == 0  # strangers at the shipped operating point
    assert o["enrolled_alerted"] >= 1


def test_diagnose_on_the_fit_half_then_levers(
    faces_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tuning tool: a fit-half video embedded face by face, then every lever replayed offline."""
    from edge.core.config import Config
    from edge.lab.bench.recognition_diag import SHIPPED

    out = tmp_path / "fit.npz"
    code = main(["bench", "recognition", "--faces", str(faces_dir / "lfw"), "--half", "fit", "--limit", "30",
                 "--diagnose", str(out), "--quiet", "--json"])  # fmt: skip
    assert code == 0
    dg = json.loads(capsys.readouterr().out)
    assert dg["half"] == "fit" and dg["faces"] > 100 and dg["subjects"] >= 3
    # The shipped cohort was built from the fit half: the cast's own rows are taken out.
    assert dg["cohort_rows_dropped"] >= dg["people"] * 0.8
    assert main(["bench", "recognition", "--faces", str(faces_dir / "lfw"), "--levers", str(out), "--json"]) == 0
    lv = json.loads(capsys.readouterr().out)
    rows = {r["lever"]: r for r in lv["levers"]}
    assert lv["half"] == "fit" and len(rows) >= 10
    shipped = lv["levers"][0]
    assert shipped["lever"] == SHIPPED.name
    # More looks per track embed more; the ceiling embeds every face of the video.
    assert rows["tracking.embed_every_n 1"]["embeddings"] > shipped["embeddings"]
    assert lv["levers"][-1]["embeddings"] == dg["faces"]
    assert all(0 <= r["enrolled_alerted"] <= r["enrolled_people"] for r in rows.values())
    assert set(shipped["tpir_at_track_fpir"]) == {"0.005", "0.01", "0.02"}
    # The row named "shipped" is what the config ships.
    q, t = Config().quality, Config().tracking
    assert (q.min_sharpness, q.min_det_score, q.max_yaw_deg, q.max_roll_deg, q.min_interocular_px) == (
        SHIPPED.min_sharpness, SHIPPED.min_det_score, SHIPPED.max_yaw, SHIPPED.max_roll, SHIPPED.min_iod
    )
    assert (t.embed_every_n, t.best_k, t.match_each_view) == (SHIPPED.every_n, SHIPPED.best_k, SHIPPED.also_single)
