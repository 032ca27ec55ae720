"""Whether a folder can be written, found out before anything is written there (a leaf: stdlib only)."""

import tempfile
from pathlib import Path


def unwritable_reason(path: str | Path) -> str | None:
    """Why the folder `path` (created later if missing) cannot be written, or None. Leaves nothing behind."""
    path = Path(path).expanduser().absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:  # a probe file, removed at once: os.access says yes to root even where a write fails
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".kdchain-write-check-"):
            pass
    except OSError as e:
        return e.strerror if existing == path else f"{e.strerror} in {existing}, where it would be created"
    return None
