"""The registries of what a config names by `kind`: loss terms, model families, data sources, search objectives.

Each kind is one module in its registry's package, holding its spec class, decorated with `register`, and its
implementation (the class's methods). Every module of those packages is imported once, when kdchain.spec is
(`discover`): the pydantic unions (kdchain.spec.unions), the names the one-line error messages leave out of a
field path, the JSON schema and every per-kind behaviour come from these lists. A kind module imports what it
needs at its top, but never the unions: they are built after it.

    kdchain/losses/<kind>.py             LOSSES       a term of a generation's loss
    kdchain/models/families/<kind>.py    FAMILIES     an architecture a teacher or student is built from
    kdchain/data/sources/<kind>.py       SOURCES      a data set
    kdchain/objectives/<kind>.py         OBJECTIVES   how a search picks its winner
"""

import importlib
import pkgutil
from typing import Annotated, Union

from pydantic import Field


class Kinds:
    """One registry: kind -> spec class, in the order the modules were found (alphabetical)."""

    def __init__(self, what: str, package: str):
        self.what, self.package = what, package
        self.classes: dict[str, type] = {}

    def register(self, cls: type) -> type:
        """Class decorator: the spec class's `kind` default names it."""
        kind = cls.model_fields["kind"].default
        known = self.classes.get(kind)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(f"{self.what} kind {kind!r} is registered twice: {known.__module__} and {cls.__module__}")
        self.classes[kind] = cls
        return cls

    def discover(self) -> None:
        """Import every module of the package (modules starting with `_` are helpers, not kinds)."""
        package = importlib.import_module(self.package)
        for module in sorted(m.name for m in pkgutil.iter_modules(package.__path__)):
            if not module.startswith("_"):
                importlib.import_module(f"{self.package}.{module}")

    def union(self, *extra: type):
        """The tagged union of every registered class (and `extra`): what a field of this kind accepts."""
        members = tuple(self.classes.values()) + extra
        return Annotated[Union[members], Field(discriminator="kind")]

    def names(self) -> list[str]:
        return list(self.classes)

    def __getitem__(self, kind: str) -> type:
        return self.classes[kind]

    def __contains__(self, kind: str) -> bool:
        return kind in self.classes


LOSSES = Kinds("loss term", "kdchain.losses")
FAMILIES = Kinds("model family", "kdchain.models.families")
SOURCES = Kinds("data source", "kdchain.data.sources")
OBJECTIVES = Kinds("search objective", "kdchain.objectives")
REGISTRIES = (LOSSES, FAMILIES, SOURCES, OBJECTIVES)


def discover() -> None:
    for registry in REGISTRIES:
        registry.discover()


def kind_names() -> set[str]:
    """Every registered kind (pydantic puts a union member's tag into an error's path: not a field name)."""
    return {name for registry in REGISTRIES for name in registry.names()}
