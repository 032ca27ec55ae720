"""Stored teacher views (the FKD recipe, `train.teacher_views`): with augmentation on, the teacher's outputs on K
seeded views are computed once; training then runs no teacher forward, the student sees exactly the view whose
outputs it is taught with, and a second student of the same teacher reads the stored outputs instead of computing
them again."""


import pytest
import torch

from kdchain.data import load_data
from kdchain.distill import fit
from kdchain.distill.engine import StoredViews
from kdchain.distill.teacher_views import ViewStore, all_view_params, teacher_views
from kdchain.models import build_model
from kdchain.resolve import resolve_chain
from kdchain.spec import spec_from_dict
from kdchain.students import build_loss


class Counting(torch.nn.Module):
    """The teacher, counting the images it is run on."""

    def __init__(self, model):
        super().__init__()
        self.model, self.images = model, 0

    def forward(self, x):
        self.images += len(x)
        return self.model(x)


@pytest.fixture(scope="module")
def marks(tmp_path_factory):
    """A small marks set (it augments: crop 2, flip) and a teacher trained on it (about 40% val accuracy)."""
    spec = spec_from_dict({
        "name": "views", "seed": 0, "workdir": str(tmp_path_factory.mktemp("views")),
        "data": {"kind": "marks", "train_size": 800, "val_size": 200, "test_size": 100, "image_size": 16,
                 "difficulty": 0.1},
        "teacher": {"model": {"kind": "cnn", "channels": [16, 32]},
                    "train": {"epochs": 8, "lr": 0.01, "batch_size": 64, "threads": 1}},
        "generations": [{"name": "A", "student": {"derive": {"width": 0.5}},
                         "distill": [{"kind": "kd", "weight": 0.7}, {"kind": "ce", "weight": 0.3}],
                         "train": {"epochs": 5, "lr": 0.01, "batch_size": 64, "threads": 1, "teacher_views": 3}}]})
    gens = resolve_chain(spec)
    data = load_data(spec.data, 0)
    assert data.augment is not None
    torch.manual_seed(0)
    teacher = build_model(gens[0].arch, data.num_classes, data.input_shape[0])
    fit(teacher, None, build_loss(gens[0], teacher, None, data.input_shape), data, gens[0].train)
    return gens, data, teacher.eval()


def _student(gens, data, teacher, folder, **train):
    gen = gens[1]
    torch.manual_seed(1)
    student = build_model(gen.arch, data.num_classes, data.input_shape[0])
    counted = Counting(teacher)
    result = fit(student, counted, build_loss(gen, student, teacher, data.input_shape),
                 data, gen.train.model_copy(update=train), seed=1,
                 view_store=ViewStore([folder], seed=0) if folder else None)
    return result, counted.images


def test_views_are_computed_once_and_no_teacher_runs_while_training(marks, tmp_path):
    gens, data, teacher = marks
    n, k = len(data.train), 3
    first, images = _student(gens, data, teacher, tmp_path / "views")
    assert first.teacher.startswith(f"stored views: teacher outputs of {k} augmented views of {n} images")
    assert "computed in" in first.teacher
    assert images == k * n  # the K views, once; 5 epochs of training ran no teacher forward
    assert first.history[-1].val_accuracy > 0.2  # it learns (10 classes: chance is 0.1)

    second, images = _student(gens, data, teacher, tmp_path / "views")  # another student of the same teacher
    assert "read in" in second.teacher and images == 0
    assert [r.train_loss for r in second.history] == pytest.approx([r.train_loss for r in first.history], rel=1e-5)

    live, images = _student(gens, data, teacher, None, teacher_views=0)
    assert live.teacher.startswith("live: augmentation") and images == 5 * n  # 5 epochs, the teacher every batch


def test_the_student_sees_the_view_whose_outputs_it_is_taught_with(marks):
    gens, data, teacher = marks
    split = data.train
    fwd = lambda x: {"logits": teacher(x)}  # noqa: E731
    outputs, read = teacher_views(fwd, split, data.augment, 2, seed=5, device=torch.device("cpu"), precision="fp32",
                                  where="memory", folder=None)
    assert not read and outputs["logits"].shape == (2, len(split), data.num_classes)
    views = StoredViews(outputs, all_view_params(data.augment, len(split), 5, 2, "cpu"), data.augment)
    idx = torch.tensor([3, 0, 7, 3])
    view = torch.tensor([0, 1, 1, 1])
    x, out = views.batch(split.inputs(split.x[idx]), idx, view, "cpu")
    assert not torch.equal(x[0], x[3])  # image 3 in two of its views
    with torch.no_grad():
        assert torch.allclose(teacher(x), out["logits"], atol=1e-4)


def test_views_that_do_not_fit_memory_or_disk_leave_the_teacher_live(tmp_path):
    from kdchain.distill.teacher_views import views_plan

    shapes = {"logits": (10,), "features": (512, 7, 7)}
    assert views_plan("auto", 4, 1000, shapes, 512.0, None)[0] == "memory"
    where, why = views_plan("auto", 4, 45_000, shapes, 512.0, None)
    assert where is None and "over cache_memory_mb 512" in why
    assert views_plan("auto", 4, 45_000, shapes, 512.0, tmp_path)[0] in ("disk", None)
    where, why = views_plan("auto", 4, 10**9, shapes, 512.0, tmp_path)
    assert where is None and "free disk" in why


def test_a_chain_stores_each_teachers_views_beside_it_and_ancestors_read_them(tmp_path, prefect_harness):
    from mlflow import MlflowClient

    from flows.chain import distill_chain

    train = {"epochs": 2, "lr": 0.01, "batch_size": 64, "threads": 1}
    cfg = {"name": "fkd", "seed": 0, "workdir": str(tmp_path / "work"),
           "data": {"kind": "marks", "train_size": 300, "val_size": 50, "test_size": 50, "image_size": 16,
                    "difficulty": 0.1},
           "teacher": {"model": {"kind": "cnn", "channels": [16, 32]}, "train": train},
           "generations": [
               {"name": "A", "student": {"prune": {"width": 0.5}}, "train": train | {"teacher_views": 2}},
               {"name": "B", "student": {"prune": {"width": 0.5}}, "teachers": "ancestors",
                "train": train | {"teacher_views": 2}}],
           "tracking": {"uri": f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"}}
    result = distill_chain(spec_from_dict(cfg))
    client = MlflowClient(cfg["tracking"]["uri"])
    how = {g.name: client.get_run(g.run_id).data.tags.get("kdchain.teacher_outputs", "") for g in result.generations}
    assert how["A"].startswith("stored views: teacher outputs of 2 augmented views of 300 images")
    assert "computed in" in how["A"]
    # B is taught by the teacher and A: the teacher's views were stored when it taught A, A's are new
    assert "computed for 1 of 2 teachers, read for the others" in how["B"], how["B"]
    folders = {p.name.split("-")[1]: sorted(v.name for v in p.glob("views-*") if v.is_dir())
               for p in (tmp_path / "work" / "fkd").iterdir() if p.is_dir()}
    assert len(folders["teacher"]) == 1 and len(folders["A"]) == 1 and folders["B"] == []


@pytest.mark.slow  # about 10 s: a search and its winner on stored views
def test_a_searched_generation_trains_on_the_views_its_trials_stored(tmp_path, prefect_harness):
    from mlflow import MlflowClient

    from flows.chain import distill_chain

    train = {"epochs": 1, "lr": 0.01, "batch_size": 64, "threads": 1}
    cfg = {"name": "fkd-search", "seed": 0, "workdir": str(tmp_path / "work"),
           "data": {"kind": "marks", "train_size": 300, "val_size": 50, "test_size": 50, "image_size": 16},
           "teacher": {"model": {"kind": "cnn", "channels": [16, 32]}, "train": train},
           "generations": [{"name": "A", "student": {"prune": {"width": 0.5}}, "train": train | {"teacher_views": 2},
                            "search": {"space": {"width": [0.25, 0.5]}, "trials": 2, "proxy_epochs": 1,
                                       "runner": {"kind": "threads", "workers": 2}}}],
           "tracking": {"uri": f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"}}
    result = distill_chain(spec_from_dict(cfg))
    a = result.generations[1]
    how = MlflowClient(cfg["tracking"]["uri"]).get_run(a.run_id).data.tags["kdchain.teacher_outputs"]
    assert how.startswith("stored views: teacher outputs of 2 augmented views of 300 images") and ", read in" in how
    teacher_dir = next((tmp_path / "work" / "fkd-search").glob("0-teacher-*"))
    assert len([p for p in teacher_dir.glob("views-*") if p.is_dir()]) == 1  # two trials and A: one set of views
