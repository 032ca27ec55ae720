"""Reading a chain back from MLflow: its chain runs, the generation table of one, a summary of each. Mixed into
Tracker, whose client and experiment it uses; `kdchain compare`, the chain report and promotion read through it."""

import json
from datetime import datetime

import mlflow

from kdchain.tracking.registry import VS_CHAMPION
from kdchain.tracking.reuse import REUSED_FROM
from kdchain.tracking.store import CHOSEN, GENERATION, GENERATION_NAME, KIND, TABLE_KEYS

CLASS_NAMES = "kdchain.class_names"  # a JSON list, in output order


class GenerationTables:
    """The reading half of Tracker (self.client: an MlflowClient; self.experiment_id; self._finished_children)."""

    def chain_runs(self) -> list:
        return self.client.search_runs([self.experiment_id], f"tags.`{KIND}` = 'chain'",
                                       order_by=["attributes.start_time DESC"])

    def generation_table(self, chain_run_id: str | None = None) -> tuple[str | None, list[dict]]:
        """(chain run id, one row per finished generation in order) of the given or the latest chain run."""
        if chain_run_id is None:
            runs = self.chain_runs()
            if not runs:
                return None, []
            chain_run_id = runs[0].info.run_id
        children = self._finished_children(chain_run_id)
        rows = {}
        for run in children:
            index = int(run.data.tags.get(GENERATION, -1))
            if index < 0 or index in rows:
                continue
            rows[index] = {"generation": index, "name": run.data.tags.get(GENERATION_NAME),
                           "run_id": run.info.run_id, "summary": run.data.tags.get("mlflow.note.content", ""),
                           **{k: run.data.metrics.get(k) for k in TABLE_KEYS},
                           "class_names": json.loads(run.data.tags.get(CLASS_NAMES, "null"))}
            if CHOSEN in run.data.tags:  # a searched generation: compare says which trial was chosen
                rows[index]["note"] = run.data.tags[CHOSEN]
            if VS_CHAMPION in run.data.tags:  # a retrained generation against the champion family's
                rows[index]["vs_champion"] = run.data.tags[VS_CHAMPION]
            if REUSED_FROM in run.data.tags:  # not trained in this chain run: compare says where it was
                rows[index]["reused_from"] = run.data.tags[REUSED_FROM]
                rows[index]["note"] = " ".join(filter(None, [rows[index].get("note"),
                                                             f"reused from run {run.data.tags[REUSED_FROM][:8]}"]))
        return chain_run_id, [rows[i] for i in sorted(rows)]

    def chain_summaries(self) -> list[dict]:
        """Every chain run of the experiment, newest first, with its final (last finished) student's metrics."""
        out = []
        for run in self.chain_runs():
            _, rows = self.generation_table(run.info.run_id)
            final = rows[-1] if rows else {}
            out.append({"chain_run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
                        "started": datetime.fromtimestamp(run.info.start_time / 1000).isoformat(timespec="seconds"),
                        "generations": len(rows), "teacher_test_accuracy": rows[0]["test_accuracy"] if rows else None,
                        "final": final.get("name"), "final_summary": final.get("summary"),
                        "final_run_id": final.get("run_id"), **{k: final.get(k) for k in TABLE_KEYS}})
        return out

    def chain_run_exists(self, run_id: str) -> bool:
        try:
            run = self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            return False
        return run.info.experiment_id == self.experiment_id and run.data.tags.get(KIND) == "chain"
