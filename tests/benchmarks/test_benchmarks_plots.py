"""BENCHMARKS.md and its plots: the table parser on the real benchmark files, the PNGs drawn from
them, and every command line BENCHMARKS.md quotes (a script in benchmarks/ with the flags it
passes, or a real ``detector`` sub-command that parses)."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
SUMMARY = ROOT / "BENCHMARKS.md"


def load_plots():
    spec = importlib.util.spec_from_file_location("benchmarks_plots", BENCH / "plots.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


plots = load_plots()


def raw_row(path: Path, first_cells: str) -> list[str]:
    """Cells of the first line of ``path`` that starts with ``first_cells``, split by hand (an
    independent reading to check the parser against)."""
    for line in path.read_text().splitlines():
        if line.startswith(first_cells):
            return [c.strip() for c in line.strip().strip("|").split("|")]
    raise AssertionError(f"{path.name}: no line starting with {first_cells!r}")


def test_parser_on_a_written_table(tmp_path: Path) -> None:
    md = tmp_path / "t.md"
    md.write_text(
        "# Title\n\n```\n| not | a table |\n|---|---|\n```\n\n## Quiet run\n\n"
        "| model | what | ours (ms) | **ratio** |\n|---|---|---:|---:|\n"
        "| `nano` | graph | 19.1 / 27.1 | **0.94x** |\n| s | pipeline | > 120 |\n\n"
        "| other | x |\n|---|---|\n| a | 1 |\n"
    )
    tables = plots.read_tables(md)
    assert [t.header[0] for t in tables] == ["model", "other"]  # the fenced one is skipped
    table = plots.find_table(md, "model", "ratio", heading="quiet")
    assert table.heading == "Quiet run" and table.line == 10
    assert table.records()[0]["model"] == "`nano`"
    assert plots.numbers(table.find("model", "nano")["ours (ms)"]) == [19.1, 27.1]
    assert plots.number(table.column("ratio")[0]) == 0.94
    assert table.rows[1] == ("s", "pipeline", "> 120", "")  # short rows are padded
    assert plots.number(table.rows[1][2]) == 120.0
    assert plots.numbers("104 / 5,328") == [104.0, 5328.0]
    assert plots.numbers("1.67, 1.70, 2.95") == [1.67, 1.70, 2.95]
    with pytest.raises(ValueError, match="no number"):
        plots.number(table.rows[1][3])
    with pytest.raises(ValueError, match="t.md: no table with columns"):
        plots.find_table(md, "model", "missing")
    with pytest.raises(KeyError, match="no column"):
        table.column("missing")


def test_parser_reads_the_real_benchmark_tables() -> None:
    latency = plots.find_table(BENCH / "models_latency.md", "model", "input", "ours fused")
    cells = raw_row(BENCH / "models_latency.md", "| yolox_s |")
    record = latency.find("model", "yolox_s")
    assert plots.number(record["ours fused"]) == float(cells[3])
    assert plots.number(record["official"]) == float(cells[4])

    quiet = plots.find_table(BENCH / "export_latency.md", "what", "ours (ms)", heading="quiet")
    cells = raw_row(BENCH / "export_latency.md", "| yolox_s @640 | pipeline |")  # quiet first
    record = quiet.records()[3]
    assert plots.numbers(record["official (ms)"]) == [float(x) for x in cells[3].split("/")]

    # the INT8 join: the shipped CPU form's drop and speed-up, each from its own table
    points = {label: (speed, drop) for label, speed, drop in plots.int8_points(
        BENCH / "export_int8.md")}  # fmt: skip
    assert len(points) == len(plots.INT8_SAME_FILE)
    speed, drop = points["INT8 --target cpu (shipped)"]
    assert speed == float(raw_row(BENCH / "export_int8.md", "| **INT8 `--target cpu`")[4]
                          .strip("*"))  # fmt: skip
    assert drop == float(raw_row(BENCH / "export_int8.md", "| INT8 CPU form (`--target")[4])

    # the CPU named on each file's machine line, as BENCHMARKS.md groups them
    assert plots.machine(BENCH / "models_latency.md") == "Intel Xeon"
    assert plots.machine(BENCH / "export_int8.md") == "AMD EPYC"

    train = plots.train_points(BENCH / "train_quality.md")
    tiny = next(p for p in train if p[0].startswith("yolox_tiny"))
    cells = raw_row(BENCH / "train_quality.md", "| yolox_tiny (ours) |")
    assert (tiny[1], tiny[2]) == (float(cells[4]), float(cells[2].strip("*")))
    assert {p[3] for p in train} >= {"ours", "yolo11n", "official *"}

    steps, runs = plots.demo_figures(BENCH / "demo_accuracy.md")
    assert dict(steps)["total"] == float(raw_row(BENCH / "demo_accuracy.md", "| total |")[1])
    assert sum(s for name, s in steps if name != "total") == pytest.approx(
        dict(steps)["total"], abs=len(steps)
    )  # the steps add up to the total, within the rounding of each
    demo = runs[-1]
    cells = raw_row(BENCH / "demo_accuracy.md", "| e5 ")
    assert demo[1:] == (float(cells[-2].strip("*")), float(cells[-1].strip("*")))


def test_plots_are_drawn_from_the_real_files(tmp_path: Path) -> None:
    import matplotlib.image

    written = plots.make_plots(BENCH, tmp_path)
    names = {p.name for p in written}
    assert names >= {"latency.png", "int8_drop_vs_speedup.png", "serve_throughput.png",
                     "train_time_vs_map.png", "demo.png"}  # fmt: skip
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 20_000, path
        pixels = matplotlib.image.imread(path)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 500
        assert pixels[..., :3].std() > 0.05, f"{path.name} is nearly blank"


def test_sources_missing_means_no_plots(tmp_path: Path) -> None:
    assert plots.make_plots(tmp_path / "empty", tmp_path / "out") == []


def test_result_files_live_in_results() -> None:
    """Result files sit in benchmarks/results/, not beside the scripts that write them."""
    assert list(RESULTS.glob("*.json")), "no result file in benchmarks/results"
    assert not list(BENCH.glob("*.json")), "a result file beside the scripts"


def test_serve_sweeps_read_every_sweep_json() -> None:
    found = dict(plots.serve_sweeps(BENCH))
    data = {p: json.loads(p.read_text()) for p in RESULTS.glob("serve_throughput*.json")}
    files = [p for p, d in data.items() if isinstance(d, dict) and d.get("sweep")]
    assert set(found) == set(files) and found
    for run in found.values():  # what plot_serve draws: a line per mode over connections
        assert {p["mode"] for p in run["sweep"]} and all(
            p["connections"] >= 1 and p["requests_per_s"] > 0 for p in run["sweep"]
        )


# ---------------------------------------------------------------------------------------------
# BENCHMARKS.md


def quoted_commands(text: str) -> list[str]:
    """Command lines in BENCHMARKS.md: lines of fenced blocks and inline code spans with a flag
    that run a benchmarks/ script or ``detector`` (comments dropped, continuations joined)."""
    candidates: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        candidates += block.replace("\\\n", " ").splitlines()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    # inline spans only when they pass a flag: "`detector train` picks" names, it does not run
    spans = [s.replace("\n", " ") for s in re.findall(r"`([^`]+)`", prose)]
    candidates += [s for s in spans if " --" in s]
    commands = []
    for line in candidates:
        words = shlex.split(line, comments=True)
        if not words:
            continue
        runs_script = any(re.fullmatch(r"benchmarks/\w+\.py", w) for w in words[1:2])
        if runs_script or Path(words[0]).name == "detector":
            commands.append(" ".join(words))
    return commands


def script_flags(script: Path) -> set[str]:
    """The ``--flags`` a benchmark script's argparse defines (from its source)."""
    flags: set[str] = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            flags |= {a.value for a in node.args if isinstance(a, ast.Constant)
                      and str(a.value).startswith("--")}  # fmt: skip
    return flags


def test_every_quoted_command_names_a_real_script_or_subcommand() -> None:
    from detector.cli import build_parser

    commands = quoted_commands(SUMMARY.read_text())
    assert len(commands) >= 12, commands
    for command in commands:
        words = shlex.split(command)
        if Path(words[0]).name == "detector":
            parser = build_parser(words[1])
            try:
                parser.parse_args(words[1:])
            except SystemExit as exc:
                pytest.fail(f"BENCHMARKS.md: {command!r} does not parse ({exc})")
            continue
        script = ROOT / words[1]
        assert script.is_file(), f"BENCHMARKS.md quotes {command!r}: no {words[1]}"
        unknown = {w.split("=")[0] for w in words[2:] if w.startswith("--")} - script_flags(script)
        assert not unknown, f"BENCHMARKS.md: {command!r}: {script.name} has no {sorted(unknown)}"


def test_benchmarks_md_links_and_images_exist() -> None:
    text = SUMMARY.read_text()
    targets = re.findall(r"\]\(((?:benchmarks/)[^)#]+)\)", text)
    assert any(t.endswith(".png") for t in targets) and any(t.endswith(".md") for t in targets)
    for target in targets:
        assert (ROOT / target).exists(), f"BENCHMARKS.md links to a missing {target}"
    linked = {t for t in targets if t.endswith(".md")}
    for md in BENCH.glob("*.md"):
        assert f"benchmarks/{md.name}" in linked, f"BENCHMARKS.md does not cover {md.name}"
