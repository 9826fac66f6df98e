"""What ci/arm64-smoke.sh compares between an x86 run and an emulated arm64 run of the same clip.

Not a test module (pytest collects only test_*.py): a small tool run as
`python tests/arm64_probe.py COMMAND …`, once on the host and once inside the arm64 chroot.

* `prepare DIR [--frames N]`: back-office and device keys, a watchlist built from scikit-image's
  public-domain `astronaut`, and the demo's street clip (edge.lab.demo) stored losslessly, all in DIR. Run once,
  on the host; both sides then work on copies of DIR, so both match against the same bundle.
* `faces DIR --out F.json`: every frame of DIR's clip through the device's vision stack (camera
  use: tiled detection, alignment, the quality gate, the embedder): per face its box, score,
  gate decision and descriptor.
* `alerts DIR --out F.json`: a real Mosquitto (TLS, passwords, ACL; edge.lab.localbroker), the
  bundle installed, the back-office listener, and `lfr-edge run` on the clip until its end: the
  alerts the back office received (subject, frame time, score).
* `compare X86_DIR ARM_DIR`: the two runs' faces.json and alerts.json; exit 3 when they differ
  beyond the tolerances below, 0 when they agree.

Privacy: the clip shows only the public-domain astronaut (plus a cat and a rocket), and every
output stays in DIR, which the smoke job creates under its temporary directory and removes.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from any directory
    sys.path.insert(0, str(REPO))

from edge.core.config import parse_config  # noqa: E402
from edge.core.vision.stack import StackUse, build_vision_stack  # noqa: E402

DEVICE_ID = "arm64-probe"
SUBJECT_ID = "eileen_collins"
# Lossless (FFV1): an mp4's lossy decode itself gives different bytes on x86 and arm64 (ffmpeg's
# IDCT paths differ), which would hide what the appliance's own stages do.
CLIP = "clip.mkv"
MIN_COSINE = 0.999  # the bar for "the same embeddings"
MIN_IOU = 0.98  # boxes of the same face on both architectures
# Alert score (S-norm units) difference still called the same; which alerts are raised is compared
# exactly. S-norm divides cosines by the cohort's spread (~0.03), so tiny embedding differences
# show: keypoint chips moved one alert's score by 0.021 (2026-12-05); face-mesh chips, whose fp32
# landmarks differ in the last bits between XNNPACK's x86 and arm64 kernels, by 0.057 (10.267 vs
# 10.324, threshold 6.51, embedding cosine min 0.99982; 2026-12-06). A tenth of the 1.1 units
# between the balanced and strict points: it could move an alert across a named point only if the
# score sat within 0.1 of it.
MAX_SCORE_DIFF = 0.1


def _cli(*args: str, timeout: float = 900.0) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-3:]
        raise SystemExit(f"arm64_probe: lfr-edge {' '.join(args[:2])} failed (exit {r.returncode}): {tail}")
    return r


def prepare(d: Path, frames: int) -> None:
    import cv2

    from edge.lab.demo import _skimage_data, make_video

    bo, dev = d / "backoffice", d / "device"
    _cli("backoffice", "init", "--dir", str(bo / "keys"))
    _cli("keys", "init", "--dir", str(dev / "keys"))
    enrol = bo / "custody" / SUBJECT_ID
    enrol.mkdir(parents=True)
    cv2.imwrite(str(enrol / "astronaut.png"), cv2.cvtColor(_skimage_data()[0], cv2.COLOR_RGB2BGR))
    expires = (datetime.now(timezone.utc) + timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M:%SZ")
    _cli("watchlist", "build", "--faces", str(enrol.parent), "--sign", str(bo / "keys"),
         "--to", str(dev / "keys" / "device_x25519.pub.pem"), "--expires", expires,
         "--version", "1", "--out", str(d / "watchlist.lfrw"))  # fmt: skip
    make_video(d / "lossy.mp4", frames=frames)
    cap = cv2.VideoCapture(str(d / "lossy.mp4"))
    ok, bgr = cap.read()
    writer = cv2.VideoWriter(str(d / CLIP), cv2.VideoWriter.fourcc(*"FFV1"), 15.0, (bgr.shape[1], bgr.shape[0]))
    if not writer.isOpened():
        raise SystemExit("arm64_probe: OpenCV cannot write FFV1 here")
    while ok:
        writer.write(bgr)
        ok, bgr = cap.read()
    writer.release()
    cap.release()
    (d / "lossy.mp4").unlink()


def _frames(path: Path) -> list[np.ndarray[Any, Any]]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        out.append(np.ascontiguousarray(bgr[:, :, ::-1]))
    cap.release()
    return out


def faces(d: Path, out: Path) -> None:
    cfg = parse_config({"device": {"id": DEVICE_ID}}, d, "arm64_probe")
    vs = build_vision_stack(cfg, StackUse.CAMERA, models_dir=REPO / "models")
    rows: list[dict[str, Any]] = []
    for i, img in enumerate(_frames(d / CLIP)):
        dets = vs.detector.detect(img)
        if len(dets) == 0:
            continue
        # As the device does: the gate on the keypoint fit, the embedder on the chips its recipe cuts.
        fit = vs.aligner.matrices(dets.keypoints)
        quality = vs.quality.assess(dets.keypoints, dets.scores, vs.gate_regions(img, fit))
        vecs = vs.embedder.embed(vs.cut_chips(img, dets.keypoints, fit)[0])
        for j in range(len(dets)):
            rows.append({
                "frame": i, "box": [round(float(v), 3) for v in dets.boxes[j]], "score": float(dets.scores[j]),
                "accepted": quality[j].accepted, "sharpness": quality[j].sharpness,
                "embedding": [float(v) for v in vecs[j]],
            })  # fmt: skip
    out.write_text(json.dumps({"frames": len(_frames(d / CLIP)), "faces": rows}))


def alerts(d: Path, out: Path) -> None:
    import yaml

    from edge.lab.localbroker import MosquittoBroker
    from edge.lab.localrig import backoffice_config, device_config

    bo, dev = d / "backoffice", d / "device"
    passwords = {DEVICE_ID: secrets.token_urlsafe(16), "backoffice": secrets.token_urlsafe(16)}
    broker = MosquittoBroker(d / "broker", tls=True, users=passwords).start()
    try:
        cfg = device_config(DEVICE_ID, dev, bo, broker.uri, broker.ca_file, passwords[DEVICE_ID],
                            f"file:{d / CLIP}", "arm64 probe")  # fmt: skip
        # The per-subject cooldown runs on the monotonic clock, so whether a second track's match
        # alerts depends on how fast frames are processed (emulated arm64 is ~50x slower). Off,
        # every (track, subject) alerts once on both sides: a frame-indexed, comparable set.
        cfg["matching"] = {"cooldown_s": 0}
        (d / "device.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        _cli("watchlist", "install", str(d / "watchlist.lfrw"), "--config", str(d / "device.yaml"))
        bo_cfg = backoffice_config(DEVICE_ID, dev, bo, broker.uri, broker.ca_file, passwords["backoffice"])
        (d / "backoffice.yaml").write_text(yaml.safe_dump(bo_cfg, sort_keys=False))
        listener = subprocess.Popen(
            [sys.executable, "-m", "edge", "alerts", "listen", "--config", str(d / "backoffice.yaml"), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            if not broker.wait_for_log("backoffice", timeout=300):
                raise SystemExit("arm64_probe: the back-office listener did not connect to the broker")
            time.sleep(1.0)  # let the subscription land before the first alert
            t0 = time.monotonic()
            _cli("run", "--config", str(d / "device.yaml"), timeout=1800)
            run_s = time.monotonic() - t0
            time.sleep(3.0)  # the run flushes its spool before it exits; give the listener a moment
        finally:
            listener.terminate()
            lout, lerr = listener.communicate(timeout=60)
    finally:
        broker.stop()
    events = [json.loads(line) for line in lout.splitlines() if line.strip().startswith("{")]
    got = [e for e in events if e.get("event") == "alert"]
    out.write_text(json.dumps({"run_s": run_s, "alerts": got, "listener_stderr": lerr[-2000:]}))


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _alert_key(a: dict[str, Any]) -> tuple[str, int, int]:
    """Who, in which frame of the clip, on which track: what a reviewing officer would call the same alert."""
    return str(a["subject_id"]), int(a["frame_seq"]), int(a["track_id"])


def compare(x86: Path, arm: Path) -> int:
    fx = json.loads((x86 / "faces.json").read_text())
    fa = json.loads((arm / "faces.json").read_text())
    problems: list[str] = []
    if fx["frames"] != fa["frames"]:
        problems.append(f"frames decoded: x86 {fx['frames']}, arm64 {fa['frames']}")
    by_frame: dict[int, list[dict[str, Any]]] = {}
    for r in fa["faces"]:
        by_frame.setdefault(r["frame"], []).append(r)
    cosines: list[float] = []
    ious: list[float] = []
    flips = 0
    for r in fx["faces"]:
        cands = by_frame.get(r["frame"], [])
        best = max(cands, key=lambda c: _iou(r["box"], c["box"]), default=None)
        if best is None or _iou(r["box"], best["box"]) < MIN_IOU:
            problems.append(f"frame {r['frame']}: face at {r['box']} found on x86 only")
            continue
        cands.remove(best)
        ious.append(_iou(r["box"], best["box"]))
        a, b = np.asarray(r["embedding"]), np.asarray(best["embedding"])
        cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
        if r["accepted"] != best["accepted"]:
            flips += 1
            problems.append(f"frame {r['frame']}: quality gate {r['accepted']} on x86, {best['accepted']} on arm64")
    for f, rest in by_frame.items():
        for c in rest:
            problems.append(f"frame {f}: face at {c['box']} found on arm64 only")
    if cosines and min(cosines) < MIN_COSINE:
        problems.append(f"embedding cosine min {min(cosines):.5f} < {MIN_COSINE}")
    ax = [e for e in json.loads((x86 / "alerts.json").read_text())["alerts"] if e.get("event") == "alert"]
    aa = [e for e in json.loads((arm / "alerts.json").read_text())["alerts"] if e.get("event") == "alert"]
    if not ax:
        problems.append("no alert on x86: the clip proves nothing about alerts")
    kx = sorted(_alert_key(a) for a in ax)
    ka = sorted(_alert_key(a) for a in aa)
    if kx != ka:
        problems.append(f"alerts differ: x86 {kx}, arm64 {ka}")
    else:
        for a, b in zip(sorted(ax, key=_alert_key), sorted(aa, key=_alert_key), strict=True):
            sa, sb = a.get("score"), b.get("score")
            if isinstance(sa, (int, float)) and isinstance(sb, (int, float)) and abs(sa - sb) > MAX_SCORE_DIFF:
                problems.append(f"alert {_alert_key(a)}: score {sa} on x86, {sb} on arm64")
            if _iou(a["bbox"], b["bbox"]) < MIN_IOU:
                problems.append(f"alert {_alert_key(a)}: box {a['bbox']} on x86, {b['bbox']} on arm64")
    print(
        f"arm64 vs x86: {len(fx['faces'])} faces on x86, {len(fa['faces'])} on arm64 over {fx['frames']} frames; "
        f"box IoU min {min(ious, default=0.0):.4f}; embedding cosine min {min(cosines, default=0.0):.6f}; "
        f"gate decisions flipped {flips}; alerts x86 {len(ax)}, arm64 {len(aa)}"
    )
    for p in problems[:20]:
        print(f"  DIFF {p}")
    return 3 if problems else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="arm64_probe", description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("dir", type=Path)
    p.add_argument("--frames", type=int, default=12)
    for name in ("faces", "alerts"):
        q = sub.add_parser(name)
        q.add_argument("dir", type=Path)
        q.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare")
    c.add_argument("x86", type=Path)
    c.add_argument("arm", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args.dir, args.frames)
    elif args.cmd == "faces":
        faces(args.dir, args.out)
    elif args.cmd == "alerts":
        alerts(args.dir, args.out)
    else:
        return compare(args.x86, args.arm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
