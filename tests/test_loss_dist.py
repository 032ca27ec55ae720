"""DIST (Huang et al. 2022), a loss kind added as one module: its value against a hand computation, its place in
configs, the schema and one-line errors, and a student that learns with it."""

import json

import numpy as np
import pytest
import torch

from flows.cli import main
from kdchain.data import load_data
from kdchain.data.sources.digits import DigitsData
from kdchain.distill import evaluate, fit
from kdchain.distill.losses import DistillLoss
from kdchain.losses.ce import CeLoss
from kdchain.losses.dist import DistLoss, dist_loss
from kdchain.models import build_model
from kdchain.models.families.cnn import CnnArch
from kdchain.spec import SpecError, TrainSpec, spec_from_dict
from tests.conftest import tiny_chain, write_config


def by_hand(s: np.ndarray, t: np.ndarray, beta: float, gamma: float, temp: float) -> float:
    def softmax(z):
        e = np.exp(z / temp - (z / temp).max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def one_minus_pearson(a, b):  # rows
        return float(np.mean([1 - np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)]))

    ps, pt = softmax(s), softmax(t)
    return temp ** 2 * (beta * one_minus_pearson(ps, pt) + gamma * one_minus_pearson(ps.T, pt.T))


def test_dist_matches_the_pearson_relations_computed_by_hand():
    s = np.array([[1.0, 2.0, 0.5, -1.0], [0.3, -0.2, 2.2, 0.0], [1.5, 1.4, -0.7, 0.9]])
    t = np.array([[0.2, 3.0, -1.0, 0.1], [1.0, 0.0, 2.0, -2.0], [2.5, 0.4, 0.0, 1.0]])
    for beta, gamma, temp in [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0)]:
        got = dist_loss(torch.tensor(s), torch.tensor(t), beta, gamma, temp).item()
        assert got == pytest.approx(by_hand(s, t, beta, gamma, temp), rel=1e-5)  # eps 1e-8 in the norms
    assert dist_loss(torch.tensor(s), torch.tensor(s), 1.0, 1.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    # relations, not values: a student whose logits are the teacher's, doubled, is closer by DIST than by KL's
    # measure of it would suggest; its inter-class distance stays small
    assert dist_loss(torch.tensor(2 * t), torch.tensor(t), 1.0, 0.0, 1.0).item() < 0.1


def test_a_config_names_it_and_a_misspelt_field_is_one_line(tmp_path):
    cfg = tiny_chain(tmp_path)
    cfg["generations"][0]["distill"] = [{"kind": "dist", "weight": 1.0, "temperature": 4}, {"kind": "ce"}]
    spec = spec_from_dict(cfg)
    assert isinstance(spec.generations[0].distill[0], DistLoss)
    cfg["generations"][0]["distill"][0]["betta"] = 2
    with pytest.raises(SpecError) as e:
        spec_from_dict(cfg)
    assert e.value.lines == ["config: generations.0.distill.0.betta: unknown key (check the spelling; `kdchain "
                             "validate --schema` lists the keys)"]


def test_the_schema_lists_it(capsys):
    assert main(["validate", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "DistLoss" in schema["$defs"] and schema["$defs"]["DistLoss"]["properties"]["kind"]["const"] == "dist"


def test_a_student_learns_digits_with_dist_from_its_teacher():
    data = load_data(DigitsData(), 0)
    torch.manual_seed(0)
    teacher = build_model(CnnArch(channels=[16, 32]), 10, 1)
    fit(teacher, None, DistillLoss([CeLoss()]), data, TrainSpec(epochs=4, lr=0.01))
    student = build_model(CnnArch(channels=[8, 16]), 10, 1)
    loss = DistillLoss([DistLoss(weight=1.0, temperature=4.0), CeLoss(weight=0.5)])
    assert loss.needs_teacher
    fit(student, teacher, loss, data, TrainSpec(epochs=4, lr=0.01))
    assert evaluate(student, data.test) > 0.75  # chance is 0.10
