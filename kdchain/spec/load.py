"""YAML in, a ChainSpec out: `load_spec` turns any mistake into a SpecError whose lines each name the file, the
dotted field path and what is expected; `--set` overrides are applied to the raw mapping first."""

import re
import stat
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdchain.spec.base import Boolean, SpecError
from kdchain.spec.chain import ChainSpec
from kdchain.spec.kinds import kind_names

# the names pydantic gives union members in an error's loc ("constrained-int", "list[...]", a kind's tag): not
# field names. The kinds come from the registries, so a new kind is left out of paths without touching this.
_UNION_MEMBER = re.compile(r"^(constrained|function|lax|strict|json)-\w+$|^(int|float|str|bool|none|list|dict|tuple|"
                           r"nullable|tagged-union|derive|pruned|"
                           + "|".join(sorted(map(re.escape, kind_names()))) + r")$")


def _format_loc(loc: tuple) -> str:
    # pydantic puts union tags ("cnn", "function-after[...]") into loc; keep the field path only. A tag followed by
    # a field of the same name is the tag of that field (student.derive.derive.width -> student.derive.width)
    parts = []
    for i, p in enumerate(loc):
        if isinstance(p, int):
            parts.append(str(p))
        elif isinstance(p, str) and not any(c in p for c in "[]()") and (
                not _UNION_MEMBER.match(p) or (i > 0 and loc[i - 1] == p)):
            if not (p == "prune" and parts[-1:] == ["prune"]):  # the student's tag `prune`, then its field
                parts.append(p)
    return ".".join(parts) or "(top level)"


def format_validation_error(err: ValidationError, source: str) -> list[str]:
    """One line per field path: a union's several complaints about one value are joined with "; or "."""
    by_path: dict[str, list[str]] = {}
    not_type: set[str] = set()
    for e in err.errors():
        path = _format_loc(e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if isinstance(e.get("input"), Boolean):
            msg = "expected a number, not a boolean (YAML reads true/false, yes/no and on/off as booleans)"
        elif e["type"] == "extra_forbidden":
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
        value = safe_load_unique(raw, f"--set {key}") if raw.strip() else ""
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error (PyYAML lets the last one win)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                where = "" if self.name.startswith("--set") else f" line {line}:"
                both = f" (lines {seen[key]} and {line})" if seen[key] != line else ""
                raise SpecError([f"{self.name}:{where} key {key!r} is given twice{both}; keep one"])
            seen.setdefault(key, line)
        return super().construct_mapping(node, deep)


def safe_load_unique(text: str, name: str) -> Any:
    """yaml.safe_load with keys given twice refused; `name` starts the error line (the file, or `--set key`)."""
    loader = _UniqueKeyLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_config_text(path: Path) -> str:
    """The file's text as UTF-8, or a SpecError saying what the file is instead."""
    if path.is_dir():
        raise SpecError([f"{path}: is a directory; give the chain's YAML file (e.g. {path}/chain.yaml)"])
    if not path.exists():
        raise SpecError([f"{path}: no such config file"])
    if not path.is_file():  # a named pipe, a device, a socket: reading it could block or never end
        raise SpecError([f"{path}: is not a regular file ({_file_kind(path)}); give the chain's YAML file"])
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SpecError([f"{path}: cannot read it ({e.strerror})"]) from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SpecError([f"{path}: is UTF-16 text; save it as UTF-8"])
    head = raw[:8192]
    if head and head.count(0) >= len(head) // 3 and (not head[0::2].strip(b"\0") or not head[1::2].strip(b"\0")):
        raise SpecError([f"{path}: is UTF-16 text; save it as UTF-8"])  # without a byte-order mark
    if b"\0" in head:
        raise SpecError([f"{path}: is a binary file, not a YAML config"])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SpecError([f"{path}: line {line}: byte 0x{raw[e.start]:02x} is not UTF-8 (a Latin-1 or Windows "
                         "character?); save the file as UTF-8"]) from None


def _file_kind(path: Path) -> str:
    mode = path.stat().st_mode
    kinds = [(stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device")]
    return next((name for test, name in kinds if test(mode)), "not a file")


def load_spec(path: str | Path, overrides: list[str] | tuple = ()) -> ChainSpec:
    path = Path(path)
    text = read_config_text(path)
    try:
        data = safe_load_unique(text, str(path))
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
