"""One colour per organ, whatever the dataset's label ids: the liver has the same colour in a
FLARE22 figure (id 1) as in a BTCV one (id 6), so figures of both datasets read alike."""

from __future__ import annotations

from alice.labels import LABEL_NAMES

# organ (alice.labels name) -> (short display name, colour)
ORGANS: dict[str, tuple[str, str]] = {
    "liver": ("liver", "#c0504d"),
    "right_kidney": ("right kidney", "#f2a33a"),
    "spleen": ("spleen", "#8064a2"),
    "pancreas": ("pancreas", "#f4e04d"),
    "aorta": ("aorta", "#e8293b"),
    "inferior_vena_cava": ("IVC", "#3b6fd1"),
    "right_adrenal_gland": ("right adrenal", "#2fb7a1"),
    "left_adrenal_gland": ("left adrenal", "#7fd35c"),
    "gallbladder": ("gallbladder", "#2e9d3a"),
    "esophagus": ("esophagus", "#d16fc2"),
    "stomach": ("stomach", "#e87e4f"),
    "duodenum": ("duodenum", "#9fc5e8"),
    "left_kidney": ("left kidney", "#c98a2e"),
    "portal_and_splenic_veins": ("portal/splenic veins", "#00c8ff"),
}


def palette(dataset: str) -> dict[int, tuple[str, str]]:
    """{label id: (display name, colour)} of a segmentation dataset's organs (background left out)."""
    if dataset not in LABEL_NAMES:
        raise KeyError(f"no label set for dataset '{dataset}' (known: {', '.join(LABEL_NAMES)})")
    return {i: ORGANS[name] for i, name in sorted(LABEL_NAMES[dataset].items())}
