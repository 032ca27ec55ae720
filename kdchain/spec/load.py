"""YAML in, a ChainSpec out: `load_spec` turns any mistake into a SpecError whose lines each name the file, the
dotted field path and what is expected; `--set` overrides are applied to the raw mapping first."""

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdchain.spec.base import SpecError
from kdchain.spec.chain import ChainSpec


# the names pydantic gives union members in an error's loc ("constrained-int", "list[...]"): not field names
_UNION_MEMBER = re.compile(r"^(constrained|function|lax|strict|json)-\w+$|^(int|float|str|bool|none|list|dict|"
                           r"tuple|nullable|tagged-union|cnn|resnet|torchvision|derive|pruned|ce|kd|feature|fitnet|at|dkd|rkd|"
                           r"digits|cifar10|imagefolder|marks|accuracy|smallest|pareto)$")


def _format_loc(loc: tuple) -> str:
    # pydantic puts union tags ("cnn", "function-after[...]") into loc; keep the field path only
    parts = []
    for p in loc:
        if isinstance(p, int):
            parts.append(str(p))
        elif isinstance(p, str) and not any(c in p for c in "[]()") and not _UNION_MEMBER.match(p):
            if not (p == "prune" and parts[-1:] == ["prune"]):  # the student's tag `prune`, then its field
                parts.append(p)
    return ".".join(parts) or "(top level)"


def format_validation_error(err: ValidationError, source: str) -> list[str]:
    """One line per field path: a union's several complaints about one value are joined with "; or "."""
    by_path: dict[str, list[str]] = {}
    not_type: set[str] = set()
    for e in err.errors():
        path = _format_loc(e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `kdchain validate --schema` lists the keys)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "union_tag_not_found":  # a tagged union's value without its `kind`
            tags = e.get("ctx", {}).get("discriminator", "'kind'").strip("'")
            msg = f"`{tags}` is missing: say which one (`kdchain validate --schema` lists the kinds)"
        elif e["type"] == "union_tag_invalid":
            msg = f"unknown {e['ctx']['discriminator'].strip(chr(39))} {e['ctx']['tag']!r}; expected one of " \
                  f"{e['ctx']['expected_tags']}"
        if "input" in e and e["type"] not in ("missing", "extra_forbidden") and not isinstance(e["input"], (dict, list)):
            msg += f" (got {e['input']!r})"
        msgs = by_path.setdefault(path, [])
        if msg not in msgs:
            msgs.append(msg)
        if not e["type"].endswith(("_type", "_parsing")):
            not_type.add(path)
    # a union such as `list[int] | int` given a list with a bad item complains at `x.0` (the list branch) and
    # at `x` ("should be a valid integer", the int branch): the deeper complaint is the one that helps
    deeper = {p for p in by_path if any(q.startswith(p + ".") for q in by_path) and p not in not_type}
    return [f"{source}: {path}: {'; or '.join(msgs)}" for path, msgs in by_path.items() if path not in deeper]


def apply_override(data: dict, assignment: str) -> None:
    """Apply one `--set dotted.key=value` to the raw config dict; the value is parsed as YAML."""
    if "=" not in assignment:
        raise SpecError([f"--set {assignment}: expected dotted.key=value"])
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise SpecError([f"--set {key}: the value {raw!r} is not valid YAML ({getattr(e, 'problem', e)})"]) from None
    if not key.strip() or any(not p.strip() for p in key.split(".")):
        raise SpecError([f"--set {assignment}: expected dotted.key=value with no empty parts"])
    parts = key.strip().split(".")
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            # list items by index, or generations by name: generations.B.train.epochs
            idx = next((i for i, item in enumerate(node) if isinstance(item, dict) and item.get("name") == part), None)
            if idx is None and part.lstrip("-").isdigit():
                idx = int(part)
            if idx is None or not -len(node) <= idx < len(node):
                raise SpecError([f"--set {key}: {where} is not an item of a list of {len(node)}"])
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise SpecError([f"--set {key}: {'.'.join(parts[:depth])} is a value, not a section"])


def load_spec(path: str | Path, overrides: list[str] | tuple = ()) -> ChainSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"{path}: no such config file"])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError([f"{path}:{where} is not valid YAML: {getattr(e, 'problem', e)}"]) from None
    if not isinstance(data, dict):
        raise SpecError([f"{path}: expected a mapping of chain settings at the top level"])
    for assignment in overrides:
        apply_override(data, assignment)
    return spec_from_dict(data, str(path))


def spec_from_dict(data: dict, source: str = "config") -> ChainSpec:
    try:
        return ChainSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_validation_error(e, source)) from None
