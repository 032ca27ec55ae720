"""Pictures of a chain, as matplotlib figures: pure matplotlib, no mlflow, no pyplot.

Figures are built with `matplotlib.figure.Figure` on an Agg canvas: no GUI backend, no global pyplot state
(nothing changes a user's backend), so that a Prefect task in a worker thread can draw safely; kdchain.tracking logs them as PNG.
Rows are the generation table's dicts: name, generation (0 = teacher), params, latency_ms, test_accuracy.
"""

import math
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator


def _figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(fig)  # PNG through Agg, whatever pyplot's backend is
    return fig


def _tick_125(value: float, _pos=None) -> str:
    if value <= 0:
        return ""
    exp = math.floor(math.log10(value))
    lead = value / 10 ** exp
    if min(abs(lead - m) for m in (1, 2, 5)) > 1e-6:
        return ""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= div:
            return f"{value / div:g}{unit}"
    return f"{value:g}"


TEACHER_STYLE = {"marker": "*", "s": 260, "color": "tab:red", "edgecolor": "black", "zorder": 3}
STUDENT_STYLE = {"marker": "o", "s": 80, "color": "tab:blue", "edgecolor": "black", "zorder": 3}


def accuracy_vs(rows: Sequence[dict], x_key: str, x_label: str, title: str) -> Figure:
    """Test accuracy against `x_key` (params, latency_ms): one labelled point per generation, log x,
    the teacher a red star; a grey line follows the chain teacher -> A -> B -> ..."""
    fig = _figure((7, 4.5))
    ax = fig.add_subplot()
    pts = [(r[x_key], 100 * r["test_accuracy"], r) for r in rows if r.get(x_key) and r.get("test_accuracy") is not None]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="0.7", lw=1, zorder=1)
    for x, y, r in pts:
        teacher = r.get("generation") == 0
        ax.scatter([x], [y], **(TEACHER_STYLE if teacher else STUDENT_STYLE),
                   label="teacher" if teacher else None)
        ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(7, 6), fontsize=10,
                    fontweight="bold" if teacher else "normal")
    ax.set_xscale("log")
    # 1-2-5 labels (150, 200, 500, 1k, 2k, ...): a short log range still gets readable ticks, none overlap
    ax.xaxis.set_major_formatter(FuncFormatter(_tick_125))
    ax.xaxis.set_minor_formatter(FuncFormatter(_tick_125))
    ax.set_xlabel(f"{x_label} (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if any(p[2].get("generation") == 0 for p in pts):
        ax.legend(loc="lower right")
    if pts:  # room for the labels
        ys = [p[1] for p in pts]
        pad = max(1.0, (max(ys) - min(ys)) * 0.15)
        ax.set_ylim(min(ys) - pad, min(100.5, max(ys) + pad))
    fig.tight_layout()
    return fig


def fp32_vs_int8(rows: Sequence[dict], title: str) -> Figure:
    """Test accuracy against ONNX file size, fp32 (blue) and int8 (orange) of each generation, an arrow from one
    to the other: what quantization buys and costs, generation by generation."""
    fig = _figure((7, 4.5))
    ax = fig.add_subplot()
    pts = [r for r in rows if r.get("size_bytes_int8") and r.get("size_bytes_onnx")]
    for i, r in enumerate(pts):
        fp32 = (r["size_bytes_onnx"], 100 * r["test_accuracy"])
        int8 = (r["size_bytes_int8"], 100 * r["test_accuracy_int8"])
        ax.scatter(*zip(fp32), color="tab:blue", edgecolor="black", s=70, zorder=3, label="fp32" if not i else None)
        ax.scatter(*zip(int8), color="tab:orange", edgecolor="black", s=70, zorder=3, label="int8" if not i else None)
        ax.annotate("", xy=int8, xytext=fp32, arrowprops={"arrowstyle": "->", "color": "0.5"}, zorder=2)
        ax.annotate(r["name"], fp32, textcoords="offset points", xytext=(7, 6), fontsize=10)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(_tick_125))
    ax.xaxis.set_minor_formatter(FuncFormatter(_tick_125))
    ax.set_xlabel("ONNX file size, bytes (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if pts:
        ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def val_accuracy_curves(histories: dict[str, Sequence[tuple[int, float]]], title: str) -> Figure:
    """Validation accuracy per epoch, one line per generation (name -> [(epoch, accuracy in [0, 1])])."""
    fig = _figure((7, 4.5))
    ax = fig.add_subplot()
    colours = [f"C{i}" for i in range(10) if i != 3]  # C3 is the teacher's red
    students = 0
    for name, points in histories.items():
        if not points:
            continue
        epochs, acc = zip(*sorted(points))
        teacher = name == "teacher"
        colour = "tab:red" if teacher else colours[students % len(colours)]
        students += not teacher
        ax.plot(epochs, [100 * a for a in acc], marker="o", ms=3, lw=2.5 if teacher else 1.5, color=colour, label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(title="generation", loc="lower right")
    fig.tight_layout()
    return fig


def confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str) -> Figure:
    """Counts of (true class row, predicted class column) on the test split, each cell labelled."""
    n = len(matrix)
    size = max(4.5, 0.45 * n + 2)
    fig = _figure((size + 1, size))
    ax = fig.add_subplot()
    im = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    peak = max((max(row) for row in matrix), default=0) or 1
    if n <= 30:  # beyond that the numbers are unreadable; the colours still say it
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                        color="white" if v > peak / 2 else "black")
    longest = max(map(len, class_names), default=1)
    ax.set_xticks(range(n), labels=class_names, rotation=45 if longest > 2 else 0)
    ax.set_yticks(range(n), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    # margins from the longest label (about 0.08 inch a character at 10 pt): tight_layout, which measures every
    # text by drawing it, took half of a generation's logging time
    width, height = fig.get_size_inches()
    label = 0.45 + 0.08 * longest
    fig.subplots_adjust(left=label / width, bottom=(0.45 + 0.06 * longest * (longest > 2)) / height,
                        right=1 - 0.55 / width, top=1 - 0.45 / height)
    return fig


def search_trials(result, title: str) -> Figure:
    """A search's trials (a kdchain.search.SearchResult): proxy val accuracy against params and against latency
    (when measured), completed and pruned, the Pareto front joined, the winner starred, the knee's floor dotted."""
    xs = [("params", "parameters")] + ([("latency_ms", "latency ms (batch 1, CPU)")]
                                       if all("latency_ms" in t.cost for t in result.trials) else [])
    fig = _figure((5.5 * len(xs), 4.2))
    win = result.winning()
    for ax, (key, label) in zip(fig.subplots(1, len(xs), squeeze=False)[0], xs):
        for state, marker, color in (("complete", "o", "tab:blue"), ("pruned", "x", "tab:gray")):
            ts = [t for t in result.trials if t.state == state]
            ax.scatter([t.cost[key] for t in ts], [t.val_accuracy for t in ts], marker=marker, color=color,
                       label=f"{state} ({len(ts)})")
        front = sorted((t for t in result.trials if t.number in result.front), key=lambda t: t.cost[key])
        if key == "params" and front:
            ax.plot([t.cost[key] for t in front], [t.val_accuracy for t in front], "--", color="tab:orange",
                    label="Pareto front")
        ax.scatter([win.cost[key]], [win.val_accuracy], marker="*", s=250, color="tab:red", zorder=5,
                   label=f"winner: trial {win.number}")
        if getattr(result, "floor", None) is not None:
            ax.axhline(result.floor, color="tab:green", linestyle=":",
                       label=f"knee: best - max_drop ({result.floor:.4f})")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("proxy val accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """A GitHub-flavoured markdown table of `rows`; `columns` = [(key, header)]."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")).replace("|", "\\|") for k, _ in columns) + " |")
    return "\n".join(lines) + "\n"
