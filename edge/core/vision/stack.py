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
from edge.core.inference import TFLiteModel, load_model
from edge.core.types import F32, U8
from edge.core.vision.align import Aligner
from edge.core.vision.detect import FaceDetector
from edge.core.vision.embed import Embedder
from edge.core.vision.landmarks import MeshAligner, MeshLandmarker
from edge.core.vision.quality import FACE_REGION, QualityGate
from edge.core.vision.scoring import chip_landmarks, load_scoring

# build_vision_stack(landmarks=...): the embedder's recipe decides (scoring.landmarks).
FROM_RECIPE = "<from the embedder's recipe>"


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
    landmarks: str | None = None  # the face mesh placing the chips' points, if any


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
    # The face mesh that places the embedded chips' points when the embedder's recipe names one.
    # The gate keeps the keypoint fit: its face region needs no more, and it judges every face
    # of a frame while only the few faces embedded pay for the mesh.
    mesh: MeshAligner | None = None

    @property
    def embed_dim(self) -> int:
        return self.embedder.dim

    def gate_regions(self, image: U8, matrices: F32) -> U8:
        """The face region the quality gate judges, cut in its reference geometry for any chip
        template (Aligner.cut), so its sharpness threshold means the same whatever the embedder."""
        regions: U8 = self.aligner.cut(image, matrices, *FACE_REGION)
        return regions

    def models(self) -> list[TFLiteModel]:
        """Every network the stack invokes (the light detector shares the detector's interpreter)."""
        nets = [self.detector.model, self.embedder.model]
        return nets if self.mesh is None else [*nets, self.mesh.landmarker.model]

    def chip_matrices(self, image: U8, keypoints: F32, fit: F32) -> F32:
        """Frame→chip matrices of the faces with these detector keypoints, given `fit`, their
        keypoint fit (aligner.matrices): the fit itself, or the face mesh's where there is one."""
        return fit if self.mesh is None else self.mesh.matrices(image, keypoints)

    def cut_chips(self, image: U8, keypoints: F32, fit: F32) -> tuple[U8, F32]:
        """The embedder's chips of these faces (a view of a reused buffer) and their matrices,
        given their keypoint fit (the gate's)."""
        mats = self.chip_matrices(image, keypoints, fit)
        return self.aligner.align_with(image, mats), mats

    def chips(self, image: U8, keypoints: F32) -> tuple[U8, F32]:
        """The embedder's chips of these faces (a view of a reused buffer) and their matrices."""
        return self.cut_chips(image, keypoints, self.aligner.matrices(keypoints))


def build_vision_stack(
    cfg: Config,
    use: StackUse,
    *,
    models_dir: Path | None = None,
    detector_id: str | None = None,
    embedder_id: str | None = None,
    flip: bool | None = None,
    landmarks: str | None = FROM_RECIPE,
) -> VisionStack:
    """Load the configured (or named) models, sha256-checked, with the configured thread count.

    `flip` None and `landmarks` FROM_RECIPE take the embedder's scoring recipe from the manifest
    (what the device does); evaluation passes flip False to embed chip and mirror itself (and
    landmarks None: it cuts each alignment itself), and the cohort builder names the face mesh
    it is about to write into the recipe.
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
    aligner = Aligner.for_template(embedder.template, embedder.chip_size)
    mesh_id = chip_landmarks(emb_id, mdir) if landmarks == FROM_RECIPE else landmarks
    mesh = None
    if mesh_id is not None:
        mesh = MeshAligner(MeshLandmarker(load_model(mesh_id, mdir, num_threads=threads)), aligner.size, aligner.kind)
    return VisionStack(
        use=use,
        detector=detector,
        aligner=aligner,
        quality=QualityGate(cfg.quality),
        embedder=embedder,
        model_ids=ModelIds(det_id, emb_id, mesh_id),
        detector_light=light,
        tiles_every_n=d.tiles_every_n if not stills else 1,
        mesh=mesh,
    )


def same_chips(stacks: list[VisionStack]) -> VisionStack:
    """The first stack, once every stack is known to cut the same chips (compared on the same chips)."""
    kinds = {(s.embedder.template, s.embedder.chip_size, s.model_ids.landmarks) for s in stacks}
    if len(kinds) != 1:
        names = ", ".join(
            f"{s.model_ids.embedder} ({s.embedder.template.value} {s.embedder.chip_size}px"
            f"{', points by ' + s.model_ids.landmarks if s.model_ids.landmarks else ''})"
            for s in stacks
        )
        raise InputError(f"embedders cut different chips and cannot be compared on one: {names}")
    return stacks[0]
