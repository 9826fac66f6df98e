"""Frame sources and the latest-frame grabber, on real files and a camera that really fails."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.core.config import CameraConfig
from edge.core.errors import InputError
from edge.core.types import U8
from edge.device.camera import LatestFrameGrabber, SourceFailure, make_source, open_source
from edge.device.camera.base import FrameSource


def _write_frames(folder: Path, n: int, size: tuple[int, int] = (64, 48)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    for i in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        img[:, :, 2] = 200  # BGR on disk: red
        img[0, 0, 1] = i  # frame index in the green channel of one pixel
        cv2.imwrite(str(folder / f"{i:04d}.png"), img)


def _write_mp4(path: Path, n: int, size: tuple[int, int] = (160, 120)) -> None:
    w, h = size
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, (w, h))
    for i in range(n):
        img = np.full((h, w, 3), 30, np.uint8)
        img[:, : w // 2, 0] = 220  # left half blue in BGR
        cv2.putText(img, str(i), (60, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
        vw.write(img)
    vw.release()


def test_dir_source_reads_images_in_order_as_rgb(tmp_path: Path) -> None:
    _write_frames(tmp_path / "f", 5)
    src = open_source(f"dir:{tmp_path / 'f'}", CameraConfig())
    frames = []
    while (f := src.read()) is not None:
        frames.append(f)
    src.close()
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4]
    assert [int(f.image[0, 0, 1]) for f in frames] == [0, 1, 2, 3, 4]
    assert frames[0].image[5, 5].tolist() == [200, 0, 0]  # red stays red: RGB, not BGR
    assert all(b.t_mono >= a.t_mono for a, b in itertools.pairwise(frames))


def test_file_source_reads_every_frame_then_ends_or_loops(tmp_path: Path) -> None:
    clip = tmp_path / "c.mp4"
    _write_mp4(clip, 12)
    src = open_source(f"file:{clip}", CameraConfig())
    n = 0
    while (f := src.read()) is not None:
        assert f.image.shape == (120, 160, 3) and f.image.dtype == np.uint8
        assert f.image[60, 20, 2] > 150 and f.image[60, 20, 0] < 80  # blue half arrives as RGB blue
        n += 1
    src.close()
    assert n == 12
    looping = open_source(f"file:{clip}", CameraConfig(loop=True))
    seqs = [looping.read() for _ in range(30)]
    looping.close()
    assert all(f is not None for f in seqs)


def test_file_source_decodes_with_the_configured_thread_count(tmp_path: Path) -> None:
    # FFmpeg's default frame threads cost ~60 % more CPU per frame here and delay each frame;
    # the loop needs the other core (camera.decode_threads, default 1).
    clip = tmp_path / "c.mp4"
    _write_mp4(clip, 3)
    for threads in (1, 2):
        src = open_source(f"file:{clip}", CameraConfig(decode_threads=threads))
        try:
            assert src.read() is not None
            assert src._cap.get(cv2.CAP_PROP_N_THREADS) == threads  # type: ignore[attr-defined]
        finally:
            src.close()


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("webcam0", "unknown camera source"),
        ("file:/nonexistent/clip.mp4", "video file not found"),
        ("dir:/nonexistent/frames", "image directory not found"),
        ("v4l2:", "needs a device"),
    ],
)
def test_bad_uri_is_one_clear_line(uri: str, needle: str) -> None:
    with pytest.raises(InputError) as e:
        open_source(uri, CameraConfig())
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_undecodable_file_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "notavideo.mp4"
    bad.write_text("this is not a video")
    with pytest.raises(InputError, match="cannot decode"):
        open_source(f"file:{bad}")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("no images")
    with pytest.raises(InputError, match="no images"):
        open_source(f"dir:{tmp_path / 'd'}")


class FakeCamera(FrameSource):
    """A live camera in software: produces frames at `fps`; can be told to fail and to stay down."""

    live = True
    name = "fakecam"

    def __init__(self, fps: float = 200.0, fail_after: int | None = None, down_opens: int = 0) -> None:
        super().__init__()
        self.period = 1.0 / fps
        self.fail_after = fail_after
        self.down_opens = down_opens  # how many open() attempts fail after the failure
        self.opens = 0
        self.failed = False
        self.is_open = False

    def open(self) -> None:
        self.opens += 1
        if self.failed and self.down_opens > 0:
            self.down_opens -= 1
            raise SourceFailure("fakecam: device busy")
        self.is_open = True

    def _grab(self) -> U8 | None:
        if not self.is_open:
            raise SourceFailure("fakecam: not open")
        time.sleep(self.period)
        if self.fail_after is not None and self._seq + 1 >= self.fail_after and not self.failed:
            self.failed = True
            raise SourceFailure("fakecam: cable pulled")
        return np.zeros((8, 8, 3), np.uint8)

    def close(self) -> None:
        self.is_open = False


def test_grabber_keeps_only_the_freshest_frame() -> None:
    cam = FakeCamera(fps=500.0)
    with LatestFrameGrabber(cam) as g:
        got = []
        for _ in range(10):
            f = g.get(timeout=1.0)
            assert f is not None
            got.append(f.seq)
            time.sleep(0.03)  # a slow consumer: the camera produces ~15 frames meanwhile
        dropped = g.dropped
    assert dropped > 20
    gaps = np.diff(got)
    assert (gaps >= 1).all() and gaps.mean() > 3  # skipped ahead, never a backlog


def test_grabber_reconnects_with_backoff_and_counts_it() -> None:
    cam = FakeCamera(fps=500.0, fail_after=5, down_opens=2)
    with LatestFrameGrabber(cam, reconnect_initial_s=0.01, reconnect_max_s=0.04) as g:
        seqs = []
        deadline = time.monotonic() + 5.0
        while len(seqs) < 15 and time.monotonic() < deadline:
            f = g.get(timeout=0.5)
            if f is not None:
                seqs.append(f.seq)
        assert g.reconnects == 1
    assert len(seqs) == 15 and max(seqs) > 5  # frames kept coming after the failure
    assert cam.opens == 4  # first open, two refused while "down", the successful reconnect


def test_grabber_replay_is_lossless_and_ends(tmp_path: Path) -> None:
    _write_frames(tmp_path / "f", 20)
    g = LatestFrameGrabber(make_source(f"dir:{tmp_path / 'f'}")).start()
    seqs = []
    while not g.ended:
        f = g.get(timeout=0.5)
        if f is not None:
            seqs.append(f.seq)
            time.sleep(0.002)
    g.stop()
    assert seqs == list(range(20)) and g.dropped == 0


def test_grabber_stop_is_prompt_even_while_reconnecting() -> None:
    cam = FakeCamera(fail_after=1, down_opens=10**6)
    g = LatestFrameGrabber(cam, reconnect_initial_s=5.0, reconnect_max_s=5.0).start()
    time.sleep(0.1)
    t = time.monotonic()
    g.stop(timeout=2.0)
    assert time.monotonic() - t < 1.0
    assert not any(th.name == "lfr-capture" and th.is_alive() for th in threading.enumerate())


def test_dead_rtsp_camera_is_retried_not_fatal_and_credentials_never_named() -> None:
    src = make_source("rtsp://cam:secret@127.0.0.1:9/stream", CameraConfig(stall_timeout_s=1.0))
    assert "secret" not in src.name and src.live
    g = LatestFrameGrabber(src, reconnect_initial_s=0.05, reconnect_max_s=0.1).start()
    time.sleep(0.5)
    assert g.get(timeout=0.1) is None and not g.ended and g.error is None  # still trying
    g.stop()
