"""Files written so that a crash leaves the old one or the new, and the resume state `fit` leaves after each epoch."""

import os
from pathlib import Path

import torch


class StateUnreadable(Exception):
    """A resume state that cannot be read (truncated, foreign); training starts the generation over."""


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file, fsync, rename: a crash leaves the old file or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_train_state(path: Path | None, device: torch.device | str = "cpu") -> dict | None:
    """The state `fit` saved after its last finished epoch, or None when there is none.

    Read with weights_only=True: tensors, numbers, strings and containers only, never pickled code.
    """
    if path is None or not Path(path).is_file():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
            raise ValueError("not a kdchain training state")
    except Exception as e:  # truncated file, foreign pickle
        raise StateUnreadable(f"resume state {path} is unreadable ({type(e).__name__}: "
                              f"{next((x.strip() for x in str(e).splitlines() if x.strip()), '')[:160]})") from None
    return state
