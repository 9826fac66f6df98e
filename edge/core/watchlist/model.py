"""The in-memory watchlist: the only place decrypted templates ever live."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge.core.types import Subject


@dataclass(frozen=True, slots=True)
class Watchlist:
    version: int
    created_at: float  # unix seconds
    expires_at: float  # unix seconds; no match is ever raised from a list past this
    subjects: tuple[Subject, ...]
    # (M, D) float32, L2-normalised rows, grouped by subject (rows of one subject are contiguous)
    templates: npt.NDArray[np.float32]
    # (M,) int32 index into `subjects` for each template row, non-decreasing
    template_subject: npt.NDArray[np.int32]
    signer_key_id: str = ""
    embedder_sha256: str = ""

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    @property
    def n_templates(self) -> int:
        return int(self.templates.shape[0])
