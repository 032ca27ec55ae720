"""A pruned student sized by what it must fit (`student: {prune: {target: {params: N}}}`, or flops, or latency_ms)
instead of by width and depth, as Model Optimizer sizes a pruned model by its FLOPs or parameters:

1. plans: for each depth (every removable block kept, 3/4, 1/2, 1/4), and at full depth also per-stage widths
   narrower late or narrower early (`prune.stage_widths`), the widest plan, made from the trained teacher's
   weights exactly as training makes it, that meets the target (a bisection on the width's scale; channel counts
   grow with it). Measured on the pruned model itself: params, FLOPs, latency.
2. probe: the `candidates` largest plans are each distilled from the teacher for `probe_steps` batches; the one
   with the best validation accuracy is the generation's student (its record followed: no planning again).

The choice is written beside the generation's checkpoint (sizing.json) before it trains: a resumed generation,
and every rank of a distributed one, trains that plan instead of sizing again (a latency is measured, not exact).
Nothing here imports prefect or mlflow: the table of candidates goes back with the generation's outcome.
"""

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdchain.data import DataBundle, Split
from kdchain.measure.profile import count_flops, latency_ms
from kdchain.models import count_params, describe
from kdchain.spec import DeploySpec, PrunedArch, SpecError, TrainSpec

DEPTHS = (1.0, 0.75, 0.5, 0.25)
BISECTIONS = 9  # width to within 1/512 of the widest that meets the target


@dataclass
class Plan:
    arch: PrunedArch  # made concrete from the teacher (its record), its prune's width and depth the plan's
    cost: dict[str, float]  # params, flops, latency_ms of the pruned model
    probe_accuracy: float | None = None
    chosen: bool = False

    def as_row(self) -> dict:
        widths = self.arch.prune.stage_widths
        return {"plan": describe(self.arch), "width": round(self.arch.prune.mean_width(), 4),
                "stage_widths": "/".join(f"{w:.3f}" for w in widths) if widths else "",
                "depth": self.arch.prune.depth, **self.cost, "probe_val_accuracy": self.probe_accuracy,
                "chosen": self.chosen}


def cost_of(model: nn.Module, input_shape: tuple, target, deploy: DeploySpec | None = None) -> dict[str, float]:
    """What the target reads, measured on the model: params, FLOPs per image and, for a latency target, the
    batch-1 latency on one thread of this machine (fp32: torch; int8: the ONNX Runtime model `deploy` ships)."""
    cost = {"params": float(count_params(model)), "flops": float(count_flops(model, input_shape))}
    if target.latency_ms is not None and target.precision == "int8":
        cost["latency_ms"] = int8_latency_ms(model, input_shape, deploy or DeploySpec(quantize="static"))
    elif target.latency_ms is not None:
        cost["latency_ms"] = latency_ms(model, input_shape, runs=15, warmup=3)
    return cost


def int8_latency_ms(model: nn.Module, input_shape: tuple, deploy: DeploySpec) -> float:
    """The int8 ONNX model as `deploy` writes it (calibrated on noise: the ranges change the scales, not the
    kernels), timed as kdchain.measure.quantize times a shipped one."""
    from kdchain.measure.export import export_onnx
    from kdchain.measure.quantize import onnx_speed, quantize_onnx

    noise = torch.randn(16, *input_shape, generator=torch.Generator().manual_seed(0)).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, input_shape, Path(tmp) / "fp32.onnx")
        mode = "static" if deploy.quantize == "qat" else deploy.quantize  # qat's kernels: static's
        int8 = quantize_onnx(fp32, Path(tmp) / "int8.onnx", mode, noise, deploy.quant_format,
                             deploy.first_conv)
        return onnx_speed(int8, input_shape, runs=15, warmup=3)[0]


def stage_shapes(n: int) -> list[list[float] | None]:
    """The width profiles a plan scales: uniform (None), and over n >= 2 stages narrower late (1 down to 1/2 of the
    scale: the deep, wide stages hold most parameters) and narrower early (1/2 up to 1: the early stages, at full
    resolution, most FLOPs and latency)."""
    if n < 2:
        return [None]
    ramp = [i / (n - 1) for i in range(n)]
    return [None, [1 - r / 2 for r in ramp], [0.5 + r / 2 for r in ramp]]


def _widths(shape: list[float] | None, scale: float) -> dict:
    if shape is None:
        return {"width": scale, "stage_widths": None}
    return {"width": 1.0, "stage_widths": [min(1.0, max(scale * f, 1 / 512)) for f in shape]}


def _widest_meeting(plan_at, measure: str, limit: float) -> "Plan | None":
    """The plan at the largest scale in (0, 1] that meets the limit (a bisection: sizes grow with the scale)."""
    best = plan_at(1.0)
    if best is None or best.cost[measure] <= limit:
        return best
    lo, hi, best = 0.0, 1.0, None
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        plan = plan_at(mid)
        if plan is not None and plan.cost[measure] <= limit:
            lo, best = mid, plan
        else:
            hi = mid
    return best


def plans_meeting(prune_fn, arch: PrunedArch, input_shape: tuple, deploy: DeploySpec | None = None) -> list[Plan]:
    """Per depth (and at full depth per width profile: stage_shapes), the widest plan that meets
    `arch.prune.target`, largest first. `prune_fn(arch)` -> (student, concrete arch): the teacher pruned as `arch`
    says (kdchain.students.pruned_student, or on noise)."""
    from kdchain.models.prune import ignored_layers, stages

    target = arch.prune.target
    measure, limit = target.measure(), target.limit()
    whole = prune_fn(arch.model_copy(update={"prune": arch.prune.model_copy(update={"width": 1.0, "depth": 1.0})}))[0]
    n_stages = len(stages(whole, torch.zeros(1, *input_shape), ignored_layers(whole)))
    plans = []
    for depth in DEPTHS:
        for shape in stage_shapes(n_stages) if depth == 1.0 else [None]:  # each profile costs ~10 prunes
            def plan_at(scale: float, shape=shape, depth=depth) -> Plan | None:
                try:
                    student, concrete = prune_fn(arch.model_copy(update={"prune": arch.prune.model_copy(
                        update={**_widths(shape, scale), "depth": depth, "round_to": 1})}))
                except SpecError:  # no removable block: only depth 1.0 exists
                    return None
                return Plan(concrete, cost_of(student, input_shape, target, deploy))

            best = _widest_meeting(plan_at, measure, limit)
            if best is not None and all(canonical(best) != canonical(p) for p in plans):
                plans.append(best)
    return sorted(plans, key=lambda p: -p.cost[measure])


def canonical(plan: Plan) -> str:
    return str(sorted(plan.arch.record["removed"])) + str(plan.arch.record["tensors"])


def none_meets(arch: PrunedArch, teacher_name: str) -> SpecError:
    target = arch.prune.target
    return SpecError([f"model.prune.target: no plan of {teacher_name} meets {target.measure()} <= "
                      f"{target.limit():,g} (even its narrowest); raise the target"])


def probe_data(data: DataBundle, images: int) -> DataBundle:
    """The first `images` training images (a seeded permutation already shuffled them), the validation split whole."""
    train = data.train
    if hasattr(train, "stream"):  # a split streamed from disk: its first files
        small = type(train)(train.items[:images], train.size, train.transform, train.workers, train.device)
    else:
        small = Split(train.x[:images], train.y[:images], train.transform)
    return DataBundle(small, data.val, data.test, data.num_classes, data.class_names, data.skipped, data.augment)


def probe(plans: list[Plan], prune_fn, teacher: nn.Module, loss_for, data: DataBundle, train: TrainSpec,
          seed: int, device, steps: int) -> Plan:
    """Each plan distilled for `steps` batches from the teacher; the best validation accuracy wins (the larger
    plan on a tie). Each probe trains its own copy: the generation starts again from the pruned teacher."""
    from kdchain.distill import fit

    small = probe_data(data, steps * train.batch_size)
    for plan in plans:
        student = prune_fn(plan.arch)[0]
        torch.manual_seed(seed)
        result = fit(student, teacher, loss_for(student), small,
                     train.model_copy(update={"epochs": 1, "teacher_views": 0}), seed=seed, device=device)
        plan.probe_accuracy = result.history[-1].val_accuracy
    best = max(plans, key=lambda p: (p.probe_accuracy, p.cost["params"]))
    best.chosen = True
    return best


def sized_arch(out_dir: Path, arch: PrunedArch, input_shape: tuple, deploy: DeploySpec, prune_fn, probe_fn,
               teacher_name: str) -> tuple[PrunedArch, list[dict]]:
    """The plan a target-sized generation trains (with its record) and the table of candidates: read from
    `out_dir/sizing.json` when this generation was sized already, else sized now and written there.
    `prune_fn(arch)` prunes the trained teacher; `probe_fn(plans)` distils each briefly and returns the best."""
    saved = Path(out_dir) / "sizing.json"
    if saved.is_file():
        state = json.loads(saved.read_text())
        return PrunedArch.model_validate(state["arch"]), state["candidates"]

    def planning(a: PrunedArch):  # no recovery steps while measuring: shapes do not depend on them
        return prune_fn(a.model_copy(update={"prune": a.prune.model_copy(update={"recovery_batches": 0})}))

    plans = plans_meeting(planning, arch, input_shape, deploy)
    if not plans:
        raise none_meets(arch, teacher_name)
    for plan in plans:  # the generation's own recovery steps, the plan's shapes
        plan.arch = plan.arch.model_copy(update={"prune": plan.arch.prune.model_copy(
            update={"recovery_batches": arch.prune.recovery_batches})})
    chosen = probe_fn(plans[:arch.prune.candidates])
    rows = [p.as_row() for p in plans]
    saved.parent.mkdir(parents=True, exist_ok=True)
    tmp = saved.with_suffix(".tmp")
    tmp.write_text(json.dumps({"arch": chosen.arch.model_dump(mode="json"), "candidates": rows}))
    tmp.replace(saved)
    return chosen.arch, rows


def target_met(model: nn.Module, input_shape: tuple, arch: PrunedArch, deploy: DeploySpec) -> dict[str, float]:
    """The trained student measured as its candidates were: {sizing_<measure>: value, sizing_target_met: 0/1}."""
    target = arch.prune.target
    value = cost_of(model, input_shape, target, deploy)[target.measure()]
    return {f"sizing_{target.measure()}": value, "sizing_target_met": float(value <= target.limit())}
