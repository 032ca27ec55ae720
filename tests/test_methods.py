"""fitnet, at, dkd, rkd against independent numpy code and fixed golden numbers; several teachers; node checks."""

import numpy as np
import pytest
import torch

from kdchain.chain import build_loss, check_chain, resolve_chain, train_generation
from kdchain.engine import Teachers, fit
from kdchain.data import load_data
from kdchain.losses import (DistillLoss, HintRegressor, at_loss, dkd_loss, fitnet_loss, rkd_loss, teacher_key)
from kdchain.models import build_model
from kdchain.specs import DkdLoss, FitnetLoss, KdLoss, SpecError, spec_from_dict
from tests.conftest import tiny_chain

RNG = np.random.default_rng(0)
S_LOGITS = RNG.normal(size=(4, 5))
T_LOGITS = RNG.normal(size=(4, 5)) * 2
Y = np.array([0, 3, 1, 4])
S_MAP = RNG.normal(size=(3, 4, 4, 4))
T_MAP = RNG.normal(size=(3, 6, 4, 4))
S_EMB = RNG.normal(size=(5, 3))
T_EMB = RNG.normal(size=(5, 7))


def t(a):
    return torch.tensor(a, dtype=torch.float64)


def np_softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_kl(p, q):  # KL(p || q) per row
    return (p * (np.log(p) - np.log(q))).sum(1)


def test_dkd_matches_numpy_tckd_plus_nckd():
    alpha, beta, T = 1.0, 8.0, 4.0
    ps, pt = np_softmax(S_LOGITS / T), np_softmax(T_LOGITS / T)
    rows = np.arange(len(Y))
    bs = np.stack([ps[rows, Y], 1 - ps[rows, Y]], 1)
    bt = np.stack([pt[rows, Y], 1 - pt[rows, Y]], 1)
    tckd = np_kl(bt, bs).mean() * T * T
    keep = np.ones_like(S_LOGITS, bool)
    keep[rows, Y] = False
    nckd = np.mean([np_kl(np_softmax(T_LOGITS[i][keep[i]][None] / T), np_softmax(S_LOGITS[i][keep[i]][None] / T))[0]
                    for i in rows]) * T * T
    got = dkd_loss(t(S_LOGITS), t(T_LOGITS), torch.tensor(Y), alpha, beta, T).item()
    assert got == pytest.approx(alpha * tckd + beta * nckd, rel=1e-6)
    assert got == pytest.approx(GOLDEN["dkd"], rel=1e-5)
    # alpha=1, beta=1 on the same logits: TCKD + NCKD, and zero when student = teacher
    assert dkd_loss(t(T_LOGITS), t(T_LOGITS), torch.tensor(Y), 1.0, 8.0, T).item() == pytest.approx(0.0, abs=1e-9)


def test_at_matches_numpy_normalised_attention_maps():
    def att(m):
        q = (np.abs(m) ** 2).mean(1).reshape(len(m), -1)
        return q / np.linalg.norm(q, axis=1, keepdims=True)

    expected = ((att(S_MAP) - att(T_MAP)) ** 2).mean()
    got = at_loss(t(S_MAP), t(T_MAP), 2.0).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert got == pytest.approx(GOLDEN["at"], rel=1e-5)
    # scale-invariant: a map times 3 has the same attention
    assert at_loss(t(S_MAP) * 3, t(S_MAP), 2.0).item() == pytest.approx(0.0, abs=1e-12)
    # a student map of another size is pooled to the teacher's
    assert at_loss(torch.randn(3, 2, 8, 8), t(T_MAP).float()).shape == ()


def test_rkd_matches_numpy_distance_and_angle_terms():
    def huber(a, b):
        d = np.abs(a - b)
        return np.where(d < 1, 0.5 * d * d, d - 0.5).mean()

    def dist(e):
        d = np.linalg.norm(e[:, None] - e[None], axis=2)
        return d / d[d > 0].mean()

    def angles(e):
        n = len(e)
        out = np.zeros((n, n, n))
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    a, b = e[j] - e[i], e[k] - e[i]
                    na, nb = np.linalg.norm(a), np.linalg.norm(b)
                    out[i, j, k] = 0.0 if na == 0 or nb == 0 else a @ b / (na * nb)
        return out.ravel()

    expected = 25 * huber(dist(S_EMB), dist(T_EMB)) + 50 * huber(angles(S_EMB), angles(T_EMB))
    got = rkd_loss(t(S_EMB), t(T_EMB), 25.0, 50.0).item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert got == pytest.approx(GOLDEN["rkd"], rel=1e-5)
    # relations only: a rotated, scaled, shifted copy of the teacher's embedding costs nothing
    q, _ = np.linalg.qr(RNG.normal(size=(7, 7)))
    assert rkd_loss(t(T_EMB @ q * 3 + 1), t(T_EMB)).item() == pytest.approx(0.0, abs=1e-6)


def test_fitnet_is_half_mse_through_the_regressor():
    reg = HintRegressor((4, 4, 4), (6, 2, 2)).double()
    with torch.no_grad():
        reg.conv.weight.fill_(0.1)
    # independent: 3x3 conv with zero padding of constant weight 0.1 = 0.1 * sum over channels and 3x3 window
    padded = np.pad(S_MAP.sum(1), ((0, 0), (1, 1), (1, 1)))
    conv = 0.1 * sum(padded[:, i:i + 4, j:j + 4] for i in range(3) for j in range(3))
    pooled = conv.reshape(3, 2, 2, 2, 2).mean(axis=(2, 4))  # 4x4 -> 2x2 average pool
    teacher = T_MAP[:, :, :2, :2]
    expected = 0.5 * ((pooled[:, None] - teacher) ** 2).mean()
    got = fitnet_loss(t(S_MAP), t(teacher), reg).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert got == pytest.approx(GOLDEN["fitnet"], rel=1e-5)


GOLDEN = {"dkd": 8.8546218, "at": 0.035999765, "rkd": 4.0922649, "fitnet": 0.70063663}  # computed once, fixed
