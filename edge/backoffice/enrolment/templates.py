"""How a subject's enrolment photos become the template the device matches against.

Several custody photos of one person are fused into one template: the mean of their L2-normalised
descriptors, renormalised. Measured on the eval half of the LFW developer split (docs/BENCHMARKS.md,
"Recognition"), a mean of two photos finds far more of the person's other photos at the same
false-alert rate than keeping both photos and taking the better score (max over templates): the
mean cancels what is particular to one photo (pose, light, expression), the max lets a stranger
match whichever photo they happen to resemble.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from edge.core.types import F32


def fuse_subject_templates(per_subject: Sequence[Sequence[F32]]) -> tuple[F32, npt.NDArray[np.int32]]:
    """One fused template per subject that has descriptors, in subject order.

    Returns the (S', D) template matrix and the subject index of each row; a subject without a
    descriptor gets no row (the caller leaves it out of the bundle).
    """
    rows: list[F32] = []
    owner: list[int] = []
    for i, descs in enumerate(per_subject):
        if not len(descs):
            continue
        m = np.stack([np.asarray(d, np.float32) for d in descs])
        m /= np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
        mean = m.mean(axis=0)
        rows.append((mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32))
        owner.append(i)
    dim = rows[0].shape[0] if rows else 0
    templates: F32 = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    return templates, np.array(owner, np.int32)
