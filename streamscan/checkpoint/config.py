"""config: a checkpoint's config.json, read as data (a dict; anything else counts as no config)."""

from __future__ import annotations

import json
from pathlib import Path

from streamscan.errors import SourceError

CONFIG_NAME = "config.json"


def read_config(root: Path | None) -> dict:
    """ROOT/config.json as a dict ({} when there is none, or it holds no JSON object)."""
    if root is None:
        return {}
    cfg = root / CONFIG_NAME
    if not cfg.is_file():
        return {}
    try:
        data = json.loads(cfg.read_text())
    except ValueError as err:
        raise SourceError(f"{cfg}: invalid JSON ({err}); fix or remove config.json") from None
    return data if isinstance(data, dict) else {}
