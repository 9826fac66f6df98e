"""`lfr-edge demo`: the whole appliance on bundled public-domain data and a local broker.

Every step is the real command a back office or a device would run, in order:

1. a real Mosquitto on a free loopback port, with TLS (a CA made for the demo), passwords and an ACL;
2. back-office keys and device keys;
3. enrolment: a watchlist built from scikit-image's `astronaut` (Eileen Collins, NASA, public domain),
   signed by the back office and encrypted to the device;
4. a generated video: that face, a cat and a rocket moving across a street-like background;
5. the device installs the bundle, runs the camera loop on the video, and publishes over MQTT;
6. the back-office listener verifies, unseals and prints the alert;
7. the audit log is verified and the deployment record printed;
8. (unless --no-console) the review console, which ingested the same alert, is served on 127.0.0.1 with
   a demo supervisor whose password is printed, until Ctrl-C.

The probe face comes from the same photograph as the enrolment (it is the only public-domain
face a registry package ships); it is rescaled, moved and re-encoded, so the match is real but easy.
"""

from __future__ import annotations

import contextlib
import importlib
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from edge.core.errors import InputError, RuntimeFailure
from edge.core.timefmt import format_utc
from edge.lab.localrig import backoffice_config, device_config, run_cli

DEVICE_ID = "demo-van"
SUBJECT_ID = "eileen_collins"
U8 = npt.NDArray[np.uint8]


def _skimage_data() -> tuple[U8, U8, U8]:
    try:
        data: Any = importlib.import_module("skimage.data")
    except ImportError:
        raise InputError("the demo needs scikit-image (./setup.sh --dev installs it)") from None
    return data.astronaut(), data.chelsea(), data.rocket()


def _paste(frame: U8, sprite: npt.NDArray[Any], x: int, y: int) -> None:
    h, w = sprite.shape[:2]
    fh, fw = frame.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, fw), min(y + h, fh)
    if x1 > x0 and y1 > y0:
        frame[y0:y1, x0:x1] = sprite[y0 - y : y1 - y, x0 - x : x1 - x]


def make_video(path: Path, frames: int = 90, size: tuple[int, int] = (1280, 720), fps: float = 15.0) -> None:
    """The astronaut's face walks left to right growing from ~110 to ~180 px; a cat and a rocket cross too."""
    import cv2

    astronaut, cat, rocket = _skimage_data()
    face = astronaut[25:225, 125:330]  # head and shoulders of the enrolled person
    cat_crop = cat[20:280, 100:380]
    rocket_small = cv2.resize(rocket[:, 150:350], (110, 240))
    w, h = size
    rng = np.random.default_rng(7)
    # A street-like scene: sky gradient, a row of buildings, noise (so the background is not flat).
    bg = np.zeros((h, w, 3), np.uint8)
    bg[:] = np.linspace(200, 120, h, dtype=np.float32)[:, None, None].astype(np.uint8)
    for x in range(0, w, 160):
        top = int(rng.integers(150, 350))
        bg[top:, x : x + 150] = rng.integers(60, 140, 3, dtype=np.uint8)
    bg = np.clip(bg.astype(np.int16) + rng.integers(-6, 7, bg.shape, dtype=np.int16), 0, 255).astype(np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise RuntimeFailure(f"{path}: OpenCV cannot write mp4 here")
    try:
        for i in range(frames):
            t = i / max(frames - 1, 1)
            frame = bg.copy()
            s = 0.75 + 0.45 * t
            f = cv2.resize(face, (int(face.shape[1] * s), int(face.shape[0] * s)), interpolation=cv2.INTER_AREA)
            _paste(frame, f, int(60 + t * (w - 420)), int(300 - 60 * t))
            c = cv2.resize(cat_crop, (180, 167), interpolation=cv2.INTER_AREA)
            _paste(frame, c, int(w - 220 - t * (w - 300)), 480)
            _paste(frame, rocket_small, 1000, int(h - t * (h + 240)))
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


def _start_console(bo: Path, bo_cfg: dict[str, Any]) -> tuple[subprocess.Popen[str], str]:
    """The review console beside the listener (its own client id, so both get every alert), and a demo supervisor."""
    password = secrets.token_urlsafe(12)
    cfg = dict(bo_cfg, client_id="lfr-demo-console", console={"data_dir": str(bo / "console"), "port": 0,
                                                              "keys_dir": str(bo / "keys"), "secure_cookies": False})  # fmt: skip
    path = bo / "console.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = subprocess.run(
        [sys.executable, "-m", "edge", "backoffice", "user", "add", "--config", str(path), "--username", "demo",
         "--role", "supervisor", "--password-stdin"],
        input=password + "\n", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if r.returncode != 0:
        raise RuntimeFailure(f"demo supervisor not created: {r.stderr.strip()[-300:]}")
    log = bo / "console.log"
    with log.open("w") as err:  # a file, not a pipe: nobody reads the console's log while it serves
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "backoffice", "serve", "--config", str(path)],
            stdout=subprocess.PIPE, stderr=err, text=True,
        )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "serving http" not in line:
        proc.kill()
        raise RuntimeFailure(f"the review console did not start: {log.read_text().strip()[-300:]}")
    return proc, line.split("serving ", 1)[1].split()[0] + "\n" + password


def _stop(proc: subprocess.Popen[str] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_demo(out: Path | None, frames: int, keep: bool, console: bool = True) -> int:
    from edge.lab.localbroker import MosquittoBroker, mosquitto_available

    if not mosquitto_available():
        raise InputError("the demo needs Debian's mosquitto (apt-get install mosquitto; ./setup.sh --dev does it)")
    wd = out or Path(tempfile.mkdtemp(prefix="lfr-edge-demo-"))
    wd.mkdir(parents=True, exist_ok=True)
    step = 0

    def say(msg: str) -> None:
        nonlocal step
        step += 1
        print(f"[{step}] {msg}", flush=True)

    passwords = {DEVICE_ID: secrets.token_urlsafe(16), "backoffice": secrets.token_urlsafe(16)}
    broker = MosquittoBroker(wd / "broker", tls=True, users=passwords).start()
    console_proc: subprocess.Popen[str] | None = None
    try:
        say(f"Mosquitto with TLS, passwords and an ACL on {broker.uri}")
        bo, dev = wd / "backoffice", wd / "device"
        run_cli("backoffice", "init", "--dir", str(bo / "keys"))
        run_cli("keys", "init", "--dir", str(dev / "keys"))
        say("back-office keys and device keys created (0600)")

        enrol = bo / "custody" / SUBJECT_ID
        enrol.mkdir(parents=True, exist_ok=True)
        import cv2

        astronaut = _skimage_data()[0]
        cv2.imwrite(str(enrol / "astronaut.png"), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
        expires = format_utc(time.time() + 12 * 3600)
        bundle = bo / "watchlist-1.lfrw"
        run_cli("watchlist", "build", "--faces", str(enrol.parent), "--sign", str(bo / "keys"),
             "--to", str(dev / "keys" / "device_x25519.pub.pem"), "--expires", expires,
             "--version", "1", "--out", str(bundle))  # fmt: skip
        say(f"watchlist v1 enrolled from skimage astronaut (subject {SUBJECT_ID}), signed, encrypted to the device")

        video = wd / "street.mp4"
        make_video(video, frames=frames)
        say(f"generated {frames}-frame 1280x720 video: the enrolled face, a cat and a rocket crossing a street")

        dev_cfg = device_config(DEVICE_ID, dev, bo, broker.uri, broker.ca_file, passwords[DEVICE_ID],
                                f"file:{video}", "lfr-edge demo")  # fmt: skip
        dev_cfg["watchlist"]["inbox_dir"] = str(dev / "inbox")
        dev_cfg["mqtt"]["status_interval_s"] = 5
        (dev / "inbox").mkdir(parents=True, exist_ok=True)
        dev_yaml = dev / "lfr-edge.yaml"
        dev_yaml.write_text(yaml.safe_dump(dev_cfg, sort_keys=False))
        run_cli("check-config", "--config", str(dev_yaml))
        run_cli("watchlist", "install", str(bundle), "--config", str(dev_yaml))
        say("device: config checked, bundle verified (signature, recipient, expiry, model) and installed encrypted (at rest: the demo installs before it runs)")

        bo_cfg = backoffice_config(DEVICE_ID, dev, bo, broker.uri, broker.ca_file, passwords["backoffice"])
        bo_yaml = bo / "backoffice.yaml"
        bo_yaml.write_text(yaml.safe_dump(bo_cfg, sort_keys=False))
        listener = subprocess.Popen(
            [sys.executable, "-m", "edge", "alerts", "listen", "--config", str(bo_yaml), "--count", "1",
             "--timeout", "180", "--out", str(bo / "crops")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        if not broker.wait_for_log("backoffice", timeout=30):
            listener.kill()
            raise RuntimeFailure("the back-office listener did not connect to the broker")
        time.sleep(0.5)  # let the subscription land before the first alert
        say("back-office listener subscribed to lfr/+/alerts")
        console_login = ""
        if console:
            console_proc, console_login = _start_console(bo, bo_cfg)
            if not broker.wait_for_log("lfr-demo-console", timeout=30):
                raise RuntimeFailure("the review console did not connect to the broker")
            time.sleep(0.5)
            say("review console subscribed too (it stores the alert for review)")

        t0 = time.monotonic()
        run = run_cli("run", "--config", str(dev_yaml), check=False)
        if run.returncode != 0:
            listener.kill()
            raise RuntimeFailure(f"lfr-edge run failed: {run.stderr.strip().splitlines()[-3:]}")
        say(f"device: lfr-edge run processed the video in {time.monotonic() - t0:.1f} s and stopped at its end")

        try:
            lout, lerr = listener.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            listener.kill()
            lout, lerr = listener.communicate()
        print("\n--- back office receives ---")
        print(lout.strip() or "(no alert)")
        if listener.returncode != 0:
            print(lerr.strip(), file=sys.stderr)
            raise RuntimeFailure("the back office did not receive the expected alert")
        print("---")
        verify = run_cli("audit", "verify", "--config", str(dev_yaml), check=False)
        say(f"audit log: {verify.stdout.strip().splitlines()[-1] if verify.stdout.strip() else verify.stderr.strip()}")
        report = run_cli("deployment", "report", "--config", str(dev_yaml), check=False)
        print("\n--- deployment record ---")
        print(report.stdout.strip())
        print("---")
        print(f"\ndemo files: {wd}" if keep or out else "")
        if verify.returncode != 0:
            return 1
        if console_proc is not None:
            url, password = console_login.split("\n")
            say(f"review console: {url}  (user demo, password {password}); the alert is in its queue. Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                console_proc.wait()
        return 0
    finally:
        _stop(console_proc)
        broker.stop()
        if not keep and out is None:
            shutil.rmtree(wd, ignore_errors=True)
