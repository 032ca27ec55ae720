"""Pictures and tables of a chain on its MLflow runs: the generation table (MLflow table and markdown),
accuracy against params and latency, validation accuracy per epoch, a confusion matrix per generation.
Mixed into Tracker, whose client and run layout it reads."""

import contextlib

from kdchain.measure import plots
from kdchain.tracking.labels import GENERATIONS_VIEW, RUNS_VIEW, VIEW_TAG, chain_description, runs_view
from kdchain.tracking.store import DEFAULT_UI, TABLE_KEYS, now_ms

PLOT_PARAMS, PLOT_LATENCY, PLOT_EPOCHS = ("plots/accuracy_vs_params.png", "plots/accuracy_vs_latency.png",
                                          "plots/val_accuracy_per_epoch.png")
PLOT_CONFUSION, TABLE_JSON, TABLE_MD = "plots/confusion_matrix.png", "generations.json", "generations.md"
PLOT_INT8 = "plots/accuracy_vs_size_fp32_int8.png"
SIZING_JSON, SIZING_MD = "sizing/candidates.json", "sizing/candidates.md"


class ChainReport:
    """The chain report's half of Tracker (self.client: an MlflowClient; self.generation_table, self.run_url)."""

    def log_confusion(self, run_id: str, matrix: list[list[int]], class_names: list[str], title: str) -> None:
        """The generation's test confusion matrix as a PNG on its run."""
        if matrix:
            self.client.log_figure(run_id, plots.confusion_matrix(matrix, class_names, title), PLOT_CONFUSION)

    def replace_table(self, run_id: str, rows: list[dict], path: str) -> None:
        """`rows` as the MLflow table `path` of the run; log_table appends to an existing file: a re-run of the
        same run replaces it instead."""
        with contextlib.suppress(Exception):
            if any(f.path == path for f in self.client.list_artifacts(run_id, path.rpartition("/")[0] or None)):
                from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

                get_artifact_repository(self.client.get_run(run_id).info.artifact_uri).delete_artifacts(path)
        if rows:
            self.client.log_table(run_id, {k: [r.get(k) for r in rows] for k in rows[0]}, path)

    def log_sizing(self, run_id: str, rows: list[dict], title: str) -> None:
        """A target-sized generation's candidate plans (kdchain.sizing) on its run: an MLflow table and markdown."""
        self.replace_table(run_id, rows, SIZING_JSON)
        columns = [(k, k) for k in rows[0]]
        shown = [{k: f"{v:.4g}" if isinstance(v, float) else v for k, v in r.items()} for r in rows]
        self.client.log_text(run_id, f"# {title}\n\n" + plots.markdown_table(shown, columns), SIZING_MD)

    def val_histories(self, rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
        """name -> [(epoch, val accuracy)] read back from MLflow (epochs are steps >= 1; step 0 is the final value)."""
        return {r["name"]: [(m.step, m.value) for m in self.client.get_metric_history(r["run_id"], "val_accuracy")
                            if m.step >= 1] for r in rows}

    def log_chain_report(self, chain_run_id: str, chain_name: str, host: str = DEFAULT_UI) -> list[dict]:
        """On the chain run: accuracy-vs-params/latency and val-accuracy-per-epoch plots, the generation table as an
        MLflow table (generations.json) and as markdown (generations.md). Returns the table's rows."""
        _, rows = self.generation_table(chain_run_id)
        self.client.log_figure(chain_run_id, plots.accuracy_vs(rows, "params", "parameters",
                                                               f"{chain_name}: test accuracy vs parameters"), PLOT_PARAMS)
        self.client.log_figure(chain_run_id, plots.accuracy_vs(rows, "latency_ms", "latency per image (ms)",
                                                               f"{chain_name}: test accuracy vs latency"), PLOT_LATENCY)
        self.client.log_figure(chain_run_id, plots.val_accuracy_curves(self.val_histories(rows),
                                                                       f"{chain_name}: validation accuracy per epoch"),
                               PLOT_EPOCHS)
        if any(r.get("size_bytes_int8") for r in rows):  # deploy.quantize: int8 beside fp32
            self.client.log_figure(chain_run_id, plots.fp32_vs_int8(rows, f"{chain_name}: fp32 and int8 ONNX"),
                                   PLOT_INT8)
        table = [{"generation": r["name"], "architecture": r["summary"],
                  **{k: r[k] for k in TABLE_KEYS if r.get(k) is not None},
                  "run_id": r["run_id"], "mlflow_run": self.run_url(r["run_id"], host)} for r in rows]
        self.replace_table(chain_run_id, table, TABLE_JSON)
        md = [{**t, "generation": f"[{t['generation']}]({t['mlflow_run']})",
               **{k: f"{t[k]:.4g}" for k in TABLE_KEYS if k in t}} for t in table]
        self.client.log_text(chain_run_id, f"# {chain_name}: generations\n\n" + plots.markdown_table(
            md, [("generation", "generation"), ("architecture", "architecture")] +
            [(k, k) for k in TABLE_KEYS if any(k in t for t in table)]), TABLE_MD)
        # the run's description, the first thing its page shows: the generations with accuracy in percent
        self.client.set_tag(chain_run_id, "mlflow.note.content", chain_description(
            chain_name, rows, {r["run_id"]: self.run_url(r["run_id"], host) for r in rows}))
        self.save_views(chain_run_id)
        return rows

    def save_views(self, chain_run_id: str) -> None:
        """The runs page as MLflow's saved views (experiment tags), so that a link opens it with the figures as
        columns: this chain's generations, best test accuracy first, and every run of the experiment."""
        ts = now_ms()
        self.client.set_experiment_tag(self.experiment_id, VIEW_TAG + GENERATIONS_VIEW, runs_view(
            "kdchain: generations of the latest chain", ts, f"tags.mlflow.parentRunId = '{chain_run_id}'",
            "metrics.`test_accuracy`"))
        self.client.set_experiment_tag(self.experiment_id, VIEW_TAG + RUNS_VIEW,
                                       runs_view("kdchain: runs with their figures", ts))
