"""Today's architectures in a chain: for each, `validate` and `inspect` agree with what `run` does, and a teacher
and a student pruned from it train one epoch and export to ONNX (or `validate` refuses it in one line). The ViT is
the case that once passed `validate` and then crashed: its attention heads must be pruned with their qkv."""

import json
from pathlib import Path

import pytest

from flows.cli import main
from kdchain.chain import train_generation
from kdchain.spec import spec_from_dict
from tests.conftest import write_config

ARCHITECTURES = {  # name: (model, slow?)
    # all in make test-all; make test keeps the ViT's pruned shapes and inspect (the test below, 4 s, not 30)
    "vit": ({"kind": "timm", "name": "vit_tiny_patch16_224", "model_args": {"img_size": 32, "patch_size": 4}}, True),
    "deit": ({"kind": "timm", "name": "deit_tiny_patch16_224", "model_args": {"img_size": 32, "patch_size": 4}},
             True),
    "convnext_atto": ({"kind": "timm", "name": "convnext_atto"}, True),
    "efficientnet_b0": ({"kind": "timm", "name": "efficientnet_b0"}, True),
    "mobilenetv3_small_050": ({"kind": "timm", "name": "mobilenetv3_small_050"}, True),
    "timm_resnet18": ({"kind": "timm", "name": "resnet18"}, True),
    "tv_mobilenet_v3_small": ({"kind": "torchvision", "name": "mobilenet_v3_small"}, True),
    "tv_resnet18": ({"kind": "torchvision", "name": "resnet18"}, True),
}


def chain(tmp_path: Path, model: dict, **prune) -> dict:
    return {"name": "arch", "workdir": str(tmp_path / "work"), "measure": {"speed": False},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"},
            "data": {"kind": "marks", "image_size": 32, "train_size": 64, "val_size": 32, "test_size": 32},
            "teacher": {"model": model, "train": {"epochs": 1, "batch_size": 32}},
            "generations": [{"name": "A", "student": {"prune": {"width": 0.5, **prune}},
                             "distill": [{"kind": "feature", "weight": 0.5}, {"kind": "kd", "weight": 0.5}],
                             "train": {"epochs": 1, "batch_size": 32}}]}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if slow else n
                                  for n, (_, slow) in ARCHITECTURES.items()])
def test_each_architecture_validates_inspects_chains_and_exports(name, tmp_path, capsys):
    cfg = chain(tmp_path, ARCHITECTURES[name][0])
    path = write_config(tmp_path, cfg)
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["inspect", str(path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    spec = spec_from_dict(cfg)
    teacher, _ = train_generation(spec, 0, None, tmp_path / "teacher")
    student, _ = train_generation(spec, 1, Path(teacher.checkpoint), tmp_path / "A")
    assert student.metrics["params"] < 0.6 * teacher.metrics["params"]
    assert student.metrics["params"] == rows[1]["params"] and student.metrics["flops"] == rows[1]["flops"]
    # the ONNX file matched torch within the check's tolerance (relative to the logits' scale), so it was kept
    assert student.export_warning == "" and "onnx_max_abs_diff" in student.metrics, student.export_warning
    assert len(student.history) == 1 and student.history[0].train_loss == student.history[0].train_loss  # not NaN


def test_a_vit_prunes_whole_heads_or_head_channels_and_drops_blocks(tmp_path):
    """attention: heads keeps half of the heads (the head size stays), dims half of each head's channels; a
    depth prune removes whole transformer blocks; the embedding width stays unless `embed`."""
    from kdchain.checks import inspect_chain

    model = ARCHITECTURES["vit"][0]
    shapes = {}
    for mode in ("dims", "heads"):
        cfg = chain(tmp_path, model, attention=mode, depth=0.5, embed=mode == "heads")
        row = inspect_chain(spec_from_dict(cfg))[1]
        shapes[mode] = row["arch"]["record"]["modules"]
        if mode == "dims":  # validate builds the pruned ViT as it will train and runs it on one image
            assert main(["validate", str(write_config(tmp_path, cfg))]) == 0
        assert len(row["arch"]["record"]["removed"]) == 6  # 6 of the 12 transformer blocks
    dims = shapes["dims"]["blocks.0.attn"]
    heads = shapes["heads"]["blocks.0.attn"]
    assert dims["head_dim"] == 32 and "num_heads" not in dims  # 3 heads of 64 channels -> 3 of 32
    assert heads["num_heads"] == 1 and "head_dim" not in heads  # whole heads go; each keeps its 64 channels
    assert shapes["heads"]["patch_embed.proj"]["out_channels"] == 96  # embed: the residual stream loses half
    assert not any(k.startswith("patch_embed") for k in shapes["dims"])  # by default it keeps its width
