"""Property-based fuzzing of configs: mutated valid chains either validate or are refused with one line per problem.

Each example takes a valid chain (the shipped digits chain, plus a feature loss and per-stage conv counts so that
every kind of field is present), applies 1-3 mutations (dropped keys, wrong types, out-of-range numbers,
unknown kinds, unknown keys, non-finite numbers, bad `--set` paths and values; and issue 18's: booleans for numbers,
an all-zero loss, `ancestors` first, a split that hardly trains, absurd sizes, a bad tracking URI or workdir, a key
given twice, a file that is not UTF-8) and runs `kdchain validate` and, when that refuses, `kdchain run` in-process. Never a traceback, never exit codes other than 0 / 2, the store and
workdir untouched. `bench/fuzz_configs.py` runs the same property longer and prints the counts by kind.
"""

import contextlib
import copy
import io
import os
import tempfile
from collections import Counter
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.cli import main
from tests.conftest import ROOT

KINDS = ["drop_key", "wrong_type", "out_of_range", "non_finite", "unknown_kind", "unknown_key", "bad_set",
         # issue 18: values that parsed but meant nothing, machines that cannot run the chain, files that are no text
         "bool_number", "zero_loss", "ancestors_first", "small_split", "absurd_size", "bad_tracking", "bad_workdir",
         "duplicate_key", "encoding"]
TEXT_KINDS = ("duplicate_key", "encoding")  # applied to the written file, not to the mapping
COUNTS: Counter = Counter()  # (kind, outcome) and ("example", outcome)


def base_config(tmp: Path) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "digits-chain.yaml").read_text())
    cfg["teacher"]["model"]["convs_per_stage"] = [2, 1, 1]
    cfg["generations"][1]["distill"].append({"kind": "feature", "weight": 0.1})
    cfg["generations"][2]["train"].update(optimizer="sgd", schedule="onecycle")
    cfg["workdir"] = str(tmp / "work")
    cfg["tracking"]["uri"] = f"sqlite:///{tmp / 'store' / 'mlflow.db'}"
    return cfg


def paths(node, prefix=()) -> list[tuple]:
    """Every key path in a config: ('teacher', 'model', 'channels', 0), ..."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        out.append(prefix + (k,))
        out.extend(paths(v, prefix + (k,)))
    return out


def get(node, path):
    for p in path:
        node = node[p]
    return node


def exists(node, path) -> bool:
    try:
        get(node, path)
        return True
    except (KeyError, IndexError, TypeError):
        return False


WRONG = ["text", [1, "x"], {"a": 1}, None, True, 2.5, -7]
OUT_OF_RANGE = [-1, 0, -0.5, 1.0, 1.5, 65, 10**6, 10**12, -(10**9), 1e-12, 0.9999]
BAD_SETS = ["noequals", "=3", "a..b=1", ".seed=1", "generations.Z.train.epochs=3", "generations.99.name=x",
            "seed.x=1", "teacher.model.channels.7=8", "teacher.train.epochs=[unclosed", "teacher.train.lr=.nan",
            "generations.A.train=5", "data.kind=cifar", "teacher.model.channels=[]", "tracking=[1]",
            "generations.A.distill.0.kind=mse", "teacher.train.lr={a: [}", "generations.-9.name=x",
            "generations.B.student.prune.width=0", "device=tpu", "teacher.model.channels.0.x=1"]


ABSURD = [("teacher", "train", "epochs", 10**9), ("teacher", "model", "channels", [100_000, 100_000]),
          ("generations", 0, "train", "epochs", 10**12)]
BAD_TRACKING = ["foo://bar", "http://127.0.0.1:1", "sqlite:////proc/kdchain-store/mlflow.db", "mlruns-folder"]
ENCODINGS = ["binary", "utf-16", "utf-16-le", "latin-1"]


def semantic_mutation(draw, kind: str, cfg: dict) -> tuple[str, bool]:
    """Issue 18's kinds that change the mapping: (description, applied)."""
    if kind == "bool_number":
        cands = [p for p in paths(cfg) if type(get(cfg, p)) in (int, float)]
        if not cands:
            return "-", False
        p = draw(st.sampled_from(cands))
        get(cfg, p[:-1])[p[-1]] = draw(st.booleans())
        return ".".join(map(str, p)), True
    gens = cfg.get("generations")
    if kind in ("zero_loss", "ancestors_first") and not (isinstance(gens, list) and gens and isinstance(gens[0], dict)):
        return "-", False
    if kind == "zero_loss":
        i = draw(st.integers(0, len(gens) - 1))
        if not isinstance(gens[i], dict):
            return "-", False
        gens[i]["distill"] = [{"kind": "kd", "weight": 0}, {"kind": "ce", "weight": 0.0}]
        return f"generations.{i}.distill", True
    if kind == "ancestors_first":
        gens[0]["teachers"] = "ancestors"
        return "generations.0.teachers", True
    if kind == "small_split":
        if not isinstance(cfg.get("data"), dict):
            return "-", False
        cfg["data"]["split"] = {"val": draw(st.sampled_from([0.3, 0.45, 0.49])), "test": 0.3}
        return "data.split", True
    if kind == "absurd_size":
        *where, key, value = draw(st.sampled_from(ABSURD))
        if not exists(cfg, where) or not isinstance(get(cfg, where), dict):
            return "-", False
        get(cfg, where)[key] = value
        return ".".join(map(str, where + [key])), True
    if kind == "bad_tracking":
        cfg["tracking"] = {"uri": draw(st.sampled_from(BAD_TRACKING))}
        return "tracking.uri", True
    cfg["workdir"] = draw(st.sampled_from(["/proc/kdchain-work", str(ROOT / "README.md" / "work")]))  # bad_workdir
    return "workdir", True


def spoil_text(text: str, cfg: dict, kind: str, how: str) -> bytes:
    """The written config with a key given twice, or in an encoding that is not UTF-8."""
    if kind == "duplicate_key":
        key = next(iter(cfg), None)
        return (text + (yaml.safe_dump({key: cfg[key]}) if key is not None else "a: 1\na: 2\n")).encode()
    if how == "binary":
        return bytes(range(256)) * 8
    if how == "latin-1":
        return "# réglage\n".encode("latin-1") + text.encode()
    return text.encode(how)


@st.composite
def mutations(draw, cfg: dict):
    """(kind, description, applied: bool, extra --set args) for 1-3 mutations drawn against `cfg`, in place."""
    done, sets = [], []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(KINDS))
        all_paths = paths(cfg)
        if kind == "bad_set":
            s = draw(st.sampled_from(BAD_SETS) | st.builds(lambda a, b, v: f"{a}.{b}={v}",
                                                           st.sampled_from(["teacher", "generations", "data", "zz"]),
                                                           st.text("abcxyz019.", min_size=1, max_size=6),
                                                           st.sampled_from(["1", "x", "[1]", "{}", ""])))
            sets.append(s)
            done.append((kind, s, True))
            continue
        if kind in TEXT_KINDS:  # one per example: a file is spoilt once
            first = not any(k in TEXT_KINDS for k, _, _ in done)
            done.append((kind, draw(st.sampled_from(ENCODINGS)) if kind == "encoding" else "-", first))
            continue
        if kind in KINDS[7:]:
            done.append((kind, *semantic_mutation(draw, kind, cfg)))
            continue
        if kind == "unknown_key":
            dicts = [()] + [p for p in all_paths if isinstance(get(cfg, p), dict)]
            p = draw(st.sampled_from(dicts))
            get(cfg, p)[draw(st.sampled_from(["colour", "epoch", "lr_max", "Name"]))] = 1
            done.append((kind, ".".join(map(str, p)), True))
            continue
        if kind == "drop_key":
            cands = [p for p in all_paths if isinstance(p[-1], str)]
        elif kind == "unknown_kind":
            cands = [p for p in all_paths if p[-1] == "kind"]
        elif kind in ("out_of_range", "non_finite"):
            cands = [p for p in all_paths if isinstance(get(cfg, p), (int, float)) and not isinstance(get(cfg, p), bool)]
        else:
            cands = [p for p in all_paths if not isinstance(p[-1], int) or not isinstance(get(cfg, p), dict)]
        if not cands:
            done.append((kind, "-", False))
            continue
        p = draw(st.sampled_from(cands))
        parent, key = get(cfg, p[:-1]), p[-1]
        old = parent[key]
        if kind == "drop_key":
            del parent[key]
        elif kind == "unknown_kind":
            parent[key] = draw(st.sampled_from(["transformer", "mse", "cifar", "", "CNN"]))
        elif kind == "out_of_range":
            parent[key] = draw(st.sampled_from(OUT_OF_RANGE))
        elif kind == "non_finite":
            parent[key] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
        else:  # wrong_type: anything of another type than the value it replaces
            parent[key] = copy.deepcopy(draw(st.sampled_from([w for w in WRONG if type(w) is not type(old)])))
        done.append((kind, ".".join(map(str, p)), True))
    return done, sets


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    saved = os.environ.get("KDCHAIN_PREFECT_PRESTART")
    os.environ["KDCHAIN_PREFECT_PRESTART"] = "0"  # a refused `run` must not need a Prefect server: start none
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        if saved is None:
            os.environ.pop("KDCHAIN_PREFECT_PRESTART")
        else:
            os.environ["KDCHAIN_PREFECT_PRESTART"] = saved
    return code, out.getvalue(), err.getvalue()


def check_one(data) -> str:
    """One example of the property; returns "validated" or "refused"."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = base_config(tmp)
        done, sets = data.draw(mutations(cfg))
        path = tmp / "chain.yaml"
        text = yaml.safe_dump(cfg, sort_keys=False)
        spoilt = [(kind, how) for kind, how, ok in done if kind in TEXT_KINDS and ok]
        path.write_bytes(spoil_text(text, cfg, *spoilt[0]) if spoilt else text.encode())
        set_args = [a for s in sets for a in ("--set", s)]
        code, out, err = run_cli(["validate", str(path), *set_args])
        assert code in (0, 2), (code, out, err)
        outcome = "validated" if code == 0 else "refused"
        # issue 18's kinds are never harmless: each applied one must be refused, unless a later mutation inside its
        # field undid it (a zero loss whose weight was then set to a large number is a valid loss again, a
        # boolean seed then dropped)
        def undone(i: int, how: str) -> bool:
            return any(ok and (later == how or later.startswith(how + ".")) for _, later, ok in done[i + 1:])

        assert code == 2 or not any(ok and kind in KINDS[7:] and not undone(i, how)
                                    for i, (kind, how, ok) in enumerate(done)), (done, out)
        if code == 0:
            assert out.startswith("OK: ") and err == "", (out, err)
        else:
            lines = err.strip().splitlines()
            applied = sum(1 for _, _, ok in done if ok)
            # one line per problem: at least one, at most one per mutation, no field named twice
            assert 1 <= len(lines) <= applied, (done, sets, lines)
            fields = [line.rsplit(": ", 1)[0] for line in lines]
            assert len(set(fields)) == len(fields), lines
            assert all(line.startswith((f"{path}:", "--set ")) for line in lines), lines
            assert "Traceback" not in err
            # `run` refuses the same way, before anything is written
            assert run_cli(["run", str(path), *set_args])[0] == 2
        assert not (tmp / "store").exists() and not (tmp / "work").exists()
        for kind, _, ok in done:
            COUNTS[(kind, outcome if ok else "not applicable")] += 1
        COUNTS[("example", outcome)] += 1
        return outcome


# derandomized: the same 100 examples on every run and machine. Only about 1.5% of mutated configs validate, so
# random draws left the check below without a validated example in about 1 run in 5 (a fresh clone has no
# hypothesis database); bench/fuzz_configs.py explores new examples
@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_mutated_configs_validate_or_exit_2_with_one_line_per_problem(data):
    check_one(data)


def test_the_fuzzer_refuses_most_and_lets_harmless_mutations_through():
    # both outcomes must have occurred or the fuzzer is toothless; the property above fills COUNTS when it ran
    # first (file order), and is run here when this test runs alone or filtered
    if not COUNTS:
        test_mutated_configs_validate_or_exit_2_with_one_line_per_problem()
    assert COUNTS[("example", "refused")] > 50
    assert COUNTS[("example", "validated")] > 0
