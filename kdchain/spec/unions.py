"""The unions of every registered kind (kdchain.spec.kinds), built once all kind modules are imported: what a
config's `model:`, `student:`, `distill:`, `data:` and `search.objective:` accept. Importing this module imports
them first."""

from typing import Annotated, Any, Union

from pydantic import Discriminator, Tag

from kdchain.spec.kinds import FAMILIES, LOSSES, OBJECTIVES, SOURCES, discover
from kdchain.spec.models import DeriveStudent, PrunedArch, PruneStudent

discover()

Arch = FAMILIES.union()  # what a teacher (or a written-out student) is built from
AnyArch = FAMILIES.union(PrunedArch)  # what a checkpoint may hold: a family, or one pruned from another
PrunedArch.model_rebuild(_types_namespace={"AnyArch": AnyArch})
Loss = LOSSES.union()
DataSpec = SOURCES.union()
SearchObjective = OBJECTIVES.union()


def _student_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        return next((k for k in ("derive", "prune") if k in value), value.get("kind"))
    if isinstance(value, (DeriveStudent, PruneStudent)):
        return "derive" if isinstance(value, DeriveStudent) else "prune"
    return getattr(value, "kind", None)


# a student written out (a family's kind), derived from its teacher ({derive: ...}) or pruned from it ({prune: ...})
StudentSpec = Annotated[
    Union[tuple(Annotated[cls, Tag(kind)] for kind, cls in FAMILIES.classes.items())
          + (Annotated[DeriveStudent, Tag("derive")], Annotated[PruneStudent, Tag("prune")])],
    Discriminator(_student_tag, custom_error_type="student_kind",
                  custom_error_message=f"expected an architecture with kind: {', '.join(FAMILIES.names())}, "
                                       "{derive: {width, depth}} or {prune: {width, depth}}"),
]
