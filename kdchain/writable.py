"""Whether a folder can be written, found out before anything is written there (a leaf: stdlib only)."""

import tempfile
from pathlib import Path


def unwritable_problem(path: str | Path, what: str) -> str | None:
    """Why `path` (a folder, created later if missing) cannot be written, or None. Creates nothing."""
    path = Path(path).expanduser().absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return f"{what} {path}: {existing} is a file, not a folder; point it at a folder"
    try:  # a probe file, removed at once: os.access says yes to root even where a write fails
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".kdchain-write-check-"):
            pass
    except OSError as e:
        shown = "" if existing == path else f" (it would be created in {existing})"
        return f"{what} {path} is not writable{shown}: {e.strerror}; make it writable or point it elsewhere"
    return None
