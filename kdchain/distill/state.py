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
        if not isinstance(state.get("student"), dict) or "frozen_sums" not in state["student"]:
            raise ValueError("written by an older kdchain, which saved the whole model")
    except Exception as e:  # truncated file, foreign pickle
        raise StateUnreadable(f"resume state {path} is unreadable ({type(e).__name__}: "
                              f"{next((x.strip() for x in str(e).splitlines() if x.strip()), '')[:160]})") from None
    return state


def trained_state(model: torch.nn.Module) -> dict:
    """What resuming needs of a model: its trainable parameters and its buffers, not its frozen parameters (a VGG19
    teacher with frozen features: 0.5 MB of head instead of 548 MB). The frozen ones come back from wherever the
    model is built from (its pretrained weights); `frozen_sums` tells a resume whether they are the same."""
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    return {"weights": {k: v for k, v in model.state_dict().items() if k not in frozen},
            "frozen_sums": frozen_sums(model)}


def frozen_sums(model: torch.nn.Module) -> torch.Tensor:
    """(number of frozen parameters,) float64 sums, in order: a fingerprint of the weights a state leaves out."""
    sums = [p.detach().double().sum() for p in model.parameters() if not p.requires_grad]
    return torch.stack(sums).cpu() if sums else torch.zeros(0, dtype=torch.float64)


def restore_trained(model: torch.nn.Module, saved: dict) -> None:
    """Load a trained_state back; raises StateUnreadable when the model's frozen weights are not the ones it was
    saved beside (the pretrained file changed), so that the generation starts over rather than mixing them."""
    mine = frozen_sums(model)
    theirs = saved["frozen_sums"].cpu()
    if mine.shape != theirs.shape or not torch.allclose(mine, theirs, rtol=1e-9, atol=0.0):
        raise StateUnreadable("the resume state was saved with other frozen weights than the model has now")
    missing, unexpected = model.load_state_dict(saved["weights"], strict=False)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    if unexpected or set(missing) - frozen:
        raise StateUnreadable(f"the resume state does not fit the model (missing {sorted(set(missing) - frozen)[:3]},"
                              f" unexpected {unexpected[:3]})")
