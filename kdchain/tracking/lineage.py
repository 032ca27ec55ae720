"""What each model saw, as MLflow datasets: every generation run logs the data splits it was trained, validated
and tested on (`mlflow.log_inputs`, context training / validation / test), so that the runs table's Dataset column
and the run page name them, and two runs on the same data show the same digest.

A split's dataset carries no images (an MLflow MetaDataset): its name is `<data kind>/<split>`, its source the
folder it is read from (imagefolder, cifar10: a local source) or, for data kdchain generates (digits, marks), a
code source whose tags hold the data spec; its digest is the data's fingerprint (spec and source contents), the
seed that splits it and the split's name, hashed: the same images in the same split give the same digest.
"""

from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset

from kdchain.data import split_digest

CONTEXTS = {"train": "training", "val": "validation", "test": "test"}  # split -> mlflow.data.context


def test_data_name(data_spec, seed: int) -> str:
    """`digits/test@<digest>`: the test split as the promotion record names it (the dataset the runs logged)."""
    return f"{data_spec.kind}/test@{split_digest(data_spec, seed, 'test')}"


def split_datasets(data_spec, seed: int, splits=("train", "val", "test")) -> tuple[list, list[str], list[dict]]:
    """(datasets, contexts, tags) for mlflow.log_inputs: one metadata-only dataset per split in `splits`, tagged
    with the seed that split it."""
    root = getattr(data_spec, "root", None)
    source = (resolve_dataset_source(str(root)) if root
              else CodeDatasetSource({"kdchain.data": data_spec.model_dump(mode="json")}))
    datasets = [MetaDataset(source, name=f"{data_spec.kind}/{split}",
                            digest=split_digest(data_spec, seed, split))
                for split in splits]
    return datasets, [CONTEXTS[split] for split in splits], [{"kdchain.seed": str(seed)} for _ in splits]
