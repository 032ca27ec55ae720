"""What each generation's architecture is before a chain runs, as exactly as can be known now.

A pruned student's shape depends on its teacher's trained weights (which blocks a depth prune removes), so
`kdchain inspect` takes each generation's architecture from the best source at hand, in this order:
- trained: the generation's own checkpoint in the workdir, trained under its current key (what `run` reuses);
- from the trained teacher: its teacher's checkpoint is there, so the plan is made from those weights, on the
  seeded batches training uses (kdchain.students.pruned_student: the very call training makes);
- from initial weights: nothing trained yet; a width prune keeps the same channel counts whatever the weights, a
  depth prune may remove other blocks once the teacher has trained (said so in the row).
"""

from dataclasses import dataclass
from pathlib import Path

from kdchain.checkpoints import CheckpointError, load_checkpoint, read_arch, teacher_source
from kdchain.models import describe
from kdchain.resolve import ResolvedGeneration, file_digest, generation_key, teacher_indices
from kdchain.sizing import none_meets, plans_meeting
from kdchain.spec import ChainSpec
from kdchain.workdir import generation_folder

TRAINED, FROM_TEACHER, INITIAL = "trained", "pruned from the trained teacher", "planned on initial weights"


@dataclass
class KnownArch:
    arch: object  # an Arch spec
    source: str  # TRAINED, FROM_TEACHER or INITIAL for a pruned generation; "" for others (their shape is exact)
    note: str = ""  # what a reader should know about the figures, "" when they are exact


def trained_checkpoints(spec: ChainSpec, gens: list[ResolvedGeneration]) -> dict[int, Path]:
    """index -> the checkpoint of each generation trained under its current key in the workdir, as far as the
    chain has trained in order (a generation's key holds its teachers' weights). A searched generation's key
    follows from its search's winner: the lookup stops there."""
    found: dict[int, Path] = {}
    if spec.teacher.from_ is not None:
        found[0] = teacher_source(spec)
    if not (Path(spec.workdir) / spec.name).is_dir():  # nothing trained (and the data need not be there yet)
        return found
    for g in gens[len(found):]:
        if g.index > 0 and spec.generations[g.index - 1].search is not None:
            break
        teachers = teacher_indices(g) if g.index else []
        if any(i not in found for i in teachers):
            break
        digest = "+".join(file_digest(found[i]) for i in teachers) or None
        try:
            checkpoint = generation_folder(spec.workdir, spec.name, g.index, g.name,
                                           generation_key(spec, g, digest)) / "model.pt"
            load_checkpoint(checkpoint)
        except (CheckpointError, OSError):  # not trained, half written, or its data is not there: planned
            break
        found[g.index] = checkpoint
    return found


def known_archs(spec: ChainSpec, gens: list[ResolvedGeneration]) -> list[KnownArch]:
    """Each generation's architecture from the best source at hand (see the module's text), teacher first."""
    from kdchain.data import load_data
    from kdchain.students import pruned_student

    trained = trained_checkpoints(spec, gens)
    out: list[KnownArch] = []
    for g in gens:
        if g.index in trained:
            out.append(KnownArch(read_arch(trained[g.index]), TRAINED))
            continue
        arch = g.arch
        if arch.kind != "pruned" or g.warm_start is not None:  # exact: written out, or held by its warm start
            out.append(KnownArch(arch, ""))
            continue
        if g.index - 1 in trained:
            teacher, teacher_arch, _ = load_checkpoint(trained[g.index - 1])
            data = load_data(spec.data, spec.seed)
            if arch.prune.target is not None:  # the plans that meet it, from the trained teacher; none trained yet
                plans = plans_meeting(lambda a: pruned_student(teacher, teacher_arch, a, data, spec.seed + g.index),
                                      arch, data.input_shape, g.deploy)
                if not plans:
                    raise none_meets(arch, describe(teacher_arch))
                out.append(KnownArch(plans[0].arch, FROM_TEACHER, sizing_note(arch, plans)))
                continue
            out.append(KnownArch(pruned_student(teacher, teacher_arch, arch, data, spec.seed + g.index)[1],
                                 FROM_TEACHER))
            continue
        if g.index > 0 and out[-1].arch.kind == "pruned":
            arch = arch.model_copy(update={"base": out[-1].arch})  # its teacher's shape is known: plan on it
        note = "planned on initial weights; the trained teacher may remove other blocks" if arch.prune.depth < 1 else ""
        if arch.prune.target is not None:
            note = sizing_note(arch, _noise_plans(spec, arch)) + "; planned on initial weights"
        out.append(KnownArch(_planned(spec, arch), INITIAL, note))
    return out


def sizing_note(arch, plans: list) -> str:
    """What inspect says of a target-sized generation before it trains: the plans that meet the target."""
    target = arch.prune.target
    probed = min(len(plans), arch.prune.candidates)
    listed = "; ".join(f"{describe(p.arch).rpartition(' pruned to ')[2]}: {p.cost[target.measure()]:,.6g}"
                       for p in plans)
    return (f"{len(plans)} plans meet {target.measure()} <= {target.limit():,g} ({listed}); training probes the "
            f"largest {probed} for {arch.prune.probe_steps} steps each and trains the best; shown: the largest")


def _noise_plans(spec: ChainSpec, arch) -> list:
    from kdchain.data import input_info
    from kdchain.models.pruned import noise_plans
    from kdchain.spec import canonical_json

    (channels, _, size), num_classes = input_info(spec.data)
    return noise_plans(canonical_json(arch), num_classes, channels, size)


def _planned(spec: ChainSpec, arch):
    """The plan made concrete on the teacher's initial weights (the record filled in), at the data's image size."""
    from kdchain.data import input_info
    from kdchain.models.pruned import planned
    from kdchain.spec import canonical_json

    (channels, _, size), num_classes = input_info(spec.data)
    return planned(canonical_json(arch), num_classes, channels, size)
