"""A model repository on disk: one folder per model, numbered version folders, the layout NVIDIA
Triton reads and ``detector export triton`` writes, so one folder serves from either server.

Two forms are read:

- **plain**: ``DIR/NAME/<version>/model.onnx`` (or ``model.plan`` / ``model.engine`` with its
  ``.json`` sidecar, or ``model.pt``, a checkpoint of ours), with an optional
  ``DIR/NAME/config.pbtxt`` giving ``version_policy``, ``max_batch_size`` and
  ``default_model_filename``, as in Triton's model configuration;
- **an export of ours**: ``detector export triton`` writes an ensemble ``N`` (what clients call)
  with ``N_preprocess``, ``N_model`` (the network: ``<version>/model.onnx`` or ``model.plan``) and
  ``N_postprocess``. Triton needs the two Python-backend halves to run our pre- and
  post-processing around the network; this server runs them itself, so it serves the ensemble's
  client-facing name ``N`` with the versions and the ``version_policy`` of ``N_model``, and
  does not list the three parts as models of their own. A client calls ``N`` on either server.

Version folders are positive whole numbers (``1``, ``2``, ...); other entries (``.2.tmp``,
``README``) are ignored, so a version copied under a hidden name and renamed into place appears
at once and whole. ``version_policy`` is read as Triton defines it: ``latest { num_versions: K
}`` (the default, K = 1), ``all { }`` or ``specific { versions: [...] }``.

Each version's files have a fingerprint (size and modification time of the model file, its
sidecar and the model's ``config.pbtxt``): a changed fingerprint means a changed version, and
:class:`SettleTracker` holds a version back until its fingerprint is the same at two polls in a
row, so a file still being copied is not loaded half-written.

``config.pbtxt`` is protobuf text; it is read with protobuf's own tokenizer into plain values
(:func:`parse_pbtxt`), because the serving install does not carry Triton's schema
(``tritonclient``); the tests parse the same files with that schema and compare.

Plain Python, no web framework, nothing loaded: :mod:`serve.registry` loads what this finds.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from serve.runtime.errors import ServeError

CONFIG_NAME = "config.pbtxt"
MODEL_FILENAMES = ("model.onnx", "model.plan", "model.engine", "model.pt", "model.pth")
"""The model file a version folder holds, in this order (Triton's default names, plus ours)."""
SIDECAR_SUFFIXES = (".plan", ".engine")  # TensorRT plans: their metadata is FILE.json
ENSEMBLE_PARTS = ("preprocess", "model", "postprocess")  # N_<part>, written by export triton
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
"""A model name: what ``detector export triton --name`` and the v2 routes accept."""

Fingerprint = tuple[int, ...]


class RepositoryError(ServeError, ValueError):
    """A repository or one of its models cannot be read; the message names the file at fault
    (answered 400 to a load call; an ``error:`` line at start-up)."""

    status, code = 400, "invalid_repository"


class UnknownModel(ServeError, LookupError):
    """No model or version of that name (HTTP 404)."""

    status, code = 404, "not_found"


# ---------------------------------------------------------------------------- config.pbtxt


def parse_pbtxt(text: str, source: str = CONFIG_NAME) -> dict[str, Any]:
    """Protobuf text (``config.pbtxt``) -> plain values: each field name maps to its value, or
    to the list of its values when it is given more than once or as a ``[...]`` list; a message
    is a dict, a string its text, anything else (numbers, enums) the token as written.

    Raises:
        RepositoryError: the text is not protobuf text format, naming ``source``, line, column.
    """
    try:
        tokenizer = text_format.Tokenizer(text.splitlines())
        fields = _message(tokenizer, closing="")
    except text_format.ParseError as exc:
        raise RepositoryError(f"{source}: not protobuf text format ({exc})") from exc
    return fields


def _message(tokenizer: text_format.Tokenizer, closing: str) -> dict[str, Any]:
    """Fields until ``closing`` (``""``: the end of the text)."""
    fields: dict[str, list[Any]] = {}
    while not tokenizer.LookingAt(closing):
        if tokenizer.AtEnd():
            raise tokenizer.ParseError(f"expected '{closing}' before the end")
        name = tokenizer.ConsumeIdentifier()
        tokenizer.TryConsume(":")
        values = fields.setdefault(name, [])
        if tokenizer.TryConsume("["):
            while not tokenizer.TryConsume("]"):
                values.append(_value(tokenizer))
                tokenizer.TryConsume(",")
        else:
            values.append(_value(tokenizer))
        if not tokenizer.TryConsume(","):
            tokenizer.TryConsume(";")
    return {k: v[0] if len(v) == 1 else v for k, v in fields.items()}


def _value(tokenizer: text_format.Tokenizer) -> Any:
    for opening, closing in (("{", "}"), ("<", ">")):
        if tokenizer.TryConsume(opening):
            fields = _message(tokenizer, closing)
            tokenizer.Consume(closing)
            return fields
    if tokenizer.token[:1] in ("'", '"'):
        return tokenizer.ConsumeString()
    token = tokenizer.token
    if not token or token in "{}[]<>:,;":
        raise tokenizer.ParseError(f"expected a value, found {token or 'the end'!r}")
    tokenizer.NextToken()
    return token


@dataclass(frozen=True)
class VersionPolicy:
    """Which of a model's versions are served (Triton's ``version_policy``): the ``latest``
    ``num_versions``, ``all``, or the ``specific`` ``versions`` among those present."""

    kind: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: Iterable[int]) -> list[int]:
        """The versions to serve among ``available``, ascending."""
        present = sorted(set(available))
        if self.kind == "all":
            return present
        if self.kind == "specific":
            return [v for v in present if v in self.versions]
        return present[-self.num_versions :] if self.num_versions > 0 else []

    def describe(self) -> str:
        """As it reads in ``config.pbtxt``."""
        if self.kind == "all":
            return "all"
        if self.kind == "specific":
            return f"specific versions {', '.join(map(str, self.versions))}"
        return f"latest {self.num_versions}"

    def to_json(self) -> dict[str, Any]:
        """Triton's JSON form (``GET /v2/models/{name}/config``)."""
        if self.kind == "all":
            return {"all": {}}
        if self.kind == "specific":
            return {"specific": {"versions": list(self.versions)}}
        return {"latest": {"num_versions": self.num_versions}}


@dataclass(frozen=True)
class ModelConfig:
    """What this server reads from a model's configuration; every other field is Triton's own
    (instance groups, dynamic batching, ensemble steps) and is left to it."""

    policy: VersionPolicy = field(default_factory=VersionPolicy)
    max_batch_size: int | None = None  # None: not given
    default_model_filename: str | None = None
    platform: str = ""
    backend: str = ""


def _pick(mapping: Mapping[str, Any], *names: str) -> Any:
    """The value of the first of ``names`` present (JSON configs may use lowerCamelCase)."""
    for name in names:
        if name in mapping:
            return mapping[name]
    return None


def _whole(value: Any, where: str, source: str) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise RepositoryError(f"{source}: {where}: {value!r} is not a whole number") from None


def policy_from(value: Any, source: str) -> VersionPolicy:
    """A ``version_policy`` message (from protobuf text or Triton's JSON form) -> the policy.

    Raises:
        RepositoryError: not one of latest / all / specific, or bad numbers.
    """
    if value is None:
        return VersionPolicy()
    if not isinstance(value, Mapping) or len(value) != 1:
        raise RepositoryError(
            f"{source}: version_policy must hold exactly one of latest, all, specific; got "
            f"{value!r}"
        )
    [(kind, body)] = value.items()
    body = body if isinstance(body, Mapping) else {}
    if kind == "all":
        return VersionPolicy("all")
    if kind == "latest":
        count = _pick(body, "num_versions", "numVersions")
        number = 1 if count is None else _whole(count, "version_policy.latest.num_versions", source)
        if number < 1:
            raise RepositoryError(f"{source}: version_policy.latest.num_versions must be >= 1")
        return VersionPolicy("latest", num_versions=number)
    if kind == "specific":
        listed = _pick(body, "versions")
        listed = listed if isinstance(listed, list) else [] if listed is None else [listed]
        versions = tuple(
            sorted({_whole(v, "version_policy.specific.versions", source) for v in listed})
        )
        if not versions:
            raise RepositoryError(f"{source}: version_policy.specific lists no versions")
        return VersionPolicy("specific", versions=versions)
    raise RepositoryError(f"{source}: version_policy {kind!r} is not one of latest, all, specific")


def config_from(values: Mapping[str, Any], source: str) -> ModelConfig:
    """Plain config values (:func:`parse_pbtxt`, or the JSON ``config`` of a load call) -> the
    fields this server uses."""
    max_batch = _pick(values, "max_batch_size", "maxBatchSize")
    filename = _pick(values, "default_model_filename", "defaultModelFilename")
    if filename is not None and (not isinstance(filename, str) or "/" in filename
                                 or filename in ("", ".", "..")):  # fmt: skip
        raise RepositoryError(f"{source}: default_model_filename {filename!r} is not a file name")
    return ModelConfig(
        policy=policy_from(_pick(values, "version_policy", "versionPolicy"), source),
        max_batch_size=None if max_batch is None else _whole(max_batch, "max_batch_size", source),
        default_model_filename=filename,
        platform=str(values.get("platform") or ""),
        backend=str(values.get("backend") or ""),
    )


def read_config(path: Path) -> ModelConfig:
    """A model's ``config.pbtxt``; the defaults (latest 1) when there is none.

    Raises:
        RepositoryError: unreadable or not protobuf text, or a bad ``version_policy``.
    """
    if not path.is_file():
        return ModelConfig()
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{path}: cannot be read ({exc})") from exc
    return config_from(parse_pbtxt(text, str(path)), str(path))


# ---------------------------------------------------------------------------- the folder


@dataclass(frozen=True)
class VersionFiles:
    """One version folder's model file and its fingerprint."""

    version: int
    path: Path
    fingerprint: Fingerprint


@dataclass(frozen=True)
class ModelEntry:
    """One model of the repository as its folder says it is now.

    ``folder`` holds the version folders (``N_model`` for an export of ours); ``versions`` are
    those with a model file, ``skipped`` the version folders without one (and why); ``problem``
    says why the model cannot be served at all (a bad config, a Python-backend model).
    """

    name: str
    folder: Path
    config: ModelConfig = field(default_factory=ModelConfig)
    versions: Mapping[int, VersionFiles] = field(default_factory=dict)
    skipped: Mapping[int, str] = field(default_factory=dict)
    problem: str | None = None
    ensemble: bool = False

    def no_version(self, policy: VersionPolicy | None = None) -> str:
        """Why the policy selects nothing: what is there, and what was skipped."""
        policy = policy or self.config.policy
        found = ", ".join(map(str, sorted(self.versions))) or "none"
        text = (f"model {self.name!r}: no version to serve ({policy.describe()} over the "
                f"version folders with a model file in {self.folder}: {found})")  # fmt: skip
        if self.skipped:
            text += "; " + "; ".join(self.skipped[v] for v in sorted(self.skipped))
        return text


def fingerprint(*paths: Path) -> Fingerprint:
    """Size and modification time (ns) of each path that exists, in order (0, 0 for one that
    does not)."""
    values: list[int] = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            values += [0, 0]
            continue
        values += [stat.st_size, stat.st_mtime_ns]
    return tuple(values)


def _version_folders(folder: Path) -> list[tuple[int, Path]]:
    found = []
    try:
        children = list(folder.iterdir())
    except OSError:
        return []
    for child in children:
        name = child.name
        if name.isascii() and name.isdigit() and int(name) > 0 and child.is_dir():
            found.append((int(name), child))
    return sorted(found)


def _model_versions(name: str, folder: Path, config: ModelConfig, config_path: Path,
                    ensemble: bool = False) -> ModelEntry:  # fmt: skip
    candidates = (
        (config.default_model_filename,) if config.default_model_filename else MODEL_FILENAMES
    )
    versions: dict[int, VersionFiles] = {}
    skipped: dict[int, str] = {}
    for number, child in _version_folders(folder):
        path = next((child / c for c in candidates if (child / c).is_file()), None)
        if path is None:
            skipped[number] = f"{child}: no model file ({', '.join(candidates)})"
            continue
        files = [path]
        if path.suffix in SIDECAR_SUFFIXES:
            files.append(path.with_name(path.name + ".json"))
        versions[number] = VersionFiles(number, path, fingerprint(*files, config_path))
    return ModelEntry(name, folder, config, versions, skipped, ensemble=ensemble)


def ensemble_of(root: Path, name: str) -> str | None:
    """The ensemble of ours that model folder ``name`` is a part of (``N`` for ``N_model``),
    if ``N`` is in ``root`` and is an ensemble."""
    for part in ENSEMBLE_PARTS:
        suffix = f"_{part}"
        if name.endswith(suffix) and len(name) > len(suffix):
            owner = name[: -len(suffix)]
            try:
                if read_config(root / owner / CONFIG_NAME).platform == "ensemble":
                    return owner
            except RepositoryError:
                return None
    return None


def scan_model(root: Path, name: str) -> ModelEntry:
    """Model ``name`` of the repository ``root`` as its folder says now.

    Raises:
        UnknownModel: no such model folder (or not a valid model name).
    """
    folder = root / name
    if not NAME.match(name) or not folder.is_dir():
        raise UnknownModel(
            f"unknown model {name!r}: the repository {root} has no folder of that name"
        )
    owner = ensemble_of(root, name)
    if owner is not None:
        return ModelEntry(name, folder, problem=(
            f"{folder} is a part of the ensemble {owner!r} that 'detector export triton' "
            f"wrote; this server serves it as {owner!r}"
        ))  # fmt: skip
    config_path = folder / CONFIG_NAME
    try:
        config = read_config(config_path)
    except RepositoryError as exc:
        return ModelEntry(name, folder, problem=str(exc))
    if config.platform == "ensemble":
        network = root / f"{name}_model"
        if not network.is_dir():
            return ModelEntry(name, folder, config, problem=(
                f"{config_path}: an ensemble; this server serves the ensembles "
                f"'detector export triton' writes ({name} = {name}_preprocess -> {name}_model "
                f"-> {name}_postprocess), and {network} is missing"
            ))  # fmt: skip
        network_config_path = network / CONFIG_NAME
        try:
            network_config = read_config(network_config_path)
        except RepositoryError as exc:
            return ModelEntry(name, folder, config, problem=str(exc))
        return _model_versions(name, network, network_config, network_config_path, True)
    if config.backend == "python" or config.platform == "python":
        return ModelEntry(name, folder, config, problem=(
            f"{config_path}: a Python-backend model, which Triton runs; this server serves "
            f"model files ({', '.join(MODEL_FILENAMES)})"
        ))  # fmt: skip
    return _model_versions(name, folder, config, config_path)


def scan_repository(root: Path) -> dict[str, ModelEntry]:
    """Every model of the repository ``root`` by name (hidden folders, names that are not model
    names, and the parts of our ensembles are left out).

    Raises:
        RepositoryError: ``root`` is not a folder.
    """
    if not root.is_dir():
        raise RepositoryError(f"{root}: no such model repository folder")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and NAME.match(p.name))
    entries: dict[str, ModelEntry] = {}
    for name in names:
        if ensemble_of(root, name) is not None:
            continue
        entries[name] = scan_model(root, name)
    return entries


class SettleTracker:
    """Which version files have settled: the same fingerprint at two polls in a row. A version
    whose file is still being written (its size or modification time moves) is held back
    until it stops changing."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, int], Fingerprint] = {}

    def observe(self, entries: Mapping[str, ModelEntry]) -> dict[str, set[int]]:
        """Record this poll's fingerprints; per model, the versions unchanged since the last."""
        now = {(e.name, v): f.fingerprint for e in entries.values() for v, f in e.versions.items()}
        settled: dict[str, set[int]] = {name: set() for name in entries}
        for (name, version), print_ in now.items():
            if self._seen.get((name, version)) == print_:
                settled[name].add(version)
        self._seen = now
        return settled
