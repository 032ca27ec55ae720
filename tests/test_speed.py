"""The fast engine's promises: the teacher-output cache changes nothing but time, augmentation bypasses it with
the teacher on the student's very view, and every generation ships an ONNX model that matches torch."""

from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from kdchain.data import load_data
from kdchain.distill import fit
from kdchain.measure.export import MAX_ABS_DIFF, export_and_measure
from kdchain.models import build_model
from kdchain.resolve import resolve_chain
from kdchain.spec import spec_from_dict
from kdchain.students import build_loss
from tests.conftest import tiny_chain, write_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    spec = spec_from_dict(tiny_chain(tmp_path_factory.mktemp("speed")))
    gens = resolve_chain(spec)
    data = load_data(spec.data, 0)
    torch.manual_seed(0)
    teacher = build_model(gens[0].arch, 10, 1)
    fit(teacher, None, build_loss(gens[0], teacher, None, data.input_shape), data, gens[0].train)
    return gens, data, teacher.eval()


def _student_fit(gens, data, teacher, epochs=2, **train):
    gen = gens[1]
    torch.manual_seed(1)
    student = build_model(gen.arch, 10, 1)
    loss = build_loss(gen, student, teacher, data.input_shape)
    result = fit(student, teacher, loss, data, gen.train.model_copy(update={"epochs": epochs, **train}), seed=1)
    return student, result


def test_cached_teacher_trains_the_same_student_as_the_live_teacher(setup):
    gens, data, teacher = setup
    _, cached = _student_fit(gens, data, teacher, cache="on")
    _, live = _student_fit(gens, data, teacher, cache="off")
    assert cached.teacher.startswith("cached: logits") and live.teacher == "live: cache off"
    for a, b in zip(cached.history, live.history):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
        assert a.val_accuracy == pytest.approx(b.val_accuracy, abs=1e-6)


def test_feature_maps_are_cached_within_budget_and_live_beyond(setup):
    from kdchain.losses.ce import CeLoss
    from kdchain.losses.feature import FeatureLoss
    from kdchain.losses.kd import KdLoss

    gens, data, teacher = setup
    gen = resolve_chain(spec_from_dict(tiny_chain(Path("/tmp"))))[1]
    terms = [KdLoss(weight=0.5), FeatureLoss(weight=0.5, teacher_node="stages", student_node="stages"), CeLoss()]
    torch.manual_seed(1)
    results = {}
    for budget in (512.0, 0.01):  # stages maps of ~1.1k digits: ~0.4 MB
        student = build_model(gen.arch, 10, 1)
        gen.distill = terms
        loss = build_loss(gen, student, teacher, data.input_shape)
        results[budget] = fit(student, teacher, loss, data,
                              gen.train.model_copy(update={"epochs": 1, "cache_memory_mb": budget}), seed=1)
    assert results[512.0].teacher.startswith("cached: logits, stages")
    assert results[0.01].teacher.startswith("live: outputs need")


def test_augmentation_bypasses_the_cache_and_the_teacher_sees_the_augmented_view(setup):
    gens, data, teacher = setup
    gen = gens[1]
    augmented, teacher_inputs = [], []

    def augment(x, y):  # a random horizontal shift: a different view every call
        out = torch.roll(x, shifts=int(torch.randint(1, 3, ())), dims=3)
        augmented.append(out.clone())
        return out, y

    handle = teacher.register_forward_pre_hook(lambda m, args: teacher_inputs.append(args[0].clone()))
    try:
        torch.manual_seed(1)
        student = build_model(gen.arch, 10, 1)
        loss = build_loss(gen, student, teacher, data.input_shape)
        result = fit(student, teacher, loss, data, gen.train.model_copy(update={"epochs": 1, "cache": "on"}),
                     seed=1, augment=augment)
    finally:
        handle.remove()
    assert result.teacher.startswith("live: augmentation")
    assert len(teacher_inputs) == len(augmented) > 1
    for t, a in zip(teacher_inputs, augmented):
        assert torch.equal(t, a)


def test_onnx_export_matches_torch_and_reports_speed(setup, tmp_path):
    gens, data, teacher = setup
    path = tmp_path / "teacher.onnx"
    metrics = export_and_measure(teacher, data.input_shape, path, data.test.x[:64])
    assert metrics["onnx_max_abs_diff"] <= MAX_ABS_DIFF
    for key in ("latency_ms", "latency_ms_onnx", "throughput_ips", "throughput_ips_onnx"):
        assert metrics[key] > 0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 64):  # the batch dimension is dynamic
        logits = session.run(["logits"], {"x": data.test.x[:batch].numpy()})[0]
        assert logits.shape == (batch, 10)
    with torch.inference_mode():
        expected = teacher(data.test.x[:64]).argmax(1).numpy()
    assert (session.run(["logits"], {"x": data.test.x[:64].numpy()})[0].argmax(1) == expected).all()
