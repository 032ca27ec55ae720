"""The numbers of a trained generation: test and validation accuracy, agreement with its teacher and the confusion
on the test split; and a checkpoint scored as a promotion compares it (with its int8 model's figures when the rule
reads them)."""

from pathlib import Path

import torch
from torch import nn

from kdchain.checkpoints import load_compatible
from kdchain.data import load_data
from kdchain.distill import evaluate, predict_split
from kdchain.measure.profile import profile
from kdchain.spec import ChainSpec


def test_metrics(student: nn.Module, teacher, data, device) -> tuple[dict, list[list[int]]]:
    """Test and validation accuracy, agreement with the (direct) teacher on the test split, and the confusion."""
    student.eval()
    test = data.test.to(device)
    test_logits, test_y = predict_split(student, test)
    test_pred = test_logits.argmax(1)
    k = data.num_classes
    confusion = torch.bincount(test_y * k + test_pred, minlength=k * k).view(k, k).tolist()
    metrics = {"test_accuracy": (test_pred == test_y).float().mean().item(),
               "val_accuracy": evaluate(student, data.val.to(device))}
    if teacher is not None:
        teacher_pred = predict_split(getattr(teacher, "direct", teacher).to(device), test)[0].argmax(1)
        metrics["teacher_agreement"] = (test_pred == teacher_pred).float().mean().item()
    else:
        metrics["teacher_agreement"] = 1.0  # the teacher agrees with itself
    return metrics, confusion


def score_checkpoint(spec: ChainSpec, path: Path, int8_file: Path | None = None) -> dict[str, float]:
    """test_accuracy on the data's current test split, plus params/flops/latency_ms/size_bytes: the numbers a
    promotion compares; and the int8 model's when the promotion rule reads them: `int8_file`, the int8 ONNX file
    its run shipped (a QAT or bounded model: what serves), else the model quantized now as the spec says. Two
    models scored by this in the same process are scored on the same split."""
    model = load_compatible(spec, path)
    data = load_data(spec.data, spec.seed)
    with torch.inference_mode():
        accuracy = evaluate(model, data.test)
    scores = {"test_accuracy": accuracy,
              **{k: float(v) for k, v in profile(model, data.input_shape).as_dict().items()}}
    if spec.promotion.needs_int8:
        from kdchain.shipping import file_int8_scores, int8_scores

        scores.update(file_int8_scores(int8_file, data) if int8_file else int8_scores(spec, model, data, accuracy))
    return scores
