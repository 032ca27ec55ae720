"""`kdchain retrain` when nothing is new: the data and the config the champion was trained on train nothing."""

import pytest
from mlflow import MlflowClient

from flows.cli import main
from tests.conftest import tiny_chain, write_config


@pytest.mark.usefixtures("prefect_harness")
def test_a_retrain_on_the_champions_data_and_config_trains_nothing(tmp_path, capsys):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    cfg = tiny_chain(tmp_path, name="steady")
    cfg["generations"] = cfg["generations"][:1]  # teacher -> A
    config = write_config(tmp_path, cfg)
    assert main(["retrain", str(config)]) == 0  # no champion yet: trains, and A becomes champion
    assert "promoted" in capsys.readouterr().out
    client = MlflowClient(cfg["tracking"]["uri"])
    experiment = client.get_experiment_by_name("steady").experiment_id
    chains = lambda: client.search_runs([experiment], "tags.`kdchain.kind` = 'chain'")  # noqa: E731
    assert len(chains()) == 1

    assert main(["retrain", str(config)]) == 0  # same data, same config: nothing trained, one line
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("steady-student: nothing to do: the data and the config are those champion version 1")
    assert len(chains()) == 1 and str(client.get_model_version_by_alias("steady-student", "champion").version) == "1"
    with get_client(sync_client=True) as prefect:  # the retrain's Prefect run says so too
        notes = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["steady-student-promotion"])))
    assert any("nothing to do" in (a.data or "") for a in notes)

    # new data (a different split of it) is something new: the retrain trains
    cfg["data"]["split"] = {"val": 0.2, "test": 0.15}
    assert main(["retrain", str(write_config(tmp_path, cfg))]) == 0
    assert "nothing to do" not in capsys.readouterr().out and len(chains()) == 2
