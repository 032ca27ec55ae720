"""What the terminal shows while a chain trains: a rich progress bar per generation.

The CLI calls `enable()`; elsewhere (tests, a deployment's worker) every function here does nothing. On a
terminal the bar itself carries the epoch's numbers; when output goes to a file or CI log, one line per epoch.
"""

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(highlight=False)
if not console.is_terminal:  # CI logs and files: wide enough for the generation table
    console = Console(highlight=False, width=160)
_bar: Progress | None = None
_tasks: dict[str, int] = {}


def enable() -> None:
    global _bar
    _bar = Progress(TextColumn("[bold]{task.fields[gen]:>8}[/]"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("epochs  {task.fields[info]}"), TimeElapsedColumn(), console=console)
    _bar.start()


def disable() -> None:
    global _bar
    if _bar is not None:
        _bar.stop()
    _bar = None
    _tasks.clear()


def start(name: str, epochs: int) -> None:
    if _bar is not None:
        _tasks[name] = _bar.add_task(name, total=epochs, gen=name, info="")


def epoch(name: str, report) -> None:
    if _bar is None:
        return
    info = f"loss {report.train_loss:.4f}  val {report.val_accuracy:.2%}"
    _bar.update(_tasks[name], completed=report.epoch, info=info)
    if not console.is_terminal:
        console.print(f"{name:>8} epoch {report.epoch}/{report.epochs}  {info}  ({report.seconds:.1f}s)")


def stop(name: str) -> None:
    if _bar is not None and name in _tasks:
        _bar.stop_task(_tasks[name])


def reused(name: str, result) -> None:
    if _bar is not None:
        where = "" if result.reused_from in (None, result.run_id) else f", trained in run {result.reused_from[:8]}"
        console.print(f"{name:>8} already trained in an earlier run: reused "
                      f"(test accuracy {result.metrics['test_accuracy']:.2%}, MLflow run {result.run_id[:8]}{where})")


def note(text: str) -> None:
    """One line about what the chain does beyond training (resuming, retraining a bad checkpoint)."""
    if _bar is not None:
        console.print(text, soft_wrap=True)  # one line, however long its paths
