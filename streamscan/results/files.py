"""files: how every output file is written (whole, or not at all)."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, text: str) -> Path:
    """Write TEXT to PATH through a temporary file beside it and a rename: readers see the old file or the new."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
