"""What every spec shares: the strict base model, SpecError, and the stable JSON and hash that key caches."""

import hashlib
import json
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class SpecError(Exception):
    """A config that cannot be used; `lines` holds one readable sentence per problem."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("\n".join(lines))


class Strict(BaseModel):
    # allow_inf_nan=False: `lr: .nan` or `weight: .inf` is a typo, not a setting
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, data: Any):
        # pydantic takes `epochs: true` as 1; in YAML that is a slip (yes/no/on/off are booleans too). A boolean
        # given to a numeric field becomes a Boolean marker that fails there, so the error keeps the field's path.
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, field in cls.model_fields.items():
            key = name if name in data else field.alias
            value = data.get(key)
            if isinstance(value, (bool, list)) and _numeric_only(field.annotation):
                out[key] = [Boolean(v) if isinstance(v, bool) else v for v in value] if isinstance(value, list) \
                    else Boolean(value)
        return out


class Boolean(str):
    """A YAML boolean found where a number belongs (see Strict); format_validation_error names it."""

    def __new__(cls, value: bool):
        return super().__new__(cls, str(value).lower())

    def __repr__(self) -> str:
        return str(self)


def _numeric_only(annotation) -> bool:
    """Does a field's type take numbers (anywhere in a union, list, Literal or Annotated) and no booleans?"""
    def types(tp):
        yield tp
        for arg in typing.get_args(tp):
            if isinstance(arg, (int, float)) and not isinstance(arg, bool):
                yield type(arg)  # Literal[1, 3]
            elif isinstance(arg, type) or typing.get_args(arg):
                yield from types(arg)
    found = list(types(annotation))
    return any(t in (int, float) for t in found) and bool not in found


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
