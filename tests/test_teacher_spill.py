"""The teacher-output cache past its memory budget: float16 memory-mapped files in the generation's folder, the
same training as live (to float16 rounding), gone when the generation finishes."""

import dataclasses

import pytest
import torch

from kdchain.distill import fit
from kdchain.losses.ce import CeLoss
from kdchain.losses.feature import FeatureLoss
from kdchain.losses.kd import KdLoss
from kdchain.models import build_model
from kdchain.students import build_loss
from tests.test_speed import setup  # noqa: F401 - the module's trained digits teacher


def _fit(gens, data, teacher, tmp_path, **train):
    gen = dataclasses.replace(gens[1], distill=[KdLoss(weight=0.5), CeLoss(weight=0.5),
                                                FeatureLoss(weight=0.5, teacher_node="stages", student_node="stages")])
    torch.manual_seed(1)
    student = build_model(gen.arch, 10, 1)
    loss = build_loss(gen, student, teacher, data.input_shape)
    spilled = []
    result = fit(student, teacher, loss, data, gen.train.model_copy(update={"epochs": 2, **train}), seed=1,
                 state_path=tmp_path / "train_state.pt",
                 on_epoch=lambda r: spilled.append(sorted(p.name for p in (tmp_path / "teacher_outputs").glob("*"))))
    return result, spilled


def test_outputs_over_the_budget_spill_to_disk_and_train_like_live(setup, tmp_path):  # noqa: F811
    gens, data, teacher = setup
    disk, spilled = _fit(gens, data, teacher, tmp_path / "disk", cache="auto", cache_memory_mb=0.01)
    live, _ = _fit(gens, data, teacher, tmp_path / "live", cache="off")
    assert disk.teacher.startswith("cached on disk: logits, stages of") and "float16" in disk.teacher
    assert spilled == [["0.npy", "1.npy"]] * 2  # the files were there while it trained
    assert not (tmp_path / "disk" / "teacher_outputs").exists()  # and gone once the generation finished
    for a, b in zip(disk.history, live.history):
        assert a.train_loss == pytest.approx(b.train_loss, rel=2e-3)  # float16 rounding of the teacher's outputs
        assert a.val_accuracy == pytest.approx(b.val_accuracy, abs=0.02)


def test_without_a_workdir_or_disk_the_teacher_runs_live(setup, tmp_path):  # noqa: F811
    from kdchain.distill.teacher import teacher_cache_plan

    shapes = {"logits": (10,), "features": (512, 7, 7)}
    where, why = teacher_cache_plan("auto", None, 45_000, shapes, 512.0)
    assert (where, why) == (None, "live: outputs need 4308 MB, over cache_memory_mb 512, and no workdir to spill them to")
    where, why = teacher_cache_plan("auto", None, 10**9, shapes, 512.0, tmp_path)
    assert where is None and "do not fit the" in why
    assert teacher_cache_plan("auto", None, 45_000, shapes, 512.0, tmp_path)[0] == "disk"
