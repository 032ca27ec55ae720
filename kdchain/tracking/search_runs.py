"""A generation's search on MLflow: a search run nested under the chain run, a trial run per candidate under it,
the winner marked on both. Mixed into Tracker, whose client and experiment it uses."""

from mlflow.entities import Metric, Param, RunTag

from kdchain.tracking.store import (CHOSEN, GENERATION_NAME, KIND, PARENT, SEARCH_OF, SEARCH_RUN, TRIAL, WINNER,
                                    WORKER, now_ms)


class SearchRuns:
    """The search's half of Tracker (self.client: an MlflowClient; self.experiment_id)."""

    def search_run(self, chain_name: str, parent_id: str, index: int, name: str, search_json: str) -> str:
        """The run of one generation's search, nested under the chain run; its trials nest under it. It has no
        kdchain.generation tag: compare and the cache see only the generation's own run."""
        run = self.client.create_run(self.experiment_id, run_name=f"{chain_name} · {name} · search",
                                     tags={KIND: "search", SEARCH_OF: str(index), GENERATION_NAME: name,
                                           PARENT: parent_id})
        self.client.log_text(run.info.run_id, search_json, "search.json")
        return run.info.run_id

    def trial_run(self, search_run_id: str, chain_name: str, name: str, number: int, params: dict, summary: str,
                  worker: str) -> str:
        run = self.client.create_run(self.experiment_id, run_name=f"{chain_name} · {name} · trial {number}",
                                     tags={KIND: "trial", PARENT: search_run_id, TRIAL: str(number),
                                           WORKER: worker, "mlflow.note.content": summary})
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()],
                              synchronous=True)
        return run.info.run_id

    def finish_trial(self, run_id: str, metrics: dict[str, float], state: str, step: int) -> None:
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now_ms(), step) for k, v in metrics.items()],
                              tags=[RunTag("kdchain.trial_state", state)], synchronous=True)
        self.client.set_terminated(run_id, status="FINISHED")

    def finish_search(self, run_id: str, winner: int, winner_run_id: str | None, reason: str, plot: str | None,
                      result_json: str) -> None:
        tags = [RunTag(WINNER, str(winner)), RunTag("kdchain.search.reason", reason[:5000])]
        if winner_run_id:
            self.client.set_tag(winner_run_id, "kdchain.chosen", "true")
        self.client.log_batch(run_id, tags=tags, synchronous=True)
        self.client.log_text(run_id, result_json, "search_result.json")
        if plot:
            self.client.log_artifact(run_id, plot)
        self.client.set_terminated(run_id, status="FINISHED")

    def mark_searched(self, generation_run_id: str, search_run_id: str, label: str) -> None:
        """On the generation's run: which search and which trial chose its student (compare shows it)."""
        self.client.log_batch(generation_run_id, tags=[RunTag(SEARCH_RUN, search_run_id), RunTag(CHOSEN, label)],
                              synchronous=True)
