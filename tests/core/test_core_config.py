"""detector.core.config: typed loading, suggestions for unknown keys, dotted overrides."""

from dataclasses import dataclass, field

import pytest

from detector.core.config import ConfigError, apply_overrides, from_mapping, load_yaml


@dataclass(frozen=True)
class Inner:
    scale: tuple[float, float] = (0.1, 2.0)
    prob: float = 1.0


@dataclass(frozen=True)
class Outer:
    epochs: int = 10
    name: str = "exp"
    size: int | None = None
    inner: Inner = field(default_factory=Inner)


def test_defaults_and_nested_values_are_typed():
    config = from_mapping(Outer, {"epochs": 3, "inner": {"scale": [0.5, 1.5], "prob": 1}})
    assert config.epochs == 3
    assert config.inner.scale == (0.5, 1.5)
    assert isinstance(config.inner.prob, float)
    assert config.size is None


def test_unknown_key_names_source_and_suggests():
    with pytest.raises(ConfigError, match=r"my\.yaml: unknown key 'epoch' \(did you mean 'epochs'"):
        from_mapping(Outer, {"epoch": 3}, "my.yaml")
    with pytest.raises(ConfigError, match=r"unknown key 'prb'.*'prob'"):
        from_mapping(Outer, {"inner": {"prb": 0.5}}, "my.yaml")


def test_wrong_types_are_errors():
    with pytest.raises(ConfigError, match="epochs: expected an integer"):
        from_mapping(Outer, {"epochs": "ten"})
    with pytest.raises(ConfigError, match="expected 2 values"):
        from_mapping(Outer, {"inner": {"scale": [1.0]}})


def test_overrides_are_parsed_as_yaml_and_checked_against_the_schema():
    data = apply_overrides({"epochs": 10}, ["epochs=3", "inner.prob=0", "name=run1"], Outer)
    assert data == {"epochs": 3, "inner": {"prob": 0}, "name": "run1"}
    assert from_mapping(Outer, data).inner.prob == 0.0
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        apply_overrides({}, ["epoks=3"], Outer)
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["epochs"], Outer)


def test_load_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: line 2, column 1: not valid YAML"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        load_yaml(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(listing)


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("epochs: 3\nbatch: [8, 16\nlr: 0.1\n", 3, "expected ',' or ']'"),
        ("epochs: 3\n  batch: 8\n", 2, "mapping values are not allowed here"),
        ("name: 'exp\n", 2, "unexpected end of stream"),
        ("epochs: 3\n\tbatch: 8\n", 2, "'\\t' that cannot start any token"),
    ],
)
def test_malformed_yaml_names_the_file_and_line(tmp_path, text, line, problem):
    """The file's own name and the line, never PyYAML's 'in "<unicode string>"'."""
    path = tmp_path / "train.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_yaml(path)
    message = str(err.value)
    assert message.startswith(f"{path}: line {line}, column ")
    assert problem in message and "<unicode string>" not in message, message


def test_malformed_data_config_names_the_file_and_line(tmp_path):
    from detector.data import load_data_config

    path = tmp_path / "data.yaml"
    path.write_text("format: coco\nnames: [a, b\ntrain: t.json\n")
    with pytest.raises(ConfigError, match=r"data\.yaml: line 3, column 6: not valid YAML"):
        load_data_config(path)
