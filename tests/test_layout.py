"""The package layout holds: no import circle inside kdchain, small modules and functions in kdchain/ and flows/,
the layering (no prefect in kdchain/, mlflow only in kdchain/tracking/), and models saved before the package split
still load."""

import ast
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "pre_split"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def _modules(*packages: str) -> dict[str, Path]:
    mods = {}
    for p in (p for package in packages or ("kdchain",) for p in (ROOT / package).rglob("*.py")):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """kdchain modules that `name` imports anywhere in it (function-level imports included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:  # `from kdchain import tracking` names a module; `from x import f` a name in x
                out |= {next((c for c in (f"{base}.{alias.name}", base) if c in mods), None)} - {None}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in mods}
    # a package importing its own submodules (to register them) is how registries are filled, not a circle
    return {t for t in out if t != name and not t.startswith(name + ".")}


def test_no_import_circle_inside_kdchain():
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    state, circles = {}, []

    def visit(m, stack):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                circles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n, stack)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not circles, f"import circles: {circles}"


def test_modules_and_functions_stay_small():
    long_modules, long_functions = [], []
    for name, path in _modules("kdchain", "flows").items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{name} ({len(text.splitlines())} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}.{node.name} ({length} lines)")
    assert not long_modules and not long_functions, (long_modules, long_functions)


def test_layering_prefect_never_and_mlflow_only_in_tracking():
    for name, path in _modules().items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
        assert "prefect" not in imported, name
        assert "mlflow" not in imported or name.startswith("kdchain.tracking"), name


def test_checkpoints_and_pickled_models_saved_before_the_split_still_load():
    """Written by main before the package split: a kdchain checkpoint (weights_only) and the whole module as
    MLflow's pickle flavour stores it (classes and a frozen-BatchNorm hook named by their old modules)."""
    from kdchain.checkpoints import load_checkpoint

    expected = torch.load(FIXTURES / "expected.pt", weights_only=True)
    for name in ("cnn", "resnet"):
        model, arch, _ = load_checkpoint(FIXTURES / f"{name}-model.pt")
        pickled = torch.load(FIXTURES / f"{name}-pickled.pt", weights_only=False).eval()
        with torch.no_grad():  # the same outputs up to float rounding (thread counts change reduction orders)
            torch.testing.assert_close(model(expected["x"]), expected[name], rtol=1e-4, atol=1e-5, msg=name)
            torch.testing.assert_close(pickled(expected["x"]), expected[name], rtol=1e-4, atol=1e-5, msg=name)
        assert arch.kind == name
