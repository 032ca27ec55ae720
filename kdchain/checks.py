"""Checks of a whole chain before anything trains, and its shape without training.

`check_chain`: everything that needs the models built (feature node names, teacher weights, search budgets);
`missing_resources`: what must be on disk (pretrained weights, data files); `inspect_chain`: per generation, the
architecture, params, FLOPs and the shapes of the tapped maps.
"""

import torch

from kdchain.data import input_info, missing_data
from kdchain.measure.profile import count_flops
from kdchain.models.saved import read_checkpoint
from kdchain.models import build_model, count_params, default_tap, describe
from kdchain.models.taps import check_node, feature_shapes, tappable_nodes
from kdchain.plans import known_archs
from kdchain.preflight import cuda_problem, distributed_problems, size_problems
from kdchain.resolve import ResolvedGeneration, arch_field, resolve_chain
from kdchain.search import budget_problems
from kdchain.spec import ChainSpec, SpecError


def check_chain(spec: ChainSpec, source: str = "config") -> list[ResolvedGeneration]:
    """Everything that needs the models built: feature node names. Raises SpecError naming each bad field."""
    try:
        gens = resolve_chain(spec)
    except SpecError as e:
        raise SpecError([f"{source}: {line}" for line in e.lines]) from None
    input_shape, num_classes = input_info(spec.data)
    # on the meta device: node names need no weights, and a huge model must not allocate them just to be checked
    models = []
    for g in gens:
        try:
            with torch.device("meta"):
                models.append(build_model(g.arch, num_classes, input_shape[0]))
        except SpecError as e:  # freeze prefixes, channel counts: name the generation's field
            raise SpecError([f"{source}: {arch_field(g, line)}" for line in e.lines]) from None
    problems = [f"{source}: {line}" for line in _warm_problems(spec, gens, input_shape, num_classes)]
    for g in gens[1:]:
        where = f"{source}: generations.{g.index - 1}"
        if g.index == 1 and g.teachers == "ancestors":
            problems.append(f"{where}.teachers: the first generation has only the teacher before it, so `ancestors` "
                            "is `direct` here; use `direct` (and no teacher_weights)")
        elif g.teachers == "direct" and spec.generations[g.index - 1].teacher_weights is not None:
            problems.append(f"{where}.teacher_weights: only used with `teachers: ancestors`; remove it or set that")
        elif len(g.teacher_weights) != g.index or not any(g.teacher_weights):
            problems.append(f"{where}.teacher_weights: give {g.index} weights, one per earlier generation "
                            f"({', '.join(x.name for x in gens[:g.index])}), not all zero")
        if g.warm_start is None:  # a warm start's architecture is the trained one it holds
            problems += [f"{where}.student.prune.target: {line}" for line in _target_problems(spec, g)]
        hint = max([t.hint_epochs for t in g.distill if type(t).hint], default=0)
        if hint >= g.train.epochs:
            problems.append(f"{where}.distill: fitnet hint_epochs {hint} leaves no epoch of the full loss; "
                            f"make it less than train.epochs {g.train.epochs}")
        for j, term in enumerate(g.distill):
            if not type(term).features:
                continue
            for side, model, owner in (("teacher", models[g.index - 1], gens[g.index - 1].name),
                                       ("student", models[g.index], g.name)):
                node = getattr(term, f"{side}_node")
                if not check_node(model, node):
                    some = ", ".join(tappable_nodes(model)[:6])
                    problems.append(f"{source}: generations.{g.index - 1}.distill.{j}.{side}_node: {node!r} is not "
                                    f"a node of {owner}'s model (e.g. {some}; `kdchain inspect --nodes` lists all)")
    # a budget no candidate meets stops here, before any training; so does a model too big for this machine
    problems += [f"{source}: {line}" for line in budget_problems(spec, gens)]
    trained = [spec.teacher.from_ is None] + [True] * len(spec.generations)
    problems += [f"{source}: {line}" for line in size_problems(gens, models, trained, spec, input_shape)]
    if problems:
        raise SpecError(problems)
    return gens


def _warm_problems(spec: ChainSpec, gens: list[ResolvedGeneration], input_shape, num_classes: int) -> list[str]:
    """A warm start must fit the data and replaces any search (its architecture is the one it holds)."""
    problems = []
    for g in gens:
        if g.warm_start is None:
            continue
        where = "teacher" if g.index == 0 else f"generations.{g.index - 1}"
        held = read_checkpoint(g.warm_start)
        if tuple(held["input_shape"]) != tuple(input_shape) or held["num_classes"] != num_classes:
            problems.append(f"{where}.warm_start: the model takes {tuple(held['input_shape'])} inputs with "
                            f"{held['num_classes']} classes; the data {spec.data.kind} has {tuple(input_shape)} "
                            f"and {num_classes}")
        if g.index > 0 and spec.generations[g.index - 1].search is not None:
            problems.append(f"{where}: give warm_start (an architecture trained already) or search, not both")
    return problems


def _target_problems(spec: ChainSpec, g: ResolvedGeneration) -> list[str]:
    """A student sized by its target: not also searched; an int8 latency needs the int8 model it times."""
    target = getattr(getattr(g.arch, "prune", None), "target", None)
    if target is None:
        return []
    if spec.generations[g.index - 1].search is not None:
        return ["a search already sizes this student (its budget: search.budget); give target or search, not both"]
    if target.precision == "int8" and not g.deploy.quantized:
        return ["latency_ms of the int8 model needs that model: set deploy: {quantize: static} (or dynamic) on "
                "the chain or this generation, or precision: fp32"]
    return []


def missing_resources(spec: ChainSpec, source: str = "config") -> list[str]:
    """What must be on disk before training starts (pretrained weights, data files), each as how to provide it."""
    problems = []
    input_shape, num_classes = input_info(spec.data)
    for g in resolve_chain(spec):
        problem = None
        if g.arch.kind != "pruned":  # a pruned base's weights come from its teacher's checkpoint
            problem = g.arch.missing_weights() or g.arch.weights_problem(num_classes, input_shape[0])
        if problem:
            problems.append(f"{source}: {arch_field(g, problem)}")
    for problem in (missing_data(spec.data), cuda_problem(spec.device),
                    *distributed_problems(resolve_chain(spec), spec.device)):
        if problem:
            problems.append(f"{source}: {problem}")
    return problems


def forward_problems(spec: ChainSpec, source: str = "config") -> list[str]:
    """Each generation's model built as it will train (a pruned one planned on its teacher's initial weights) and
    run on one image of the data's shape: an architecture that cannot be pruned, or does not take these images,
    is one line here instead of a traceback hours into `run`."""
    from kdchain.models.pruned import planned
    from kdchain.spec import canonical_json

    input_shape, num_classes = input_info(spec.data)
    problems = []
    for g in resolve_chain(spec):
        try:
            arch = g.arch
            if arch.kind == "pruned" and arch.record is None:
                arch = planned(canonical_json(arch), num_classes, input_shape[0], input_shape[-1])
            with torch.no_grad():
                build_model(arch, num_classes, input_shape[0]).eval()(torch.zeros(1, *input_shape))
        except SpecError as e:  # a builder's own sentence
            problems += [f"{source}: {arch_field(g, line)}" for line in e.lines]
        except Exception as e:  # the library's own words: the first line names what failed
            first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)[:160]
            what = "be pruned and run" if g.arch.kind == "pruned" else "run"
            line = (f"model: {describe(g.arch)} cannot {what} on the data's {tuple(input_shape)} images "
                    f"({type(e).__name__}: {first})")
            problems.append(f"{source}: {arch_field(g, line)}")
    return problems


def deploy_problems(spec: ChainSpec, source: str = "config") -> list[str]:
    """Generations to be quantized whose model cannot be exported to ONNX (an operator opset 17 lacks, such as
    VOLO's col2im), or with `quantize: qat` fake-quantized, exported and run (kdchain.measure.qat: a few seconds
    a generation): found on the untrained model now, before hours of training end in that error."""
    import tempfile
    from pathlib import Path

    from kdchain.measure.export import export_onnx
    from kdchain.measure.qat import qat_problem

    input_shape, num_classes = input_info(spec.data)
    problems = []
    for g in resolve_chain(spec):
        if not g.deploy.quantized or (g.index == 0 and spec.teacher.from_ is not None):
            continue
        where = f"{source}: {'teacher' if g.index == 0 else f'generations.{g.index - 1}'}.deploy.quantize"
        model = build_model(g.arch, num_classes, input_shape[0])
        with tempfile.TemporaryDirectory() as tmp:
            try:
                export_onnx(model, input_shape, Path(tmp) / "m.onnx")
            except Exception as e:  # the exporter's own words: the first line names the operator
                first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
                problems.append(f"{where}: {describe(g.arch)} cannot be exported to ONNX ({first[:200]}); set "
                                "deploy: {quantize: none} for it or choose another model")
                continue
        why = qat_problem(model, input_shape, g.deploy.first_conv) if g.deploy.quantize == "qat" else ""
        if why:
            problems.append(f"{where}: qat: generation {g.name} ({describe(g.arch)}) cannot be quantization-aware "
                            f"trained and shipped: {why}; set deploy: {{quantize: static}} for it")
    return problems


def inspect_chain(spec: ChainSpec, with_nodes: bool = False) -> list[dict]:
    """Per generation, without training: the architecture, params, FLOPs, the shapes of the tapped maps. A pruned
    generation's shape is the trained one where the workdir has it, else planned from its trained teacher, else
    from initial weights (kdchain.plans)."""
    gens = resolve_chain(spec)
    input_shape, num_classes = input_info(spec.data)
    rows = []
    for g, known in zip(gens, known_archs(spec, gens)):
        model = build_model(known.arch, num_classes, input_shape[0]).eval()
        # the default tap, and every node a feature loss reads from this model as student or as teacher
        taps = {default_tap(g.arch)} | {t.student_node for t in g.distill if type(t).features}
        if g.index + 1 < len(gens):
            taps |= {t.teacher_node for t in gens[g.index + 1].distill if type(t).features}
        summary = describe(known.arch) + (f" ({known.note or known.source})" if known.source else "")
        row = {"index": g.index, "name": g.name, "summary": summary, "arch": known.arch.model_dump(mode="json"),
               "source": known.source,
               "params": count_params(model), "flops": count_flops(model, input_shape),
               "feature_maps": {n: list(s) for n, s in feature_shapes(model, sorted(taps), input_shape).items()},
               "distill": [t.model_dump(mode="json") for t in g.distill]}
        if with_nodes:
            row["nodes"] = tappable_nodes(model)
        rows.append(row)
    return rows
