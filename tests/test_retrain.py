"""`kdchain retrain`: when nothing is new, the data and the config the champion was trained on train nothing; when
the data changed, a warm retrain starts every generation from the champion family's weights and architectures."""

import json

import pytest
from mlflow import MlflowClient

from flows.cli import main
from tests.conftest import tiny_chain, write_config


@pytest.mark.usefixtures("prefect_harness")
def test_a_retrain_trains_nothing_on_the_champions_data_and_warm_on_new_data(tmp_path, capsys):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    cfg = tiny_chain(tmp_path, name="steady", epochs=4, retrain={"epochs_share": 0.25})
    cfg["generations"] = [{"name": "A", "student": {"prune": {"width": 0.5}}, "train": {"epochs": 4}}]
    config = write_config(tmp_path, cfg)
    assert main(["retrain", str(config), "--warm"]) == 0  # no champion yet: trains in full; A becomes champion
    out = capsys.readouterr().out
    assert "promoted" in out and "warm retrain not possible: no champion family" in out
    client = MlflowClient(cfg["tracking"]["uri"])
    experiment = client.get_experiment_by_name("steady").experiment_id
    chains = lambda: client.search_runs([experiment], "tags.`kdchain.kind` = 'chain'")  # noqa: E731
    assert len(chains()) == 1

    assert main(["retrain", str(config), "--warm"]) == 0  # same data, same config: nothing trained, one line
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("steady-student: nothing to do: the data and the config are those champion version 1")
    assert len(chains()) == 1 and str(client.get_model_version_by_alias("steady-student", "champion").version) == "1"
    with get_client(sync_client=True) as prefect:  # the retrain's Prefect run says so too
        notes = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["steady-student-promotion"])))
    assert any("nothing to do" in (a.data or "") for a in notes)

    _warm_on_new_data(tmp_path, cfg, client, experiment, capsys)


def _warm_on_new_data(tmp_path, cfg: dict, client: MlflowClient, experiment: str, capsys) -> None:
    """New data (a different split of it) is something new: the retrain trains, warm from the champion family."""
    family = {k.removeprefix("kdchain.family."): v.removeprefix("runs:/") for k, v in
              client.get_model_version("steady-student", "1").tags.items() if k.startswith("kdchain.family.")}
    assert sorted(family) == ["A", "teacher"]  # every generation, registered with the final student
    cfg["data"]["split"] = {"val": 0.2, "test": 0.15}
    # a learning rate too small to learn anything in one epoch: what the warm models know, they started with
    tiny_lr = ["--set", "teacher.train.lr=1e-8", "--set", "generations.A.train.lr=1e-8"]
    assert main(["retrain", str(write_config(tmp_path, cfg)), "--warm", *tiny_lr]) == 0
    out = capsys.readouterr().out
    assert "nothing to do" not in out and "warm retrain not possible" not in out
    chain = client.search_runs([experiment], "tags.`kdchain.kind` = 'chain'", order_by=["start_time DESC"])[0]
    assert chain.data.tags["kdchain.retrain.mode"] == "warm" and "warm retrain" in chain.info.run_name
    for name, run_id in family.items():
        old = client.get_run(run_id)
        new = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{chain.info.run_id}' and "
                                               f"tags.`kdchain.generation_name` = '{name}'")[0]
        assert new.data.metrics["params"] == old.data.metrics["params"]  # the champion's architecture, not re-pruned
        assert len(client.get_metric_history(new.info.run_id, "val_accuracy")) == 1  # 4 epochs x 0.25
        assert len(client.get_metric_history(old.info.run_id, "val_accuracy")) == 4
        # its weights are the champion's: it knows what they knew (a fresh model at this rate is at chance, 10%)
        assert new.data.metrics["test_accuracy"] > max(0.5, old.data.metrics["test_accuracy"] - 0.1)
        assert f"the champion's {name} (test accuracy " in new.data.tags["kdchain.promotion.vs_champion"]
    # the decision table, generation by generation: on the chain run and in `kdchain compare`
    table = client.download_artifacts(chain.info.run_id, "promotion.md", str(tmp_path))
    text = open(table).read()
    assert "## Generation by generation" in text and "| teacher | 0." in text and "| A | 0." in text
    assert main(["compare", "--tracking-uri", cfg["tracking"]["uri"], "--experiment", "steady", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["generations"]
    assert [r["vs_champion"][0] in "+-" for r in rows] == [True, True]


def test_a_warm_retrain_needs_every_generation_of_the_champion_family(tmp_path):
    from kdchain.spec import spec_from_dict
    from kdchain.warm import warm_chain

    spec = spec_from_dict(tiny_chain(tmp_path))  # teacher, A, B, C
    warm, why = warm_chain(spec, {"teacher": "runs:/1", "A": "runs:/2"})
    assert warm is None and why.startswith("the champion family has no generation B, C")
    warm, why = warm_chain(spec.model_copy(update={"retrain": spec.retrain.model_copy(update={"epochs_share": 0.5})}),
                           {n: f"runs:/{n}" for n in spec.generation_names()})
    assert why == "" and warm.generations[1].warm_start == "runs:/B" and warm.teacher.warm_start == "runs:/teacher"
    assert [g.train.epochs for g in warm.generations] == [1, 1, 1]  # half of 1 epoch, at least 1


def test_a_warm_start_that_leads_nowhere_is_refused_in_one_line(tmp_path, capsys):
    cfg = tiny_chain(tmp_path)
    cfg["generations"][0]["warm_start"] = str(tmp_path / "gone.pt")
    assert main(["validate", str(write_config(tmp_path, cfg))]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "generations.0.warm_start: " in err[0] and "gone.pt" in err[0]
