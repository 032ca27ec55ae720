"""The chain flow end to end on a 1-epoch config: MLflow layout, registry, resume, the CLI's table."""

import json
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

import flows.generation as generation_flow
from flows.chain import distill_chain
from flows.cli import main
from kdchain import tracking
from kdchain.data import load_data
from kdchain.spec import load_spec
from kdchain.tracking import FINAL_KEYS
from tests.conftest import tiny_chain, write_config

pytestmark = pytest.mark.usefixtures("prefect_harness")


def runs_of(uri: str, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, exp, client.search_runs([exp.experiment_id])


def test_chain_records_every_generation_and_registers_the_last(tmp_path, capsys):
    path = write_config(tmp_path, tiny_chain(tmp_path, name="layout"))
    uri = load_spec(path).tracking.uri
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "layout: 4 generations" in out and "models:/layout-student@latest" in out

    client, exp, runs = runs_of(uri, "layout")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    chains = [r for r in runs if r.data.tags["kdchain.kind"] == "chain"]
    gens = sorted((r for r in runs if r.data.tags["kdchain.kind"] == "generation"),
                  key=lambda r: int(r.data.tags["kdchain.generation"]))
    assert len(chains) == 1 and len(gens) == 4
    chain = chains[0]
    assert chain.info.status == "FINISHED" and chain.data.params["teacher.model.channels"] == "[16, 32]"
    assert "spec.yaml" in [a.path for a in client.list_artifacts(chain.info.run_id)]
    assert [r.data.tags["kdchain.generation_name"] for r in gens] == ["teacher", "A", "B", "C"]
    for i, run in enumerate(gens):
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == chain.info.run_id
        # the run's name carries its figures: `A · 35.2% · 1.44k params · 0.0722 ms`
        acc = run.data.metrics["test_accuracy"]
        assert run.info.run_name.startswith(f"{run.data.tags['kdchain.generation_name']} · {acc:.1%} · ")
        assert set(FINAL_KEYS) <= set(run.data.metrics)
        # final figures at step 0 (MLflow charts them as bars, not against epochs), linked to the logged model
        assert [m.step for m in client.get_metric_history(run.info.run_id, "test_accuracy")] == [0]
        logged = [m for m in client.search_logged_models([exp.experiment_id]) if m.source_run_id == run.info.run_id]
        assert [m.name for m in logged] == [run.data.tags["kdchain.generation_name"]]
        assert {m.key: m.value for m in logged[0].metrics}["test_accuracy"] == run.data.metrics["test_accuracy"]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1]
        if i:
            assert run.data.tags["kdchain.teacher_run_id"] == gens[i - 1].info.run_id
            assert run.data.metrics["params"] < gens[i - 1].data.metrics["params"]
    assert gens[0].data.metrics["test_accuracy"] > 0.2  # well above chance (0.1) after a single epoch

    # compare reads the same table back
    assert main(["compare", "--tracking-uri", uri, "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert [g["name"] for g in table["generations"]] == ["teacher", "A", "B", "C"]
    assert all(set(FINAL_KEYS) <= set(g) for g in table["generations"])

    # the registered model loads as a module and predicts what was reported
    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model("models:/layout-student@latest")
    data = load_data(load_spec(path).data, 0)
    acc = (model.eval()(data.test.x).argmax(1) == data.test.y).float().mean().item()
    assert acc == pytest.approx(gens[-1].data.metrics["test_accuracy"], abs=1e-6)
    # its requirements pin the torch it was trained with; MLflow's own requirement check, skipped while kdchain
    # logged it (it cannot warn on requirements read from the installed versions), is back for everyone else
    requirements = Path(mlflow.pyfunc.get_model_dependencies("models:/layout-student@latest")).read_text()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements.split()
    import mlflow.utils.environment as environment

    assert environment.warn_dependency_requirement_mismatches is not tracking.runs._no_requirement_check


def test_rerun_reuses_every_finished_generation(tmp_path):
    spec = load_spec(write_config(tmp_path, tiny_chain(tmp_path, name="again")))
    first = distill_chain(spec)
    assert first.reused == []
    second = distill_chain(spec)
    assert second.reused == ["teacher", "A", "B", "C"]
    assert [g.run_id for g in second.generations] == [g.run_id for g in first.generations]
    assert second.registered == first.registered  # no new model version for the same model
    _, _, runs = runs_of(spec.tracking.uri, "again")
    assert len(runs) == 5


def test_a_chain_that_died_in_B_resumes_without_retraining_teacher_and_A(tmp_path, monkeypatch, capsys):
    spec = load_spec(write_config(tmp_path, tiny_chain(tmp_path, name="crash")))
    real = generation_flow.train_generation

    def dies_in_b(spec_, index, *args, **kwargs):
        if index == 2:
            raise RuntimeError("power cut")
        return real(spec_, index, *args, **kwargs)

    monkeypatch.setattr(generation_flow, "train_generation", dies_in_b)
    with pytest.raises(RuntimeError, match="power cut"):
        distill_chain(spec)
    monkeypatch.setattr(generation_flow, "train_generation", real)

    path = write_config(tmp_path, tiny_chain(tmp_path, name="crash"))
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "teacher already trained in an earlier run: reused" in out
    assert "A already trained in an earlier run: reused" in out
    assert "B already trained" not in out

    _, _, runs = runs_of(spec.tracking.uri, "crash")
    finished = [r for r in runs if r.data.tags["kdchain.kind"] == "generation" and r.info.status == "FINISHED"]
    assert sorted(r.data.tags["kdchain.generation_name"] for r in finished) == ["A", "B", "C", "teacher"]
    assert len([r for r in runs if r.data.tags["kdchain.kind"] == "chain"]) == 1
    failed = [r for r in runs if r.info.status == "FAILED" and r.data.tags["kdchain.kind"] == "generation"]
    assert [r.data.tags["kdchain.generation_name"] for r in failed] == ["B"]
    assert "power cut" in failed[0].data.tags["kdchain.error"]
