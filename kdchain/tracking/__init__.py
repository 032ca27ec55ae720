"""MLflow: the only package of kdchain that imports it.

store (URIs, creating the store, one-line store errors, the layout's tags), runs (Tracker: chain, generation,
search and trial runs, and reading them back), report (the chain's pictures and tables), registry (aliases,
champion and challenger, promotion records), lineage (the data splits each run saw, as MLflow datasets), fetch (models:/ and runs:/ URIs as checkpoints), labels (what the
MLflow UI shows first: run names and descriptions with the figures, links into its training workspace, saved views).
"""

from kdchain.tracking.fetch import (CheckpointSourceError, fetch_checkpoint, pin_model_uri, shipped_int8,
                                   source_model_uri)
from kdchain.tracking.lineage import split_datasets, test_data_name
from kdchain.tracking.registry import (CHALLENGER, CHAMPION, CONFIG_DIGEST, VS_CHAMPION, AliasMoved, alias_version, champion_family,
                                       champion_origin, move_alias, record_decision, set_alias)
from kdchain.tracking.runs import Tracker, open_tracker
from kdchain.tracking.store import (DEFAULT_UI, DEFAULT_URI, FINAL_KEYS, GENERATION, GENERATION_NAME, INT8_KEYS, KIND,
                                    PARENT, SUPERSEDED, TEACHER_RUN, StoreError, as_store_error, experiment_of_run,
                                    latest_chain_experiment, prepare_store, resolve_uri, sqlite_path, store_problem,
                                    tracking_problem, ui_base)

__all__ = ["CheckpointSourceError", "fetch_checkpoint", "pin_model_uri", "shipped_int8", "CHALLENGER", "CHAMPION", "AliasMoved",
           "split_datasets", "test_data_name", "alias_version", "champion_family", "champion_origin", "CONFIG_DIGEST", "VS_CHAMPION", "move_alias", "record_decision", "set_alias", "Tracker", "open_tracker", "DEFAULT_UI",
           "DEFAULT_URI", "FINAL_KEYS", "INT8_KEYS", "GENERATION", "GENERATION_NAME", "KIND", "PARENT", "SUPERSEDED", "TEACHER_RUN",
           "StoreError", "as_store_error", "experiment_of_run", "latest_chain_experiment", "prepare_store",
           "resolve_uri", "sqlite_path", "store_problem", "tracking_problem", "ui_base"]
