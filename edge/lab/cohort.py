"""The score-normalisation cohort of an embedder: identity-mean descriptors of public faces.

One row per identity of the *fit* half of a labelled face folder (edge.lab.eval.identity_half), made
exactly as the device makes a probe (whole-image detection, primary face, the embedder's own
alignment, the chip and its mirror embedded and averaged), then averaged over the identity's
images. Identities of the eval half, on which every accuracy figure is reported, are never in it;
no image is kept, only descriptors. The embedder's `scoring` recipe (flip, cohort, top K) is
written beside it; `lfr-edge eval --calibrate` then adds the measured operating points.

Used for the shipped embedders by `python models/build.py --only cohort` and for an imported one
by `lfr-edge models cohort --embedder ID` (docs/MODELS.md). Needs no torch: it runs the device's
own runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.core.config import Config
from edge.core.errors import InputError
from edge.core.imageio import decode_rgb
from edge.core.inference import MANIFEST_NAME, load_manifest, sha256_file
from edge.core.vision.analyze import primary_chip
from edge.core.vision.stack import FROM_RECIPE, StackUse, build_vision_stack, same_chips
from edge.lab.eval import load_dataset

TOP_K = 100  # measured flat between 50 and 400 (docs/BENCHMARKS.md, "Recognition")
DETECTOR = "blazeface_full_range_int8"
RECIPE_KEYS = ("flip", "landmarks", "cohort", "top_k", "cohort_sha256")


def cohort_id(embedder_id: str) -> str:
    return f"cohort_{embedder_id}"


def build_cohort(
    models_dir: Path,
    faces: Path,
    embedder_ids: Sequence[str],
    say: Callable[[str], None] = print,
    build_command: str = "",
    landmarks: str | None = FROM_RECIPE,
) -> list[dict[str, Any]]:
    """Cohort files written into `models_dir`; returns their manifest entries and the embedders'
    entries with the scoring recipe set (measured operating points kept only for an unchanged cohort).

    `landmarks` names the face mesh that places the chips' points (None: the detector's keypoints);
    by default each embedder keeps its recipe's. The cohort is cut the way the device will cut."""
    ds = load_dataset(faces, half="fit")
    manifest = load_manifest(models_dir)
    for e in embedder_ids:
        if e not in manifest or manifest[e].role != "embedder":
            raise InputError(f"--embedder {e!r} is not an embedder in {models_dir / MANIFEST_NAME}")
    cfg = Config()
    # The stills stack enrolment uses, with chip and mirror embedded here (flip off in the stack).
    stacks = [
        build_vision_stack(
            cfg, StackUse.STILLS, models_dir=models_dir, detector_id=DETECTOR, embedder_id=e, flip=False, landmarks=landmarks
        )
        for e in embedder_ids
    ]
    stack = same_chips(stacks)  # one chip geometry for all, or a clear refusal
    embedders = {e: s.embedder for e, s in zip(embedder_ids, stacks, strict=True)}
    n_ids = len(ds.names)
    sums = {e: np.zeros((n_ids, emb.dim), np.float64) for e, emb in embedders.items()}
    counts = np.zeros(n_ids, np.int64)
    for i, rel in enumerate(ds.paths):
        rgb = decode_rgb(ds.root / rel)
        if rgb is None:
            continue
        chip = primary_chip(stack.detector, stack.chips, rgb)
        if chip is None:
            continue
        both = np.ascontiguousarray(np.stack([chip, chip[:, ::-1]]))
        for e, emb in embedders.items():
            v = emb.embed(both).sum(axis=0)
            sums[e][ds.identity[i]] += v / np.linalg.norm(v)
        counts[ds.identity[i]] += 1
        if (i + 1) % 500 == 0:
            say(f"[cohort] {i + 1}/{len(ds.paths)} images")
    used = counts > 0
    if int(used.sum()) < 2 * TOP_K:
        raise InputError(f"{faces}: only {int(used.sum())} fit-half identities with a face; a cohort needs {2 * TOP_K}")
    entries: list[dict[str, Any]] = []
    for e in embedder_ids:
        rows = sums[e][used]
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        cid = cohort_id(e)
        path = models_dir / f"{cid}.npy"
        np.save(path, rows.astype(np.float32), allow_pickle=False)
        digest = sha256_file(path)
        entries.append({
            "id": cid, "file": path.name, "sha256": digest, "role": "cohort",
            "precision": manifest[e].precision, "for_embedder": e, "shape": list(rows.shape),
            "source": {
                "dataset": f"fit half of {faces}",
                "rule": "identity_half(name) == 'fit': second hex digit of sha1(name) in 0-7 (edge/lab/eval.py)",
                "identities": int(used.sum()), "images": int(counts.sum()), "detector": DETECTOR,
                "recipe": "primary face, the embedder's alignment, chip and mirror averaged, then the identity mean",
            },
            "licence": "derived descriptors of the public faces named in source; no image ships",
            "build_command": build_command or f"lfr-edge models cohort --embedder {e} --faces {faces}",
        })  # fmt: skip
        entry = dict(manifest[e].raw)
        prev = entry.get("scoring") or {}
        recipe = {"flip": True, "landmarks": stack.model_ids.landmarks, "cohort": cid, "top_k": TOP_K,
                  "cohort_sha256": digest}  # fmt: skip
        # Measured operating points stay only while the cohort they were measured with is the same.
        keep = prev if prev.get("cohort_sha256") == digest else {}
        entry["scoring"] = {k: v for k, v in {**keep, **recipe}.items() if v is not None}
        entries.append(entry)
    say(f"[cohort] {int(used.sum())} identities of the fit half ({int(counts.sum())} images)")
    return entries
