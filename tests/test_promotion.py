"""Promotion rule, compare-and-set on the champion alias, `teacher: {from: ...}`, the data fingerprint."""

import shutil
import threading
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.cli import main
from kdchain import tracking
from kdchain.checkpoints import load_checkpoint
from kdchain.data import files_fingerprint
from kdchain.promotion import CHALLENGER, PROMOTED, UNCHANGED, Candidate, decide
from kdchain.spec import PromotionSpec, SpecError, spec_from_dict
from tests.conftest import tiny_chain, write_config


def cand(version: str, acc: float, latency: float = 0.1, size: float = 1e4) -> Candidate:
    return Candidate(version, f"run{version}", {"test_accuracy": acc, "latency_ms": latency, "size_bytes": size,
                                                "params": 1e3, "flops": 1e4})


def test_rule_promotes_only_a_clear_gain_within_budget():
    rule = PromotionSpec(min_gain=0.01, max_latency_ms=1.0, max_size_bytes=50_000)
    assert decide(cand("1", 0.5), None, rule).outcome == PROMOTED  # first within budget
    assert decide(cand("1", 0.9, latency=2.0), None, rule).outcome == CHALLENGER  # first, but too slow
    champ = cand("1", 0.90)
    assert decide(cand("2", 0.915), champ, rule).outcome == PROMOTED
    small = decide(cand("2", 0.905), champ, rule)
    assert small.outcome == CHALLENGER and "below the required 0.01" in small.reason
    assert decide(cand("2", 0.85), champ, rule).outcome == CHALLENGER
    big = decide(cand("2", 0.99, size=60_000), champ, rule)
    assert big.outcome == CHALLENGER and "size 60,000 B exceeds" in big.reason
    assert decide(cand("1", 0.9), champ, rule).outcome == UNCHANGED
    assert decide(cand("2", 0.90), champ, PromotionSpec(min_gain=0.0)).outcome == CHALLENGER  # a tie never promotes


def test_two_concurrent_promotions_against_the_same_champion_only_one_wins(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    tracking.Tracker(uri, "cas")  # creates the store once
    client = MlflowClient(uri)
    client.create_registered_model("m")
    for _ in range(3):
        client.create_model_version("m", source=str(tmp_path))
    client.set_registered_model_alias("m", "champion", "1")

    outcomes, barrier = {}, threading.Barrier(2)

    def promote(version: str):
        barrier.wait()
        try:
            tracking.move_alias(uri, "m", "champion", version, expected="1", lock_dir=tmp_path)
            outcomes[version] = "moved"
        except tracking.AliasMoved:
            outcomes[version] = "refused"

    threads = [threading.Thread(target=promote, args=(v,)) for v in ("2", "3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes.values()) == ["moved", "refused"]
    winner = next(v for v, o in outcomes.items() if o == "moved")
    assert tracking.alias_version(uri, "m", "champion")[0] == winner


def test_teacher_is_either_trained_or_loaded(tmp_path):
    cfg = tiny_chain(tmp_path)
    cfg["teacher"]["from"] = "models:/x@champion"
    with pytest.raises(SpecError, match="either `model`.*or `from`"):
        spec_from_dict(cfg)
    del cfg["teacher"]["model"]
    with pytest.raises(SpecError, match="`train` does not apply"):
        spec_from_dict(cfg)
    del cfg["teacher"]["train"]
    assert spec_from_dict(cfg).teacher.from_ == "models:/x@champion"


def test_teacher_from_a_missing_champion_is_one_line(tmp_path, capsys):
    cfg = tiny_chain(tmp_path)
    cfg["teacher"] = {"from": "models:/nobody@champion"}
    tracking.Tracker(cfg["tracking"]["uri"], "tiny")  # a store without that model
    capsys.readouterr()
    assert main(["validate", str(write_config(tmp_path, cfg))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no alias 'champion'" in err[0]


def test_data_fingerprint_sees_a_folder_grow(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.png").write_bytes(b"x")
    before = files_fingerprint(tmp_path / "a")
    (tmp_path / "a" / "2.png").write_bytes(b"y")
    assert files_fingerprint(tmp_path / "a") != before


def test_chain_starts_from_a_logged_model_without_training_it(tmp_path, prefect_harness):
    from flows.chain import distill_chain

    cfg = tiny_chain(tmp_path, epochs=2)
    cfg["generations"] = cfg["generations"][:1]
    first = distill_chain(write_config(tmp_path, cfg, "first.yaml").as_posix())
    source = first.generations[-1]  # A of the first chain: cnn 8-16
    cfg2 = {**cfg, "name": "tiny2", "teacher": {"from": f"runs:/{source.run_id}"}}
    second = distill_chain(write_config(tmp_path, cfg2, "second.yaml").as_posix())
    teacher, student = second.generations
    assert teacher.metrics["test_accuracy"] == pytest.approx(source.metrics["test_accuracy"])
    assert teacher.seconds["fit"] == 0.0
    client = MlflowClient(cfg["tracking"]["uri"])
    assert client.get_metric_history(teacher.run_id, "train_loss") == []  # evaluated, not trained
    assert "cnn 8-16" in teacher.summary and student.summary == "cnn 4-8"  # derive works off its architecture
    # referenced, not copied: the teacher's run points at A's logged model and logs no weights of its own
    assert teacher.model_uri == source.model_uri
    exp = client.get_run(teacher.run_id).info.experiment_id
    assert client.search_logged_models([exp], f"source_run_id = '{teacher.run_id}'") == []
    # a run of a store written before the logged model held the checkpoint (a checkpoint/model.pt artifact, here
    # the pre-split fixture) is still fetched as a teacher
    old = client.create_run(exp).info.run_id
    (tmp_path / "old").mkdir()
    shutil.copyfile(Path(__file__).parent / "fixtures" / "pre_split" / "cnn-model.pt", tmp_path / "old" / "model.pt")
    client.log_artifact(old, str(tmp_path / "old" / "model.pt"), "checkpoint")
    fetched = tracking.fetch_checkpoint(f"runs:/{old}", cfg["tracking"]["uri"], tmp_path / "sources")
    assert load_checkpoint(fetched)[1].kind == "cnn"
