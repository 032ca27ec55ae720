"""The terminal's tables of generations (`kdchain run`, `kdchain compare`) and the number format they share."""

from rich.table import Table


def fmt_int(v) -> str:
    if v is None:
        return "-"
    v = float(v)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= div:
            return f"{v / div:.2f}{unit}"
    return f"{v:.0f}"


def generation_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    notes = any(r.get("note") for r in rows)
    int8 = any(r.get("test_accuracy_int8") is not None for r in rows)
    retrained = any(r.get("vs_champion") for r in rows)  # a retrain: each generation against the champion's
    for col in ("gen", "architecture", "params", "FLOPs", "latency ms", "size", "test acc", "retention",
                "agreement") + (INT8_HEADERS if int8 else ()) + (("vs champion",) if retrained else ()) \
            + (("",) if notes else ()):
        table.add_column(col, justify="left" if col in ("gen", "architecture", "", "vs champion") else "right")
    for r in rows:
        cells = [r["name"], r.get("summary", ""), fmt_int(r["params"]), fmt_int(r["flops"]),
                 f"{r['latency_ms']:.3f}", fmt_int(r["size_bytes"]) + "B", f"{r['test_accuracy']:.2%}",
                 f"{r['retention']:.3f}", f"{r['teacher_agreement']:.2%}"]
        verdict = (r.get("vs_champion") or "-").split(" (")[0]  # "+0.0120: beats the champion's A"
        table.add_row(*cells, *(int8_cells(r) if int8 else ()), *([verdict] if retrained else []),
                      *([r.get("note", "")] if notes else []))
    return table


INT8_HEADERS = ("onnx size", "int8 size", "int8 acc", "int8 ms", "int8 b64 ips")


def int8_cells(r: dict) -> list[str]:
    """fp32 ONNX size and the int8 model's figures; its accuracy marked `!` past deploy.max_drop."""
    if r.get("test_accuracy_int8") is None:
        return ["-"] * len(INT8_HEADERS)
    flag = " !" if r.get("int8_over_max_drop") else ""
    return [fmt_int(r["size_bytes_onnx"]) + "B", fmt_int(r["size_bytes_int8"]) + "B",
            f"{r['test_accuracy_int8']:.2%}{flag}", f"{r['latency_ms_int8']:.3f}", f"{r['throughput_ips_int8']:.0f}"]
