"""The vision stack, built in one place from the configuration: detector → aligner → quality gate → embedder.

The camera loop, enrolment (custody stills), the score cohort and `lfr-edge eval` all take their
stages from `build_vision_stack`, so a watchlist template and a live probe are made by the same
models, the same chip geometry and the same gate thresholds. What differs between a camera frame
and a still is stated once, by `StackUse`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from edge.core.config import Config
from edge.core.errors import InputError
from edge.core.inference import load_model
from edge.core.types import F32, U8
from edge.core.vision.align import Aligner
from edge.core.vision.detect import FaceDetector
from edge.core.vision.embed import Embedder
from edge.core.vision.quality import FACE_REGION, QualityGate
from edge.core.vision.scoring import load_scoring


class StackUse(enum.Enum):
    # Wide camera frames: tiled detection (with a whole-frame-only pass between tile passes when
    # detection.tiles_every_n > 1) and faces under detection.min_face_px dropped.
    CAMERA = "camera"
    # Portrait stills (custody photos, evaluation faces): one whole-frame pass, every face kept;
    # the quality gate alone judges a still.
    STILLS = "stills"


@dataclass(frozen=True, slots=True)
class ModelIds:
    detector: str
    embedder: str


@dataclass(frozen=True, slots=True)
class VisionStack:
    use: StackUse
    detector: FaceDetector
    aligner: Aligner
    quality: QualityGate
    embedder: Embedder
    model_ids: ModelIds
    # Whole-frame pass for the frames between tile passes (CAMERA with tiles_every_n > 1).
    detector_light: FaceDetector | None = None
    tiles_every_n: int = 1

    @property
    def embed_dim(self) -> int:
        return self.embedder.dim

    def gate_regions(self, image: U8, matrices: F32) -> U8:
        """The face region the quality gate judges, cut in its reference geometry for any chip
        template (Aligner.cut), so its sharpness threshold means the same whatever the embedder."""
        regions: U8 = self.aligner.cut(image, matrices, *FACE_REGION)
        return regions


def build_vision_stack(
    cfg: Config,
    use: StackUse,
    *,
    models_dir: Path | None = None,
    detector_id: str | None = None,
    embedder_id: str | None = None,
    flip: bool | None = None,
) -> VisionStack:
    """Load the configured (or named) models, sha256-checked, with the configured thread count.

    `flip` None takes the embedder's scoring recipe from the manifest (what the device does);
    evaluation passes False to embed chip and mirror itself.
    """
    mdir = models_dir or cfg.models.dir
    det_id = detector_id or cfg.models.detector
    emb_id = embedder_id or cfg.models.embedder
    threads = cfg.models.num_threads
    d = cfg.detection
    stills = use is StackUse.STILLS
    detector = FaceDetector.from_settings(
        load_model(det_id, mdir, num_threads=threads), d, whole_frame_only=stills, min_face=not stills
    )
    light = None
    if not stills and d.tiles_every_n > 1:
        # Same interpreter (both run batch 1, one after the other), whole-frame view only.
        light = FaceDetector.from_settings(detector.model, d, whole_frame_only=True)
    do_flip = load_scoring(emb_id, mdir).flip if flip is None else flip
    embedder = Embedder(load_model(emb_id, mdir, num_threads=threads), flip=do_flip)
    return VisionStack(
        use=use,
        detector=detector,
        aligner=Aligner.for_template(embedder.template, embedder.chip_size),
        quality=QualityGate(cfg.quality),
        embedder=embedder,
        model_ids=ModelIds(det_id, emb_id),
        detector_light=light,
        tiles_every_n=d.tiles_every_n if not stills else 1,
    )


def same_chips(stacks: list[VisionStack]) -> VisionStack:
    """The first stack, once every stack is known to cut the same chips (compared on the same chips)."""
    kinds = {(s.embedder.template, s.embedder.chip_size) for s in stacks}
    if len(kinds) != 1:
        names = ", ".join(f"{s.model_ids.embedder} ({s.embedder.template.value} {s.embedder.chip_size}px)" for s in stacks)
        raise InputError(f"embedders cut different chips and cannot be compared on one: {names}")
    return stacks[0]
