"""The engine trains for real: a tiny CNN learns digits; profiles are measured."""

import pytest
import torch

from kdchain.data import load_data
from kdchain.data.sources.digits import DigitsData
from kdchain.distill import StateUnreadable, evaluate, fit
from kdchain.distill.losses import DistillLoss
from kdchain.losses.ce import CeLoss
from kdchain.losses.kd import KdLoss
from kdchain.measure.profile import profile
from kdchain.models import build_model, count_params
from kdchain.models.families.cnn import CnnArch
from kdchain.spec import TrainSpec


def test_digits_split_is_stratified_seeded_and_normalised():
    a, b = load_data(DigitsData(), 0), load_data(DigitsData(), 0)
    assert torch.equal(a.test.y, b.test.y)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert a.train.x.shape[1:] == (1, 8, 8)
    assert abs(a.train.x.mean().item()) < 1e-4
    counts = torch.bincount(a.test.y, minlength=10)
    assert counts.max() - counts.min() <= 2  # every digit about equally present (class sizes 174-183)


def test_tiny_cnn_learns_digits_above_90_percent_and_teaches_a_smaller_one():
    data = load_data(DigitsData(), 0)
    teacher = build_model(CnnArch(channels=[16, 32]), 10, 1)
    assert count_params(teacher) < 6000
    seen = []
    result = fit(teacher, None, DistillLoss([CeLoss()]), data, TrainSpec(epochs=6, lr=0.01), on_epoch=seen.append)
    assert [r.epoch for r in seen] == list(range(1, 7))
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert evaluate(teacher, data.test) > 0.90

    student = build_model(CnnArch(channels=[8, 16]), 10, 1)
    fit(student, teacher, DistillLoss([KdLoss(weight=0.7), CeLoss(weight=0.3)]), data, TrainSpec(epochs=6, lr=0.01))
    assert evaluate(student, data.test) > 0.75  # chance is 0.10


def test_resume_from_state_continues_where_it_stopped(tmp_path):
    data = load_data(DigitsData(), 0)
    state = tmp_path / "state.pt"
    full = build_model(CnnArch(channels=[8]), 10, 1)
    torch.manual_seed(0)
    fit(full, None, DistillLoss([CeLoss()]), data, TrainSpec(epochs=3), seed=1)
    torch.manual_seed(0)
    part = build_model(CnnArch(channels=[8]), 10, 1)
    fit(part, None, DistillLoss([CeLoss()]), data, TrainSpec(epochs=2), seed=1, state_path=state)
    torch.manual_seed(0)
    resumed = build_model(CnnArch(channels=[8]), 10, 1)
    result = fit(resumed, None, DistillLoss([CeLoss()]), data, TrainSpec(epochs=3), seed=1, state_path=state)
    assert result.resumed_from_epoch == 2 and [r.epoch for r in result.history] == [3]
    # a state saved for other shapes (a pruning that kept other channels) is refused in one sentence and removed
    fit(build_model(CnnArch(channels=[8]), 10, 1), None, DistillLoss([CeLoss()]), data, TrainSpec(epochs=2),
        seed=1, state_path=state)
    with pytest.raises(StateUnreadable, match="does not fit this student .*run the same command again"):
        fit(build_model(CnnArch(channels=[6]), 10, 1), None, DistillLoss([CeLoss()]), data, TrainSpec(epochs=3),
            seed=1, state_path=state)
    assert not state.exists()


def test_profile_counts_params_flops_latency_size():
    model = build_model(CnnArch(channels=[8, 16]), 10, 1)
    prof = profile(model, (1, 8, 8))
    # by hand: conv 1->8 (3x3, no bias beside BatchNorm), BN 8 (scale, shift), conv 8->16, BN 16, linear 16->10
    assert prof.params == 1 * 8 * 9 + 2 * 8 + 8 * 16 * 9 + 2 * 16 + 16 * 10 + 10 == 1442
    # 2 FLOPs per multiply-add: conv 1 at 8x8, conv 2 at 4x4 after the pool, the linear head
    assert prof.flops == 2 * (8 * 9 * 64 + 16 * 8 * 9 * 16 + 16 * 10)
    assert prof.latency_ms > 0 and prof.latency_ms == prof.latency_ms  # measured, not NaN (bench/ times it)
    assert prof.size_bytes > prof.params * 4  # the float32 weights and the BatchNorm statistics


def test_bf16_and_fp32_training_learn_alike():
    """train.precision: bf16 autocast (auto here when the CPU computes bf16 natively) learns as well as fp32."""
    from kdchain.distill import use_bf16

    assert not use_bf16(torch.device("cpu"), "fp32") and use_bf16(torch.device("cpu"), "bf16")
    data = load_data(DigitsData(), 0)
    acc = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_model(CnnArch(channels=[16, 32]), 10, 1)
        fit(model, None, DistillLoss([CeLoss()]), data, TrainSpec(epochs=4, lr=0.01, precision=precision))
        acc[precision] = evaluate(model, data.test)
    assert acc["bf16"] > 0.85 and abs(acc["bf16"] - acc["fp32"]) < 0.05, acc
