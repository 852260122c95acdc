"""How every benchmark reports: the full result as JSON (when asked) and the summary as the last
line of standard output, one JSON object, so scripts can read it with `tail -n 1`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable


def emit(result: dict[str, Any], json_path: str | None, log: Callable[[str], Any] | None = None) -> None:
    """Write `result` to `json_path` (parents created) if given, then print `result["summary"]`."""
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        if log is not None:
            log(f"wrote {path}")
    sys.stdout.write(json.dumps(result["summary"], separators=(",", ":")) + "\n")
    sys.stdout.flush()
