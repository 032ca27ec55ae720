"""Data-parallel training of one generation under torch.distributed: the elastic launch (what torchrun does, from
Python) and what each rank needs (its shard of a batch, global sums, the student in DistributedDataParallel).

The launching process starts `nproc` ranks with torch's elastic agent (`elastic_launch`, c10d rendezvous) and
waits; it does no training. Rank 0 appends each finished epoch's report to a JSON-lines file, which the launcher
reads back and hands to its `on_epoch` (so MLflow is written by the launching process only, one point per epoch).
A rank that dies takes the others down (the agent ends them) and the launcher raises RankFailed: one line naming
the rank and why. Every rank exits when the launcher does (a `kill -9` of it leaves no rank training on).
"""

import contextlib
import json
import logging
import os
import select
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs, SignalException, Std
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record
from torch.distributed.elastic.rendezvous.api import RendezvousError
from torch.distributed.elastic.rendezvous.utils import _matches_machine_hostname, parse_rendezvous_endpoint
from torch.distributed.launcher.api import LaunchConfig, elastic_launch
from torch.nn.parallel import DistributedDataParallel

from kdchain.distill.device import in_format, memory_format
from kdchain.distill.losses import LOGITS
from kdchain.models.taps import Tapped
from kdchain.spec import DistributedSpec

HANDLED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")  # what torch's agent claims while the ranks run


class RankFailed(RuntimeError):
    """A rank of a distributed generation died or failed, or the ranks never met: one line saying which and why.
    `kind`/`detail`: the exception a rank raised (its class name and message), "" when it was killed."""

    def __init__(self, line: str, kind: str = "", detail: str = ""):
        super().__init__(line)
        self.kind, self.detail = kind, detail


__all__ = ["RankFailed", "record", "launch", "leave_group", "rank_process", "rank_and_world"]  # record: for the rank entry point


# ---- inside a rank ----

def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of ranks); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous part of one global batch (indices, or images): the ranks' parts, in rank order, are
    the batch, so every epoch is the single-process epoch. A tail batch smaller than the number of ranks gives an
    empty part its last row instead: DistributedDataParallel needs a gradient from every rank at every step."""
    rank, world = rank_and_world()
    if world == 1:
        return batch
    part = batch.tensor_split(world)[rank]
    return part if len(part) else batch[-1:]


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum over ranks, in place (t itself outside torch.distributed)."""
    if rank_and_world()[1] > 1:
        dist.all_reduce(t)
    return t


def average_grads(params) -> None:
    """Mean gradient over ranks for parameters outside the DDP module (the loss's adapters)."""
    world = rank_and_world()[1]
    for p in params:
        if world > 1 and p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def data_parallel(student: torch.nn.Module, nodes: list[str], device: torch.device):
    """x -> {"logits": ..., node: map} through DistributedDataParallel, whose backward averages the gradients.
    Tapped maps (feature losses, FitNets) may leave parameters without a gradient (the FitNets hint epochs)."""
    module = Tapped(student, nodes) if nodes else student
    ddp = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                  find_unused_parameters=bool(nodes))
    fmt = memory_format(student)  # the input in the student's own layout
    return (lambda x: ddp(in_format(x, fmt))) if nodes else (lambda x: {LOGITS: ddp(in_format(x, fmt))})


def gather_rows(parts: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """{name: (n, ...)} from each rank's contiguous rows (rank r holds rows r*c .. r*c+c-1, c = ceil(n/world))."""
    _, world = rank_and_world()
    c = -(-n // world)
    out = {}
    for name, part in parts.items():
        padded = torch.zeros((c, *part.shape[1:]), dtype=part.dtype, device=part.device)
        padded[:len(part)] = part
        pieces = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(pieces, padded)
        out[name] = torch.cat(pieces)[:n]
    return out


def rows_of_rank(n: int) -> slice | None:
    """This rank's contiguous share of n rows; None when some rank's share would be empty (n too small to split:
    a collective needs every rank), or outside torch.distributed."""
    rank, world = rank_and_world()
    c = -(-n // world)
    if world == 1 or (world - 1) * c >= n:
        return None
    return slice(rank * c, min(n, rank * c + c))


def _exit_with(pid: int) -> None:
    """End this rank the moment process `pid` (the launcher) ends, whatever killed it."""
    def watch():
        try:
            select.select([os.pidfd_open(pid)], [], [])
        except (AttributeError, OSError):  # no pidfd: poll; the launcher is gone once this rank is re-parented
            while os.getppid() == pid:
                time.sleep(0.5)
        os._exit(1)
    if os.getppid() != pid:
        os._exit(1)
    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def leave_group() -> int:
    """After training: every rank waits for the others, then leaves the process group; returns this rank. What
    follows (rank 0 measuring and writing the generation, for minutes on a big model) runs outside it, so no
    collective waits on it and no NCCL watchdog times out."""
    rank, world = rank_and_world()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return rank


@contextlib.contextmanager
def rank_process(device_type: str, backend: str, launcher_pid: int, threads: int):
    """Inside a rank started by `launch`: the process group joined; yields this rank's device (cuda:LOCAL_RANK)."""
    _exit_with(launcher_pid)
    torch.set_num_threads(threads)  # the launcher divided the free cores among the ranks
    device = torch.device("cpu")
    if device_type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group(backend)  # env:// (MASTER_ADDR/PORT, RANK, WORLD_SIZE set by the agent)
    try:
        yield device
    finally:
        if dist.is_initialized():  # left already after training, unless training failed
            dist.destroy_process_group()


class EpochWriter:
    """Rank 0's on_epoch: one JSON line per finished epoch, read back by the launcher."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __call__(self, report) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(vars(report)) + "\n")


# ---- in the launching process ----

def backend_for(spec: DistributedSpec, device_type: str) -> str:
    return ("nccl" if device_type == "cuda" else "gloo") if spec.backend == "auto" else spec.backend


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_config(spec: DistributedSpec, run_id: str, log_dir: Path) -> LaunchConfig:
    """c10d rendezvous, no restarts (a relaunch resumes from the last epoch); each rank's output goes to
    `log_dir` (a rank's traceback there, its one-line cause on the terminal)."""
    endpoint = spec.rdzv_endpoint or f"127.0.0.1:{_free_port()}"  # one node: torchrun --standalone
    logs = DefaultLogsSpecs(log_dir=str(log_dir), redirects=Std.ALL)
    return LaunchConfig(min_nodes=spec.nnodes, max_nodes=spec.nnodes, nproc_per_node=spec.nproc, run_id=run_id,
                        logs_specs=logs,
                        rdzv_backend="c10d", rdzv_endpoint=endpoint, max_restarts=0, monitor_interval=0.1,
                        rdzv_configs={"join_timeout": spec.rdzv_timeout, "read_timeout": spec.rdzv_timeout,
                                      "timeout": spec.rdzv_timeout}, start_method="spawn")


def wait_for_endpoint(spec: DistributedSpec) -> None:
    """A rendezvous endpoint on another machine must answer within rdzv_timeout (the first node may still be
    starting: retried until then); else RankFailed in one line. torch's own client would print a C++ stack."""
    if not spec.rdzv_endpoint:
        return
    host, port = parse_rendezvous_endpoint(spec.rdzv_endpoint, default_port=29400)
    if _matches_machine_hostname(host):  # this node hosts the rendezvous store
        return
    deadline, why = time.monotonic() + spec.rdzv_timeout, "no answer"
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic())).close()
            return
        except OSError as e:
            why = e.strerror or type(e).__name__
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    raise RankFailed(f"the rendezvous endpoint {spec.rdzv_endpoint} did not answer within rdzv_timeout "
                     f"{spec.rdzv_timeout} s ({why}); start the first node, or check the address and the firewall")


def _reader(path: Path, on_epoch: Callable, report_type, done: threading.Event, errors: list):
    """Hand each epoch line rank 0 appends to `on_epoch`, in order, until `done` and the file is drained."""
    seen = 0
    while True:
        finished = done.is_set()
        lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
        for line in lines[seen:]:
            if not line.endswith("\n"):
                break  # being written
            seen += 1
            try:
                on_epoch(report_type(**json.loads(line)))
            except Exception as e:  # noqa: BLE001 -- raised by the launcher after the ranks end
                errors.append(e)
        if finished:
            return
        done.wait(0.2)


def failure_of(rank: int, failure, world: int, log_dir: Path) -> RankFailed:
    """RankFailed for torch elastic's ProcessFailure: killed by a signal, or the exception the rank raised."""
    who = f"rank {rank} of {world} (pid {failure.pid})"
    if failure.exitcode < 0:
        return RankFailed(f"{who} was killed by {failure.signal_name()}")
    message = failure.message  # the error file's {"message": "Type: text", "extraInfo": ...}, or a plain string
    kind, _, detail = str(message.get("message", "") if isinstance(message, dict) else message).partition(": ")
    if not detail or not kind.isidentifier():  # no error file: the rank exited without raising (os._exit, a crash)
        return RankFailed(f"{who} exited with code {failure.exitcode} (its output: {log_dir})")
    detail = next((x.strip() for x in detail.splitlines() if x.strip()), "")[:300]
    return RankFailed(f"{who} failed: {kind}: {detail}", kind, detail)


@contextlib.contextmanager
def _quiet_agent():
    """The agent's own log lines (a failure's traceback, 'Terminating process ...') stay off the terminal: the
    launcher says what failed in one line, each rank's output is in its log folder."""
    names = [n for n in list(logging.root.manager.loggerDict) if n.startswith(("torch.distributed", "torch.multiprocessing"))]
    loggers = [logging.getLogger(n) for n in ["torch.distributed", "torch.multiprocessing", *names]]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _own_signals():
    """torch's agent claims SIGINT/SIGTERM while the ranks run (it ends them, then raises SignalException); ours
    come back afterwards and the signal is delivered again to them (Ctrl-C: KeyboardInterrupt, as without ranks)."""
    main = threading.current_thread() is threading.main_thread()
    saved = {name: signal.getsignal(getattr(signal, name)) for name in HANDLED} if main else {}
    try:
        yield
    except SignalException as e:
        for name, handler in saved.items():
            signal.signal(getattr(signal, name), handler)
        saved = {}
        signal.raise_signal(e.sigval)
        raise KeyboardInterrupt from None  # a handler that returned: still interrupted
    finally:
        for name, handler in saved.items():
            signal.signal(getattr(signal, name), handler)


def launch(spec: DistributedSpec, entry: Callable, args: tuple, epochs_file: Path, on_epoch: Callable | None,
           report_type, run_id: str, log_dir: Path):
    """Run `entry(*args)` on every rank; returns rank 0's return value. Epoch reports rank 0 writes to
    `epochs_file` go to `on_epoch` here as they come. Raises RankFailed with one line when a rank fails."""
    wait_for_endpoint(spec)
    epochs_file = Path(epochs_file)
    epochs_file.unlink(missing_ok=True)
    done, errors = threading.Event(), []
    reader = threading.Thread(target=_reader, args=(epochs_file, on_epoch or (lambda r: None), report_type, done,
                                                    errors), name="epoch-reports", daemon=True)
    reader.start()
    world = spec.nproc * spec.nnodes
    t0 = time.monotonic()
    try:
        with _own_signals(), _quiet_agent():
            results = elastic_launch(launch_config(spec, run_id, log_dir), entry)(*args)
    except ChildFailedError as e:
        raise failure_of(*e.get_first_failure(), world, log_dir) from None
    except RendezvousError as e:
        first = next((x.strip() for x in str(e).splitlines() if x.strip()), type(e).__name__)
        raise RankFailed(f"the {world} ranks did not meet at rendezvous {spec.rdzv_endpoint or 'on this machine'} "
                         f"within {time.monotonic() - t0:.0f} s (rdzv_timeout {spec.rdzv_timeout} s): "
                         f"{first[:200]}") from None
    finally:
        done.set()
        reader.join()
    if errors:
        raise errors[0]
    return results[0]
