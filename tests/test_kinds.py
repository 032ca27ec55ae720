"""The registries are the single list of each kind: every registered loss term, model family, data source and search
objective is in the configs' unions and the JSON schema, implements what its base class asks, and a mistake in one
of its fields is one line whose path leaves the kind's tag out (a hand-kept list of tags had drifted: `knee`)."""

import json

import pytest

from flows.cli import main
from kdchain.spec import (
    FAMILIES,
    LOSSES,
    OBJECTIVES,
    SOURCES,
    Family,
    LossTerm,
    Objective,
    Source,
    SpecError,
    spec_from_dict,
)
from tests.conftest import tiny_chain

CONTRACT = [(LOSSES, LossTerm, ["value"]), (FAMILIES, Family, ["build", "default_tap"]),
            (SOURCES, Source, ["load", "shape", "train_images"]), (OBJECTIVES, Objective, ["select"])]


def test_every_kind_implements_its_base_class():
    for registry, base, methods in CONTRACT:
        assert registry.names(), registry.what
        for kind, cls in registry.classes.items():
            assert issubclass(cls, base), kind
            missing = [m for m in methods if getattr(cls, m) is getattr(base, m)]
            assert not missing, f"{registry.what} {kind} does not implement {missing}"
            assert cls.__doc__, f"{registry.what} {kind} says in no docstring what it is"


def test_every_kind_is_in_the_schema(capsys):
    assert main(["validate", "--schema"]) == 0
    defs = json.loads(capsys.readouterr().out)["$defs"]
    consts = {p["properties"]["kind"].get("const") for p in defs.values() if "kind" in p.get("properties", {})}
    for registry, _, _ in CONTRACT:
        assert set(registry.names()) <= consts, registry.what


@pytest.mark.parametrize("registry, where", [(LOSSES, "generations.0.distill.0"), (FAMILIES, "teacher.model"),
                                             (SOURCES, "data"), (OBJECTIVES, "generations.0.search.objective")])
def test_a_misspelt_field_of_any_kind_is_one_line_without_its_tag(tmp_path, registry, where):
    for kind in registry.names():
        cfg = tiny_chain(tmp_path)
        cfg["generations"][0]["search"] = {"space": {"width": [0.5]}}
        value = {"kind": kind, "misspelt": 1}
        if where == "generations.0.distill.0":
            cfg["generations"][0]["distill"] = [value]
        elif where == "teacher.model":
            cfg["teacher"]["model"] = value
        elif where == "data":
            cfg["data"] = value
        else:
            cfg["generations"][0]["search"]["objective"] = value
        with pytest.raises(SpecError) as e:
            spec_from_dict(cfg)
        assert any(line.startswith(f"config: {where}.misspelt: unknown key") for line in e.value.lines), \
            (kind, e.value.lines)


def test_an_unknown_kind_names_the_registered_ones(tmp_path):
    cfg = tiny_chain(tmp_path)
    cfg["generations"][0]["distill"] = [{"kind": "kdd"}]
    with pytest.raises(SpecError) as e:
        spec_from_dict(cfg)
    assert len(e.value.lines) == 1 and "unknown kind 'kdd'" in e.value.lines[0]
    assert all(f"'{kind}'" in e.value.lines[0] for kind in LOSSES.names())
