"""Specs: round trip, overrides, and one readable line per mistake (exit 2, nothing written)."""

import pytest
import yaml

from flows.cli import main
from kdchain.checks import check_chain
from kdchain.resolve import resolve_chain
from kdchain.spec import ChainSpec, SpecError, load_spec, spec_from_dict, spec_hash
from tests.conftest import ROOT, tiny_chain, write_config


def test_default_config_round_trips_and_hashes_stably():
    spec = load_spec(ROOT / "configs" / "digits-chain.yaml")
    again = ChainSpec.model_validate(yaml.safe_load(yaml.safe_dump(spec.model_dump(mode="json"))))
    assert again == spec
    assert spec_hash(again) == spec_hash(spec)
    assert spec.generation_names() == ["teacher", "A", "B", "C"]


def test_derived_students_scale_width_and_depth():
    cfg = yaml.safe_load((ROOT / "configs" / "digits-chain.yaml").read_text())
    for g, derive in zip(cfg["generations"], [{"width": 0.5}, {"width": 0.5}, {"width": 0.75, "depth": 0.5}]):
        g["student"] = {"derive": derive}  # fresh students of the sizes the shipped config prunes to
    archs = [g.arch for g in resolve_chain(spec_from_dict(cfg))]
    assert [a.channels for a in archs] == [[32, 64, 128], [16, 32, 64], [8, 16, 32], [6, 12, 24]]
    assert [a.convs() for a in archs] == [[2, 2, 2]] * 3 + [[1, 1, 1]]


def test_set_overrides_by_index_and_by_generation_name(tmp_path):
    path = write_config(tmp_path, tiny_chain(tmp_path))
    spec = load_spec(path, ["generations.B.train.epochs=7", "teacher.train.lr=0.01", "generations.0.name=first"])
    assert spec.generations[1].train.epochs == 7
    assert spec.teacher.train.lr == 0.01
    assert spec.generations[0].name == "first"


@pytest.mark.parametrize("mutate, field, words", [
    (lambda c: c.update(colour="red"), "colour", "unknown key"),
    (lambda c: c["teacher"]["train"].update(epochs="many"), "teacher.train.epochs", "integer"),
    (lambda c: c["generations"][0]["train"].update(epochs=-3), "generations.0.train.epochs", "greater than or equal to 1"),
    (lambda c: c["teacher"]["model"].update(kind="transformer"), "teacher.model", "cnn"),
    (lambda c: c["generations"][1].update(student={"kind": "mlp"}), "generations.1.student", "derive"),
    (lambda c: c.pop("teacher"), "teacher", "missing"),
])
def test_each_mistake_is_one_line_naming_the_field(tmp_path, mutate, field, words):
    cfg = tiny_chain(tmp_path)
    mutate(cfg)
    with pytest.raises(SpecError) as err:
        spec_from_dict(cfg, "chain.yaml")
    assert len(err.value.lines) == 1, err.value.lines
    line = err.value.lines[0]
    assert line.startswith(f"chain.yaml: {field}:"), line
    assert words in line


def test_unknown_feature_node_is_named_with_its_generation(tmp_path):
    cfg = tiny_chain(tmp_path)
    cfg["generations"][1]["distill"] = [{"kind": "feature", "student_node": "stages.9"}]
    with pytest.raises(SpecError) as err:
        check_chain(spec_from_dict(cfg), "chain.yaml")
    assert err.value.lines == [err.value.lines[0]]
    assert "generations.1.distill.0.student_node: 'stages.9' is not a node of B's model" in err.value.lines[0]


def test_bad_set_path_is_refused(tmp_path):
    path = write_config(tmp_path, tiny_chain(tmp_path))
    with pytest.raises(SpecError, match="generations.Z"):
        load_spec(path, ["generations.Z.train.epochs=3"])
    with pytest.raises(SpecError, match="seed is a value"):
        load_spec(path, ["seed.x=3"])


def test_validate_prints_ok(tmp_path, capsys):
    path = write_config(tmp_path, tiny_chain(tmp_path))
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.startswith("OK: the config, the models' sizes, data and weights on disk")


@pytest.mark.parametrize("override, field", [
    ("colour=red", "colour"),
    ("teacher.train.epochs=many", "teacher.train.epochs"),
    ("generations.A.train.epochs=-1", "generations.0.train.epochs"),
    ("generations.A.distill=[{kind: feature, teacher_node: nope}]", "generations.0.distill.0.teacher_node"),
])
def test_run_with_a_bad_config_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, override, field):
    cfg = tiny_chain(tmp_path)
    path = write_config(tmp_path, cfg)
    for command in ("validate", "run"):
        assert main([command, str(path), "--set", override]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{path}: {field}:" in err[0], err
    assert not (tmp_path / "store").exists()
    assert not (tmp_path / "work").exists()


def test_missing_config_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err


def test_yaml_on_and_off_mean_the_words_for_the_teacher_cache(tmp_path):
    cfg = tiny_chain(tmp_path)
    path = write_config(tmp_path, cfg)
    spec = load_spec(path, ["generations.A.train.cache=on", "generations.B.train.cache=off"])
    assert [g.train.cache for g in spec.generations] == ["on", "off", "auto"]
