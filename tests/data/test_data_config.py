"""Dataset configs: our YAML, Ultralytics' data.yaml, errors that name the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_paths import BCCD_COCO, BCCD_ROOT, BCCD_VOC

from detector.core.config import ConfigError
from detector.data import load_data_config


def test_bccd_configs_resolve_root_relative_to_the_yaml(monkeypatch):
    monkeypatch.delenv("BCCD_ROOT", raising=False)
    voc, coco = load_data_config(BCCD_VOC), load_data_config(BCCD_COCO)
    assert voc.root == coco.root == BCCD_ROOT.resolve()  # the copy inside the repository
    assert voc.format == "voc" and coco.format == "coco"
    assert voc.names == coco.names == ["RBC", "WBC", "Platelets"]


def test_bccd_root_from_the_environment(monkeypatch, tmp_path: Path):
    """BCCD_ROOT points the shipped configs at a copy elsewhere; unset or empty, the shipped
    copy is used."""
    elsewhere = tmp_path / "bccd_big"
    (elsewhere / "coco").mkdir(parents=True)
    (elsewhere / "coco/instances_train.json").write_text("{}")
    monkeypatch.setenv("BCCD_ROOT", str(elsewhere))
    assert load_data_config(BCCD_VOC).root == load_data_config(BCCD_COCO).root == elsewhere
    monkeypatch.setenv("BCCD_ROOT", "")
    assert load_data_config(BCCD_VOC).root == BCCD_ROOT.resolve()


def test_root_env_reference_without_default_must_be_set(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("MY_DATA_ROOT", raising=False)
    path = tmp_path / "d.yaml"
    path.write_text("format: yolo\nroot: ${MY_DATA_ROOT}/ds\ntrain: a\nval: b\nnames: [x]\n")
    with pytest.raises(
        ConfigError, match=r"d\.yaml: root refers to \$\{MY_DATA_ROOT\}, which is not"
    ):
        load_data_config(path)
    (tmp_path / "ds").mkdir()
    monkeypatch.setenv("MY_DATA_ROOT", str(tmp_path))
    assert load_data_config(path).root == tmp_path / "ds"


def test_ultralytics_data_yaml(tmp_path: Path):
    (tmp_path / "ds/images/train").mkdir(parents=True)
    (tmp_path / "data.yaml").write_text(
        "path: ds\ntrain: images/train\nval: images/train\nnc: 2\nnames: {0: cat, 1: dog}\n"
    )
    cfg = load_data_config(tmp_path / "data.yaml")
    assert cfg.format == "yolo" and cfg.names == ["cat", "dog"]
    assert cfg.root == (tmp_path / "ds").resolve()


def test_overrides_and_unknown_keys(tmp_path: Path):
    path = tmp_path / "d.yaml"
    path.write_text("format: yolo\nroot: .\ntrain: a\nval: b\nnames: [x]\n")
    assert load_data_config(path, ["val=c"]).val == "c"
    path.write_text("format: yolo\nroot: .\ntrain: a\nval: b\nnames: [x]\nnmaes: [y]\n")
    with pytest.raises(ConfigError, match=r"d\.yaml.*'nmaes'.*did you mean 'names'"):
        load_data_config(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("format: xml\ntrain: a\nval: b\nnames: [x]\n", "format 'xml'"),
        ("format: voc\nroot: nowhere\ntrain: a\nval: b\nnames: [x]\n", "not a directory"),
        ("format: voc\ntrain: a\nnames: [x]\n", "missing key 'val'"),
        ("format: voc\ntrain: a\nval: b\n", "'names'"),
        ("format: yolo\ntrain: a\nval: b\nnc: 3\nnames: [x]\n", "nc is 3"),
    ],
)
def test_config_errors_name_the_file(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_data_config(path)
    assert "bad.yaml" in str(info.value)
