"""What every spec shares: the strict base model, SpecError, and the stable JSON and hash that key caches."""

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict


class SpecError(Exception):
    """A config that cannot be used; `lines` holds one readable sentence per problem."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("\n".join(lines))


class Strict(BaseModel):
    # allow_inf_nan=False: `lr: .nan` or `weight: .inf` is a typo, not a setting
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def canonical_json(obj: Any) -> str:
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def spec_hash(obj: Any) -> str:
    """Stable hash of a spec (or any JSON-able value): keys caches, checkpoints and MLflow tags."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """{'teacher.model.channels': '[32, 64]', ...}: the spec as MLflow params."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = json.dumps(obj) if isinstance(obj, list) else str(obj)
    return out
