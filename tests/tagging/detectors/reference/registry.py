"""Every detector by its name (``db.vocab``), and :func:`detect_all`, which runs them all."""

from __future__ import annotations

from typing import Protocol

from db.findings import Candidate
from db.vocab import (
    ADVERTISER_PLACEHOLDER,
    CRITERIA_SHIFT,
    FIX_NOT_STICKING,
    LEGACY_PLACEHOLDER,
    ML_OUTAGE,
    NEAR_DUPLICATES,
    SHARED_CDN_CONFLICT,
)
from tests.tagging.detectors.reference.advertiser_placeholder import detect_advertiser_placeholders
from tests.tagging.detectors.reference.base import DEFAULT_THRESHOLDS, Facts, Thresholds
from tests.tagging.detectors.reference.criteria_shift import detect_criteria_shifts
from tests.tagging.detectors.reference.fix_not_sticking import detect_unstuck_fixes
from tests.tagging.detectors.reference.legacy_placeholder import detect_legacy_placeholders
from tests.tagging.detectors.reference.ml_outage import detect_ml_outage
from tests.tagging.detectors.reference.near_duplicates import detect_near_duplicates
from tests.tagging.detectors.reference.shared_cdn_conflict import detect_shared_cdn_conflicts


class Detector(Protocol):
    """A detector: a pure function from the facts (and how sure to be) to its candidate findings."""

    def __call__(self, facts: Facts, t: Thresholds = ..., /) -> list[Candidate]: ...


DETECTORS: dict[str, Detector] = {
    ML_OUTAGE: detect_ml_outage,
    ADVERTISER_PLACEHOLDER: detect_advertiser_placeholders,
    LEGACY_PLACEHOLDER: detect_legacy_placeholders,
    SHARED_CDN_CONFLICT: detect_shared_cdn_conflicts,
    FIX_NOT_STICKING: detect_unstuck_fixes,
    NEAR_DUPLICATES: detect_near_duplicates,
    CRITERIA_SHIFT: detect_criteria_shifts,
}


def detect_all(facts: Facts, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[Candidate]:
    """Every detector's candidates (at most one per (detector, subject))."""
    found: dict[tuple[str, str], Candidate] = {}
    for detect in DETECTORS.values():
        for candidate in detect(facts, thresholds):
            found.setdefault((candidate.detector, candidate.subject), candidate)
    return list(found.values())


__all__ = ["DETECTORS", "Detector", "detect_all"]
