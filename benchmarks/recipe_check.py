"""Recipe check: train nano and tiny briefly with a recipe on several datasets.

A change to the training defaults is judged on every dataset here, never on one. Each cell
(dataset x model x recipe at one budget) trains from scratch through
``detector.training.launch.train`` (the trainer ``detector train`` runs), in a fresh run folder
under ``--out`` (``runs/recipe_check``), and takes the trainer's own COCO evaluation of the EMA
weights on the val split: the best evaluated epoch (what ``best.pt`` keeps) and the last.

Recipes:

- ``ours``: the shipped defaults (``schedule: auto``, the short-run values for short runs);
- ``official``: the official YOLOX recipe, ``schedule=yolox`` (SGD 0.01 per 64 images, 5 warm-up
  epochs, 15 no-aug epochs) at a fixed input size (``multiscale_range=0``, as the reference
  runs of ``benchmarks/train_quality.md``); only where the run is too short to hold 5 + 15
  epochs and a cosine phase is the no-aug phase cut to ``(epochs - 5) // 2`` (at least 1), see
  ``official_overrides``;
- ``--name NAME key=value ...``: a named recipe of your overrides on top of ``ours``.

Datasets (generated ones are made on the fly with ``detector.data.synth`` and reused while
their header matches):

- ``synth_lookalike``: 1-3 objects per image, the classes told apart only by a small symbol on
  a shared card (``lookalike``), like the phone photos the check started from;
- ``synth_demo``: the demo's data (``SynthSpec.demo()``: 1-6 objects of five shape/colour classes);
- ``synth_dense``: many small objects (4-20 per image, 12-96 px), BCCD-like density;
- ``bccd``: BCCD blood cells (configs/data/bccd_coco.yaml), or its first ``--bccd-images`` train
  images (val always whole);
- ``bccd_merged``: the same with the three classes merged into one (``cell``).

Results go to a JSON file (``--results``, default ``benchmarks/results/recipe_check.json``): a
cell already there with the same budget is not trained again (``--force`` retrains), so an
interrupted check resumes where it stopped. Each new cell is appended as a row, with the exact
command, the CPU and the date, to ``benchmarks/recipe_check.md``.

    .venv/bin/python benchmarks/recipe_check.py --models yolox_nano \\
        --datasets synth_lookalike synth_demo --images 200 --epochs 10 --imgsz 320
    .venv/bin/python benchmarks/recipe_check.py --recipes ours --name lr2 lr_per_64=0.024
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from machine_info import cpu_name  # beside this script (benchmarks/ is on sys.path)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

DATASETS = ("synth_lookalike", "synth_demo", "synth_dense", "bccd", "bccd_merged")
MODELS = ("yolox_nano", "yolox_tiny")
BUILTIN_RECIPES = ("ours", "official")
DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "recipe_check.json"
DEFAULT_TABLE = REPO / "benchmarks" / "recipe_check.md"


@dataclass(frozen=True)
class Budget:
    """How long each cell trains: the same for every recipe, so the cells compare."""

    epochs: int
    imgsz: int
    images: int  # generated images per synthetic set (train + val, 20 % val)
    batch: int
    seed: int
    bccd_images: int  # BCCD train images kept (0 = all 292)
    precision: str = "fp32"  # fp32 | bf16: the trainer's CPU autocast (amp) on this machine

    def key(self) -> str:
        key = (f"e{self.epochs}_s{self.imgsz}_n{self.images}_b{self.batch}_seed{self.seed}"
               f"_bccd{self.bccd_images}")  # fmt: skip
        return key if self.precision == "fp32" else f"{key}_{self.precision}"

    def overrides(self) -> list[str]:
        """Trainer overrides that fix the precision (fp32: ``amp=false``)."""
        return ["amp=false"] if self.precision == "fp32" else ["amp=true"]


def machine_precision() -> str:
    """``bf16`` where the trainer's default ``amp: true`` autocasts to bfloat16 on this CPU."""
    from detector.training.precision import cpu_has_native_bf16

    return "bf16" if cpu_has_native_bf16() else "fp32"


def official_overrides(epochs: int) -> list[str]:
    """The official YOLOX recipe (``schedule=yolox``, fixed size). Official: 5 warm-up and 15
    no-aug epochs; a run shorter than 35 epochs cannot hold both and a cosine at least as long as
    the no-aug phase, so there the no-aug phase is ``(epochs - 5) // 2`` (at least 1). Under 7
    epochs the 5 warm-up epochs leave no cosine phase: such budgets cannot test the recipe."""
    no_aug = 15 if epochs >= 35 else max(1, (epochs - 5) // 2)
    return ["schedule=yolox", "multiscale_range=0", f"no_aug_epochs={no_aug}"]


def recipe_overrides(recipe: str, epochs: int, custom: dict[str, list[str]]) -> list[str]:
    """The ``key=value`` overrides a recipe adds to the shipped defaults."""
    if recipe == "ours":
        return []
    if recipe == "official":
        return official_overrides(epochs)
    if recipe in custom:
        return list(custom[recipe])
    raise ValueError(f"recipe '{recipe}': not one of {[*BUILTIN_RECIPES, *custom]}")


def cell_key(dataset: str, model: str, recipe: str, budget: Budget) -> str:
    return f"{dataset}|{model}|{recipe}|{budget.key()}"


def load_results(path: Path) -> dict[str, dict[str, Any]]:
    """The results file's cells (empty when it does not exist)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); move it away to start afresh") from exc
    if not isinstance(data, dict) or not isinstance(data.get("cells"), dict):
        raise ValueError(f"{path}: no 'cells' mapping; not a recipe_check results file")
    return data["cells"]


def save_results(path: Path, cells: dict[str, dict[str, Any]]) -> None:
    """Write all cells atomically (a killed run leaves the previous file whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"cells": cells}, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def pending(
    cells: dict[str, dict[str, Any]], plan: list[tuple[str, str, str]], budget: Budget, force: bool
) -> list[tuple[str, str, str]]:
    """The (dataset, model, recipe) cells of ``plan`` still to train at ``budget``."""
    return [c for c in plan if force or cell_key(*c, budget) not in cells]


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """The evaluated epochs of a run's ``metrics.csv``: best (by mAP), last, and the curve."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the run wrote no metrics")
    with path.open() as handle:
        every = list(csv.DictReader(handle))
    rows = [r for r in every if r.get("mAP")]
    if not rows:
        raise ValueError(f"{path}: no evaluated epoch")
    best = max(rows, key=lambda r: float(r["mAP"]))
    epoch_s = sorted(float(r["epoch_s"]) for r in every if r.get("epoch_s"))
    # the loader's share of each epoch (metrics.csv has data_wait_s since commit f35e4fa)
    waits = sorted(
        float(r["data_wait_s"]) / float(r["epoch_s"])
        for r in every
        if r.get("data_wait_s") and r.get("epoch_s") and float(r["epoch_s"]) > 0
    )
    return {
        "median_data_wait_share": waits[len(waits) // 2] if waits else None,
        "mAP": float(best["mAP"]),
        "mAP50": float(best["mAP50"]),
        "best_epoch": int(best["epoch"]),
        "last_mAP": float(rows[-1]["mAP"]),
        "last_mAP50": float(rows[-1]["mAP50"]),
        "curve": {int(r["epoch"]): [float(r["mAP"]), float(r["mAP50"])] for r in rows},
        "median_epoch_s": epoch_s[len(epoch_s) // 2] if epoch_s else None,
    }


TABLE_HEADER = (
    "| dataset | model | recipe | epochs | imgsz | seed | precision | train/val | mAP | mAP50 "
    "| best ep. | last mAP | minutes | s/epoch | load | date |\n"
    "|---|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---|---|"
)


def format_row(cell: dict[str, Any]) -> str:
    """One Markdown row: the cell's dataset, model, recipe, budget, mAP, mAP50 and minutes."""
    load = "/".join(f"{x:.0f}" for x in cell.get("load", []))
    epoch_s = cell.get("median_epoch_s")
    return (
        f"| {cell['dataset']} | {cell['model']} | {cell['recipe']} | {cell['epochs']} | "
        f"{cell['imgsz']} | {cell['seed']} | {cell.get('precision', 'fp32')} | "
        f"{cell['train_images']}/{cell['val_images']} | "
        f"{cell['mAP']:.3f} | {cell['mAP50']:.3f} | {cell['best_epoch']} | "
        f"{cell['last_mAP']:.3f} | {cell['minutes']:.1f} | "
        f"{'-' if epoch_s is None else f'{epoch_s:.1f}'} | {load} | {cell['date']} |"
    )


def format_table(cells: dict[str, dict[str, Any]], keys: list[str]) -> str:
    """A Markdown table of ``keys``' cells."""
    return "\n".join([TABLE_HEADER, *(format_row(cells[k]) for k in keys)])


def pivot_table(cells: dict[str, dict[str, Any]], budget_key: str) -> str:
    """One row per (dataset, model), one column per recipe: ``mAP / mAP50`` of every cell at
    ``budget_key`` (``Budget.key()``), the best of each row in bold."""
    at = [c for c in cells.values() if c["budget"] == budget_key]
    named = sorted({c["recipe"] for c in at} - set(BUILTIN_RECIPES))
    recipes = [r for r in BUILTIN_RECIPES if any(c["recipe"] == r for c in at)] + named
    rows = sorted({(c["dataset"], c["model"]) for c in at})
    lines = [
        "| dataset | model | " + " | ".join(recipes) + " |",
        "|---|---|" + "---:|" * len(recipes),
    ]
    for dataset, model in rows:
        found = {c["recipe"]: c for c in at if (c["dataset"], c["model"]) == (dataset, model)}
        best = max(c["mAP"] for c in found.values())
        values = []
        for recipe in recipes:
            cell = found.get(recipe)
            text = "-" if cell is None else f"{cell['mAP']:.3f} / {cell['mAP50']:.3f}"
            values.append(f"**{text}**" if cell is not None and cell["mAP"] == best else text)
        lines.append(f"| {dataset} | {model} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def start_markdown(path: Path, command: str, cpu: str, recipes: dict[str, list[str]]) -> None:
    """Append a heading (date, CPU), the exact command, the recipes and the table header."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    described = "; ".join(f"{r}: `{' '.join(o) or '(shipped defaults)'}`"
                          for r, o in recipes.items())  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(f"\n### {now}, {cpu}\n\n```\n{command}\n```\n\n"
                     f"Recipes: {described}.\n\n{TABLE_HEADER}\n")  # fmt: skip


def append_row(path: Path, cell: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(format_row(cell) + "\n")


# ----------------------------------------------------------------------------- the datasets
def _synth(name: str, root: Path, budget: Budget) -> Path:
    from dataclasses import replace

    from detector.data.synth import SynthSpec, make_synthetic_dataset, synth_header

    demo = SynthSpec.demo()
    specs = {
        "synth_lookalike": replace(demo, objects=(1, 3), lookalike=True),
        "synth_demo": demo,
        "synth_dense": replace(demo, objects=(4, 20), object_size=(12, 96), relative_min=0.04),
    }
    spec = specs[name]
    folder = root / f"{name}_n{budget.images}_seed{budget.seed}"
    data_yaml = folder / "data.yaml"
    header = synth_header(budget.images, budget.seed, spec)
    if data_yaml.is_file() and data_yaml.open().readline() == header:
        return data_yaml
    return make_synthetic_dataset(folder, images=budget.images, seed=budget.seed, spec=spec)


def _bccd(name: str, root: Path, budget: Budget) -> Path:
    """BCCD itself, or a derived COCO set (train subset, classes merged) that reads the shipped
    images in place."""
    import yaml

    from detector.data import load_data_config

    shipped = REPO / "configs" / "data" / "bccd_coco.yaml"
    if name == "bccd" and budget.bccd_images == 0:
        return shipped
    config = load_data_config(shipped)
    merge = name == "bccd_merged"
    folder = root / f"{name}_n{budget.bccd_images}"
    folder.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, source in (("train", config.train), ("val", config.val)):
        data = json.loads((config.root / source).read_text())
        if split == "train" and budget.bccd_images:
            data["images"] = data["images"][: budget.bccd_images]
            kept = {image["id"] for image in data["images"]}
            data["annotations"] = [a for a in data["annotations"] if a["image_id"] in kept]
        if merge:
            data["categories"] = [{"id": 1, "name": "cell", "supercategory": "none"}]
            for annotation in data["annotations"]:
                annotation["category_id"] = 1
        path = folder / f"instances_{split}.json"
        path.write_text(json.dumps(data))
        splits[split] = str(path)
    names = ["cell"] if merge else list(config.names)
    data_yaml = folder / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({
        "format": "coco", "root": str(config.root), "train": splits["train"],
        "val": splits["val"], "images": str(config.root / config.images), "names": names,
    }, sort_keys=False))  # fmt: skip
    return data_yaml


BUILDERS: dict[str, Callable[[str, Path, Budget], Path]] = {
    "synth_lookalike": _synth, "synth_demo": _synth, "synth_dense": _synth,
    "bccd": _bccd, "bccd_merged": _bccd,
}  # fmt: skip


def build_dataset_config(name: str, root: Path, budget: Budget) -> Path:
    """The data.yaml of dataset ``name`` at ``budget`` (generated or derived under ``root``)."""
    if name not in BUILDERS:
        raise ValueError(f"dataset '{name}': not one of {list(BUILDERS)}")
    return BUILDERS[name](name, root, budget)


# ----------------------------------------------------------------------------- running
def train_cell(dataset: str, model: str, recipe: str, recipe_args: list[str], data_yaml: Path,
               budget: Budget, out: Path, workers: int | None) -> dict[str, Any]:  # fmt: skip
    """Train one cell in a fresh run folder; returns its result record."""
    from detector.data import build_dataset, load_data_config
    from detector.training.launch import train

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = f"{dataset}_{model}_{recipe}_{budget.key()}_{stamp}"
    overrides = [
        f"epochs={budget.epochs}", f"imgsz={budget.imgsz}", f"batch={budget.batch}",
        f"seed={budget.seed}", f"output_dir={out / 'runs'}", f"name={name}", "plots=false",
        f"eval_interval={max(budget.epochs // 2, 1)}", *budget.overrides(),
        *([f"workers={workers}"] if workers is not None else []),
        *recipe_args,
    ]  # fmt: skip
    print(f"\n== {dataset} / {model} / {recipe}: {' '.join(overrides)}", flush=True)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    run_dir = train(model, data_yaml, overrides)
    minutes = (time.perf_counter() - started) / 60
    config = load_data_config(data_yaml)
    record: dict[str, Any] = {
        "dataset": dataset, "model": model, "recipe": recipe, "overrides": recipe_args,
        "all_overrides": overrides, "epochs": budget.epochs, "imgsz": budget.imgsz,
        "batch": budget.batch, "seed": budget.seed, "budget": budget.key(),
        "precision": budget.precision,
        "train_images": len(build_dataset(config, "train").records),
        "val_images": len(build_dataset(config, "val").records),
        "minutes": minutes, "run_dir": str(run_dir), "cpu": cpu_name(),
        "load": [load_before, os.getloadavg()[0]],
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
    }  # fmt: skip
    record.update(read_metrics(run_dir))
    return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train nano/tiny briefly per recipe on several datasets; print mAP tables.",
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--datasets", nargs="+", default=["synth_lookalike", "synth_demo",
                        "bccd"], choices=DATASETS)  # fmt: skip
    parser.add_argument(
        "--recipes",
        nargs="*",
        default=list(BUILTIN_RECIPES),
        choices=BUILTIN_RECIPES,
        help="built-in recipes to run (ours official)",
    )
    parser.add_argument("--name", help="name of the recipe made of the key=value overrides")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--images", type=int, default=200, help="images per generated set")
    parser.add_argument(
        "--bccd-images", type=int, default=0, help="BCCD train images kept (0 = all 292)"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: what the trainer's default amp gives on this CPU (bf16 with AMX or AVX-512 "
        "BF16, else fp32)",
    )
    parser.add_argument("--workers", type=int, help="loader workers (default: the trainer's)")
    parser.add_argument("--out", default=str(REPO / "runs" / "recipe_check"))
    parser.add_argument("--results", default=str(DEFAULT_RESULTS))
    parser.add_argument("--table", default=str(DEFAULT_TABLE), help="Markdown file appended to")
    parser.add_argument("--force", action="store_true", help="retrain cells already in results")
    parser.add_argument("--dry-run", action="store_true", help="list the cells, train nothing")
    parser.add_argument(
        "--summary",
        action="store_true",
        help="print the results at this budget as a dataset x recipe table, train nothing",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="overrides of the named recipe (--name)")  # fmt: skip
    args = parser.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"overrides must be key=value, got {bad}")
    if args.overrides and not args.name:
        parser.error("key=value overrides make a named recipe: give it --name NAME")
    if args.name in BUILTIN_RECIPES:
        parser.error(f"--name {args.name}: taken by a built-in recipe")
    if args.epochs < 1 or args.imgsz % 32 or args.images < 2 or args.bccd_images < 0:
        parser.error("--epochs >= 1, --imgsz a multiple of 32, --images >= 2, --bccd-images >= 0")
    return args


def plan_of(args: argparse.Namespace) -> tuple[list[tuple[str, str, str]], dict[str, list[str]]]:
    """The (dataset, model, recipe) cells asked for, and the named recipe's overrides."""
    custom = {args.name: list(args.overrides)} if args.name else {}
    recipes = [*args.recipes, *custom]
    if not recipes:
        raise ValueError("no recipe to run: give --recipes and/or --name NAME key=value ...")
    plan = [(d, m, r) for d in args.datasets for m in args.models for r in recipes]
    return plan, custom


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    precision = machine_precision() if args.precision == "auto" else args.precision
    budget = Budget(args.epochs, args.imgsz, args.images, args.batch, args.seed, args.bccd_images,
                    precision)  # fmt: skip
    results = Path(args.results)
    cells = load_results(results)
    if args.summary:
        print(f"mAP / mAP50 at {budget.key()}\n{pivot_table(cells, budget.key())}")
        return 0
    plan, custom = plan_of(args)
    todo = pending(cells, plan, budget, args.force)
    print(f"{len(plan)} cells at {budget.key()}: {len(plan) - len(todo)} in {results}, "
          f"{len(todo)} to train")  # fmt: skip
    for cell in todo:
        print("  to train: " + " / ".join(cell))
    if args.dry_run:
        return 0
    command = shlex.join(
        [
            ".venv/bin/python",
            "benchmarks/recipe_check.py",
            *(sys.argv[1:] if argv is None else argv),
        ]
    )
    out = Path(args.out)
    cpu = cpu_name()
    table = Path(args.table)
    if todo:
        used = dict.fromkeys(r for _, _, r in todo)
        start_markdown(
            table, command, cpu, {r: recipe_overrides(r, budget.epochs, custom) for r in used}
        )
    for dataset, model, recipe in todo:
        data_yaml = build_dataset_config(dataset, out / "data", budget)
        record = train_cell(dataset, model, recipe,
                            recipe_overrides(recipe, budget.epochs, custom), data_yaml, budget,
                            out, args.workers)  # fmt: skip
        record["command"] = command
        key = cell_key(dataset, model, recipe, budget)
        cells[key] = record
        save_results(results, cells)  # after each cell: a killed check keeps what finished
        append_row(table, record)
    keys = [cell_key(*c, budget) for c in plan if cell_key(*c, budget) in cells]
    print(f"\n{cpu}\n{format_table(cells, keys)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
