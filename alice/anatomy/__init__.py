"""anatomy: point matchers that locate the same body part in two volumes (Alice's SAM step)."""

from alice.anatomy.matcher import (
    BODY_THRESHOLD,
    MATCHERS,
    BodyBoxMatcher,
    Matcher,
    RandomMatcher,
    Volume,
    body_box,
    body_mask,
    build_matcher,
)

__all__ = [
    "BODY_THRESHOLD",
    "MATCHERS",
    "BodyBoxMatcher",
    "Matcher",
    "RandomMatcher",
    "Volume",
    "body_box",
    "body_mask",
    "build_matcher",
]
