"""`lfr-edge bench pipeline` runs the real loop and reports every stage (figures are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import videogen

ROOT = Path(__file__).resolve().parent.parent


def test_bench_pipeline_json_reports_every_stage(faces_dir: Path, tmp_path: Path) -> None:
    videogen.generate(faces_dir, tmp_path, 640, 360, n_frames=8, write_mp4=True, write_dir=False)
    exe = ROOT / ".venv" / "bin" / "lfr-edge"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edge"]
    out = subprocess.run(
        [*cmd, "bench", "--source", str(tmp_path / "clip.mp4"), "--json", "--frames", "6"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    ours = r["ours"]
    assert ours["frames"] == 6 and ours["frame_size"] == [640, 360]
    assert set(ours["stages"]) == {"capture", "detect", "align", "quality", "embed", "match"}
    assert ours["stages"]["detect"]["frames_run"] == 6 and ours["faces_seen"] > 0
    assert 0.0 < ours["outside_model_share_of_frame_time"] < 1.0 and ours["peak_rss_mb"] > 0


def test_bench_refuses_a_missing_source(tmp_path: Path) -> None:
    exe = ROOT / ".venv" / "bin" / "lfr-edge"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edge"]
    out = subprocess.run([*cmd, "bench", "--source", str(tmp_path / "nope.mp4")], capture_output=True, text=True)
    assert out.returncode == 2 and "no such video file" in out.stderr
