"""benchmarks/recipe_check.py: its arguments, the official recipe at short budgets, the derived
BCCD sets, and a real 1-epoch check at 64 px that writes the JSON and the Markdown rows and is
not retrained when run again."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_recipe_check():
    """The script as a module, imported the way running it does (its folder on sys.path)."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(
        "recipe_check", ROOT / "benchmarks" / "recipe_check.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


rc = load_recipe_check()


@pytest.mark.parametrize(
    "argv",
    [
        ["lr_per_64=0.02"],  # overrides without --name
        ["--name", "ours", "lr_per_64=0.02"],  # a built-in's name
        ["--name", "x", "lr_per_64"],  # not key=value
        ["--imgsz", "300"],  # not a multiple of 32
        ["--datasets", "coco"],  # unknown dataset
    ],
)
def test_bad_arguments_exit_with_usage(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        rc.parse_args(argv)
    assert info.value.code == 2


def test_plan_has_every_dataset_model_recipe() -> None:
    args = rc.parse_args(["--models", "yolox_nano", "--datasets", "synth_demo", "bccd",
                          "--name", "lr2", "lr_per_64=0.024"])  # fmt: skip
    plan, custom = rc.plan_of(args)
    assert custom == {"lr2": ["lr_per_64=0.024"]}
    assert plan == [(d, "yolox_nano", r) for d in ("synth_demo", "bccd")
                    for r in ("ours", "official", "lr2")]  # fmt: skip
    assert rc.recipe_overrides("lr2", 10, custom) == ["lr_per_64=0.024"]
    with pytest.raises(ValueError, match="recipe 'sgd'"):
        rc.recipe_overrides("sgd", 10, custom)


@pytest.mark.parametrize("epochs", [7, 10, 16, 20, 34, 35, 40, 300])
def test_official_recipe_keeps_a_cosine_phase(epochs: int) -> None:
    """The trainer's config of the official recipe: SGD at YOLOX's rate, 5 warm-up epochs, the
    official 15 no-aug epochs from 35 epochs on, and from 7 epochs on a cosine phase (below,
    the 5 warm-up epochs take the run)."""
    from detector.models import get_model_config
    from detector.training.config import build_train_config

    config = build_train_config(
        model_defaults=get_model_config("yolox_nano").train,
        overrides=[f"epochs={epochs}", *rc.official_overrides(epochs)],
    )
    assert (config.optimizer, config.lr_per_64, config.warmup_epochs) == ("sgd", 0.01, 5)
    assert config.multiscale_range == 0
    assert config.no_aug_epochs == (15 if epochs >= 35 else max(1, (epochs - 5) // 2))
    assert config.warmup_epochs + config.no_aug_epochs < epochs


def test_bccd_merged_subset(tmp_path: Path) -> None:
    from detector.data import build_dataset, load_data_config

    budget = rc.Budget(epochs=1, imgsz=64, images=10, batch=4, seed=0, bccd_images=12)
    data_yaml = rc.build_dataset_config("bccd_merged", tmp_path, budget)
    config = load_data_config(data_yaml)
    assert config.names == ["cell"]
    train, val = build_dataset(config, "train"), build_dataset(config, "val")
    assert (len(train.records), len(val.records)) == (12, 72)
    assert {int(c) for r in train.records for c in r.labels} == {0}
    shipped = rc.build_dataset_config("bccd", tmp_path, rc.Budget(1, 64, 10, 4, 0, 0))
    assert shipped == ROOT / "configs" / "data" / "bccd_coco.yaml"


def test_bad_results_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="r.json"):
        rc.load_results(path)


def test_one_epoch_check_writes_and_skips(tmp_path: Path, capsys) -> None:
    results, table = tmp_path / "r.json", tmp_path / "t.md"
    argv = ["--models", "yolox_nano", "--datasets", "synth_lookalike", "--recipes", "ours",
            "--epochs", "1", "--imgsz", "64", "--images", "10", "--batch", "4", "--workers", "0",
            "--out", str(tmp_path / "out"), "--results", str(results),
            "--table", str(table), "--precision", "fp32"]  # fmt: skip
    assert rc.main(argv) == 0
    cells = json.loads(results.read_text())["cells"]
    assert len(cells) == 1
    ((key, cell),) = cells.items()
    assert key == "synth_lookalike|yolox_nano|ours|e1_s64_n10_b4_seed0_bccd0"
    assert (cell["train_images"], cell["val_images"], cell["best_epoch"]) == (8, 2, 1)
    assert cell["precision"] == "fp32" and "amp=false" in cell["all_overrides"]
    assert 0.0 <= cell["mAP"] <= cell["mAP50"] <= 1.0
    assert Path(cell["run_dir"]).parent == tmp_path / "out" / "runs"
    text = table.read_text()
    assert "benchmarks/recipe_check.py --models yolox_nano" in text
    assert text.count("| synth_lookalike | yolox_nano | ours | 1 | 64 | 0 | fp32 | 8/2 |") == 1

    capsys.readouterr()
    assert rc.main(argv) == 0  # already there: nothing trained, nothing appended
    assert "0 to train" in capsys.readouterr().out
    assert table.read_text() == text
    assert len(list((tmp_path / "out" / "runs").iterdir())) == 1
    assert rc.pending(cells, [("synth_lookalike", "yolox_nano", "ours")],
                      rc.Budget(2, 64, 10, 4, 0, 0), force=False) != []  # fmt: skip


def test_precision_is_part_of_the_cell() -> None:
    """A bfloat16 cell never stands in for a float32 one (older float32 keys keep their form)."""
    fp32 = rc.Budget(16, 256, 240, 8, 0, 0)
    bf16 = rc.Budget(16, 256, 240, 8, 0, 0, "bf16")
    assert fp32.key() == "e16_s256_n240_b8_seed0_bccd0"
    assert bf16.key() == fp32.key() + "_bf16"
    assert fp32.overrides() == ["amp=false"] and bf16.overrides() == ["amp=true"]


def test_summary_pivots_recipes_into_columns() -> None:
    """``--summary``: a row per (dataset, model), the built-in recipes first, the best in bold,
    a missing cell as '-', other budgets left out."""

    def cell(dataset: str, recipe: str, m: float, budget: str = "b1") -> dict:
        return {"dataset": dataset, "model": "yolox_nano", "recipe": recipe, "budget": budget,
                "mAP": m, "mAP50": 2 * m}  # fmt: skip

    cells = {
        "1": cell("synth_demo", "lr2", 0.3),
        "2": cell("synth_demo", "official", 0.1),
        "3": cell("synth_demo", "ours", 0.2),
        "4": cell("bccd", "ours", 0.4),
        "5": cell("bccd", "official", 0.9, budget="b2"),
    }
    lines = rc.pivot_table(cells, "b1").splitlines()
    assert lines[0] == "| dataset | model | ours | official | lr2 |"
    assert lines[2] == "| bccd | yolox_nano | **0.400 / 0.800** | - | - |"
    demo = "| synth_demo | yolox_nano | 0.200 / 0.400 | 0.100 / 0.200 | **0.300 / 0.600** |"
    assert lines[3] == demo
