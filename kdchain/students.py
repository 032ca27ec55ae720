"""What a generation trains: its student (built fresh, or its teacher pruned on seeded training batches), the loss
that teaches it (adapters sized from the tapped feature maps) and where its teachers' stored views live."""

import itertools
from pathlib import Path

import torch
from torch import nn

from kdchain.data import batches, data_fingerprint, labeled_only
from kdchain.distill import Teachers
from kdchain.distill.losses import LOGITS, DistillLoss, teacher_key
from kdchain.distill.teacher_views import VIEWS_VERSION, ViewStore
from kdchain.models.prune import prune_model
from kdchain.models.taps import feature_shapes
from kdchain.resolve import ResolvedGeneration, file_digest, teacher_indices
from kdchain.spec import ChainSpec, PrunedArch, spec_hash
from kdchain.workdir import FOLDER


def build_loss(gen: ResolvedGeneration, student: nn.Module, teacher: nn.Module | None, input_shape) -> DistillLoss:
    shapes = {}
    direct = teacher.direct if isinstance(teacher, Teachers) else teacher
    for i, term in enumerate(gen.distill):
        if type(term).adapted:  # a trained adapter (feature: 1x1 conv; fitnet: regressor), sized by the two maps
            s = feature_shapes(student, [term.student_node], input_shape)[term.student_node]
            t = feature_shapes(direct, [term.teacher_node], input_shape)[term.teacher_node]
            shapes[i] = (s, t)
    # several teachers: the direct one's logits are "logits", the others' teacher_key(k), oldest first
    weights = None  # a single teacher (e.g. a search trial's proxy training) teaches alone
    if gen.index > 0 and gen.teachers == "ancestors" and isinstance(teacher, Teachers):
        extra = [i for i in teacher_indices(gen) if i != gen.index - 1]
        weights = {LOGITS: gen.teacher_weights[gen.index - 1]} | {
            teacher_key(k): gen.teacher_weights[i] for k, i in enumerate(extra)}
    return DistillLoss(gen.distill, shapes, weights)


def view_store(spec: ChainSpec, gen: ResolvedGeneration, teacher_checkpoints: list[Path],
               loss: DistillLoss) -> ViewStore | None:
    """Where each teacher's stored views for `gen` live (`train.teacher_views`; None when off): beside that
    teacher's checkpoint in its generation folder, so that every student it teaches finds them and `kdchain clean`
    removes them with it (a teacher loaded from elsewhere: the chain's workdir folder). Direct teacher first.
    Each key is what that teacher's outputs depend on: its weights, the data, the views' seed (the chain's, so
    that students at different links share them), K, the nodes read from it, the precision."""
    if not gen.train.teacher_views or not loss.needs_teacher:
        return None
    folders = []
    for i, checkpoint in enumerate(teacher_checkpoints):
        key = spec_hash({"teacher": file_digest(Path(checkpoint)), "data": data_fingerprint(spec.data),
                         "seed": spec.seed, "views": gen.train.teacher_views,
                         "nodes": loss.nodes("teacher") if i == 0 else [],  # the others teach logits only
                         "precision": gen.train.precision, "version": VIEWS_VERSION})
        home = Path(checkpoint).resolve().parent
        home = home if FOLDER.match(home.name) else Path(spec.workdir).resolve() / spec.name
        folders.append(home / f"views-{key[:12]}")
    return ViewStore(folders, spec.seed)


def pruned_student(teacher: nn.Module, teacher_arch, arch: PrunedArch, data, seed: int) -> tuple[nn.Module, PrunedArch]:
    """`teacher` pruned as `arch` says, on the seeded training batches that every use of the plan shares (a search's
    candidates and trials, `inspect`, the training); an `arch` with a record (a plan made from this teacher) is
    followed exactly. Returns the student and its architecture with the record."""
    return prune_model(teacher, teacher_arch, arch.prune, training_sample(data, seed), arch.keep, data.num_classes,
                       data.input_shape[0], follow=arch.record)


def training_sample(data, seed: int, batch_size: int = 64):
    """n -> n seeded batches of the training split (cycled), on the CPU: what pruning scores channels and blocks on."""
    gen = torch.Generator().manual_seed(seed)
    labeled = labeled_only(data)  # taylor importance reads labels

    def sample(n: int) -> list:
        out = []
        while len(out) < n:
            out += list(itertools.islice(batches(labeled.train, batch_size, gen), n - len(out)))
        return [(x.cpu(), y.cpu()) for x, y in out]
    return sample


def sized_student_arch(spec: ChainSpec, gen: ResolvedGeneration, data, teacher: nn.Module, teacher_arch,
                       out_dir: Path, device) -> tuple[PrunedArch, list[dict]]:
    """The plan (with its record) that a generation sized by `prune.target` trains, and its candidates' table:
    plans from the trained teacher that meet the target, the best of a short distillation each (kdchain.sizing)."""
    from kdchain.models import describe
    from kdchain.sizing import probe, sized_arch

    seed = spec.seed + gen.index

    def prune_fn(arch: PrunedArch):
        return pruned_student(teacher, teacher_arch, arch, data, seed)

    def probe_fn(plans):
        return probe(plans, prune_fn, teacher, lambda s: build_loss(gen, s, teacher, data.input_shape), data,
                     gen.train, seed, device, gen.arch.prune.probe_steps)

    return sized_arch(out_dir, gen.arch, data.input_shape, gen.deploy, prune_fn, probe_fn, describe(teacher_arch))
