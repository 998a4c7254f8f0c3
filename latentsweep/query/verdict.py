"""The verdict on each query, a category an analyst can act on: ``attributed``, ``uncertain`` or
``unknown``. Pure functions.

- ``unknown``: the open set: no reference is as similar as images of a known generator are to each
  other (the threshold the index calibrated at build).
- ``attributed``: the vote's calibrated confidence (the probability that its label is right, from the
  leave-one-out tables the index fitted on its references at build) is at least ``attribute_at``, and
  every other descriptor family asked (``sweep --evidence``) votes the same label.
- ``uncertain``: everything else, with the reason in words: a confidence below the bar, an index without
  calibration for the vote's setting, or the families that disagree.

What a file declares about its origin never changes the verdict: a conflict between the declaration
and a confident attribution is flagged beside it (:func:`latentsweep.provenance.conflict`) and sends the
row to the review list.
"""

from __future__ import annotations

import numpy as np

ATTRIBUTED, UNCERTAIN, UNKNOWN = "attributed", "uncertain", "unknown"
VERDICTS = (ATTRIBUTED, UNCERTAIN, UNKNOWN)
ATTRIBUTE_AT = 0.9  # the calibrated confidence a vote needs to be `attributed`: about 1 wrong call in 10
# Labels (or families) that stand for camera captures, not for a generator or editing software: what a
# declared camera capture is compared with.
CAPTURE_CLASSES = frozenset({"real", "camera", "photo"})


def decide(unknown: np.ndarray, confidence: np.ndarray | None, attribute_at: float = ATTRIBUTE_AT,
           disagreement: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each query's verdict and, where it is not ``attributed``, the reason. ``confidence``: None when
    the index has no calibration for the vote's setting; ``disagreement``: per query, the families that
    voted another label (text) or None."""
    count = len(unknown)
    verdict = np.full(count, UNCERTAIN, dtype=object)
    reason = np.full(count, None, dtype=object)
    if confidence is None:
        reason[:] = "the index has no confidence calibration for this vote setting"
    else:
        sure = confidence >= attribute_at
        verdict[sure] = ATTRIBUTED
        for i in np.flatnonzero(~sure):
            reason[i] = f"confidence {confidence[i]:.2f} is below {attribute_at:g}"
    if disagreement is not None:
        for i in np.flatnonzero([text is not None for text in disagreement]):
            verdict[i] = UNCERTAIN
            reason[i] = "; ".join(filter(None, [reason[i], disagreement[i]]))
    verdict[unknown] = UNKNOWN
    reason[unknown] = "no reference is as close as a known generator's images are to each other (open set)"
    return verdict, reason


def is_generator(label: str | None, family: str | None) -> bool | None:
    """Whether an attributed class is a generator or software (True) or a camera capture (False), by the
    reference set's naming (:data:`CAPTURE_CLASSES`); None for no label."""
    if label is None:
        return None
    return not ({label.lower(), (family or "").lower()} & CAPTURE_CLASSES)
