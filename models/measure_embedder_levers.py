"""What training on the fit half can add to the dlib descriptor, per person passing at strict.

    python models/measure_embedder_levers.py [--faces ../shared/data/faces/lfw] [--epochs 4] [--json F]

Issue 15 asks for 60 % of enrolled people alerted at the strict default with no false alert; the
shipped pipeline (flip + cohort S-norm) gives about 52 %, and the loop levers do not move that
(docs/BENCHMARKS.md, "Loop levers"). This measures the three embedder-side levers still open:

* **jitter**: test-time augmentation beyond the mirror (four 3 px shifts, each with its mirror:
  ten invokes per face instead of two), on the shipped int8 model;
* **head**: a learned linear projection of the frozen descriptor (128 → 256), trained with a
  CosFace margin loss on the fit half's chip and mirror descriptors;
* **fine-tune**: the whole network (the PyTorch rebuild in models/dlib_resnet.py, fp32), trained
  end to end on augmented fit-half chips with a CosFace loss whose class centres start at the
  identities' mean descriptors (shift, scale, rotation, down-scaling to 40-140 px, blur, JPEG,
  brightness), at a learning rate the network survives (1e-4 destroyed the descriptor).

Every row is scored as the device scores (chip and mirror averaged, adaptive S-norm against the
identity means of the fit half, K = 100) on the **eval half**, where nothing was fitted: its
strict threshold comes from its own impostor pairs exactly as `lfr-edge eval --calibrate` sets it
(per-face FPIR 1e-4 with a 500-subject list, the tail extrapolated). "Found at strict" is the
end-to-end bench's question asked of stills: every eval-half identity with two or more faces is
enrolled from up to five photos (fused, as `watchlist build` does) and probed with one photo not
enrolled; found = the right subject ranks first at or above strict; mean over seeded draws. The
single-photo identities are the strangers. The bench's 52.4 % sits beside this row's 51 %.

Needs torch (dev install); takes about 10 minutes on 2 cores. docs/BENCHMARKS.md quotes it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edge.core.config import Config  # noqa: E402
from edge.core.imageio import decode_rgb  # noqa: E402
from edge.core.inference import default_models_dir, load_model  # noqa: E402
from edge.core.types import F32, U8  # noqa: E402
from edge.core.vision.analyze import primary_chip  # noqa: E402
from edge.core.vision.embed import Embedder  # noqa: E402
from edge.core.vision.scoring import CohortNorm  # noqa: E402
from edge.core.vision.stack import StackUse, build_vision_stack  # noqa: E402
from edge.lab.calibration import (  # noqa: E402
    REFERENCE_LIST_SIZE,
    fmr_curve,
    fmr_for_fpir,
    impostor_scores,
    threshold_for,
)
from edge.lab.eval import identity_half, load_dataset  # noqa: E402

EMBEDDER = "dlib_resnet_v1_int8"
DETECTOR = "blazeface_full_range_int8"
TOP_K = 100
STRICT_FPIR = 1e-4
MAX_GALLERY = 5  # photos per enrolled person, as the end-to-end bench enrols
SEEDS = range(10)
SHIFTS = ((3, 0), (-3, 0), (0, 3), (0, -3))
SEED = 20261205
Chips = npt.NDArray[np.uint8]
Embed = Callable[[Chips], F32]


@dataclass(frozen=True)
class Row:
    lever: str
    strict_threshold: float
    found_at_strict: float  # share of enrolled people, mean over SEEDS
    found_spread: tuple[float, float]
    strangers_above_strict: float  # mean count over SEEDS
    strangers: int
    enrolled: int
    tar_at_far_1e4: float
    tar_at_far_1e5: float
    invokes_per_face: int


def _l2(x: npt.NDArray[Any]) -> F32:
    return np.asarray(x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12), np.float32)


@dataclass
class Faces:
    chips: Chips  # (N, 150, 150, 3) the device's dlib150 chips; rows without a face are zero
    has_face: npt.NDArray[np.bool_]
    identity: npt.NDArray[np.int64]
    fit: npt.NDArray[np.bool_]  # identity of the fit half (edge.lab.eval.identity_half)


def load_faces(faces: Path, say: Callable[[str], None]) -> Faces:
    """Primary face of every developer-split image, aligned as the device aligns (stills stack)."""
    ds = load_dataset(faces, half="all")
    stack = build_vision_stack(Config(), StackUse.STILLS, detector_id=DETECTOR, embedder_id=EMBEDDER, flip=False)
    n = len(ds.paths)
    chips = np.zeros((n, 150, 150, 3), np.uint8)
    has = np.zeros(n, bool)
    for i, rel in enumerate(ds.paths):
        rgb = decode_rgb(ds.root / rel)
        chip = primary_chip(stack.detector, stack.chips, rgb) if rgb is not None else None
        if chip is None:
            continue
        chips[i] = chip
        has[i] = True
        if (i + 1) % 2000 == 0:
            say(f"[faces] {i + 1}/{n}")
    fit = np.array([identity_half(name) == "fit" for name in ds.names])[ds.identity]
    return Faces(chips, has, ds.identity, fit)


def mirrored(chips: Chips) -> Chips:
    return np.ascontiguousarray(chips[:, :, ::-1])


def shifted(chips: Chips, dx: int, dy: int) -> Chips:
    m = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
    return np.stack([cv2.warpAffine(c, m, (150, 150), borderMode=cv2.BORDER_REFLECT) for c in chips])


def device_descriptors(embed: Embed, chips: Chips) -> F32:
    """Chip and mirror, each L2-normalised, summed: the device's flip recipe."""
    return _l2(_l2(embed(chips)) + _l2(embed(mirrored(chips))))


def score_row(lever: str, desc: F32, faces: Faces, invokes: int) -> Row:
    """Found at strict on the eval half, the cohort from the fit half (module docstring)."""
    desc = _l2(desc)
    fit = faces.fit & faces.has_face
    ids = np.unique(faces.identity[fit])
    cohort = np.zeros((ids.size, desc.shape[1]), np.float64)
    np.add.at(cohort, np.searchsorted(ids, faces.identity[fit]), desc[fit])
    norm = CohortNorm(_l2(cohort), TOP_K)
    ev = np.flatnonzero(~faces.fit & faces.has_face)
    e, who = desc[ev], faces.identity[ev]
    mu, sd = norm.stats(e)
    imp = impostor_scores(e, who, (mu, sd))
    curve, _ = fmr_curve(imp)
    strict = threshold_for(curve, fmr_for_fpir(STRICT_FPIR, REFERENCE_LIST_SIZE))
    # Single-pair verification: every genuine pair of the half against its impostor pairs.
    gen: list[F32] = []
    for person in np.unique(who):
        r = np.flatnonzero(who == person)
        if r.size > 1:
            s = CohortNorm.apply(e[r] @ e[r].T, mu[r], sd[r], mu[r], sd[r])
            gen.append(s[np.triu_indices(r.size, 1)])
    genuine = np.concatenate(gen)
    ranked = np.sort(imp)[::-1]
    tar = [float(np.mean(genuine > ranked[int(far * ranked.size)])) for far in (1e-4, 1e-5)]
    people, counts = np.unique(who, return_counts=True)
    enrolled = people[counts >= 2]
    strangers = np.flatnonzero(np.isin(who, people[counts == 1]))
    found: list[float] = []
    above: list[int] = []
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        templates = np.empty((enrolled.size, desc.shape[1]), np.float32)
        probes = np.empty(enrolled.size, np.int64)
        for k, person in enumerate(enrolled):
            r = rng.permutation(np.flatnonzero(who == person))
            probes[k] = r[0]
            templates[k] = _l2(e[r[1 : 1 + MAX_GALLERY]].mean(axis=0))
        g_mu, g_sd = norm.stats(templates)
        s = CohortNorm.apply(e[probes] @ templates.T, g_mu, g_sd, mu[probes], sd[probes])
        hit = (s.argmax(axis=1) == np.arange(enrolled.size)) & (s.max(axis=1) >= strict)
        found.append(float(hit.mean()))
        t = CohortNorm.apply(e[strangers] @ templates.T, g_mu, g_sd, mu[strangers], sd[strangers])
        above.append(int((t.max(axis=1) >= strict).sum()))
    return Row(
        lever, round(strict, 3), round(100 * float(np.mean(found)), 1),
        (round(100 * min(found), 1), round(100 * max(found), 1)), float(np.mean(above)),
        int(strangers.size), int(enrolled.size), round(100 * tar[0], 2), round(100 * tar[1], 2), invokes,
    )  # fmt: skip


def train_head(desc_plain: F32, desc_mirror: F32, faces: Faces, dim: int = 256) -> F32:
    """(128, dim) projection trained with CosFace (s 30, m 0.35) on the fit half's descriptors."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(SEED)
    rows = np.flatnonzero(faces.fit & faces.has_face)
    _, inv, counts = np.unique(faces.identity[rows], return_inverse=True, return_counts=True)
    keep = counts[inv] >= 2  # a class of one image teaches the margin nothing about a person
    rows = rows[keep]
    labels = torch.from_numpy(np.unique(inv[keep], return_inverse=True)[1])
    n_cls = int(labels.max()) + 1
    x = torch.from_numpy(np.concatenate([_l2(desc_plain[rows]), _l2(desc_mirror[rows])]))
    y = torch.cat([labels, labels])
    w = torch.nn.Parameter(torch.eye(128, dim))
    centres = torch.nn.Parameter(F.normalize(torch.randn(n_cls, dim), dim=1))
    opt = torch.optim.Adam([w, centres], lr=1e-3)
    for _ in range(60):
        order = torch.randperm(x.shape[0])
        for b in range(0, x.shape[0], 256):
            i = order[b : b + 256]
            cos = F.normalize(x[i] @ w, dim=1) @ F.normalize(centres, dim=1).T
            loss = F.cross_entropy(30.0 * (cos - 0.35 * F.one_hot(y[i], n_cls)), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return np.asarray(w.detach().numpy(), np.float32)


class Augment:
    """Seeded chip augmentation: geometry a few px off, faces seen small, blurred, compressed, lit."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, chip: U8) -> F32:
        r = self.rng
        c = chip[:, ::-1] if r.random() < 0.5 else chip
        m = cv2.getRotationMatrix2D((75.0, 75.0), float(r.uniform(-6, 6)), float(r.uniform(0.93, 1.07)))
        m[:, 2] += r.uniform(-4, 4, 2)
        c = cv2.warpAffine(np.ascontiguousarray(c), m, (150, 150), borderMode=cv2.BORDER_REFLECT)
        if r.random() < 0.5:
            z = int(r.uniform(40, 140))
            c = cv2.resize(cv2.resize(c, (z, z), interpolation=cv2.INTER_AREA), (150, 150))
        if r.random() < 0.2:
            c = cv2.GaussianBlur(c, (0, 0), float(r.uniform(0.5, 1.5)))
        if r.random() < 0.3:
            _, buf = cv2.imencode(".jpg", c, [cv2.IMWRITE_JPEG_QUALITY, int(r.uniform(30, 90))])
            c = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        return np.clip(c.astype(np.float32) * r.uniform(0.8, 1.2) + r.uniform(-20, 20), 0, 255)


def fine_tune(faces: Faces, start: F32, epochs: int, say: Callable[[str], None]) -> Any:
    """The dlib network trained on the fit half (module docstring); returns the torch module."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(SEED)
    net = dlib_torch()
    rows = np.flatnonzero(faces.fit & faces.has_face)
    _, labels = np.unique(faces.identity[rows], return_inverse=True)
    centres0 = np.zeros((int(labels.max()) + 1, start.shape[1]), np.float64)
    np.add.at(centres0, labels, start[rows])
    centres = torch.nn.Parameter(torch.from_numpy(_l2(centres0)))
    n_cls = centres.shape[0]
    opt = torch.optim.Adam([{"params": net.parameters(), "lr": 2e-5}, {"params": [centres], "lr": 1e-3}])
    aug = Augment(SEED)
    rng = np.random.default_rng(SEED)
    batch = 32
    for epoch in range(epochs):
        net.train()
        t0 = time.monotonic()
        order = rng.permutation(rows.size)
        for b in range(0, order.size - batch + 1, batch):
            i = order[b : b + batch]
            x = torch.from_numpy(np.stack([aug(faces.chips[rows[j]]) for j in i])).permute(0, 3, 1, 2)
            y = torch.from_numpy(labels[i])
            cos = F.normalize(net(x.contiguous()), dim=1) @ F.normalize(centres, dim=1).T
            loss = F.cross_entropy(30.0 * (cos - 0.25 * F.one_hot(y, n_cls)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        say(f"[fine-tune] epoch {epoch + 1}/{epochs}: loss {loss.item():.2f}, {time.monotonic() - t0:.0f} s")
    return net.eval()


def dlib_torch() -> Any:
    """The PyTorch rebuild of the shipped network, from the registry package's weights."""
    from models.build_embedder import MODEL_FILE, source_dir
    from models.dlib_resnet import build_from_dat

    return build_from_dat(source_dir() / MODEL_FILE)


def torch_embed(net: Any) -> Embed:
    from models.dlib_resnet import descriptors

    def run(chips: Chips) -> F32:
        return np.asarray(descriptors(net, chips), np.float32)

    return run


def measure(faces_dir: Path, epochs: int, say: Callable[[str], None]) -> list[Row]:
    faces = load_faces(faces_dir, say)
    model = load_model(EMBEDDER, default_models_dir(), num_threads=2)
    int8 = Embedder(model, flip=False).embed
    plain, mirror = int8(faces.chips), int8(mirrored(faces.chips))
    shipped = _l2(_l2(plain) + _l2(mirror))
    rows = [score_row("shipped: int8, chip + mirror, S-norm", shipped, faces, 2)]
    say(str(rows[-1]))
    jitter = shipped + sum(device_descriptors(int8, shifted(faces.chips, dx, dy)) for dx, dy in SHIFTS)
    rows.append(score_row("+ jitter: four 3 px shifts, each with its mirror", jitter, faces, 10))
    say(str(rows[-1]))
    w = train_head(plain, mirror, faces)
    rows.append(
        score_row("+ learned linear head 128→256 (CosFace, fit half)", _l2(plain) @ w + _l2(mirror) @ w, faces, 2)
    )
    say(str(rows[-1]))
    fp32 = torch_embed(dlib_torch())
    rows.append(
        score_row("fp32 PyTorch rebuild, chip + mirror, S-norm", device_descriptors(fp32, faces.chips), faces, 2)
    )
    say(str(rows[-1]))
    tuned = torch_embed(fine_tune(faces, shipped, epochs, say))
    rows.append(
        score_row(
            f"fp32 fine-tuned on the fit half ({epochs} epochs)", device_descriptors(tuned, faces.chips), faces, 2
        )
    )
    say(str(rows[-1]))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=Path, default=ROOT.parent / "shared" / "data" / "faces" / "lfw")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--json", type=Path, help="write the rows here as JSON")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    rows = measure(args.faces, args.epochs, lambda s: print(s, file=sys.stderr, flush=True))
    print("| lever | strict | found at strict (spread) | strangers above | TAR@1e-4 | TAR@1e-5 | invokes |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.lever} | {r.strict_threshold} | {r.found_at_strict} % ({r.found_spread[0]}–{r.found_spread[1]}) "
            f"| {r.strangers_above_strict:.1f} / {r.strangers} | {r.tar_at_far_1e4} | {r.tar_at_far_1e5} | {r.invokes_per_face} |"
        )
    print(f"{rows[0].enrolled} people enrolled, {rows[0].strangers} strangers; {time.monotonic() - t0:.0f} s")
    if args.json:
        digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
        args.json.write_text(json.dumps({"script_sha256": digest, "rows": [asdict(r) for r in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
