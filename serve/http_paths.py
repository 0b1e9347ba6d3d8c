"""The one place that maps a request's path to the model and version it is for, and the paths of
the repository calls: the admission middleware reads it from the headers alone (before a body
is read), and the routes are declared with the same templates.

Inference paths (``POST``):

- ``/v1/detect``, ``/v1/detect/batch``: the default model (``Target(None, None)``);
- ``/v1/models/{name}[/versions/{version}]/detect[/batch]``;
- ``/v2/models/{name}[/versions/{version}]/infer``.

A path without a version is for the model's default version (its highest serving one).
"""

from __future__ import annotations

import re
from typing import NamedTuple

V1_DETECT = "/v1/detect"
V1_DETECT_BATCH = "/v1/detect/batch"
V1_MODEL = "/v1/models/{name}"
V1_VERSION = "/v1/models/{name}/versions/{version}"
V2_MODEL = "/v2/models/{name}"
V2_VERSION = "/v2/models/{name}/versions/{version}"
REPOSITORY_INDEX = "/v2/repository/index"
REPOSITORY_LOAD = "/v2/repository/models/{name}/load"
REPOSITORY_UNLOAD = "/v2/repository/models/{name}/unload"

_SEGMENT = r"(?P<{}>[^/]+)"
_MODEL = "/models/" + _SEGMENT.format("name") + r"(?:/versions/" + _SEGMENT.format("version") + ")?"
_V1_NAMED = re.compile(r"^/v1" + _MODEL + r"/detect(?:/batch)?$")
_V2_INFER = re.compile(r"^/v2" + _MODEL + r"/infer$")
_CONTROL = re.compile(r"^/v2/repository/models/" + _SEGMENT.format("name") + r"/(?:load|unload)$")


class Target(NamedTuple):
    """The model (``None``: the server's default model) and version (``None``: the model's
    default version) a request is for, as its path names them."""

    name: str | None
    version: str | None


def inference_target(method: str, path: str) -> Target | None:
    """The model and version of an inference request, ``None`` for any other request."""
    if method != "POST":
        return None
    if path in (V1_DETECT, V1_DETECT_BATCH):
        return Target(None, None)
    match = _V1_NAMED.match(path) or _V2_INFER.match(path)
    if match is None:
        return None
    return Target(match.group("name"), match.group("version"))


def is_control_path(method: str, path: str) -> bool:
    """A repository load or unload call (these need an admin key)."""
    return method == "POST" and _CONTROL.match(path) is not None
