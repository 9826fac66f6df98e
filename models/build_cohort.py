"""The score-normalisation cohort of each dlib embedder: identity-mean descriptors of public faces.

    python models/build.py --only cohort [--faces ../shared/data/faces]

One row per identity of the *fit* half of the LFW developer split (edge.eval.identity_half),
made exactly as the device makes a probe (whole-image detection, primary face, our alignment,
the embedder on the chip and its mirror, averaged), then averaged over the identity's images.
Identities of the eval half, on which every accuracy figure is reported, are never in it; nor is
any image: only descriptors ship. The embedders' `scoring` recipe (flip, cohort, top K) is
written beside it; `lfr-edge eval --calibrate` then adds the measured operating points.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import Config
from edge.eval import identity_half, load_dataset
from edge.imageio import decode_rgb
from edge.inference import load_manifest, load_model, sha256_file
from edge.vision.align import Aligner
from edge.vision.analyze import primary_index
from edge.vision.detect import FaceDetector
from edge.vision.embed import Embedder

EMBEDDERS = ("dlib_resnet_v1_int8", "dlib_resnet_v1_fp32")
TOP_K = 100  # measured flat between 50 and 400 (docs/BENCHMARKS.md)
DETECTOR = "blazeface_full_range_int8"


def _cohort_id(embedder_id: str) -> str:
    return f"cohort_{embedder_id}"


def build(out_dir: Path, faces_dir: Path) -> list[dict[str, Any]]:
    lfw = faces_dir / "lfw"
    ds = load_dataset(lfw, half="fit")
    cfg = Config()
    detector = FaceDetector.from_settings(
        load_model(DETECTOR, out_dir, num_threads=2), cfg.detection, whole_frame_only=True, min_face=False
    )
    embedders = {e: Embedder(load_model(e, out_dir, num_threads=2)) for e in EMBEDDERS}
    aligner = Aligner()
    n_ids = len(ds.names)
    sums = {e: np.zeros((n_ids, embedders[e].dim), np.float64) for e in EMBEDDERS}
    counts = np.zeros(n_ids, np.int64)
    for i, rel in enumerate(ds.paths):
        rgb = decode_rgb(ds.root / rel)
        if rgb is None:
            continue
        det = detector.detect(rgb)
        if len(det) == 0:
            continue
        j = primary_index(det.boxes, rgb.shape[1], rgb.shape[0])
        chip, _ = aligner.align(rgb, det.keypoints[j : j + 1])
        both = np.concatenate([chip, chip[:, :, ::-1]])
        for e, emb in embedders.items():
            v = emb.embed(np.ascontiguousarray(both)).sum(axis=0)
            sums[e][ds.identity[i]] += v / np.linalg.norm(v)
        counts[ds.identity[i]] += 1
        if (i + 1) % 500 == 0:
            print(f"[cohort] {i + 1}/{len(ds.paths)} images")
    used = counts > 0
    manifest = json.loads((out_dir / "MANIFEST.json").read_text())
    old = {m["id"]: m for m in manifest["models"]}
    entries: list[dict[str, Any]] = []
    for e in EMBEDDERS:
        rows = sums[e][used]
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        cid = _cohort_id(e)
        path = out_dir / f"{cid}.npy"
        np.save(path, rows.astype(np.float32), allow_pickle=False)
        digest = sha256_file(path)
        entries.append({
            "id": cid,
            "file": path.name,
            "sha256": digest,
            "role": "cohort",
            "precision": load_manifest(out_dir)[e].precision,
            "for_embedder": e,
            "shape": list(rows.shape),
            "source": {
                "dataset": "LFW deep-funneled, developer split, fit half (../shared/data/faces/lfw)",
                "rule": "identity_half(name) == 'fit': second hex digit of sha1(name) in 0-7 (edge/eval.py)",
                "identities": int(used.sum()),
                "images": int(counts.sum()),
                "detector": DETECTOR,
                "recipe": "primary face, our alignment, embedder on chip and mirror averaged, then the identity mean",
            },
            "licence": "derived descriptors of LFW (University of Massachusetts Amherst, for research); no image ships",
            "build_command": "python models/build.py --only cohort",
        })  # fmt: skip
        emb_entry = dict(old[e])
        prev = emb_entry.get("scoring") or {}
        recipe = {"flip": True, "cohort": cid, "top_k": TOP_K, "cohort_sha256": digest}
        # Measured operating points stay only while the cohort they were measured with is the same.
        keep = prev if prev.get("cohort_sha256") == digest else {}
        emb_entry["scoring"] = {**keep, **recipe}
        entries.append(emb_entry)
    print(f"[cohort] {int(used.sum())} identities of the fit half ({int(counts.sum())} images); "
          f"eval-half identities in it: {sum(identity_half(n) == 'eval' for n in np.array(ds.names)[used])}")  # fmt: skip
    return entries
