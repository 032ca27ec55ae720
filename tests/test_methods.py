"""fitnet, at, dkd, rkd against independent numpy code and fixed golden numbers; several teachers; node checks."""

import numpy as np
import pytest
import torch

from kdchain.chain import train_generation
from kdchain.checks import check_chain
from kdchain.data import load_data
from kdchain.distill import fit
from kdchain.distill.losses import DistillLoss, teacher_key
from kdchain.losses.at import at_loss
from kdchain.losses.dkd import dkd_loss
from kdchain.losses.fitnet import FitnetLoss, HintRegressor, fitnet_loss
from kdchain.losses.kd import KdLoss
from kdchain.losses.rkd import rkd_loss
from kdchain.models import build_model
from kdchain.resolve import resolve_chain
from kdchain.spec import SpecError, spec_from_dict
from kdchain.students import build_loss
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


# ---------------------------------------------------------------------------------------------- in a chain


def _spec(tmp_path, **gen_b):
    cfg = tiny_chain(tmp_path, epochs=2)
    cfg["generations"][1].update(gen_b)
    return spec_from_dict(cfg)


def test_new_kinds_resolve_default_nodes_and_bad_nodes_are_one_line(tmp_path):
    spec = _spec(tmp_path, distill=[{"kind": "fitnet"}, {"kind": "at"}, {"kind": "rkd"}, {"kind": "dkd"}])
    b = check_chain(spec)[2]
    assert [(t.teacher_node, t.student_node) for t in b.distill[:3]] == [("stages", "stages")] * 3
    bad = _spec(tmp_path, distill=[{"kind": "at", "teacher_node": "stages.99"}])
    with pytest.raises(SpecError) as e:
        check_chain(bad, "chain.yaml")
    assert len(e.value.lines) == 1 and e.value.lines[0].startswith(
        "chain.yaml: generations.1.distill.0.teacher_node: 'stages.99' is not a node of A's model")
    with pytest.raises(SpecError, match=r"generations.1.distill: fitnet hint_epochs 2 leaves no epoch"):
        check_chain(_spec(tmp_path, distill=[{"kind": "fitnet", "hint_epochs": 2}]))
    with pytest.raises(SpecError, match=r"generations.1.teacher_weights: give 2 weights, one per earlier generation "
                                        r"\(teacher, A\)"):
        check_chain(_spec(tmp_path, teachers="ancestors", teacher_weights=[1.0]))
    with pytest.raises(SpecError, match=r"generations.1.teacher_weights: only used with `teachers: ancestors`"):
        check_chain(_spec(tmp_path, teacher_weights=[1.0, 1.0]))


def test_fitnet_hint_stage_trains_on_the_hint_alone_then_the_full_loss(tmp_path):
    spec = _spec(tmp_path)
    gens = resolve_chain(spec)
    data = load_data(spec.data, 0)
    teacher = build_model(gens[0].arch, 10, 1).eval()
    student = build_model(gens[1].arch, 10, 1)
    gen = gens[1]
    gen.distill = [FitnetLoss(teacher_node="stages", student_node="stages", hint_epochs=1, weight=2.0),
                   KdLoss(weight=1.0)]
    loss = build_loss(gen, student, teacher, data.input_shape)
    head = student.classifier.weight.detach().clone()
    reports = []
    fit(student, teacher, loss, data, gen.train.model_copy(update={"epochs": 2, "weight_decay": 0.0}), seed=1,
        on_epoch=reports.append)
    hint, full = reports
    assert hint.train_loss == pytest.approx(2.0 * hint.parts["fitnet"], rel=1e-4)  # the kd term is not counted
    assert full.train_loss == pytest.approx(2.0 * full.parts["fitnet"] + full.parts["kd"], rel=1e-4)
    assert not torch.equal(student.classifier.weight, head)  # the head learns in the full stage


def test_several_teachers_average_their_logit_terms():
    kd = KdLoss(temperature=1.0)
    s, t0, t1 = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    loss = DistillLoss([kd], teacher_weights={"logits": 3.0, teacher_key(0): 1.0})
    total, _ = loss({"logits": s}, {"logits": t1, teacher_key(0): t0}, None)
    one = DistillLoss([kd])
    expected = 0.75 * one({"logits": s}, {"logits": t1}, None)[0] + 0.25 * one({"logits": s}, {"logits": t0}, None)[0]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)


def test_ancestors_teach_generation_b_with_every_earlier_checkpoint(tmp_path):
    cfg = tiny_chain(tmp_path)
    cfg["generations"] = cfg["generations"][:2]
    for g in cfg["generations"]:
        g["train"] = {"epochs": 5, "lr": 0.01}
    cfg["generations"][1].update(teachers="ancestors", teacher_weights=[1.0, 2.0],
                                 distill=[{"kind": "dkd", "weight": 0.5}, {"kind": "ce", "weight": 0.5}, {"kind": "at", "weight": 1.0}])
    spec = spec_from_dict(cfg)
    ckpts = []
    for i in range(3):
        out, _ = train_generation(spec, i, ckpts[-1] if ckpts else None, tmp_path / f"g{i}",
                                  extra_teachers=ckpts[:-1] if i == 2 else [])
        ckpts.append(tmp_path / f"g{i}" / "model.pt")
    assert out.name == "B" and out.teacher_outputs.startswith("cached: logits, stages, logits@0")
    assert out.metrics["test_accuracy"] > 0.25  # B (4-8 channels) learnt from teacher + A: chance is 0.1
    with pytest.raises(ValueError, match="has 2 teachers; got 1 checkpoints"):
        train_generation(spec, 2, ckpts[1], tmp_path / "again")


def test_flow_hands_every_ancestor_checkpoint_to_a_densely_guided_generation(tmp_path, prefect_harness):
    from flows.chain import distill_chain

    cfg = tiny_chain(tmp_path, name="dense")
    cfg["generations"][2].update(teachers="ancestors", distill=[{"kind": "kd"}, {"kind": "dkd", "weight": 0.1}])
    result = distill_chain(spec_from_dict(cfg))  # C refuses to train unless it gets all 3 teachers' checkpoints
    assert [g.name for g in result.generations] == ["teacher", "A", "B", "C"]
    # C's key covers all three teachers' weights: retraining A (another seed) would change it
    spec = spec_from_dict(cfg)
    c = resolve_chain(spec)[3]
    assert c.teacher_weights == [1.0, 1.0, 1.0] and c.as_json()["teachers"] == "ancestors"
    assert "teachers" not in resolve_chain(spec)[2].as_json()  # direct generations keep their old cache keys
