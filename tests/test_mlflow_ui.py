"""What a person sees: a 1-epoch chain, then `kdchain ui` serving its store through a real `mlflow server`,
checked through the server's REST API; `kdchain compare` and the Prefect artifacts read back from the same run."""

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from scripts.headless import Chromium, chromium_path
from tests.conftest import ROOT, free_port, seed_store, tiny_chain, write_config

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def chain(tmp_path_factory, prefect_harness, empty_store):
    from flows.chain import distill_chain

    tmp = tmp_path_factory.mktemp("ui")
    seed_store(tmp, empty_store)
    cfg = tiny_chain(tmp, epochs=1)
    result = distill_chain(str(write_config(tmp, cfg)))
    return result, cfg


@pytest.fixture(scope="module")
def server(chain):
    """`kdchain ui` on a free port: the deep links it prints, and the base URL of its mlflow server."""
    result, cfg = chain
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--tracking-uri", cfg["tracking"]["uri"],
                             "--port", str(port), "--no-browser"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        lines = [proc.stdout.readline()]  # "starting the MLflow UI ..."
        while not lines[-1].lstrip().startswith(("model registry:", "(no kdchain")):
            lines.append(proc.stdout.readline())
            assert lines[-1], f"kdchain ui exited before printing its links: {lines}"
            if len(lines) == 3:  # the links come only once the server answers: the first click must work
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    assert r.read() == b"OK"
        yield base, lines
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the CLI and the mlflow server it started
        proc.wait(20)


def _get(base: str, endpoint: str, **query) -> bytes:
    with urllib.request.urlopen(f"{base}{endpoint}?{urllib.parse.urlencode(query)}", timeout=30) as r:
        return r.read()


def _api(base: str, endpoint: str, body: dict | None = None, **query) -> dict:
    if body is None:
        return json.loads(_get(base, f"/api/2.0/mlflow/{endpoint}", **query))
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/{endpoint}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _artifacts(base: str, run_id: str, path: str = "") -> set[str]:
    files = _api(base, "artifacts/list", run_id=run_id, path=path).get("files", [])
    return {f["path"] for f in files}


@pytest.mark.slow  # about 25 s: `kdchain ui` starts a real `mlflow server` and waits for it
def test_the_mlflow_server_shows_the_chain(chain, server):
    result, cfg = chain
    base, lines = server

    exp = _api(base, "experiments/get-by-name", experiment_name="tiny")["experiment"]
    tags = {t["key"]: t["value"] for t in exp.get("tags", [])}
    assert tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens it as model training
    exp_id = exp["experiment_id"]

    # the deep links `kdchain ui` printed, all in the model-training workspace (not the GenAI one): the chain's
    # generations (a saved view), the chain run, the runs page, the logged models, the registered model
    text = "".join(lines)
    ws = "workflowType=machine_learning"
    assert f"{base}/#/experiments/{exp_id}/runs?{ws}&viewStateShareKey=kdchain-generations\n" in text
    assert f"{base}/#/experiments/{exp_id}/runs/{result.chain_run_id}?{ws}\n" in text
    assert f"{base}/#/experiments/{exp_id}/models?{ws}\n" in text
    assert f"{base}/#/models/tiny-student?{ws}\n" in text
    assert all(ws in line for line in lines if "http" in line and "/#/" in line)

    runs = _api(base, "runs/search", {"experiment_ids": [exp_id], "max_results": 100})["runs"]
    by_id = {r["info"]["run_id"]: r for r in runs}
    chain_run = by_id[result.chain_run_id]
    # config name, seed, spec digest, start time: two runs of one config tell apart
    assert re.fullmatch(r"tiny · seed 0 · [0-9a-f]{7} · \d\d-\d\d \d\d:\d\d", chain_run["info"]["run_name"])
    chain_tags = {t["key"]: t["value"] for t in chain_run["data"]["tags"]}
    assert re.match(r"\*\*tiny\*\*: teacher \*\*\d+\.\d%\*\* → A \*\*", chain_tags["mlflow.note.content"])
    # the chain run's metrics by generation (step = index), as the UI prints them (4 significant digits)
    history = _api(base, "metrics/get-history", run_id=result.chain_run_id, metric_key="test_accuracy")["metrics"]
    assert [(m["step"], m["value"]) for m in history] == [
        (i, round(g.metrics["test_accuracy"], 6)) for i, g in enumerate(result.generations)]

    gens = {r["info"]["run_name"]: r for r in runs if r["info"]["run_id"] != result.chain_run_id}
    assert sorted(n.split(" · ")[0] for n in gens) == sorted(("teacher", "A", "B", "C"))
    for name, run in gens.items():
        acc = next(m["value"] for m in run["data"]["metrics"] if m["key"] == "test_accuracy")
        assert re.fullmatch(rf"\w+ · {acc:.1%} · [\d.]+k? params · [\d.]+ ms", name)
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        metrics = {m["key"] for m in run["data"]["metrics"]}
        assert tags["mlflow.parentRunId"] == result.chain_run_id  # nested under the chain run
        assert tags["mlflow.note.content"].startswith("cnn ")  # the one-line architecture summary
        assert params["student.kind"] == "cnn" and "student.channels" in params
        assert {"test_accuracy", "params", "latency_ms", "val_accuracy"} <= metrics
        assert "plots/confusion_matrix.png" in _artifacts(base, run["info"]["run_id"], "plots")

    plots = _artifacts(base, result.chain_run_id, "plots")
    assert plots == {"plots/accuracy_vs_params.png", "plots/accuracy_vs_latency.png",
                     "plots/val_accuracy_per_epoch.png"}
    assert {"generations.json", "generations.md", "spec.yaml"} <= _artifacts(base, result.chain_run_id)

    # what the UI's artifact viewer fetches: real PNGs and the table in MLflow's table format
    for p in plots:
        assert _get(base, "/get-artifact", path=p, run_uuid=result.chain_run_id).startswith(PNG)
    table = json.loads(_get(base, "/get-artifact", path="generations.json", run_uuid=result.chain_run_id))
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [r["generation"] for r in rows] == ["teacher", "A", "B", "C"]
    assert all(r["mlflow_run"].endswith(f"/#/experiments/{exp_id}/runs/{r['run_id']}?workflowType=machine_learning")
               for r in rows)
    md = _get(base, "/get-artifact", path="generations.md", run_uuid=result.chain_run_id).decode()
    assert re.search(r"\| \[A\]\(http://127\.0\.0\.1:5000/#/experiments/\d+/runs/[0-9a-f]{32}\?workflowType="
                     r"machine_learning\) \| cnn 8-16 \|", md)

    # the registered version says which generation it is, with its figures and links back
    version = _api(base, "model-versions/get", name="tiny-student", version="1")["model_version"]
    assert re.match(r"C · \d+\.\d% · [\d.]+k? params · [\d.]+ ms — generation C of chain run tiny · seed 0",
                    version["description"])


def test_every_generation_run_names_the_data_it_saw(chain):
    from mlflow import MlflowClient

    result, cfg = chain
    client = MlflowClient(cfg["tracking"]["uri"])
    seen = {}
    for gen in result.generations:
        inputs = client.get_run(gen.run_id).inputs.dataset_inputs
        by_context = {t.value: i.dataset for i in inputs for t in i.tags if t.key == "mlflow.data.context"}
        assert sorted(by_context) == ["test", "training", "validation"], gen.name
        assert [by_context[c].name for c in ("training", "validation", "test")] == [
            "digits/train", "digits/val", "digits/test"]
        assert all(d.source_type == "code" and '"kind": "digits"' in d.source for d in by_context.values())
        seen[gen.name] = {c: d.digest for c, d in by_context.items()}
    # one chain, one data set: every generation shows the same three digests, one per split
    assert all(digests == seen["teacher"] for digests in seen.values())
    assert len(set(seen["teacher"].values())) == 3


def test_prefect_artifacts_link_to_mlflow(chain):
    from prefect.artifacts import Artifact

    result, _ = chain
    md = Artifact.get("tiny-generations-md")
    for g in result.generations:
        assert (f"[{g.name}](http://127.0.0.1:5000/#/experiments/{result.experiment_id}/runs/{g.run_id}"
                "?workflowType=machine_learning)") in md.data
    link = Artifact.get("tiny-mlflow")  # Prefect stores a link artifact as markdown: [text](url)
    assert f"(http://127.0.0.1:5000/#/experiments/{result.experiment_id}/runs?workflowType=machine_learning)" in link.data


def test_compare_one_run_all_runs_json_csv(chain, capsys):
    from flows.cli import main

    result, cfg = chain
    uri = cfg["tracking"]["uri"]

    assert main(["compare", "--tracking-uri", uri, "--run", result.chain_run_id, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["chain_run_id"] == result.chain_run_id
    assert [g["name"] for g in out["generations"]] == ["teacher", "A", "B", "C"]

    assert main(["compare", "--tracking-uri", uri, "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["name"] for r in rows] == ["teacher", "A", "B", "C"]
    assert float(rows[0]["params"]) > float(rows[-1]["params"])

    assert main(["compare", "--tracking-uri", uri, "--all", "--json"]) == 0
    chains = json.loads(capsys.readouterr().out)["chain_runs"]
    assert [c["chain_run_id"] for c in chains] == [result.chain_run_id]
    assert chains[0]["final"] == "C" and chains[0]["test_accuracy"] == pytest.approx(
        result.generations[-1].metrics["test_accuracy"])

    assert main(["compare", "--tracking-uri", uri, "--all"]) == 0
    assert result.chain_run_id in capsys.readouterr().out

    assert main(["compare", "--tracking-uri", uri, "--run", "0" * 32]) == 2
    assert "no such run" in capsys.readouterr().err
    assert main(["compare", "--tracking-uri", uri, "--run", result.generations[1].run_id]) == 2
    assert "is not a chain run" in capsys.readouterr().err


@pytest.mark.slow  # headless Chromium renders the MLflow UI
@pytest.mark.skipif(chromium_path() is None, reason="needs Debian's chromium (apt-get install chromium) to load the UI")
def test_the_printed_generations_link_shows_them_at_first_sight(chain, server):
    """What a person sees on opening the link `kdchain ui` prints, in headless Chromium, without a click: the
    model-training workspace, and every generation's name with its test accuracy inside the first screen."""
    result, _ = chain
    base, lines = server
    link = next(line.split()[-1] for line in lines if line.lstrip().startswith("its generations:"))
    expected = [f"{g.name} · {g.metrics['test_accuracy']:.1%}" for g in result.generations]
    with Chromium(1600, 1000) as page:
        page.goto(link)
        shown = page.wait_for(expected + ["test_accuracy"], timeout=120, first_screen=True)
        assert all(e in shown for e in expected), f"not on the first screen: {expected} in {shown!r}"
        # the figures as columns too: each generation's accuracy as a number (4 significant digits)
        assert all(f"{g.metrics['test_accuracy']:.4g}".rstrip("0") in shown for g in result.generations), shown
        sidebar = page.evaluate("[...document.querySelectorAll('nav, aside')].map(e => e.innerText).join(' ')")
        assert "Runs" in sidebar and "Judges" not in sidebar, "the GenAI workspace opened instead of model training"
