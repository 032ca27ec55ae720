"""`data.unlabeled`: images without labels that students distil on; the teacher and the label terms never see them."""

import torch

from flows.cli import main
from kdchain.chain import train_generation
from kdchain.data import labeled_only, load_data
from kdchain.spec import spec_from_dict
from tests.conftest import tiny_chain, write_config


def _spec(tmp_path, unlabeled: dict | None) -> object:
    data = {"kind": "marks", "train_size": 500, "val_size": 100, "test_size": 200, "image_size": 16,
            "difficulty": 0.0, **({"unlabeled": unlabeled} if unlabeled else {})}
    return spec_from_dict({
        "name": "unlabeled", "workdir": str(tmp_path / "work"), "data": data,
        # one thread each: the two teachers compared below run the same arithmetic whatever else runs beside them
        "teacher": {"model": {"kind": "cnn", "channels": [16, 32]}, "train": {"epochs": 8, "lr": 0.01, "threads": 1}},
        "generations": [{"name": "A", "student": {"prune": {"width": 0.5, "importance": "taylor"}},
                         "train": {"epochs": 4, "lr": 0.01, "threads": 1}}],
        "measure": {"onnx": False, "speed": False}})


def _chain(spec, folder):
    teacher, teacher_model = train_generation(spec, 0, None, folder / "teacher")
    student, student_model = train_generation(spec, 1, folder / "teacher" / "model.pt", folder / "A")
    return teacher_model, student_model, student.metrics


def test_unlabeled_images_teach_the_student_and_not_the_teacher(tmp_path):
    plain = _chain(_spec(tmp_path, None), tmp_path / "plain")
    extra = _chain(_spec(tmp_path, {"count": 600}), tmp_path / "extra")
    # the teacher learns from labels: 600 unlabeled images more change nothing of it
    for (name, a), b in zip(plain[0].state_dict().items(), extra[0].state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-4), name
    # the student distils on them too (kd on all 1,100 images, ce on the 500 labeled): another student, one that
    # learned (10 classes: chance is 10%) and follows its teacher more closely than the one without them
    assert not all(torch.allclose(a.float(), b.float(), atol=1e-3)
                   for a, b in zip(plain[1].state_dict().values(), extra[1].state_dict().values()))
    assert extra[2]["test_accuracy"] > 0.2
    assert extra[2]["teacher_agreement"] > plain[2]["teacher_agreement"]


def test_an_unlabeled_folder_joins_the_training_split_without_labels(tmp_path, capsys):
    from PIL import Image


    for c, name in enumerate(["bolt", "nut"]):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (8, 8), (c * 200, i * 20, 0)).save(tmp_path / "data" / name / f"{i}.png")
    (tmp_path / "new" / "monday").mkdir(parents=True)  # a folder of images, in any subfolders, no classes
    for i in range(7):
        Image.new("RGB", (8, 8), (100, i * 30, 50)).save(tmp_path / "new" / "monday" / f"{i}.png")
    cfg = tiny_chain(tmp_path, data={"kind": "imagefolder", "root": str(tmp_path / "data"), "image_size": 8,
                                     "unlabeled": str(tmp_path / "new")})
    data = load_data(spec_from_dict(cfg).data, 0)
    assert int((data.train.y == -1).sum()) == 7 and len(labeled_only(data).train) == len(data.train) - 7
    assert len(data.val) + len(data.test) + len(labeled_only(data).train) == 20  # the labeled images, split as before

    cfg["data"]["unlabeled"] = str(tmp_path / "nowhere")
    assert main(["validate", str(write_config(tmp_path, cfg))]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.unlabeled: " in err[0] and "nowhere is not a folder" in err[0]
