"""A warm retrain's chain: the config's chain with every generation starting from the same generation of the
champion family (`warm_start`), its architecture kept and `retrain` epochs trained (kdchain.spec.retrain).

The warm chain is an ordinary chain spec, so it runs, caches, resumes and is recorded like any other; the chain run's
config shows each generation's warm start and epochs.
"""

from kdchain.spec import ChainSpec


def warm_chain(spec: ChainSpec, family: dict[str, str]) -> tuple[ChainSpec | None, str]:
    """(the warm chain, "") or (None, why a warm start is not possible: the retrain is then full).
    `family`: {generation name: runs:/<id> or a checkpoint} of the champion's chain, teacher included."""
    if not family:
        return None, ("no champion family in the store yet (a first retrain, or a champion registered before "
                      "families were): a full retrain")
    wanted = spec.generation_names() if spec.teacher.from_ is None else [g.name for g in spec.generations]
    missing = [n for n in wanted if n not in family]
    if missing:
        return None, (f"the champion family has no generation {', '.join(missing)} (it has "
                      f"{', '.join(family)}): a full retrain")
    teacher = spec.teacher
    if teacher.from_ is None:  # a teacher loaded with `from` is not trained, warm or not
        teacher = teacher.model_copy(update={"warm_start": family["teacher"],
                                             "train": _retrain_epochs(spec, teacher.train)})
    generations = [g.model_copy(update={"warm_start": family[g.name], "search": None,
                                        "train": _retrain_epochs(spec, g.train)}) for g in spec.generations]
    return spec.model_copy(update={"teacher": teacher, "generations": generations}), ""


def _retrain_epochs(spec: ChainSpec, train):
    return train.model_copy(update={"epochs": spec.retrain.epochs(train)})
