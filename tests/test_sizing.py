"""A pruned student sized by its target (`prune: {target: {params: N}}`): inspect lists the plans that meet it
before training, the chain trains one of them within the target, and its run holds the candidates it was chosen
from; a target nothing meets, or one the rest of the config contradicts, is one line at validate."""

import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from flows.cli import main
from kdchain.chain import train_generation
from kdchain.checks import inspect_chain
from kdchain.models.families.cnn import CnnArch
from kdchain.models.pruned import noise_plans
from kdchain.plans import FROM_TEACHER
from kdchain.resolve import generation_key, resolve_chain
from kdchain.sizing import sized_arch
from kdchain.spec import Prune, PrunedArch, canonical_json, load_spec, spec_from_dict
from kdchain.workdir import generation_folder
from tests.conftest import tiny_chain, write_config

TARGET = 2000  # params; the teacher (cnn 16x2-32x2 on 8x8 digits) has 16,794


def sized_chain(tmp_path: Path, name: str = "sized", **target) -> dict:
    prune = {"target": target or {"params": TARGET}, "candidates": 3, "probe_steps": 5}
    return tiny_chain(tmp_path, name=name, epochs=2,
                      teacher={"model": {"kind": "cnn", "channels": [16, 32], "convs_per_stage": 2},
                               "train": {"epochs": 2, "lr": 0.01}},
                      generations=[{"name": "A", "student": {"prune": prune}, "train": {"epochs": 2}}])


@pytest.mark.slow  # trains a teacher; the flow test below checks the note and the plan that trains
def test_inspect_lists_the_plans_that_meet_the_target_from_the_trained_teacher(tmp_path):
    spec = spec_from_dict(sized_chain(tmp_path))
    before = inspect_chain(spec)[1]
    assert before["params"] <= TARGET and "plans meet params <= 2,000" in before["summary"]
    assert "planned on initial weights" in before["summary"]
    gens = resolve_chain(spec)
    folder = generation_folder(spec.workdir, spec.name, 0, "teacher", generation_key(spec, gens[0], None))
    train_generation(spec, 0, None, folder)  # where run keeps it: inspect plans A from its trained weights
    after = inspect_chain(spec)[1]
    assert after["source"] == FROM_TEACHER and after["params"] <= TARGET
    assert "plans meet params <= 2,000" in after["summary"] and "initial weights" not in after["summary"]


@pytest.mark.slow  # 16 s: make test keeps the sizing checks of validate and inspect; the trained size runs here
@pytest.mark.usefixtures("prefect_harness")
def test_a_target_sized_generation_trains_within_it_and_logs_its_candidates(tmp_path, capsys):
    path = write_config(tmp_path, sized_chain(tmp_path))
    assert main(["validate", str(path)]) == 0
    assert main(["run", str(path)]) == 0
    uri = load_spec(path).tracking.uri
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("sized").experiment_id])
    a = next(r for r in runs if r.data.tags.get("kdchain.generation_name") == "A")
    teacher = next(r for r in runs if r.data.tags.get("kdchain.generation_name") == "teacher")
    # the model that trained meets the target, measured as the candidates were, and is not far below it
    assert 0.7 * TARGET <= a.data.metrics["params"] <= TARGET
    assert a.data.metrics["sizing_params"] == a.data.metrics["params"] and a.data.metrics["sizing_target_met"] == 1
    assert a.data.metrics["test_accuracy"] > 0.3  # learnt: chance is 0.1
    assert teacher.data.metrics["params"] > 8 * TARGET
    table = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=a.info.run_id, artifact_path="sizing/candidates.json", tracking_uri=uri)).read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert len(rows) >= 2 and all(r["params"] <= TARGET for r in rows)
    chosen = [r for r in rows if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["params"] == a.data.metrics["params"]
    assert chosen[0]["probe_val_accuracy"] == max(r["probe_val_accuracy"] for r in rows
                                                  if r["probe_val_accuracy"] is not None)
    assert a.data.tags["mlflow.note.content"] == chosen[0]["plan"]  # the run says the plan that trained


def test_target_sizing_plans_per_stage_widths_each_within_the_target():
    teacher = CnnArch(channels=[8, 16, 32], convs_per_stage=2)  # 20,778 parameters
    arch = PrunedArch(base=teacher, prune=Prune(target={"params": 8000}, batches=1))
    plans = noise_plans(canonical_json(arch), 10, 1, 8)
    profiles = {tuple(p.arch.prune.stage_widths or ()) for p in plans}
    assert len(plans) >= 3 and all(p.cost["params"] <= 8000 for p in plans)
    narrower_late = [p for p in profiles if len(p) == 3 and p[0] > p[2]]
    narrower_early = [p for p in profiles if len(p) == 3 and p[0] < p[2]]
    assert () in profiles and narrower_late and narrower_early  # uniform and both per-stage profiles
    assert all(p.cost["params"] > 0.8 * 8000 for p in plans if p.arch.prune.depth == 1.0)  # the widest that fit


def test_a_sized_generation_that_resumes_trains_the_plan_it_chose(tmp_path):
    spec = spec_from_dict(sized_chain(tmp_path))
    gen = resolve_chain(spec)[1]
    saved = tmp_path / "A"
    saved.mkdir()
    chosen = gen.arch.model_copy(update={"record": {"removed": [], "tensors": {}, "attrs": {}}})
    (saved / "sizing.json").write_text(json.dumps({"arch": chosen.model_dump(mode="json"), "candidates": [{"x": 1}]}))

    def must_not_run(*_):
        raise AssertionError("sized again")

    arch, rows = sized_arch(saved, gen.arch, (1, 8, 8), gen.deploy, must_not_run, must_not_run, "teacher")
    assert arch.record == chosen.record and rows == [{"x": 1}]


@pytest.mark.parametrize("target, extra, words", [
    ({"params": 10}, {}, "no plan of cnn 16x2-32x2 meets params <= 10"),
    ({"params": 100, "flops": 100}, {}, "give one of params, flops or latency_ms, not params and flops"),
    ({"latency_ms": 1.0, "precision": "int8"}, {}, "set deploy: {quantize: static}"),
    ({"params": 2000}, {"search": {"trials": 2}}, "give target or search, not both"),
])
def test_a_target_that_cannot_be_met_is_one_line_at_validate(tmp_path, capsys, target, extra, words):
    cfg = sized_chain(tmp_path, **target)
    cfg["generations"][0].update(extra)
    assert main(["validate", str(write_config(tmp_path, cfg))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "generations.0.student.prune.target" in err and words in err, err
    assert not (tmp_path / "work").exists() and not (tmp_path / "store").exists()
