"""Shared output of the bench scripts: one JSON object with --json, else aligned lines."""

from __future__ import annotations

import json
from typing import Any


def report(figures: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(figures))
        return
    for key, value in figures.items():
        print(f"{key:32} {value}")
