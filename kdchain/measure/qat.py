"""Quantization-aware training, the model side: a fake-quantized copy of a trained model that trains, and the int8
ONNX file (QuantizeLinear/DequantizeLinear pairs) that ONNX Runtime runs as integer kernels with the same results.

The library path, torchao's PT2E (`prepare_qat_pt2e` / `convert_pt2e`, torchao 0.18 on torch 2.14; torch's own
`torch.ao.quantization` has no prepare_qat_fx any more), with its X86InductorQuantizer's QAT configuration: uint8
per-tensor affine activations at the inputs and outputs of Conv, Linear, pooling and Add, int8 per-channel
symmetric weights. Measured on this machine (2-core AVX2, onnxruntime 1.32), three changes make ONNX Runtime's
results those of the fake-quantized model:

- weights in [-63, 63], not [-128, 127]: without VNNI, ONNX Runtime's uint8 x int8 kernels add pairs of products in
  int16 and saturate (255 x 127 x 2 > 32767). A digits CNN: fake-quant 97.04%, ONNX Runtime's QLinearConv 95.19%;
  with 7-bit weights both 97.04% (ONNX Runtime's own `reduce_range` for the same reason).
- weights observed by a plain FakeQuantize over a PerChannelMinMaxObserver: the quantizer's default, a fused
  moving-average fake-quant, computes a scale 127/128 of the one `convert_pt2e` writes when the range is not
  [-128, 127] (the fake-quant model then scored 94.44%, the converted one 95.19%).
- BatchNorm folded into the convolution (running statistics) before quantization, as ONNX Runtime folds it: the
  QAT-time conv-BN rewrite of PT2E costs 96 pattern exports in `convert_pt2e` (40-90 s a model here), the fold none.

The ONNX file is torch.onnx's dynamo export of the converted program (opset 18: QDQ with per-channel axes); with
its graph optimisations ONNX Runtime fuses each DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv.
Observers are on in train mode and off in eval mode: the ranges are learnt on training batches only.
"""

import contextlib
import copy
import dataclasses
import io
import logging
import types
import warnings
from pathlib import Path

import torch
from torch import nn

WEIGHT_RANGE = (-63, 63)  # 7-bit int8 weights: no int16 saturation in AVX2's uint8 x int8 kernels
OPSET = 18  # QuantizeLinear/DequantizeLinear with per-channel axes, as torch.onnx's dynamo exporter writes them


class QatError(RuntimeError):
    """The model cannot be fake-quantized or its QAT model exported to ONNX; the message says which step and why."""


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)[:200]


@contextlib.contextmanager
def _quiet():
    """torch.export's and torch.onnx's progress lines, warnings and log records stay out of the user's console."""
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(level)


def _config():
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize
    from torchao.quantization.pt2e.observer import PerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        get_default_x86_inductor_quantization_config,
    )

    config = get_default_x86_inductor_quantization_config(is_qat=True)
    weight = dataclasses.replace(config.weight, quant_min=WEIGHT_RANGE[0], quant_max=WEIGHT_RANGE[1],
                          observer_or_fake_quant_ctr=FakeQuantize.with_args(observer=PerChannelMinMaxObserver))
    return dataclasses.replace(config, weight=weight)


def _program(model: nn.Module, input_shape: tuple[int, ...]):
    """torch.export of `model` on a batch of two images, the batch dimension dynamic."""
    example = torch.zeros(2, *input_shape)
    return torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))


def first_conv_name(model: nn.Module, input_shape: tuple[int, ...]) -> str | None:
    """The module name of the convolution that reads the image (1-3 channels at full resolution), if any."""
    x, found = torch.zeros(1, *input_shape), []
    hooks = [m.register_forward_hook(lambda m, args, out, name=name: found.append(name) if args[0] is x else None)
             for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return found[0] if found else None


def prepare_qat(model: nn.Module, input_shape: tuple[int, ...], first_conv: str = "float") -> nn.Module:
    """A fake-quantized copy of `model` (CPU, BatchNorm folded) that trains like a module: train() observes the
    ranges, eval() freezes them. `first_conv: float` keeps the convolution that reads the image in float32, as
    PTQ does (DeploySpec.first_conv). Raises QatError naming the step that failed."""
    step = "torch.export"
    try:
        with _quiet():
            model = copy.deepcopy(model).cpu().eval()
            float_conv = first_conv_name(model, input_shape) if first_conv == "float" else None
            graph = _program(model, input_shape).module()
            step = "fake quantization (torchao)"
            from torchao.quantization.pt2e.quantize_pt2e import (
                prepare_qat_pt2e,  # after a capture that works
            )
            from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
                X86InductorQuantizer,
            )
            from torchao.quantization.pt2e.utils import _fuse_conv_bn_

            _fuse_conv_bn_(graph)  # BatchNorm into the conv's weights and bias, as ONNX Runtime does
            quantizer = X86InductorQuantizer().set_global(_config())
            if float_conv:  # its conv (BatchNorm folded in) stays float32; its output is quantized for the next
                quantizer.set_module_name_qconfig(float_conv, None)
            prepared = prepare_qat_pt2e(graph, quantizer)
    except Exception as e:  # noqa: BLE001 -- the library's own words, one line
        raise QatError(f"{step} failed ({type(e).__name__}: {_first_line(e)})") from None

    def train(self, mode: bool = True):
        from torchao.quantization.pt2e import (
            disable_observer,
            enable_observer,
            move_exported_model_to_eval,
            move_exported_model_to_train,
        )

        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self)
        self.apply(enable_observer if mode else disable_observer)
        for m in self.modules():
            m.training = mode
        return self

    prepared.train = types.MethodType(train, prepared)
    prepared.eval = types.MethodType(lambda self: self.train(False), prepared)
    return prepared.train()


def export_qdq(prepared: nn.Module, input_shape: tuple[int, ...], path: Path) -> Path:
    """The int8 ONNX file of a prepared (and trained) model: input x, output logits, dynamic batch. The prepared
    model is left as it was (converted on a copy)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    step = "convert"
    try:
        with _quiet():
            frozen = copy.deepcopy(prepared).eval()
            converted = convert_pt2e(frozen)
            step = "ONNX export"
            torch.onnx.export(_program(converted, input_shape), (torch.zeros(2, *input_shape),), str(path),
                              input_names=["x"], output_names=["logits"], dynamo=True, opset_version=OPSET,
                              verbose=False, external_data=False)
    except Exception as e:  # noqa: BLE001
        raise QatError(f"{step} of the QAT model failed ({type(e).__name__}: {_first_line(e)})") from None
    return path


def qat_problem(model: nn.Module, input_shape: tuple[int, ...], first_conv: str = "float") -> str:
    """Why `model` cannot be trained and shipped with QAT (prepared, one forward, converted, exported to ONNX and
    run by ONNX Runtime on one image), or "" when it can. Costs a few seconds: the ONNX export is the most."""
    import tempfile

    import numpy as np

    from kdchain.measure.export import ort_session

    try:
        prepared = prepare_qat(model, input_shape, first_conv)
        with torch.no_grad():
            prepared(torch.zeros(2, *input_shape))
        with tempfile.TemporaryDirectory() as tmp:
            path = export_qdq(prepared, input_shape, Path(tmp) / "qat.onnx")
            try:
                ort_session(path).run(["logits"], {"x": np.zeros((1, *input_shape), np.float32)})
            except Exception as e:  # noqa: BLE001
                raise QatError(f"ONNX Runtime cannot run its QAT model ({_first_line(e)})") from None
    except QatError as e:
        return str(e)
    return ""
