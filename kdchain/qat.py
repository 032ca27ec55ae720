"""`deploy.quantize: qat`: a trained generation fine-tuned with fake quantization on its own loss, then shipped as
the int8 ONNX model it trained as (kdchain.measure.qat: torchao PT2E, QDQ export).

The fine-tuning is the generation's training loop (kdchain.distill.fit) for `deploy.qat_epochs` at `deploy.qat_lr`
(default a tenth of train.lr), fp32, on the CPU: its loss is the generation's terms that read logits (kd, dkd, ce,
...) against its teacher's fp32 outputs; terms that read feature maps are left out (the exported graph has no
modules to tap) and the teacher generation, which has no teacher, trains on cross-entropy. The fake-quantized
model's test accuracy (torch) and the ONNX Runtime file's must agree within MAX_DISAGREEMENT points (or one test
image, where the test split has fewer than 500: digits' 360 images count 0.28 points each), or the generation is
refused (QatMismatch): a shipped file must be the model that was measured.
"""

import time
from dataclasses import replace
from pathlib import Path

from torch import nn

from kdchain.distill import evaluate, fit
from kdchain.measure.export import label_onnx
from kdchain.measure.int8 import Int8Result, numpy_batches, score_int8
from kdchain.measure.qat import export_qdq, prepare_qat
from kdchain.measure.quantize import compact_graph, float_ops
from kdchain.resolve import ResolvedGeneration
from kdchain.spec import ChainSpec
from kdchain.spec.kinds import LOSSES
from kdchain.students import build_loss

MAX_DISAGREEMENT = 0.2  # points of test accuracy between the fake-quantized model and the ONNX Runtime file


def allowed_disagreement(test_images: int) -> float:
    """MAX_DISAGREEMENT, or one test image's worth of points on a split too small to resolve 0.2 points."""
    return max(MAX_DISAGREEMENT, 100.0 / max(test_images, 1))


class QatMismatch(RuntimeError):
    """The ONNX Runtime int8 file does not score what its fake-quantized model scores; one line says by how much."""


def qat_loss_terms(gen: ResolvedGeneration) -> list:
    """The generation's terms that read logits or labels (no feature maps), or cross-entropy when none is left."""
    terms = [t for t in gen.distill if not type(t).features]
    return terms or [LOSSES["ce"](weight=1.0)]


def qat_generation(spec: ChainSpec, gen: ResolvedGeneration, student: nn.Module, teacher: nn.Module | None, data,
                   path: Path, fp32_accuracy: float) -> Int8Result:
    """Fine-tune a copy of the trained `student` with fake quantization, write its int8 ONNX file to `path`, and
    score it as kdchain.measure.int8 scores a PTQ file (test_accuracy_int8, latency, size, ...), plus
    test_accuracy_int8_qat_torch (the fake-quantized model in torch) and qat_seconds. Raises QatMismatch past
    MAX_DISAGREEMENT points between the two."""
    deploy = gen.deploy
    t0 = time.perf_counter()
    prepared = prepare_qat(student, data.input_shape, deploy.first_conv)
    qat_gen = replace(gen, distill=qat_loss_terms(gen))
    loss = build_loss(qat_gen, prepared, teacher if qat_gen.index > 0 else None, data.input_shape)
    train = gen.train.model_copy(update={"epochs": deploy.qat_epochs, "lr": deploy.qat_lr or gen.train.lr / 10,
                                         "precision": "fp32", "compile": False, "teacher_views": 0})
    fit(prepared, teacher if loss.needs_teacher else None, loss, data, train, seed=spec.seed + gen.index,
        device="cpu")
    prepared.eval()  # the ranges frozen: what the export writes
    torch_accuracy = evaluate(prepared, data.test)
    export_qdq(prepared, data.input_shape, path)
    compact_graph(path)
    if getattr(student, "class_names", None):
        label_onnx(path, student.class_names)
    seconds = time.perf_counter() - t0
    metrics = score_int8(path, numpy_batches(data.test), data.input_shape, threads=1)
    gap, allowed = abs(metrics["test_accuracy_int8"] - torch_accuracy) * 100, allowed_disagreement(len(data.test))
    if gap > allowed + 0.01:  # float32 accuracies: one image is 0.2778 points, not 0.27777...
        Path(path).unlink(missing_ok=True)
        raise QatMismatch(f"generation {gen.name}: its QAT int8 model scores {metrics['test_accuracy_int8']:.2%} "
                          f"on ONNX Runtime and {torch_accuracy:.2%} as fake-quantized in torch, {gap:.2f} points "
                          f"apart (at most {allowed:.2f}); set deploy.quantize: static for it")
    metrics["accuracy_drop_int8"] = drop = (fp32_accuracy - metrics["test_accuracy_int8"]) * 100
    metrics.update(test_accuracy_int8_qat_torch=torch_accuracy, int8_over_max_drop=float(drop > deploy.max_drop),
                   qat_seconds=seconds)
    return Int8Result(Path(path), metrics, float_ops(path), drop > deploy.max_drop)
