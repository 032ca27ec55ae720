"""Feature taps by node name: forward hooks on modules, torch.fx for ops that are not modules.

A node name is a module (`stages.1`, `stages.1.0.relu`: its output) or, failing that, a traced op
(`layer1.0.add`, `flatten`) from torchvision.models.feature_extraction. A module's output is what "the last op
inside that module" means, so both spellings give the same map. `Tapped(model, nodes)` returns
{"logits": (N, K), node: (N, C, H, W), ...} and shares the model's parameters, so training the tapped module
trains the model.

Why hooks first: torch.fx traces by patching `torch.nn.Module.__call__` for the whole process, so a trace in one
thread breaks every forward running in another (a search's trials on the threads runner crashed with "module is
not installed as a submodule"). Hooks are per module instance and trace nothing; the fx fallback, for op names
only, traces under a process-wide lock.
"""

import threading

import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

LOGITS = "logits"
_FX_LOCK = threading.Lock()  # one torch.fx trace at a time in this process (see above)


def graph_nodes(model: nn.Module) -> list[str]:
    with _FX_LOCK:
        train_nodes, _ = get_graph_node_names(model)
    return [n for n in train_nodes if n != "x"]


def tappable_nodes(model: nn.Module) -> list[str]:
    """Every name a feature loss may use: traced ops and the module prefixes that contain them."""
    ops = graph_nodes(model)
    prefixes = {".".join(op.split(".")[:i]) for op in ops for i in range(1, op.count(".") + 1)}
    return sorted(set(ops) | prefixes, key=lambda n: (ops.index(n) if n in ops else _first_op(ops, n), n))


def _first_op(ops: list[str], prefix: str) -> int:
    return next(i for i, op in enumerate(ops) if op.startswith(prefix + "."))


def _modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if name}


def check_node(model: nn.Module, node: str) -> bool:
    if node in _modules(model):
        return True
    ops = graph_nodes(model)
    return any(op == node or op.startswith(node + ".") for op in ops)


class Tapped(nn.Module):
    """model(x) -> {"logits": ..., node: feature map} for the requested nodes."""

    def __init__(self, model: nn.Module, nodes: list[str]):
        super().__init__()
        self.nodes = sorted(set(nodes))
        modules = _modules(model)
        if all(n in modules for n in self.nodes):
            self.model, self.extractor = model, None
            self._targets = [(n, modules[n]) for n in self.nodes]  # a plain list: not registered as submodules
        else:
            self.model = None
            with _FX_LOCK:
                output = get_graph_node_names(model)[0][-1]
                self.extractor = create_feature_extractor(model, {output: LOGITS, **{n: n for n in self.nodes}})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.extractor is not None:
            return self.extractor(x)
        # hooks for this call only: the model keeps none afterwards (it must pickle, and export, as it was), and
        # a hook keeps only the maps of the thread that registered it
        maps, me = {}, threading.get_ident()

        def keeper(node):
            def keep(module, args, output):
                if threading.get_ident() == me:
                    maps[node] = output
            return keep

        handles = [m.register_forward_hook(keeper(n)) for n, m in self._targets]
        try:
            logits = self.model(x)
        finally:
            for h in handles:
                h.remove()
        return {LOGITS: logits, **maps}


def feature_shapes(model: nn.Module, nodes: list[str], input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Shapes (C, H, W) of the given nodes for one input of `input_shape` (C, H, W)."""
    if not nodes:
        return {}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = Tapped(model, nodes)(torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    return {n: tuple(out[n].shape[1:]) for n in nodes}
