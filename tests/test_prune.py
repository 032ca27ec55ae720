"""Pruned students (`student: {prune: ...}`): they keep their teacher's weights and shape, rebuild exactly from a
weights_only checkpoint, resume, spare tapped blocks, reject bad settings, and run a chain end to end (CLI, MLflow,
ONNX), VGG19 included."""

import pickle
import re
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime as ort
import pytest
import torch
from mlflow import MlflowClient

from flows.cli import main
from kdchain.chain import train_generation
from kdchain.checkpoints import load_checkpoint, save_checkpoint
from kdchain.checks import check_chain
from kdchain.data import load_data
from kdchain.distill import evaluate
from kdchain.models import build_model, count_params, describe
from kdchain.models.prune import prune_model
from kdchain.models.pruned import planned
from kdchain.resolve import resolve_chain
from kdchain.spec import Prune, PrunedArch, canonical_json, spec_from_dict
from kdchain.students import training_sample
from tests.conftest import tiny_chain, write_config


def digits_chain(tmp_path, name="pruned", **gens) -> dict:
    """Teacher cnn 32x2-64x2 on 8x8 digits; generations given as name -> student."""
    cfg = tiny_chain(tmp_path, name=name, epochs=1)
    cfg["teacher"] = {"model": {"kind": "cnn", "channels": [32, 64], "convs_per_stage": 2},
                      "train": {"epochs": 6, "lr": 0.01}}
    cfg["generations"] = [{"name": n, "student": s, "train": {"epochs": 2}} for n, s in gens.items()]
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real teacher trained on digits (100% of the 270 test images), its checkpoint and spec."""
    tmp = tmp_path_factory.mktemp("teacher")
    spec = spec_from_dict(digits_chain(tmp, A={"prune": {"width": 0.5, "depth": 0.5}}))
    outcome, teacher = train_generation(spec, 0, None, tmp / "teacher")
    return spec, teacher, outcome.checkpoint, outcome.metrics["test_accuracy"]


def test_pruned_but_untrained_keeps_output_shape_and_most_of_the_teachers_accuracy(trained):
    spec, teacher, _, teacher_acc = trained
    data = load_data(spec.data, 0)
    student, arch = prune_model(teacher, spec.teacher.model, Prune(width=0.9, round_to=1),
                                training_sample(data, 0), num_classes=10, in_channels=1)
    x = data.test.x[:5]
    assert student(x).shape == teacher(x).shape == (5, 10)
    assert count_params(student) < 0.85 * count_params(teacher)
    acc = evaluate(student, data.test)
    # measured: teacher 100% on the 270 test digits; pruned to width 0.9, BatchNorm recalibrated, not trained: 99.6%
    # (87.4% without the recalibration)
    assert teacher_acc > 0.95 and acc > 0.95 * teacher_acc, (teacher_acc, acc)
    assert arch.record["modules"]["stages.0.0.conv"]["out_channels"] == 29  # 32 x 0.9 = 28.8, rounded as derive rounds


def test_stage_widths_keep_each_stages_share_and_describe_it(trained):
    spec, teacher, _, _ = trained
    data = load_data(spec.data, 0)
    student, arch = prune_model(teacher, spec.teacher.model, Prune(stage_widths=[1.0, 0.25], round_to=1),
                                training_sample(data, 0), num_classes=10, in_channels=1)
    convs = [m.out_channels for m in student.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [32, 32, 16, 16]  # stage 8x8 keeps its 32, stage 4x4 a quarter of its 64
    assert describe(arch) == "cnn 32x2-64x2 pruned to stage widths 1/0.25"
    assert student(data.test.x[:3]).shape == (3, 10)


@pytest.mark.parametrize("prune", [Prune(width=0.5), Prune(width=0.5, depth=0.5, importance="taylor", steps=2,
                                                             recovery_batches=3)])
def test_a_pruned_checkpoint_round_trips_exactly_under_weights_only(trained, tmp_path, prune):
    spec, teacher, _, _ = trained
    data = load_data(spec.data, 0)
    student, arch = prune_model(teacher, spec.teacher.model, prune, training_sample(data, 0), num_classes=10,
                                in_channels=1)
    again, arch2 = prune_model(student, arch, Prune(width=0.5, round_to=4), training_sample(data, 1),
                               num_classes=10, in_channels=1)  # pruned twice: the record nests
    for model, a in ((student, arch), (again, arch2)):
        path = tmp_path / "model.pt"
        save_checkpoint(path, model, a, (1, 8, 8), 10)
        raw = torch.load(path, weights_only=True)  # nothing but JSON and tensors
        loaded, loaded_arch, _ = load_checkpoint(path)
        assert loaded_arch == a and raw["arch"].count('"kind":"pruned"') == (1 if a is arch else 2)
        assert list(loaded.state_dict()) == list(model.state_dict())
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
        assert torch.equal(loaded(data.test.x[:64]), model.eval()(data.test.x[:64]))
        assert repr(loaded) == repr(model)


def test_resume_after_a_kill_mid_generation_gives_the_uninterrupted_pruned_student(trained, tmp_path):
    spec, _, checkpoint, _ = trained
    spec = spec.model_copy(update={"generations": [spec.generations[0].model_copy(
        # one thread: the count of idle cores (the default) may differ between the runs, and with it the float sums
        update={"train": spec.generations[0].train.model_copy(update={"epochs": 3, "threads": 1})})]})
    _, whole = train_generation(spec, 1, checkpoint, tmp_path / "whole")

    class Killed(Exception):
        pass

    def die_after_2(report):
        if report.epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train_generation(spec, 1, checkpoint, tmp_path / "killed", die_after_2)
    assert (tmp_path / "killed" / "train_state.pt").is_file()
    outcome, resumed = train_generation(spec, 1, checkpoint, tmp_path / "killed")
    assert outcome.resumed_from_epoch == 2 and [r.epoch for r in outcome.history] == [3]
    assert all(torch.equal(resumed.state_dict()[k], v) for k, v in whole.state_dict().items())
    assert re.search(r"pruned to width 0\.5, \d blocks? removed", outcome.arch_summary), outcome.arch_summary


def test_a_depth_prune_never_removes_a_tapped_block(tmp_path):
    cfg = digits_chain(tmp_path, A={"prune": {"width": 1.0, "depth": 0.2}}, B={"derive": {"width": 0.5}})
    cfg["teacher"]["model"]["convs_per_stage"] = 4  # 3 removable convs per stage
    # A taps stages.0.2 as a student; B reads A's stages.1.1 as its teacher
    cfg["generations"][0]["distill"] = [{"kind": "feature", "weight": 0.5, "student_node": "stages.0.2.relu",
                                         "teacher_node": "stages.0"}, {"kind": "ce", "weight": 0.5}]
    cfg["generations"][1]["distill"] = [{"kind": "feature", "weight": 0.5, "teacher_node": "stages.1.1",
                                         "student_node": "stages.1"}, {"kind": "ce", "weight": 0.5}]
    gens = resolve_chain(spec_from_dict(cfg))
    assert gens[1].arch.keep == ["stages.0.2.relu", "stages.1.1"]
    model = build_model(gens[1].arch, 10, 1)
    removed = planned(canonical_json(gens[1].arch), 10, 1).record["removed"]
    assert len(removed) == 4  # 80% of the 6 removable blocks minus the 2 tapped
    assert "stages.0.2" not in removed and "stages.1.1" not in removed
    names = dict(model.named_modules())
    assert type(names["stages.0.2"]).__name__ == "ConvBlock" and type(names["stages.1.1"]).__name__ == "ConvBlock"
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("student, expected", [
    ({"prune": {"width": 0}}, "generations.0.student.prune.width: Input should be greater than 0"),
    ({"prune": {"width": 1.5}}, "generations.0.student.prune.width: Input should be less than or equal to 1"),
    ({"prune": {"importance": "taylor", "batches": 0}}, "importance taylor scores channels by gradients"),
    ({"prune": {"depth": 0.5}}, "generations.0.student.prune.depth: Cnn has no removable blocks"),
    ({"prune": {"importance": "bn_scale"}}, "generations.0.student.prune.importance: bn_scale ranks channels"),
    ({"prune": {"stage_widths": [0.5, 0.5, 0.5]}},
     "generations.0.student.prune.stage_widths: Cnn has 2 stages (by output size: 1/1, 1/2); give 2 widths, not 3"),
])
def test_bad_prune_settings_exit_2_with_one_line(tmp_path, capsys, student, expected):
    cfg = tiny_chain(tmp_path)
    cfg["generations"] = [{"name": "A", "student": student}]
    if "bn_scale" in str(student):
        cfg["teacher"]["model"]["batch_norm"] = False
    path = write_config(tmp_path, cfg)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


@pytest.mark.usefixtures("prefect_harness")
def test_a_pruned_chain_runs_registers_and_its_model_scores_what_was_reported(tmp_path, capsys):
    cfg = digits_chain(tmp_path, name="prunedchain", A={"prune": {"width": 0.5}},
                       B={"prune": {"width": 0.5, "depth": 0.5}}, C={"derive": {"width": 1.0}})
    cfg["teacher"]["train"]["epochs"] = 3
    cfg["measure"] = {"keep_onnx": True}  # B's ONNX file is compared with its logged model below
    path = write_config(tmp_path, cfg)
    assert main(["inspect", str(path)]) == 0
    assert "planned on initial weights" in capsys.readouterr().out  # nothing trained yet
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "models:/prunedchain-student@latest" in out
    client = MlflowClient(cfg["tracking"]["uri"])
    exp = client.get_experiment_by_name("prunedchain")
    runs = {r.data.tags["kdchain.generation_name"]: r for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get("kdchain.kind") == "generation"}
    assert runs["A"].data.metrics["params"] < 0.3 * runs["teacher"].data.metrics["params"]
    assert runs["B"].data.metrics["params"] < 0.5 * runs["A"].data.metrics["params"]
    assert runs["C"].data.metrics["params"] < 1.1 * runs["B"].data.metrics["params"]  # derived from B's size
    assert runs["A"].data.metrics["test_accuracy"] > 0.8  # the pruned teacher healed in 2 epochs

    mlflow.set_tracking_uri(cfg["tracking"]["uri"])
    data = load_data(spec_from_dict(cfg).data, 0)
    for name in ("B",):  # a pruned generation's logged model (pickle flavour) loads back and scores as reported
        model = mlflow.pytorch.load_model(runs[name].data.tags["kdchain.model_uri"]).eval()
        acc = (model(data.test.x).argmax(1) == data.test.y).float().mean().item()
        assert acc == pytest.approx(runs[name].data.metrics["test_accuracy"], abs=1e-4)  # logged to 4 digits
        onnx = next((tmp_path / "work" / "prunedchain").glob("2-B-*/model.onnx"))
        session = ort.InferenceSession(str(onnx))
        x = data.test.x[:256].numpy()
        eager = model(torch.from_numpy(x)).detach().numpy()
        diff = np.abs(session.run(None, {session.get_inputs()[0].name: x})[0] - eager).max()
        assert diff <= 1e-4 * max(1.0, np.abs(eager).max())
    registered = mlflow.pytorch.load_model("models:/prunedchain-student@latest").eval()
    acc = (registered(data.test.x).argmax(1) == data.test.y).float().mean().item()
    assert acc == pytest.approx(runs["C"].data.metrics["test_accuracy"], abs=1e-4)  # logged to 4 digits

    # a new chain starts from the logged pruned B (as a retrain from the store would) and prunes it again
    again = digits_chain(tmp_path / "again", name="fromstore", A={"prune": {"width": 0.5, "round_to": 4}})
    again["teacher"] = {"from": f"runs:/{runs['B'].info.run_id}"}
    again["tracking"] = cfg["tracking"]
    spec = spec_from_dict(again)
    gens = check_chain(spec)
    assert gens[0].arch.kind == "pruned" and gens[0].arch.record is not None  # the stored B, rebuilt exactly
    teacher = train_generation(spec, 0, None, tmp_path / "again" / "0")[0]
    assert teacher.metrics["test_accuracy"] == pytest.approx(runs["B"].data.metrics["test_accuracy"], abs=1e-4)
    outcome, _ = train_generation(spec, 1, teacher.checkpoint, tmp_path / "again" / "1")
    assert outcome.metrics["params"] < 0.5 * runs["B"].data.metrics["params"]
    assert "pruned to width 0.125, 1 block removed" in outcome.arch_summary


def cifar_folder(root):
    """CIFAR-10 in its python format: 5 train batches of 4 and a test batch of 8 images, class in the red channel."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 8)]:
        labels = rng.integers(0, 10, n)
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[:, :1024] = (labels[:, None] * 25).astype(np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"labels": labels.tolist(), "data": data}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    return root


@pytest.mark.slow  # about 55 s: VGG19 at 224x224, its ONNX export checked
def test_a_pruned_vgg19_inspects_offline_and_trains_one_epoch_on_cifar(tmp_path, capsys):
    cfg = {"name": "vgg-pruned", "workdir": str(tmp_path / "work"), "measure": {"speed": False},  # ONNX checked
           "data": {"kind": "cifar10", "root": str(cifar_folder(tmp_path / "data")), "image_size": 224, "val": 0.2},
           "teacher": {"model": {"kind": "torchvision", "name": "vgg19", "weights": "IMAGENET1K_V1",
                                 "freeze": ["features"]}},
           "generations": [{"name": "A", "student": {"prune": {"width": 0.25}},
                            "distill": [{"kind": "feature", "weight": 0.5}, {"kind": "ce", "weight": 0.5}],
                            "train": {"epochs": 1, "batch_size": 8, "optimizer": "adam", "lr": 0.001}}]}
    # 224x224 as in the seed config: torch's ONNX export of VGG's AdaptiveAvgPool2d(7) needs a map of 7k x 7k
    path = write_config(tmp_path, cfg)
    assert main(["inspect", str(path), "--json"]) == 0  # offline: the ImageNet weights are not needed to inspect
    import json

    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["params"] == 139_611_210 and 8_000_000 < rows[1]["params"] < 9_500_000
    assert rows[1]["feature_maps"]["features"] == [128, 7, 7]
    spec = spec_from_dict(cfg)
    teacher = build_model(spec.teacher.model, 10, 3)  # stands in for the fine-tuned VGG19 (no weights offline)
    save_checkpoint(tmp_path / "teacher.pt", teacher, spec.teacher.model, (3, 224, 224), 10)
    outcome, student = train_generation(spec, 1, tmp_path / "teacher.pt", tmp_path / "A")
    assert [r.epoch for r in outcome.history] == [1]
    assert outcome.metrics["params"] == rows[1]["params"]  # width-only: the same shape as inspected
    assert all(p.requires_grad for p in student.parameters())  # the teacher's freeze is not inherited
    assert outcome.metrics["onnx_max_abs_diff"] <= 1e-3


def make_block_idle(model, name: str) -> None:
    """Turn the conv-BN-ReLU block `name` into the identity on its (non-negative) input: 1 - cos(in, out) = 0, so a
    depth prune scoring this model's weights removes it first."""
    block = model.get_submodule(name)
    with torch.no_grad():
        block.conv.weight.zero_()
        c = block.conv.out_channels
        block.conv.weight[torch.arange(c), torch.arange(c), 1, 1] = 1.0
        block.bn.weight.fill_(1.0), block.bn.bias.zero_()
        block.bn.running_mean.zero_(), block.bn.running_var.fill_(1.0 - block.bn.eps)


@pytest.mark.usefixtures("prefect_harness")
def test_a_search_over_width_and_depth_never_trains_over_its_budget(trained, tmp_path):
    """Which block a depth prune removes depends on the teacher's trained weights. Here the trained teacher's
    least important block is another one than its initial weights' (forced: that block made the identity), so a
    candidate planned on initial weights would meet the budget and then train far over it."""
    from flows.chain import distill_chain
    from kdchain.students import pruned_student

    spec, teacher, _, _ = trained
    arch = spec.teacher.model
    plan = PrunedArch(base=arch, prune=Prune(width=0.75, depth=0.5))
    initial = planned(canonical_json(plan), 10, 1).record["removed"]
    other = next(b for b in ("stages.0.1", "stages.1.1") if b not in initial)
    teacher = load_checkpoint(trained[2])[0]
    make_block_idle(teacher, other)
    save_checkpoint(tmp_path / "teacher.pt", teacher, arch, (1, 8, 8), 10)
    data = load_data(spec.data, 0)
    student, real = pruned_student(teacher, arch, plan, data, spec.seed + 1)
    assert real.record["removed"] == [other] != initial
    noise_params = count_params(build_model(planned(canonical_json(plan), 10, 1), 10, 1))
    budget = (count_params(student) + noise_params) // 2
    # measured on initial weights the candidate meets the budget; pruned from the trained teacher it does not
    assert noise_params <= budget < count_params(student)

    cfg = digits_chain(tmp_path, name="prunesearch", A={"prune": {"width": 0.5}})
    cfg["teacher"] = {"from": str(tmp_path / "teacher.pt")}
    cfg["generations"][0]["search"] = {"space": {"width": [0.5, 0.75], "depth": [0.5]},
                                       "budget": {"max_params": budget}, "trials": 2, "proxy_epochs": 1,
                                       "prune": False, "runner": {"kind": "threads", "workers": 1}}
    result = distill_chain(spec_from_dict(cfg))
    client = MlflowClient(cfg["tracking"]["uri"])
    exp = client.get_experiment_by_name("prunesearch")
    trials = client.search_runs([exp.experiment_id], "tags.`kdchain.kind` = 'trial'")
    assert trials and all(t.data.metrics["params"] <= budget for t in trials)
    a = result.generations[1]
    assert a.metrics["params"] <= budget, a.summary
    chosen = [t for t in trials if t.data.tags.get("kdchain.chosen") == "true"]
    assert len(chosen) == 1 and chosen[0].data.metrics["params"] == a.metrics["params"]
    trained_a = load_checkpoint(Path(a.checkpoint))[1]
    assert trained_a.record["removed"] == [other]  # the block the trained teacher's weights chose
    # chance is 0.1; the teacher lost accuracy when its block became the identity, A starts from its weights
    assert a.metrics["test_accuracy"] > 0.25


@pytest.mark.usefixtures("prefect_harness")
def test_inspect_reports_the_params_and_flops_that_train(trained, tmp_path, capsys):
    """A depth prune whose block depends on the teacher's weights: `inspect` plans it from the trained teacher
    before the run, and reads the trained architecture after it; both are what the run measured."""
    import json

    spec, _, checkpoint, _ = trained
    arch = spec.teacher.model
    plan = PrunedArch(base=arch, prune=Prune(width=0.75, depth=0.5))
    other = next(b for b in ("stages.0.1", "stages.1.1")
                 if b not in planned(canonical_json(plan), 10, 1).record["removed"])
    teacher = load_checkpoint(checkpoint)[0]
    make_block_idle(teacher, other)  # the trained weights choose another block than initial weights would
    save_checkpoint(tmp_path / "teacher.pt", teacher, arch, (1, 8, 8), 10)
    cfg = digits_chain(tmp_path, name="inspected", A={"prune": {"width": 0.75, "depth": 0.5}},
                       B={"prune": {"width": 0.5}})
    cfg["teacher"] = {"from": str(tmp_path / "teacher.pt")}
    for g in cfg["generations"]:
        g["train"]["epochs"] = 1
    path = write_config(tmp_path, cfg)

    assert main(["inspect", str(path), "--json"]) == 0
    before = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert before["A"]["source"] == "pruned from the trained teacher"
    assert before["B"]["source"] == "planned on initial weights"  # width only: the same counts whatever the weights
    assert main(["run", str(path)]) == 0
    capsys.readouterr()
    client = MlflowClient(cfg["tracking"]["uri"])
    runs = {r.data.tags["kdchain.generation_name"]: r.data.metrics
            for r in client.search_runs([client.get_experiment_by_name("inspected").experiment_id],
                                        "tags.`kdchain.kind` = 'generation'")}
    assert main(["inspect", str(path), "--json"]) == 0
    after = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name in ("A", "B"):
        assert before[name]["params"] == after[name]["params"] == runs[name]["params"], name
        assert before[name]["flops"] == after[name]["flops"] == runs[name]["flops"], name
        assert after[name]["source"] == "trained"
    assert after["A"]["arch"]["record"]["removed"] == [other]
