"""`--set KEY=JSON` overrides of a config section, shared by the trial scripts in benchmarks/."""

from __future__ import annotations

import json


def set_override(settings: dict, item: str) -> None:
    """Apply one `dotted.key=JSON` override to `settings` in place (missing parents are created)."""
    key, sep, value = item.partition("=")
    if not sep:
        raise SystemExit(f"--set takes KEY=JSON, got {item!r}")
    *parents, last = key.split(".")
    node = settings
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = json.loads(value)
