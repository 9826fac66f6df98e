"""Test video generator: real faces (LFW) moving across a synthetic background, with ground truth.

Each person is a real LFW photograph: the central region (LFW deep-funneled images are 250x250
with the face in the middle, about 110 px wide) is cut out with a feathered elliptical mask and
pasted, scaled so the face is 40-200 px wide, moving inside its own cell of a 3x2 grid so paths
never overlap. Some identities are enrolled (the watchlist is built from *other* photos of them),
some are not. Written as mp4 (mp4v) and as a folder of JPEG frames, plus truth.json.

Run directly to make a clip: python tests/videogen.py OUT_DIR [--size 1920x1080] [--frames N]
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from edge.lab.bench.recognition import face_sprite as bench_face_sprite
from edge.lab.bench.recognition import paste_face

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]



@dataclass(frozen=True)
class Person:
    identity: str
    video_image: str  # LFW path (relative to lfw/) shown in the video
    enrolled: bool
    cell: int  # 0..5 in the 3x2 grid
    size0: float  # face width in px at first/last visible frame
    size1: float
    first: int  # first and last visible frame (inclusive)
    last: int


# Enrolled people use photo _0001 in the video and other photos for enrolment. The cast was picked
# among LFW identities the dlib embedder separates well on the original photos (genuine cosine
# >= 0.96, best impostor <= 0.89 with our detector/aligner), so tests on this clip check the loop
# (tracking, fusion, one event per person, cooldown) rather than the embedder's accuracy, which
# `lfr-edge eval` measures.
DEFAULT_CAST = (
    ("Jimmy_Carter", True, 0, 180.0, 130.0, 0.0, 1.0),
    ("Rob_Marshall", True, 1, 70.0, 120.0, 0.0, 1.0),
    ("Venus_Williams", True, 2, 110.0, 150.0, 0.1, 0.9),
    ("Catherine_Zeta-Jones", False, 3, 150.0, 200.0, 0.0, 1.0),
    ("Liza_Minnelli", False, 4, 90.0, 55.0, 0.0, 0.55),
    ("Jennifer_Lopez", False, 4, 45.0, 80.0, 0.6, 1.0),
    ("Bulent_Ecevit", False, 5, 40.0, 100.0, 0.0, 1.0),
)


def default_cast(n_frames: int) -> list[Person]:
    out = []
    for ident, enrolled, cell, s0, s1, f0, f1 in DEFAULT_CAST:
        first = round(f0 * (n_frames - 1))
        last = round(f1 * (n_frames - 1))
        out.append(Person(ident, f"{ident}/{ident}_0001.jpg", enrolled, cell, s0, s1, first, last))
    return out


def enrolment_images(lfw: Path, identity: str, n: int = 3) -> list[Path]:
    """Photos of an enrolled identity other than the one shown in the video."""
    photos = sorted((lfw / identity).glob("*.jpg"))
    return [p for p in photos if not p.name.endswith("_0001.jpg")][:n]


def face_sprite(lfw: Path, rel: str) -> tuple[U8, F32]:
    """RGB face region and its feathered elliptical alpha (float 0..1)."""
    if not (lfw / rel).exists():
        raise FileNotFoundError(lfw / rel)
    return bench_face_sprite(lfw / rel)


def background(width: int, height: int, rng: np.random.Generator) -> U8:
    """Smooth coloured texture with a few blocks: non-uniform, but nothing face-like."""
    low = rng.integers(40, 200, size=(9, 16, 3)).astype(np.uint8)
    bg = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 120))
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        cv2.rectangle(bg, (x0, y0), (x1, y1), colour, thickness=-1)
    return np.asarray(cv2.GaussianBlur(bg, (0, 0), 3.0), np.uint8)


_paste = paste_face


def generate(
    faces_dir: Path,
    out_dir: Path,
    width: int = 1280,
    height: int = 720,
    n_frames: int = 90,
    fps: float = 15.0,
    seed: int = 0,
    cast: list[Person] | None = None,
    write_mp4: bool = True,
    write_dir: bool = True,
) -> dict[str, object]:
    """Writes out_dir/clip.mp4, out_dir/frames/NNNNN.jpg and out_dir/truth.json; returns the truth."""
    lfw = faces_dir / "lfw"
    rng = np.random.default_rng(seed)
    cast = cast or default_cast(n_frames)
    bg = background(width, height, rng)
    sprites = {p.identity: face_sprite(lfw, p.video_image) for p in cast}
    cw, ch = width / 3, height / 2
    paths = []
    for p in cast:
        col, row = p.cell % 3, p.cell // 3
        # Horizontal drift inside the cell plus a little vertical wander; never leaves the cell.
        x_a = col * cw + 0.3 * cw + rng.uniform(-0.05, 0.05) * cw
        x_b = col * cw + 0.7 * cw + rng.uniform(-0.05, 0.05) * cw
        if rng.random() < 0.5:
            x_a, x_b = x_b, x_a
        y_c = row * ch + 0.5 * ch
        paths.append((x_a, x_b, y_c, rng.uniform(0, 2 * np.pi)))

    out_dir.mkdir(parents=True, exist_ok=True)
    frames_dir = out_dir / "frames"
    if write_dir:
        frames_dir.mkdir(exist_ok=True)
    writer = None
    if write_mp4:
        writer = cv2.VideoWriter(str(out_dir / "clip.mp4"), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
        if not writer.isOpened():
            raise RuntimeError("cv2.VideoWriter cannot write mp4v here")
    boxes: dict[str, list[list[float] | None]] = {p.identity: [] for p in cast}
    noise = rng.normal(0, 3.0, size=(height, width, 3)).astype(np.float32)
    for f in range(n_frames):
        frame = np.clip(bg.astype(np.float32) + np.roll(noise, f * 7, axis=1), 0, 255).astype(np.uint8)
        for p, (x_a, x_b, y_c, phase) in zip(cast, paths, strict=True):
            if not p.first <= f <= p.last:
                boxes[p.identity].append(None)
                continue
            t = (f - p.first) / max(1, p.last - p.first)
            size = p.size0 + (p.size1 - p.size0) * t
            cx = x_a + (x_b - x_a) * t
            cy = y_c + 0.08 * ch * np.sin(phase + 2 * np.pi * t)
            sprite, alpha = sprites[p.identity]
            boxes[p.identity].append([round(v, 1) for v in _paste(frame, sprite, alpha, cx, cy, size)])
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        if writer is not None:
            writer.write(bgr)
        if write_dir:
            cv2.imwrite(str(frames_dir / f"{f:05d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if writer is not None:
        writer.release()
    truth: dict[str, object] = {
        "width": width,
        "height": height,
        "frames": n_frames,
        "fps": fps,
        "people": [asdict(p) for p in cast],
        "enrolled": [p.identity for p in cast if p.enrolled],
        "not_enrolled": [p.identity for p in cast if not p.enrolled],
        "boxes": boxes,
    }
    (out_dir / "truth.json").write_text(json.dumps(truth))
    return truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    default_faces = os.environ.get("LFR_EDGE_FACES") or Path(__file__).resolve().parents[2] / "shared/data/faces"
    ap.add_argument("--faces", type=Path, default=Path(default_faces), help="public face data (LFW layout)")
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.lower().split("x"))
    truth = generate(a.faces, a.out_dir, w, h, a.frames, a.fps, a.seed)
    print(f"wrote {a.out_dir} ({truth['frames']} frames {w}x{h}; enrolled {truth['enrolled']})")


if __name__ == "__main__":
    main()
