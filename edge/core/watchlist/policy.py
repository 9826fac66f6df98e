"""The matching policy in force: the configured choice resolved against the embedder's calibration.

`matching.operating_point` names a threshold that `lfr-edge eval --calibrate` measured for the
embedder in force (models/MANIFEST.json); `matching.threshold` overrides it with an explicit
value in the same units. The floor is the embedder's too (per-face FPIR 1e-2 with the reference
list): a threshold below it is refused unless the operator accepts it with a reason, which is
audited and shown in the status. Resolved once at start; the loop, status, audit and deployment
record all read this one object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge.core.config import Config, MatchingConfig, OperatingPoint
from edge.core.errors import InputError
from edge.core.vision.scoring import FACES_PER_REPORT, CohortNorm, Scoring, load_scoring

# check-config warns above this many expected false alerts per FACES_PER_REPORT faces.
WARN_FALSE_ALERTS = 1.0


@dataclass(frozen=True, slots=True)
class MatchingPolicy:
    scoring: Scoring
    threshold: float
    operating_point: str | None  # the named point in force, None for an explicit threshold
    category_thresholds: dict[str, float] = field(default_factory=dict)
    min_margin: float = 0.0
    below_floor: dict[str, float] = field(default_factory=dict)  # key path → value, accepted overrides only
    below_floor_reason: str = ""
    allow_below_floor: bool = False

    @property
    def floor(self) -> float:
        return self.scoring.floor

    @property
    def enforced_floor(self) -> float:
        """What per-subject thresholds from a bundle are raised to (none with an accepted override)."""
        return float("-inf") if self.allow_below_floor else self.scoring.floor

    def matcher_args(self) -> tuple[float, dict[str, float], float, CohortNorm | None, float]:
        """(threshold, category thresholds, min margin, cohort, floor) as WatchlistHolder.matcher takes them."""
        return self.threshold, self.category_thresholds, self.min_margin, self.scoring.norm, self.enforced_floor

    def expected_false_alerts(self, list_size: int) -> float:
        """Estimated false alerts per FACES_PER_REPORT stranger faces with a list of this size."""
        return self.scoring.expected_false_alerts(self.threshold, list_size)

    def describe(self, list_size: int | None = None) -> dict[str, Any]:
        """What status, audit and deployment records state about matching (no subject data)."""
        out: dict[str, Any] = {
            "embedder": self.scoring.embedder_id,
            "units": self.scoring.units.value,
            "operating_point": self.operating_point or "explicit",
            "threshold": round(self.threshold, 4),
            "floor": round(self.floor, 4),
            "category_thresholds": dict(self.category_thresholds),
            "min_margin": self.min_margin,
        }
        if list_size is not None:
            out["expected_false_alerts_per_10k_faces"] = round(self.expected_false_alerts(list_size), 3)
            out["expected_for_list_size"] = list_size
        if self.below_floor:
            out["below_floor"] = dict(self.below_floor)
            out["below_floor_reason"] = self.below_floor_reason
        return out


def resolve_policy(m: MatchingConfig, scoring: Scoring) -> MatchingPolicy:
    """Config + calibration → policy; a threshold below the floor without an accepted reason is refused."""
    if m.threshold is not None:
        threshold, point = float(m.threshold), None
    else:
        # OperatingPoint() also takes a plain string: model_copy(update=...) does not validate.
        point = OperatingPoint(m.operating_point).value
        threshold = scoring.operating_point(point).threshold
    below = {"threshold": threshold} if threshold < scoring.floor else {}
    below.update({f"category_thresholds.{k}": v for k, v in m.category_thresholds.items() if v < scoring.floor})
    if below and not m.allow_below_floor:
        key, value = next(iter(below.items()))
        raise InputError(
            f"matching.{key}: {value} is below the floor {scoring.floor:.3f} of embedder {scoring.embedder_id} "
            f"({scoring.units.value} units); set allow_below_floor: true and below_floor_reason to accept the "
            "higher false-alert rate"
        )
    return MatchingPolicy(
        scoring=scoring,
        threshold=threshold,
        operating_point=point,
        category_thresholds=dict(m.category_thresholds),
        min_margin=m.min_margin,
        below_floor=below,
        below_floor_reason=m.below_floor_reason if below else "",
        allow_below_floor=m.allow_below_floor,
    )


def policy_for(cfg: Config) -> MatchingPolicy:
    return resolve_policy(cfg.matching, load_scoring(cfg.models.embedder, cfg.models.dir))


def warnings_for(policy: MatchingPolicy, list_size: int) -> list[str]:
    """check-config's warnings about the false-alert rate the policy implies."""
    rate = policy.expected_false_alerts(list_size)
    if rate > WARN_FALSE_ALERTS:
        return [
            f"matching.threshold: {policy.threshold:.3f} is expected to raise {rate:.1f} false alerts per "
            f"{FACES_PER_REPORT:,} faces with a {list_size}-subject watchlist (more than {WARN_FALSE_ALERTS:g})"
        ]
    return []
