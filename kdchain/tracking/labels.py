"""What a person reads first in the MLflow UI: links that open its model-training workspace, run names that carry
a generation's key figures, the chain run's name and its description (a markdown table of the generations).

Why the workspace is in every link: MLflow 3.17's UI picks the workspace (GenAI or machine learning) from the URL's
`workflowType`, else from what the browser last chose (localStorage `mlflow.workflowType`, default `genai`); with
its workflow switch on (the default build) it ignores the experiment's `mlflow.experimentKind` tag. A link without
`workflowType=machine_learning` opens Traces and Evaluations instead of the runs and their metrics.
"""

import json

WORKSPACE = "workflowType=machine_learning"
REGISTERED_MODEL = "kdchain.registered_model"  # on a chain run: the registered model its last student went to


def experiment_url(host: str, experiment_id: str, tab: str = "runs", query: str = "") -> str:
    """A tab of the experiment (runs, models = its logged models with their metrics) in the training workspace."""
    return f"{host}/#/experiments/{experiment_id}/{tab}?{WORKSPACE}" + (f"&{query}" if query else "")


def run_url(host: str, experiment_id: str, run_id: str) -> str:
    return f"{host}/#/experiments/{experiment_id}/runs/{run_id}?{WORKSPACE}"


def registry_url(host: str, name: str | None = None) -> str:
    """The model registry (a registered model's versions, aliases and descriptions when `name` is given)."""
    from urllib.parse import quote

    return f"{host}/#/models" + (f"/{quote(name)}" if name else "") + f"?{WORKSPACE}"


def _count(v: float) -> str:
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if v >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.0f}"


def figures(metrics: dict[str, float]) -> str:
    """`98.3% · 3.6k params · 0.14 ms` (and the int8 accuracy where one was measured)."""
    parts = []
    if metrics.get("test_accuracy") is not None:
        parts.append(f"{metrics['test_accuracy']:.1%}")
    if metrics.get("params") is not None:
        parts.append(f"{_count(metrics['params'])} params")
    if metrics.get("latency_ms") is not None:
        parts.append(f"{metrics['latency_ms']:.3g} ms")
    int8 = next((metrics[k] for k in ("int8_test_accuracy", "test_accuracy_int8") if metrics.get(k) is not None), None)
    if int8 is not None:
        parts.append(f"int8 {int8:.1%}")
    return " · ".join(parts)


def generation_name(name: str, metrics: dict[str, float]) -> str:
    """A finished generation's run name: `C · 98.3% · 3.6k params · 0.14 ms`. The runs table shows run names
    without any set-up, so the figures are there at first sight; the chain run above it names the chain."""
    shown = figures(metrics)
    return f"{name} · {shown}" if shown else name


def chain_name(spec_name: str, seed: int, digest: str, started: str, marker: str = "") -> str:
    """`digits-chain · seed 0 · 3f2a9c1 · retrain · 11-30 01:50`: two runs of one config differ by seed, spec digest
    (any changed setting), marker or start time."""
    return " · ".join(p for p in (spec_name, f"seed {seed}", digest[:7], marker, started) if p)


def chain_description(chain: str, rows: list[dict], links: dict[str, str]) -> str:
    """The chain run's description (MLflow shows it on the run's overview): one row per generation, accuracy in
    percent, each generation linked to its run."""
    # first line: what the collapsed description shows at first sight, every generation with its accuracy
    lines = [f"**{chain}**: " + " → ".join(f"{r['name']} **{r['test_accuracy']:.1%}**" if r.get("test_accuracy")
                                           is not None else r["name"] for r in rows), "",
             "| generation | test accuracy | params | latency | retention | architecture |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        name = f"[{r['name']}]({links[r['run_id']]})" if r["run_id"] in links else r["name"]
        acc = "-" if r.get("test_accuracy") is None else f"{r['test_accuracy']:.2%}"
        params = "-" if r.get("params") is None else f"{r['params']:,.0f}"
        latency = "-" if r.get("latency_ms") is None else f"{r['latency_ms']:.3g} ms"
        retention = "-" if r.get("retention") is None else f"{r['retention']:.3f}"
        lines.append(f"| {name} | {acc} | {params} | {latency} | {retention} | {r.get('summary', '')} |")
    return "\n".join(lines)


def version_description(generation: str, chain_run: str, metrics: dict[str, float], run_link: str,
                        chain_link: str) -> str:
    """A registered version's description: which generation of which chain run, its figures, links back."""
    return (f"{generation} · {figures(metrics)} — generation {generation} of chain run {chain_run}\n\n"
            f"[generation run]({run_link}) · [chain run]({chain_link})")


def rounded(value: float) -> float:
    """A final metric as the UI should print it: counts stay whole, the rest keep 4 significant digits (float32
    accuracies otherwise show as 0.9972222447395325, cut off in the runs table)."""
    value = float(value)
    return value if value.is_integer() else float(f"{value:.4g}")


# MLflow 3.17 keeps a saved view of the runs page as the experiment tag `mlflow.sharedViewState.<id>` (a JSON
# envelope {name, createdAt, updatedAt, state}, state = the page's search facets and table state as JSON) and opens
# it from the URL's `viewStateShareKey=<id>`: the only way a link can choose the runs table's columns and widths.
VIEW_TAG, VIEW_PARAM = "mlflow.sharedViewState.", "viewStateShareKey"
GENERATIONS_VIEW, RUNS_VIEW = "kdchain-generations", "kdchain-runs"
VIEW_METRICS = ["test_accuracy", "params", "latency_ms", "retention"]


def runs_view(name: str, now_ms: int, search_filter: str = "", order_by: str = "") -> str:
    """A saved view's tag value: the run name column wide enough for the figures it carries, then test accuracy,
    params, latency and retention as columns; optionally filtered and sorted."""
    metric_cols = [f"metrics.`{k}`" for k in VIEW_METRICS]
    state = {"searchFilter": search_filter, "orderByKey": order_by or "attributes.start_time",
             "orderByAsc": False, "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [],
             "modelVersionFilter": "All Runs", "selectedColumns": metric_cols + ["attributes.`Models`"],
             "columnOrder": ["attributes.`Run Name`", *metric_cols],
             "columnWidths": {"attributes.`Run Name`": 380, "metrics.`test_accuracy`": 120},
             "runsHiddenMode": "SHOW_ALL"}
    return json.dumps({"name": name, "createdAt": now_ms, "updatedAt": now_ms, "state": json.dumps(state)})
