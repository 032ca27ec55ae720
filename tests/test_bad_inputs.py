"""Bad inputs: each is refused by `validate` and by `run` with exit 2 and one line on stderr naming the file or
field, no traceback, nothing in the store or the workdir (no hang: `bench/bad_inputs.py` times them); and the small
message bugs."""

import contextlib
import io
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from flows.cli import main
from tests.conftest import ROOT, free_port, tiny_chain, write_config


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _text(tmp_path: Path) -> str:
    return yaml.safe_dump(tiny_chain(tmp_path), sort_keys=False)


def _set(tmp_path: Path, path: tuple, value) -> str:
    cfg = tiny_chain(tmp_path)
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return yaml.safe_dump(cfg, sort_keys=False)


def _pruned_from_a_huge_teacher(tmp_path: Path) -> str:
    cfg = tiny_chain(tmp_path)
    cfg["teacher"]["model"]["channels"] = [1_000_000, 32]  # a typo: 3.3e8 parameters fit, the activations do not
    cfg["generations"][0]["student"] = {"prune": {"width": 0.5}}
    return yaml.safe_dump(cfg, sort_keys=False)


def _tv_teacher(tmp_path: Path) -> str:
    cfg = tiny_chain(tmp_path)
    cfg["teacher"]["model"] = {"kind": "torchvision", "name": "resnet18"}
    for g in cfg["generations"]:
        g["student"] = {"kind": "cnn", "channels": [8]}
    return yaml.safe_dump(cfg, sort_keys=False)


def _text_only_images(tmp_path: Path) -> str:
    """An image folder whose class folders hold text files only (beside tmp_path: nothing may be written in it)."""
    root = tmp_path.parent / f"{tmp_path.name}-images"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            (root / c / f"{i}.txt").write_text("not an image")
    return _set(tmp_path, ("data",), {"kind": "imagefolder", "root": str(root), "image_size": 8})


BAD = {  # name: (the config file's bytes or text, what its one line must say)
    "binary": (lambda t: bytes(range(256)) * 4, "is a binary file"),
    "utf-16": (lambda t: _text(t).encode("utf-16"), "is UTF-16 text; save it as UTF-8"),
    "utf-16 without BOM": (lambda t: _text(t).encode("utf-16-le"), "is UTF-16 text"),
    "latin-1 comment": (lambda t: b"# r\xe9glage\n" + _text(t).encode(), "line 1: byte 0xe9 is not UTF-8"),
    "duplicate key": (lambda t: _text(t) + "seed: 3\n", "key 'seed' is given twice (lines 2 and "),
    "epochs: true": (lambda t: _set(t, ("teacher", "train", "epochs"), True),
                     "teacher.train.epochs: expected a number, not a boolean"),
    "channels with a boolean": (lambda t: _set(t, ("teacher", "model", "channels"), [16, False]),
                                "teacher.model.channels.1: expected a number, not a boolean"),
    "all-zero loss": (lambda t: _set(t, ("generations", 0, "distill"), [{"kind": "kd", "weight": 0},
                                                                        {"kind": "ce", "weight": 0}]),
                      "generations.0.distill: every term has weight 0"),
    "derive and prune": (lambda t: _set(t, ("generations", 0, "student"), {"derive": {"width": 0.5},
                                                                           "prune": {"width": 0.5}}),
                         "generations.0.student: give one of `derive`, `prune` or an architecture's `kind`, not "
                         "`derive` and `prune`"),
    "views on the teacher": (lambda t: _set(t, ("teacher", "train", "teacher_views"), 4),
                             "teacher: train.teacher_views: the teacher is trained on labels and has no teacher"),
    "ancestors first": (lambda t: _set(t, ("generations", 0, "teachers"), "ancestors"),
                        "generations.0.teachers: the first generation has only the teacher before it"),
    "2% to train": (lambda t: _set(t, ("data", "split"), {"val": 0.49, "test": 0.49}),
                    "data.split: val 0.49 + test 0.49 leave 2% of the data for training; keep at least 50%"),
    "epochs 1e9": (lambda t: _set(t, ("teacher", "train", "epochs"), 1_000_000_000),
                   "teacher.train.epochs: 1,000,000,000 epochs of 1,257 images would take at least"),
    "huge channels": (lambda t: _set(t, ("teacher", "model", "channels"), [100_000, 100_000]),
                      "teacher.model: 90.0 G parameters need 1.4 TB of memory to train"),
    "pruned from a huge teacher": (_pruned_from_a_huge_teacher,
                                   "generations.0.student: pruning is planned on 8 noise images of its teacher's "
                                   "model, whose outputs need about"),
    "unknown scheme": (lambda t: _set(t, ("tracking", "uri"), "foo://bar"),
                       "tracking.uri: tracking URI foo://bar: MLflow knows no scheme 'foo'"),
    "dead server": (lambda t: _set(t, ("tracking", "uri"), f"http://127.0.0.1:{free_port()}"),
                    "did not answer (Connection refused)"),
    "unwritable workdir": (lambda t: _set(t, ("workdir",), "/proc/kdchain-work"),
                           "workdir: cannot write /proc/kdchain-work (No such file or directory in /proc"),
    "workdir under a file": (lambda t: _set(t, ("workdir",), str(ROOT / "README.md" / "work")),
                             "README.md is a file, not a folder); make it writable or set `workdir:`"),
    "unwritable store": (lambda t: _set(t, ("tracking", "uri"), "sqlite:////proc/kdchain-store/mlflow.db"),
                         "tracking.uri: cannot write the MLflow store sqlite:////proc/kdchain-store/mlflow.db (No such"),
    "misspelt derive field": (lambda t: _set(t, ("generations", 0, "student"), {"derive": {"widht": 0.5}}),
                              "generations.0.student.derive.widht: unknown key"),
    "class folders of text files": (_text_only_images, "data.root: class folder(s) cat, dog under "),
    "teacher from a store that does not exist": (
        lambda t: _set(t, ("teacher",), {"from": "models:/nobody@champion"}),
        "teacher.from: models:/nobody@champion: the MLflow store sqlite:///"),
    "torchvision teacher on 1-channel digits": (
        lambda t: _tv_teacher(t),
        "teacher.model: torchvision's resnet18 takes 3-channel images but the data has 1; use kind: cnn or resnet"),
}
if not torch.cuda.is_available():
    BAD["device: cuda without CUDA"] = (lambda t: _set(t, ("device",), "cuda"),
                                        "device: cuda, but torch finds no CUDA device here")


@pytest.mark.parametrize("name", list(BAD))
def test_each_bad_input_is_one_line_exit_2_and_nothing_written(name, tmp_path, monkeypatch):
    monkeypatch.setenv("KDCHAIN_PREFECT_PRESTART", "0")  # a refusal must not need a Prefect server
    content, expected = BAD[name]
    data = content(tmp_path)
    path = tmp_path / "chain.yaml"
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
    for command in ("validate", "run"):
        code, out, err = _cli([command, str(path)])
        lines = err.strip().splitlines()
        assert (code, out) == (2, ""), (command, code, out, err)
        assert len(lines) == 1 and expected in lines[0] and lines[0].startswith(f"{path}:"), (command, err)
        assert "Traceback" not in err
    assert not (tmp_path / "store").exists() and not (tmp_path / "work").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chain.yaml"]  # no probe file left either


def test_a_directory_given_as_config_is_named_as_one(tmp_path):
    code, _, err = _cli(["validate", str(tmp_path)])
    assert code == 2 and err.strip() == f"{tmp_path}: is a directory; give the chain's YAML file (e.g. {tmp_path}/chain.yaml)"


def test_a_tracking_uri_from_the_command_line_is_checked_too(tmp_path, monkeypatch):
    monkeypatch.setenv("KDCHAIN_PREFECT_PRESTART", "0")
    path = write_config(tmp_path, tiny_chain(tmp_path))
    port = free_port()
    code, _, err = _cli(["run", str(path), "--tracking-uri", f"http://127.0.0.1:{port}"])
    assert code == 2
    assert err.strip().startswith(f"kdchain: tracking server http://127.0.0.1:{port} did not answer (Connection refused)")
    assert not (tmp_path / "work").exists()


def test_validate_says_what_it_checked_and_schema_only_keeps_the_old_check(tmp_path):
    cfg = tiny_chain(tmp_path, device="cuda") if not torch.cuda.is_available() else tiny_chain(tmp_path)
    cfg["workdir"] = "/proc/kdchain-work"
    path = write_config(tmp_path, cfg)
    code, out, err = _cli(["validate", "--schema-only", str(path)])
    assert (code, out.strip(), err) == (0, "OK", "")
    code, out, err = _cli(["validate", str(path)])
    assert code == 2 and "workdir: cannot write /proc/kdchain-work" in err
    code, out, _ = _cli(["validate", str(write_config(tmp_path, tiny_chain(tmp_path), "good.yaml"))])
    assert code == 0 and out.startswith("OK: ") and "workdir and MLflow store writable" in out
    assert not (tmp_path / "store").exists() and not (tmp_path / "work").exists()


def test_output_into_a_closed_pipe_is_not_a_store_error():
    # `kdchain compare --json | head -1` once said "cannot write the MLflow store (Broken pipe)"
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "validate", "--schema"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first byte
    err = proc.stderr.read().decode()
    assert proc.wait(120) == 0 and err == ""


def test_ui_on_a_busy_port_says_so_and_exits_2(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = _cli(["ui", "--no-browser", "--port", str(port), "--tracking-uri",
                               f"sqlite:///{tmp_path}/mlflow.db"])
    assert (code, out) == (2, "")
    assert err.strip().startswith(f"kdchain ui: port {port} on 127.0.0.1 is already in use")


def test_a_workdir_failure_is_not_called_a_store_failure_and_oom_hints_fit_the_model(tmp_path):
    from kdchain.resources import resource_error
    from kdchain.tracking import as_store_error

    store = f"sqlite:///{tmp_path}/store/mlflow.db"
    denied = PermissionError(13, "Permission denied", str(tmp_path / "work" / "A" / "model.pt"))
    assert as_store_error(denied, store) is None
    assert "cannot write" in str(resource_error(denied, "generations.0")) and "workdir" in str(resource_error(denied, "x"))
    assert "Permission denied" in str(as_store_error(PermissionError(13, "Permission denied",
                                                                     str(tmp_path / "store" / "mlflow.db")), store))
    assert as_store_error(BrokenPipeError(32, "Broken pipe"), store) is None
    oom = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 360000000000 bytes")
    too_big = str(resource_error(oom, "teacher", train_bytes=1_440_000_000_000, memory=32_000_000_000))
    assert "batch_size" not in too_big and "1440.0 GB of 32.0 GB" in too_big and "channels" in too_big
    assert "lower teacher.train.batch_size" in str(resource_error(oom, "teacher", 10**6, 32 * 10**9))


def test_torchs_kernel_reregistration_warning_never_precedes_our_line():
    code = ("import warnings, flows.cli; warnings.warn('Warning: Overriding a previously registered kernel for the "
            "same operator and the same dispatch key'); print('ours')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (0, "ours\n", "")


@pytest.mark.parametrize("uri", ["foo://bar", "http://127.0.0.1:{port}"])
def test_compare_on_an_unusable_tracking_uri_is_one_line_not_a_wait(uri):
    uri = uri.format(port=free_port())
    code, out, err = _cli(["compare", "--tracking-uri", uri])
    assert (code, out) == (2, "")
    assert len(err.strip().splitlines()) == 1 and err.startswith("kdchain compare: tracking ") and uri in err


def test_a_key_given_twice_in_a_set_value_is_refused_too(tmp_path):
    path = write_config(tmp_path, tiny_chain(tmp_path))
    code, _, err = _cli(["validate", str(path), "--set", "teacher.train={epochs: 1, epochs: 2}"])
    assert code == 2 and err.strip() == "--set teacher.train: key 'epochs' is given twice; keep one"


def test_a_named_pipe_given_as_config_is_named_as_one_and_never_read(tmp_path):
    import os

    fifo = tmp_path / "chain.yaml"
    os.mkfifo(fifo)  # opening it to read would block until a writer comes
    code, out, err = _cli(["validate", str(fifo)])
    assert (code, out) == (2, "")
    assert err.strip() == f"{fifo}: is not a regular file (a named pipe); give the chain's YAML file"


def test_validate_reports_the_images_run_would_skip(tmp_path, monkeypatch):
    from PIL import Image

    root = tmp_path / "images"
    for c, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), colour).save(root / c / f"{i}.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    cfg = tiny_chain(tmp_path)
    cfg["data"] = {"kind": "imagefolder", "root": str(root), "image_size": 8}
    cfg["teacher"]["model"]["channels"] = [8]
    code, out, err = _cli(["validate", str(write_config(tmp_path, cfg))])
    assert (code, err) == (0, ""), err
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "1 file(s) under" in notes[0] and "notes.txt" in notes[0], out
    assert not (tmp_path / "store").exists() and not (tmp_path / "work").exists()
