"""Dataset configs: ``configs/data/*.yaml`` or an Ultralytics ``data.yaml`` -> ``DataConfig``.

A dataset config names its format, its root and its splits::

    format: voc                      # coco | yolo | voc
    root: ../../data/bccd            # relative to this file's directory, or absolute
    train: trainval                  # voc: an ImageSets/Main name; coco: a JSON file; yolo: a dir
    val: test                        #   or a .txt list of images
    images: images                   # coco/voc: the image folder under root
    names: [RBC, WBC, Platelets]

Ultralytics users' ``data.yaml`` files load unchanged: ``path`` is read as ``root``, ``names``
may be a ``{id: name}`` mapping, ``nc`` is checked against ``names`` and ``format`` defaults to
``yolo`` when absent.

``root`` may name an environment variable, ``${NAME}`` or ``${NAME:-default}`` (the default when
``NAME`` is unset or empty), so that one config serves a copy of the data shipped with the
project and a larger one elsewhere: ``root: ${BCCD_ROOT:-../../data/bccd}``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detector.core.config import ConfigError, apply_overrides, load_yaml, suggest

FORMATS = ("coco", "yolo", "voc")
BAD_IMAGE_POLICIES = ("error", "skip")
DEFAULT_IMAGE_DIRS = {"coco": "images", "voc": "JPEGImages", "yolo": ""}


@dataclass
class DataConfig:
    """A dataset: where it lives, how it is stored, its splits and class names.

    ``root`` is resolved (absolute). ``train``/``val`` are split names or paths relative to
    ``root``. ``on_bad_image``: ``error`` (default) stops on a missing or undecodable image with
    a message naming it; ``skip`` drops it and logs one count per dataset.
    """

    format: str
    root: Path
    train: str
    val: str
    names: list[str] = field(default_factory=list)
    images: str = ""
    on_bad_image: str = "error"
    source: str = "<memory>"

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def split(self, name: str) -> str:
        """The ``train`` or ``val`` entry."""
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return self.train if name == "train" else self.val


_KEYS = ("format", "root", "path", "train", "val", "test", "names", "nc", "images",
         "on_bad_image", "download")  # fmt: skip


def data_config_from_mapping(
    data: dict[str, Any], base_dir: Path, source: str = "<memory>"
) -> DataConfig:
    """Build a ``DataConfig`` from a parsed YAML mapping; relative roots resolve from
    ``base_dir``; errors name ``source``."""
    for key in data:
        if key not in _KEYS:
            raise ConfigError(f"{source}: unknown key '{key}'{suggest(str(key), _KEYS)}")
    fmt = str(data.get("format", "yolo")).lower()
    if fmt not in FORMATS:
        raise ConfigError(f"{source}: format '{fmt}' is not one of {', '.join(FORMATS)}")
    root_value = data.get("root", data.get("path"))
    if root_value is None:
        root_value = "."
    root = Path(expand_env(str(root_value), source)).expanduser()
    if not root.is_absolute():
        root = base_dir / root
    root = root.resolve()
    if not root.is_dir():
        raise ConfigError(f"{source}: root '{root_value}' resolves to {root}, not a directory")
    for key in ("train", "val"):
        if not data.get(key):
            raise ConfigError(f"{source}: missing key '{key}'")
        if not isinstance(data[key], str):
            raise ConfigError(f"{source}: {key}: expected one split name or path")
    names = _parse_names(data.get("names"), source)
    if "nc" in data and names and int(data["nc"]) != len(names):
        raise ConfigError(f"{source}: nc is {data['nc']} but names lists {len(names)} classes")
    policy = str(data.get("on_bad_image", "error"))
    if policy not in BAD_IMAGE_POLICIES:
        raise ConfigError(f"{source}: on_bad_image must be one of {BAD_IMAGE_POLICIES}")
    images = data.get("images")
    cfg = DataConfig(
        format=fmt,
        root=root,
        train=str(data["train"]),
        val=str(data["val"]),
        names=names,
        images=DEFAULT_IMAGE_DIRS[fmt] if images is None else str(images),
        on_bad_image=policy,
        source=source,
    )
    if not cfg.names:
        if fmt != "coco":
            raise ConfigError(f"{source}: 'names' (the class names) is required for {fmt} data")
        cfg.names = _coco_names(cfg.root / cfg.train)
    return cfg


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, source: str = "<memory>") -> str:
    """Replace ``${NAME}`` and ``${NAME:-default}`` in ``text`` by the environment's values.

    ``default`` is used when ``NAME`` is unset or empty; an unset ``NAME`` without a default is
    an error naming ``source``.
    """

    def value(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name, "")
        if found:
            return found
        if default is None:
            raise ConfigError(f"{source}: root refers to ${{{name}}}, which is not set")
        return default

    return _ENV_REF.sub(value, text)


def load_data_config(path: str | Path, overrides: Iterable[str] = ()) -> DataConfig:
    """Read a dataset YAML (ours or Ultralytics' ``data.yaml``), apply ``key=value`` overrides.

    Relative ``root`` values resolve from the YAML file's directory.
    """
    path = Path(path)
    data = apply_overrides(load_yaml(path), overrides)
    return data_config_from_mapping(data, path.resolve().parent, str(path))


def _parse_names(value: Any, source: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, dict):
        try:
            ids = sorted(int(k) for k in value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: names: mapping keys must be class ids") from exc
        if ids != list(range(len(ids))):
            raise ConfigError(f"{source}: names: class ids must be 0..{len(ids) - 1}")
        lookup = {int(k): v for k, v in value.items()}
        return [str(lookup[i]) for i in ids]
    if isinstance(value, list):
        return [str(v) for v in value]
    raise ConfigError(f"{source}: names: expected a list or an {{id: name}} mapping")


def _coco_names(json_path: Path) -> list[str]:
    """Class names of a COCO JSON, in the order of their category ids."""
    try:
        cats = json.loads(json_path.read_text())["categories"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{json_path}: cannot read COCO categories ({exc})") from exc
    return [c["name"] for c in sorted(cats, key=lambda c: c["id"])]
