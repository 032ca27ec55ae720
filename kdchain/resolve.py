"""A chain's generations made explicit: each architecture resolved (derived from its teacher or written out), its
loss nodes filled in, its teachers weighted; and the keys a generation's result is cached under."""

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from kdchain.checkpoints import read_arch, teacher_source, warm_source
from kdchain.data import data_fingerprint
from kdchain.models import default_tap, resolve_student
from kdchain.spec import LOSSES, ChainSpec, DeploySpec, SpecError, TrainSpec, canonical_json, spec_hash


@dataclass
class ResolvedGeneration:
    """A generation with everything implicit made explicit: the architecture, the loss nodes."""

    index: int  # 0 = teacher
    name: str
    arch: object  # an Arch spec
    distill: list  # loss specs, feature nodes filled in
    train: TrainSpec
    teachers: str = "direct"  # or "ancestors": every earlier generation teaches the logit terms
    teacher_weights: list[float] = field(default_factory=list)  # per earlier generation, oldest first
    deploy: DeploySpec = field(default_factory=DeploySpec)  # its own or the chain's `deploy`
    warm_start: Path | None = None  # the checkpoint it starts from (`warm_start`): its architecture is `arch`

    def as_json(self) -> dict:
        out = {"index": self.index, "name": self.name, "arch": self.arch.model_dump(mode="json"),
               "distill": [t.model_dump(mode="json") for t in self.distill],
               "train": self.train.model_dump(mode="json")}
        if self.teachers != "direct":  # keeps the keys of direct-teacher chains as they were
            out["teachers"], out["teacher_weights"] = self.teachers, self.teacher_weights
        if self.deploy.quantized:  # the int8 metrics belong to the result; unquantized keys stay as they were
            out["deploy"] = self.deploy.model_dump(mode="json")
        if self.warm_start is not None:  # the weights it starts from, by content
            out["warm_start"] = file_digest(self.warm_start)
        return out


def resolve_chain(spec: ChainSpec) -> list[ResolvedGeneration]:
    """Teacher first; each student derived from (or written next to) the architecture before it."""
    warm = warm_source(spec, 0)
    teacher_arch = (read_arch(warm) if warm else spec.teacher.model) if spec.teacher.from_ is None \
        else read_arch(teacher_source(spec))
    gens = [ResolvedGeneration(0, "teacher", teacher_arch, [LOSSES["ce"](weight=1.0)], spec.teacher.train,
                               deploy=spec.deploy_of(0), warm_start=warm)]
    for i, g in enumerate(spec.generations, start=1):
        teacher_arch, warm = gens[-1].arch, warm_source(spec, i)
        try:
            arch = read_arch(warm) if warm else resolve_student(g.student, teacher_arch,
                                                                 tapped_nodes(spec, i, default_tap(teacher_arch)))
        except SpecError as e:  # "student.derive: ..." -> "generations.0.student.derive: ..."
            raise SpecError([f"generations.{i - 1}.{line}" if line.startswith("student") else line
                             for line in e.lines]) from None
        distill = [
            t.model_copy(update={"teacher_node": t.teacher_node or default_tap(teacher_arch),
                                 "student_node": t.student_node or default_tap(arch)})
            if type(t).features else t  # feature, fitnet, at, rkd read tapped nodes
            for t in g.distill
        ]
        gens.append(ResolvedGeneration(i, g.name, arch, distill, g.train, g.teachers,
                                       teacher_weights(g.teachers, g.teacher_weights, i), spec.deploy_of(i), warm))
    return gens


def tapped_nodes(spec: ChainSpec, index: int, default: str) -> list[str]:
    """The nodes of generation `index` that feature losses read: as student here, as teacher in the next one
    (`default`: the family's tap, which a pruned student shares with its teacher)."""
    nodes = [t.student_node or default for t in spec.generations[index - 1].distill if type(t).features]
    if index < len(spec.generations):
        nodes += [t.teacher_node or default for t in spec.generations[index].distill if type(t).features]
    return nodes


def teacher_weights(teachers: str, weights: list[float] | None, index: int) -> list[float]:
    """Weight of each earlier generation 0..index-1 as a teacher of generation `index` (0 = not a teacher)."""
    if teachers == "direct":
        return [0.0] * (index - 1) + [1.0]
    return list(weights) if weights is not None else [1.0] * index


def teacher_indices(gen: "ResolvedGeneration") -> list[int]:
    """The generations that teach `gen`, oldest first; the last one is its direct teacher."""
    return [i for i, w in enumerate(gen.teacher_weights) if w > 0 or i == gen.index - 1]


def arch_field(gen: ResolvedGeneration, line: str) -> str:
    """'model.freeze: ...' from a builder -> 'teacher.model.freeze: ...' or 'generations.1.student.freeze: ...'."""
    field = "teacher.model" if gen.index == 0 else f"generations.{gen.index - 1}.student"
    if line.startswith("model: "):  # a builder's complaint about the whole model
        return f"{field}: {line[len('model: '):]}"
    return f"{field}.{line[len('model.'):]}" if line.startswith("model.") else f"{field}: {line}"


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, memoised per process while its size and mtime stay the same: the trials of a
    search and the students of a teacher (their stored views' keys) hash its checkpoint once, not each."""
    st = Path(path).stat()
    return _digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# 2: a layer keeps round(C x width) channels, as derive does (1 kept torch-pruning's floor)
PRUNING_VERSION = 2


def generation_key(spec: ChainSpec, gen: ResolvedGeneration, teacher_digest: str | None) -> str:
    """What a generation's result depends on: its resolved spec, the data as it is now (its fingerprint: an image
    folder that grew changes it), the seed, its teacher's weights (for a loaded teacher: the weights it loads)."""
    if gen.index == 0 and spec.teacher.from_ is not None:
        teacher_digest = file_digest(teacher_source(spec))
    key = {"generation": gen.as_json(), "data": spec.data.model_dump(mode="json"), "seed": spec.seed,
           "teacher": teacher_digest, "data_fingerprint": data_fingerprint(spec.data)}
    if gen.arch.kind == "pruned":  # which channels a prune keeps is the code's, not the spec's:
        key["pruning"] = PRUNING_VERSION  # a change there must not resume a state saved with other shapes
    return spec_hash(key)


def chain_digest(spec: ChainSpec) -> str:
    data = json.loads(canonical_json(spec)) | {"tracking": None}
    if not spec.deploy.quantized and not any(g.deploy for g in spec.generations):
        data.pop("deploy")  # chains without int8 keep the chain run they had before `deploy` existed
        for g in data["generations"]:
            g.pop("deploy")
    return spec_hash(data)


def fresh_index(spec: ChainSpec, fresh: bool | str) -> int | None:
    """The first generation `fresh` retrains (0 = the teacher, so all), or None: reuse what is finished."""
    if fresh is False or fresh is None or fresh == "":
        return None
    if fresh is True or fresh == "teacher":
        return 0
    names = [g.name for g in spec.generations]
    if fresh not in names:
        raise SpecError([f"--fresh: chain {spec.name} has no generation {fresh!r}; give one of: teacher, "
                         + ", ".join(names)])
    return names.index(fresh) + 1
