"""Plots for BENCHMARKS.md, drawn from the figures the benchmarks wrote (nothing typed twice).

Sources: the JSON files benchmarks write, kept in ``benchmarks/results/``
(``serve_throughput*.json`` sweeps, ``backends_bench*.json`` rows of ``detector bench --json``),
and otherwise the Markdown tables of ``benchmarks/*.md``, found by their header row
(:func:`find_table`). Writes ``benchmarks/plots/*.png``:

- ``latency.png``: batch-1 latency per model and backend (PyTorch eval ours vs official;
  ONNX Runtime graph and pipeline ours vs official; ``detector bench`` rows when present);
- ``int8_drop_vs_speedup.png``: INT8 mAP drop against the speed-up over FP32 (BCCD tiny);
- ``serve_throughput.png``: server images/s against concurrency, batching on and off, with the
  raw backend's batch-1 and batch-N throughput as lines;
- ``train_time_vs_map.png``: BCCD training minutes against COCO mAP (ours, the official recipe,
  yolo11n).

A plot whose source is missing is skipped with a note. Matplotlib's Agg backend, no display.

    .venv/bin/python benchmarks/plots.py [--bench-dir benchmarks] [--out benchmarks/plots]
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = "results"  # the benchmarks' JSON outputs, under the benchmarks folder
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
HEADING = re.compile(r"^#{1,6}\s+(.*)$")
SEPARATOR_CELL = re.compile(r"^:?-{3,}:?$")
THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")  # "5,328" -> "5328"; "1, 2" stays


# ---------------------------------------------------------------------------------------------
# Markdown tables


@dataclass(frozen=True)
class Table:
    """One Markdown table: its header cells, its rows (cells as written) and where it is."""

    source: Path
    heading: str  # the last Markdown heading above the table ("" when none)
    line: int  # 1-based line of the header row
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def index(self, name: str) -> int:
        """Column number of ``name`` (compared by :func:`clean`, case-insensitive)."""
        wanted = clean(name).lower()
        for i, cell in enumerate(self.header):
            if clean(cell).lower() == wanted:
                return i
        raise KeyError(f"{self.source.name}:{self.line}: no column {name!r} in {self.header}")

    def column(self, name: str) -> list[str]:
        i = self.index(name)
        return [row[i] for row in self.rows]

    def records(self) -> list[dict[str, str]]:
        """Rows as dicts keyed by the cleaned header cells."""
        keys = [clean(cell) for cell in self.header]
        return [dict(zip(keys, row)) for row in self.rows]

    def find(self, column: str, contains: str) -> dict[str, str]:
        """The first row whose ``column`` (cleaned) contains ``contains``."""
        i = self.index(column)
        for record, row in zip(self.records(), self.rows):
            if contains in clean(row[i]):
                return record
        raise KeyError(f"{self.source.name}:{self.line}: no row with {contains!r} in {column!r}")


def clean(cell: str) -> str:
    """A cell without Markdown emphasis, code quotes or surrounding blanks."""
    return cell.replace("**", "").replace("`", "").strip()


def split_row(line: str) -> list[str]:
    """``| a | b |`` -> ``["a", "b"]`` (outer pipes optional)."""
    text = line.strip()
    if text.startswith("|"):
        text = text[1:]
    if text.endswith("|"):
        text = text[:-1]
    return [cell.strip() for cell in text.split("|")]


def is_separator(line: str) -> bool:
    cells = split_row(line)
    return bool(cells) and all(SEPARATOR_CELL.match(cell.replace(" ", "")) for cell in cells)


def read_tables(path: Path) -> list[Table]:
    """Every pipe table of a Markdown file, outside fenced code blocks, in order."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    tables: list[Table] = []
    heading, fenced, i = "", False, 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (match := HEADING.match(line)):
            heading = match.group(1).strip()
        elif (
            not fenced
            and line.lstrip().startswith("|")
            and i + 1 < len(lines)
            and is_separator(lines[i + 1])
        ):
            header = tuple(split_row(line))
            rows = []
            j = i + 2
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                cells = split_row(lines[j])
                cells += [""] * (len(header) - len(cells))
                rows.append(tuple(cells[: len(header)]))
                j += 1
            tables.append(Table(Path(path), heading, i + 1, header, tuple(rows)))
            i = j
            continue
        i += 1
    return tables


def find_table(path: Path, *columns: str, heading: str | None = None) -> Table:
    """The first table of ``path`` whose header has all ``columns`` (and, if given, whose
    heading contains ``heading``); a clear error naming the file when there is none."""
    wanted = {clean(c).lower() for c in columns}
    for table in read_tables(path):
        names = {clean(c).lower() for c in table.header}
        if wanted <= names and (heading is None or heading.lower() in table.heading.lower()):
            return table
    where = f" under a heading with {heading!r}" if heading else ""
    raise ValueError(f"{path}: no table with columns {sorted(wanted)}{where}")


def numbers(cell: str) -> list[float]:
    """All numbers written in a cell: ``"19.1 / 27.1"`` -> ``[19.1, 27.1]``, ``"**2.19**"`` ->
    ``[2.19]``, ``"> 120"`` -> ``[120.0]``, ``"5,328"`` -> ``[5328.0]``, ``""`` -> ``[]``."""
    return [float(m) for m in NUMBER.findall(THOUSANDS.sub("", clean(cell)))]


def number(cell: str) -> float:
    """The first number of a cell (see :func:`numbers`); ValueError if it holds none."""
    found = numbers(cell)
    if not found:
        raise ValueError(f"no number in table cell {cell!r}")
    return found[0]


def machine(path: Path) -> str:
    """The CPU a benchmark file names on its first ``Machine:`` or ``CPU:`` line, in short form
    (``Intel Xeon``, ``AMD EPYC``), or ``""`` (also when the file is missing)."""
    if not Path(path).exists():
        return ""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("CPU:") or "Machine:" in line:
            for name in ("Xeon", "EPYC"):
                if name in line:
                    return {"Xeon": "Intel Xeon", "EPYC": "AMD EPYC"}[name]
    return ""


# ---------------------------------------------------------------------------------------------
# JSON outputs


def serve_sweeps(bench_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """``results/serve_throughput*.json`` files that hold a concurrency sweep (a load-only run
    has an empty one), by name."""
    for path in sorted((bench_dir / RESULTS).glob("serve_throughput*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("sweep"):
            yield path, data


def bench_rows(bench_dir: Path) -> list[dict[str, Any]]:
    """Rows of ``detector bench --json`` files (``results/backends_bench*.json``): a list of rows,
    or a dict with them under ``rows``."""
    rows: list[dict[str, Any]] = []
    for path in sorted((bench_dir / RESULTS).glob("backends_bench*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        found = data.get("rows", []) if isinstance(data, dict) else data
        rows += [r for r in found if isinstance(r, dict) and "total_p50_ms" in r]
    return rows


# ---------------------------------------------------------------------------------------------
# Plots


def bars(
    ax: Axes, groups: list[str], series: dict[str, list[float]], unit: str, fmt: str = "%.1f"
) -> None:
    """Grouped bars: one group per label, one bar per series, values written on the bars."""
    width = 0.8 / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        xs = [g + (k - (len(series) - 1) / 2) * width for g in range(len(groups))]
        drawn = ax.bar(xs, values, width, label=name)
        ax.bar_label(drawn, fmt=fmt, fontsize=7)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel(unit)
    ax.legend(fontsize=7)


def latency_panels(bench_dir: Path) -> list[tuple[str, list[str], dict[str, list[float]]]]:
    """(title, groups, series of milliseconds) per latency source that exists."""
    panels = []
    models = bench_dir / "models_latency.md"
    if models.exists():
        table = find_table(models, "model", "input", "ours", "official")
        variants = ("ours", "ours fused", "official", "official fused")
        panels.append((
            f"PyTorch eval, batch 1, median ms ({machine(models)})\n{models.name}",
            [f"{r['model']}@{r['input']}" for r in table.records()],
            {v: [number(x) for x in table.column(v)] for v in variants if v in table.header},
        ))  # fmt: skip

    export = bench_dir / "export_latency.md"
    if export.exists():
        table = find_table(export, "model", "what", "ours (ms)", "official (ms)", heading="quiet")
        records = table.records()
        # each cell holds one median per run ("19.1 / 27.1"): the bar is the first run
        panels.append((
            f"ONNX Runtime CPU, batch 1, quiet, first run ({machine(export)})\n{export.name}",
            [f"{r['model'].replace(' ', '')}\n{r['what']}" for r in records],
            {
                "ours": [numbers(r["ours (ms)"])[0] for r in records],
                "official": [numbers(r["official (ms)"])[0] for r in records],
            },
        ))  # fmt: skip

    rows = [r for r in bench_rows(bench_dir) if r.get("batch") == 1]
    if rows:
        panels.append((
            f"detector bench, batch 1, p50 ms ({machine(bench_dir / 'backends_bench.md')})"
            "\nresults/backends_bench*.json",
            [f"{r['model']}\n{r['backend']} {r['precision']}\n{r['device']}" for r in rows],
            {
                "inference": [float(r["infer_p50_ms"]) for r in rows],
                "whole pipeline": [float(r["total_p50_ms"]) for r in rows],
            },
        ))  # fmt: skip
    return panels


def plot_latency(bench_dir: Path) -> Figure | None:
    """Batch-1 latency per model and backend, one panel per source."""
    panels = latency_panels(bench_dir)
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.8), squeeze=False)
    for (title, groups, series), ax in zip(panels, axes[0]):
        bars(ax, groups, series, "ms")
        ax.set_title(title, fontsize=9)
    fig.suptitle("Latency per model and backend (CPU only; lower is better)")
    fig.tight_layout()
    return fig


# accuracy table row (model, calibration) -> latency table row (model): the same INT8 file
INT8_SAME_FILE = {
    ("INT8 TensorRT form (default)", "minmax"): "INT8 --target tensorrt (minmax)",
    ("INT8 TensorRT form", "percentile 99.999"): "INT8 --target tensorrt (percentile)",
    ("INT8 TensorRT form", "entropy (256 bins)"): "INT8 --target tensorrt (entropy)",
    ("INT8 quantize everything (--quantize-all)", "minmax"): "INT8 quantize everything",
    ("INT8 CPU form (--target cpu)", "minmax"): "INT8 --target cpu (shipped)",
    ("INT8 CPU form, convs only", "minmax"): "CPU variant: convs only",
}


def int8_points(path: Path) -> list[tuple[str, float, float]]:
    """(label, speed-up over FP32, mAP drop) for every INT8 file in both tables of
    ``export_int8.md``."""
    accuracy = find_table(path, "model", "calibration", "drop mAP")
    latency = find_table(path, "model", "speed-up vs FP32")
    speed = {clean(r["model"]): number(r["speed-up vs FP32"]) for r in latency.records()}
    points = []
    for record in accuracy.records():
        key = (clean(record["model"]), clean(record["calibration"]))
        if key in INT8_SAME_FILE:
            label = INT8_SAME_FILE[key]
            points.append((label, speed[label], number(record["drop mAP"])))
    return points


def plot_int8(bench_dir: Path) -> Figure | None:
    path = bench_dir / "export_int8.md"
    if not path.exists():
        return None
    fig, ax = plt.subplots(figsize=(8.5, 5))
    points = sorted(int8_points(path), key=lambda p: p[2])
    for (label, speedup, drop), marker in zip(points, "ovs^Dp*hX"):
        ax.scatter(speedup, drop, s=50, marker=marker,
                   label=f"{label}: drop {drop:.4f}, {speedup:.2f}x")  # fmt: skip
    ax.set_yscale("log")
    ax.axhline(0.005, ls="--", c="grey", lw=1, label="goal: drop <= 0.005 and >= 1.5x")
    ax.axvline(1.5, ls="--", c="grey", lw=1)
    ax.axvline(1.0, ls=":", c="grey", lw=1, label="FP32 speed")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_xlabel("speed-up over FP32 (ONNX Runtime CPU, batch 1, median of per-repeat ratios)")
    ax.set_ylabel("mAP@0.5:0.95 drop on BCCD val (log)")
    ax.set_title(f"INT8: accuracy drop against speed ({machine(path)}; {path.name})", fontsize=9)
    fig.tight_layout()
    return fig


def plot_serve(bench_dir: Path) -> Figure | None:
    # the quietest run first: on a shared machine its figures are the ones to read
    sweeps = sorted(serve_sweeps(bench_dir), key=lambda s: s[1].get("machine", {}).get(
        "load_avg", [0.0])[0])  # fmt: skip
    if not sweeps:
        return None
    cols = min(len(sweeps), 2)
    rows = -(-len(sweeps) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(sweeps) :]:
        ax.set_visible(False)
    for ax, (path, data) in zip(axes.flat, sweeps):
        modes = sorted({p["mode"] for p in data["sweep"]})
        for mode in modes:
            points = sorted((p["connections"], p["requests_per_s"])
                            for p in data["sweep"] if p["mode"] == mode)  # fmt: skip
            ax.plot(*zip(*points), marker="o", label=f"server, {mode}")
        bare = data.get("bare", {})
        for key, style in (("raw_images_per_s_batch1", ":"), ("raw_images_per_s_batch8", "--")):
            if key in bare:
                batch = key.rsplit("batch", 1)[1]
                label = f"raw backend, batch {batch}"
                ax.axhline(bare[key], ls=style, c="black", lw=1, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks([p["connections"] for p in data["sweep"]])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("concurrent connections (wrk)")
        ax.set_ylabel("images/s (1 image per request)")
        load = data.get("machine", {}).get("load_avg", [None])[0]
        load_text = f", load avg {load:.1f}" if load is not None else ""
        ax.set_title(f"{path.name}\n{data.get('machine', {}).get('cpus', '?')} CPUs{load_text}",
                     fontsize=9)  # fmt: skip
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.suptitle("detector serve throughput against concurrency (CPU, ONNX Runtime)")
    fig.tight_layout()
    return fig


def train_points(path: Path) -> list[tuple[str, float, float, str]]:
    """(label, minutes, mAP, kind) from ``train_quality.md``: the mixed-precision summary (ours
    and yolo11n on one machine) and the anchors table (the reference runs, measured elsewhere)."""
    points = []
    summary = find_table(path, "model", "params", "mAP", "minutes")
    for r in summary.records():
        kind = "yolo11n" if "yolo11n" in r["model"] else "ours"
        points.append((clean(r["model"]), number(r["minutes"]), number(r["mAP"]), kind))
    try:
        anchors = find_table(path, "anchor", "mAP", "minutes")
    except ValueError:
        anchors = None
    for r in anchors.records() if anchors else []:
        kind = "yolo11n" if "yolo11n" in r["anchor"] else "official"
        points.append((clean(r["anchor"]), number(r["minutes"]), number(r["mAP"]), kind + " *"))
    return points


def plot_train(bench_dir: Path) -> Figure | None:
    path = bench_dir / "train_quality.md"
    if not path.exists():
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = {
        "ours": ("o", "ours (2026-11-22 summary: AMX CPU, bfloat16)"),
        "yolo11n": ("s", "yolo11n, same machine and budget as ours"),
        "official *": ("^", "official YOLOX recipe (reference runs)"),
        "yolo11n *": ("D", "yolo11n (reference run)"),
    }
    points = train_points(path)
    for kind, (marker, legend) in markers.items():
        mine = [p for p in points if p[3] == kind]
        if not mine:
            continue
        ax.scatter([p[1] for p in mine], [p[2] for p in mine], marker=marker, s=50, label=legend)
        for label, minutes, m_ap, _ in mine:
            ax.annotate(f"{label}\n{m_ap:.3f} in {minutes:g} min", (minutes, m_ap), fontsize=7,
                        xytext=(6, -10), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("wall minutes of the whole training run (40 epochs, 416, batch 8, 2-core CPU)")
    ax.set_ylabel("COCO mAP@0.5:0.95, BCCD val")
    ax.set_title(f"BCCD from scratch: training time against mAP ({path.name})", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_xlim(0, max(p[1] for p in points) + 18)
    ax.set_ylim(min(p[2] for p in points) - 0.03, max(p[2] for p in points) + 0.08)
    fig.tight_layout()
    return fig


def demo_figures(path: Path) -> tuple[list[tuple[str, float]], list[tuple[str, float, float]]]:
    """From ``demo_accuracy.md``: (step, seconds) of the final demo run, its total row last, and
    (run, mAP, mAP50) of every training run."""
    steps = find_table(path, "step", "seconds")
    timed = [(clean(r["step"]), number(r["seconds"])) for r in steps.records()]
    runs = find_table(path, "run", "epochs", "mAP", "mAP50")
    scored = [(clean(r["run"]), number(r["mAP"]), number(r["mAP50"])) for r in runs.records()]
    return timed, scored


def plot_demo(bench_dir: Path) -> Figure | None:
    path = bench_dir / "demo_accuracy.md"
    if not path.exists():
        return None
    timed, scored = demo_figures(path)
    total = dict(timed).get("total")
    timed = [(step, seconds) for step, seconds in timed if step != "total"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    labels = [re.sub(r"\s*\([^)]*\)", "", step) for step, _ in timed]
    drawn = left.barh(labels[::-1], [seconds for _, seconds in timed][::-1])
    left.bar_label(drawn, fmt="%g s", fontsize=7)
    left.set_xlabel("seconds (final demo run)")
    left.tick_params(axis="y", labelsize=7)
    left.set_title(f"detector demo: wall time per step (total {total:g} s)", fontsize=9)
    groups = [run for run, _, _ in scored]
    series = {"mAP50": [s[2] for s in scored], "mAP@0.5:0.95": [s[1] for s in scored]}
    bars(right, groups, series, "", fmt="%.3f")
    right.axhline(0.5, ls="--", c="grey", lw=1)
    right.text(-0.4, 0.52, "goal: mAP50 >= 0.5", fontsize=7, color="grey")
    right.tick_params(axis="x", labelsize=6, rotation=20)
    right.set_ylabel("COCO mAP on the generated val split")
    right.set_title("yolox_nano on the demo data: the runs that set the demo", fontsize=9)
    fig.suptitle(f"The demo (CPU, {machine(path) or 'see the file'}; {path.name})")
    fig.tight_layout()
    return fig


PLOTS: dict[str, Callable[[Path], Figure | None]] = {
    "latency.png": plot_latency,
    "int8_drop_vs_speedup.png": plot_int8,
    "serve_throughput.png": plot_serve,
    "train_time_vs_map.png": plot_train,
    "demo.png": plot_demo,
}


def make_plots(bench_dir: Path, out_dir: Path) -> list[Path]:
    """Draw every plot whose source exists; the PNG paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in PLOTS.items():
        fig = draw(bench_dir)
        if fig is None:
            print(f"skipped {name}: its source is not in {bench_dir}")
            continue
        path = out_dir / name
        # no Software/date metadata, so an unchanged figure gives the same bytes
        fig.savefig(path, dpi=110, metadata={"Software": None})
        plt.close(fig)
        written.append(path)
        print(f"wrote {path}")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench-dir", type=Path, default=HERE, help="benchmark outputs")
    parser.add_argument("--out", type=Path, default=HERE / "plots", help="folder for the PNGs")
    args = parser.parse_args(argv)
    make_plots(args.bench_dir, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
