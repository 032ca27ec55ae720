"""Each loss against values computed by hand."""

import math

import pytest
import torch

from kdchain.distill.losses import DistillLoss
from kdchain.losses.ce import CeLoss
from kdchain.losses.feature import FeatureAdapter, FeatureLoss
from kdchain.losses.kd import KdLoss, kd_loss


def softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def test_kd_matches_hand_computed_kl_times_t_squared():
    s, t, T = [1.0, 2.0, 0.5], [0.2, 3.0, -1.0], 2.0
    p = softmax([v / T for v in t])
    q = softmax([v / T for v in s])
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) * T * T
    got = kd_loss(torch.tensor([s]), torch.tensor([t]), T).item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert got == pytest.approx(0.50136, abs=1e-4)  # golden value


def test_kd_is_zero_when_student_equals_teacher_and_averages_over_batch():
    logits = torch.tensor([[1.0, -2.0, 0.3], [0.0, 0.0, 5.0]])
    assert kd_loss(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-7)
    one = kd_loss(logits[:1] * 2, logits[:1], 3.0)
    two = kd_loss(torch.cat([logits[:1] * 2] * 2), torch.cat([logits[:1]] * 2), 3.0)
    assert two.item() == pytest.approx(one.item(), rel=1e-6)


def test_ce_term_and_weighted_sum():
    logits, y = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0])
    ce = -math.log(softmax([2.0, 0.0, 0.0])[0])
    loss = DistillLoss([CeLoss(weight=0.3), KdLoss(weight=0.7, temperature=1.0)])
    total, parts = loss({"logits": logits}, {"logits": logits}, y)
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert parts["kd"].item() == pytest.approx(0.0, abs=1e-7)
    assert total.item() == pytest.approx(0.3 * ce, rel=1e-5)


def test_feature_loss_is_mse_when_shapes_match():
    s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    t = torch.zeros_like(s)
    adapter = FeatureAdapter((1, 2, 2), (1, 2, 2))
    term = FeatureLoss(teacher_node="t", student_node="s")
    assert term.value({"s": s}, {"t": t}, None, adapter).item() == pytest.approx((1 + 4 + 9 + 16) / 4)


def test_feature_adapter_maps_channels_and_resizes():
    adapter = FeatureAdapter((8, 8, 8), (32, 4, 4))
    assert adapter(torch.randn(2, 8, 8, 8)).shape == (2, 32, 4, 4)
    loss = DistillLoss([FeatureLoss(teacher_node="t", student_node="s")], shapes={0: ((8, 8, 8), (32, 4, 4))})
    total, _ = loss({"logits": None, "s": torch.randn(2, 8, 8, 8)}, {"t": torch.randn(2, 32, 4, 4)}, None)
    total.backward()
    assert loss.adapters["0"].proj.weight.grad is not None  # the adapter learns with the student
