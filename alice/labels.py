"""Label sets of the segmentation datasets (ids and organ names from docs/facts.md "Label ids")."""

from __future__ import annotations

# Foreground organs per label id (0 = background is not listed). Names: docs/facts.md "Label ids", snake_case.
LABEL_NAMES: dict[str, dict[int, str]] = {
    "flare22": {
        1: "liver",
        2: "right_kidney",
        3: "spleen",
        4: "pancreas",
        5: "aorta",
        6: "inferior_vena_cava",
        7: "right_adrenal_gland",
        8: "left_adrenal_gland",
        9: "gallbladder",
        10: "esophagus",
        11: "stomach",
        12: "duodenum",
        13: "left_kidney",
    },
    "btcv": {
        1: "spleen",
        2: "right_kidney",
        3: "left_kidney",
        4: "gallbladder",
        5: "esophagus",
        6: "liver",
        7: "stomach",
        8: "aorta",
        9: "inferior_vena_cava",
        10: "portal_and_splenic_veins",
        11: "pancreas",
        12: "right_adrenal_gland",
        13: "left_adrenal_gland",
    },
}

# Every id a label map may contain (background included).
LABEL_IDS: dict[str, frozenset[int]] = {
    name: frozenset({0, *organs}) for name, organs in LABEL_NAMES.items()
}
