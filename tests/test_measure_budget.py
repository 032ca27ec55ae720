"""Export and speed as settings (`measure:`): off when asked, and on a time budget so a slow model costs seconds."""

import time

import torch
from torch import nn

from kdchain.chain import train_generation
from kdchain.measure.export import export_and_measure
from kdchain.spec import spec_from_dict
from tests.conftest import tiny_chain


class Slow(nn.Module):
    """A 10-class model that takes 0.2 s an image, like VGG19 at 224x224 on a busy CPU; it counts its images."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 10)
        self.images = 0

    def forward(self, x):
        self.images += x.shape[0]
        time.sleep(0.2 * x.shape[0])
        return self.head(x.flatten(1))


def test_a_slow_model_is_timed_within_the_budget():
    slow = Slow()
    metrics = export_and_measure(slow, (1, 2, 2), None, torch.zeros(8, 1, 2, 2), onnx=False, budget_s=2.0)
    # batch-1 latency and batch-N throughput, each within its 2 s budget plus one call: about 10 + 10 images
    # (the default 30 timed runs, and throughput at batch 64, would be hundreds of images: over a minute)
    assert slow.images <= 40, slow.images
    assert metrics["latency_ms"] >= 200 and metrics["throughput_batch"] == 2
    assert 3 < metrics["throughput_ips"] <= 5
    assert "latency_ms_onnx" not in metrics and "onnx_max_abs_diff" not in metrics


def test_measure_off_writes_no_onnx_and_defaults_keep_the_full_figures(tmp_path):
    spec = spec_from_dict(tiny_chain(tmp_path, measure={"onnx": False, "speed": False}))
    outcome, _ = train_generation(spec, 0, None, tmp_path / "off")
    assert not (tmp_path / "off" / "model.onnx").exists()
    assert outcome.metrics["latency_ms"] > 0 and "throughput_ips" not in outcome.metrics
    assert "onnx_max_abs_diff" not in outcome.metrics

    outcome, _ = train_generation(spec_from_dict(tiny_chain(tmp_path)), 0, None, tmp_path / "on")
    assert not (tmp_path / "on" / "model.onnx").exists()  # measured, not kept (measure.keep_onnx)
    assert outcome.metrics["throughput_batch"] == 64  # a small model: today's batch, nothing shrunk
    assert outcome.metrics["latency_ms_onnx"] > 0 and outcome.metrics["onnx_max_abs_diff"] <= 1e-4
