"""Feature taps by node name, through torchvision.models.feature_extraction.

A node name is a traced op (`stages.1.0.relu`) or a module prefix (`stages.1`), which means the last op inside
that module. `Tapped(model, nodes)` returns {"logits": (N, K), node: (N, C, H, W), ...} and shares the model's
parameters, so training the tapped module trains the model.
"""

import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

LOGITS = "logits"


def graph_nodes(model: nn.Module) -> list[str]:
    train_nodes, _ = get_graph_node_names(model)
    return [n for n in train_nodes if n != "x"]


def tappable_nodes(model: nn.Module) -> list[str]:
    """Every name a feature loss may use: traced ops and the module prefixes that contain them."""
    ops = graph_nodes(model)
    prefixes = {".".join(op.split(".")[:i]) for op in ops for i in range(1, op.count(".") + 1)}
    return sorted(set(ops) | prefixes, key=lambda n: (ops.index(n) if n in ops else _first_op(ops, n), n))


def _first_op(ops: list[str], prefix: str) -> int:
    return next(i for i, op in enumerate(ops) if op.startswith(prefix + "."))


def check_node(model: nn.Module, node: str) -> bool:
    ops = graph_nodes(model)
    return any(op == node or op.startswith(node + ".") for op in ops)


class Tapped(nn.Module):
    """model(x) -> {"logits": ..., node: feature map} for the requested nodes."""

    def __init__(self, model: nn.Module, nodes: list[str]):
        super().__init__()
        self.nodes = sorted(set(nodes))
        output = graph_nodes(model)[-1]
        self.extractor = create_feature_extractor(model, {output: LOGITS, **{n: n for n in self.nodes}})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.extractor(x)


def feature_shapes(model: nn.Module, nodes: list[str], input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Shapes (C, H, W) of the given nodes for one input of `input_shape` (C, H, W)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = Tapped(model, nodes)(torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    return {n: tuple(out[n].shape[1:]) for n in nodes}
