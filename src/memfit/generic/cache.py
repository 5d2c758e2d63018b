"""A small on-disk cache of traced results, so a repeated generic question is instant.

Entries are JSON files named by the SHA-256 of their key (the config, the options, the
workload, the block indices and the torch / transformers / memfit versions), under
``$MEMFIT_CACHE_DIR/generic`` or ``~/.cache/memfit/generic``. The cache keeps at most
:data:`MAX_ENTRIES` files (oldest dropped first); a file that cannot be read or written is
simply a miss. Pure Python: reading the cache imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "MAX_ENTRIES", "cache_dir", "get", "key_of", "put"]

#: Bumped when the plan or the summaries change meaning: older entries are then never read.
FORMAT = 2
#: At most this many cached results (each a few hundred bytes: about 2 MB in all).
MAX_ENTRIES = 4096


def cache_dir() -> Path:
    """``$MEMFIT_CACHE_DIR/generic``, else ``~/.cache/memfit/generic``."""
    root = os.environ.get("MEMFIT_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "memfit"
    return base / "generic"


def key_of(*parts: Any) -> str:
    """A stable hex key for JSON-able ``parts`` (dict keys sorted) and :data:`FORMAT`."""
    text = json.dumps([FORMAT, *parts], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def get(key: str) -> dict[str, Any] | None:
    """The cached object for ``key``, or None."""
    try:
        data = json.loads((cache_dir() / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def put(key: str, value: dict[str, Any]) -> None:
    """Store ``value`` (best effort), dropping the oldest entries beyond the bound."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(value), encoding="utf-8")
        tmp.replace(folder / f"{key}.json")
        files = list(folder.glob("*.json"))
        if len(files) > MAX_ENTRIES:
            files.sort(key=lambda p: p.stat().st_mtime)
            for old in files[:len(files) - MAX_ENTRIES]:
                old.unlink(missing_ok=True)
    except OSError:
        return
