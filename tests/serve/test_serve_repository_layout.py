"""A model repository on disk, in-process: ``config.pbtxt`` read as Triton's own schema reads it
(``tritonclient``'s ``model_config_pb2``), version policies, the folder scan (plain models, and
the ensemble ``detector export triton`` writes, served under its client-facing name), versions
held back while their files still change, the path -> (model, version) map, the output check that
refuses a network its metadata does not describe, and the ``--model`` shorthand's answers to the
repository calls. The tiny models here (:func:`tiny_onnx`) load in milliseconds, so the live
tests (``test_serve_repository.py``) can swap them under load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from serve.http_paths import Target, inference_target, is_control_path
from serve.runtime.model_check import ModelCheckError, check_outputs
from serve.runtime.repository import (
    RepositoryError,
    SettleTracker,
    VersionPolicy,
    config_from,
    parse_pbtxt,
    read_config,
    scan_repository,
)

STRIDES = (8, 16, 32)


def tiny_onnx(
    path: Path, name: str, classes: tuple[str, ...] = ("thing",), size: int = 64,
    graph_size: int | None = None, graph_classes: int | None = None,
) -> Path:  # fmt: skip
    """A raw-layout ONNX model (input ``images [B, 3, S, S]``, dynamic batch; output ``[B, N,
    5 + C]``, N the anchors of S over strides 8/16/32) that finds one box, ``[S/4, S/4, 3S/4,
    3S/4]`` of class 0 with score 1, in every image; its metadata says ``name``, ``classes``,
    ``size``. ``graph_size`` / ``graph_classes`` build a network for another input size or class
    count than the metadata says (a broken export)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from serve.runtime.metadata import ModelMetadata, write_onnx_metadata

    side = graph_size or size
    count = graph_classes or len(classes)
    anchors = sum((side // s) ** 2 for s in STRIDES)
    rows = np.zeros((1, anchors, 5 + count), np.float32)
    rows[0, 0, :6] = [side / 2, side / 2, side / 2, side / 2, 1.0, 1.0]
    consts = {"rows": rows, "zero": np.float32(0.0), "shape": np.array([-1, 1, 1], np.int64)}
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape"], ["mean3"]),  # [B, 1, 1]
        helper.make_node("Mul", ["mean3", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "rows"], ["output"]),  # [B, N, 5 + C]
    ]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, side, side])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", anchors, 5 + count])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    write_onnx_metadata(model, ModelMetadata(name, classes, (size, size), batch=None))
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def triton_parse(text: str):
    """``text`` parsed strictly with Triton's own schema."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


POLICIES = {
    "": VersionPolicy("latest", 1),
    "version_policy: { latest: { num_versions: 2 } }": VersionPolicy("latest", 2),
    "version_policy { all { } }": VersionPolicy("all"),
    "version_policy: { specific: { versions: [1, 3] } }":
        VersionPolicy("specific", versions=(1, 3)),
    "version_policy: { specific { versions: 4 versions: 2 } }":
        VersionPolicy("specific", versions=(2, 4)),
}  # fmt: skip


@pytest.mark.parametrize("text", list(POLICIES))
def test_version_policy_reads_as_tritons_schema_reads_it(text):
    config = f'name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n{text}\n'
    ours = config_from(parse_pbtxt(config), "config.pbtxt")
    assert ours.policy == POLICIES[text]
    assert ours.max_batch_size == 4 and ours.platform == "onnxruntime_onnx"
    theirs = triton_parse(config).version_policy
    kind = theirs.WhichOneof("policy_choice") or "latest"
    assert kind == ours.policy.kind
    if kind == "latest" and theirs.HasField("latest"):
        assert theirs.latest.num_versions == ours.policy.num_versions
    if kind == "specific":
        assert tuple(sorted(theirs.specific.versions)) == ours.policy.versions


def test_policies_select_versions():
    present = [3, 1, 2, 7]
    assert VersionPolicy().select(present) == [7]
    assert VersionPolicy("latest", 2).select(present) == [3, 7]
    assert VersionPolicy("all").select(present) == [1, 2, 3, 7]
    assert VersionPolicy("specific", versions=(2, 9)).select(present) == [2]
    assert VersionPolicy().select([]) == []


def test_bad_configs_name_the_file_and_the_field(tmp_path):
    path = tmp_path / "config.pbtxt"
    for text, expected in (
        ("version_policy: { latest: { num_versions: 0 } }", "num_versions must be >= 1"),
        ("version_policy: { newest: {} }", "'newest' is not one of latest, all, specific"),
        ("version_policy: { specific: { } }", "lists no versions"),
        ("max_batch_size: eight", "max_batch_size: 'eight' is not a whole number"),
        ("version_policy { latest { num_versions: 1 }", "not protobuf text format"),
    ):
        path.write_text(text)
        with pytest.raises(RepositoryError, match="config.pbtxt") as info:
            read_config(path)
        assert expected in str(info.value), text
    # a load call's config: Triton's JSON form, lowerCamelCase too
    camel = config_from(json.loads('{"versionPolicy": {"latest": {"numVersions": "2"}}}'), "c")
    assert camel.policy == VersionPolicy("latest", 2)


def test_an_export_of_ours_is_served_under_its_ensembles_name(tmp_path):
    """``detector export triton`` writes N, N_preprocess, N_model, N_postprocess; the scan
    gives one model N with N_model's versions and version policy, beside a plain model; every
    config written parses with Triton's schema and with ours alike."""
    from export.triton import TritonOptions, write_repository

    repo = tmp_path / "repo"
    write_repository(tiny_onnx(tmp_path / "cam.onnx", "cam"), repo, TritonOptions(name="cams"))
    tiny_onnx(repo / "cams_model" / "2" / "model.onnx", "cam-2")
    tiny_onnx(repo / "people" / "1" / "model.onnx", "people")
    (repo / "people" / "2").mkdir()  # a version folder without a model file: skipped
    (repo / "people" / ".3.tmp").mkdir()  # being copied under a hidden name: ignored
    for config in repo.glob("*/config.pbtxt"):
        theirs = triton_parse(config.read_text())
        ours = read_config(config)
        assert (ours.platform, ours.backend, ours.max_batch_size) == (
            theirs.platform, theirs.backend, theirs.max_batch_size)  # fmt: skip
    entries = scan_repository(repo)
    assert sorted(entries) == ["cams", "people"]
    cams = entries["cams"]
    assert cams.ensemble and cams.problem is None and cams.folder == repo / "cams_model"
    assert sorted(cams.versions) == [1, 2] and cams.config.max_batch_size == 8
    assert cams.versions[1].path == repo / "cams_model" / "1" / "model.onnx"
    people = entries["people"]
    assert sorted(people.versions) == [1] and "no model file" in people.skipped[2]


def test_a_version_is_held_back_while_its_file_changes(tmp_path):
    """A file being copied changes between polls: it settles only once it is the same at two
    polls in a row; a file replaced later is held back again."""
    repo = tmp_path / "repo"
    good = tiny_onnx(tmp_path / "m.onnx", "m").read_bytes()
    target = repo / "m" / "1" / "model.onnx"
    target.parent.mkdir(parents=True)
    tracker = SettleTracker()
    target.write_bytes(good[:100])
    assert tracker.observe(scan_repository(repo)) == {"m": set()}  # first seen
    with target.open("ab") as f:
        f.write(good[100:200])
    assert tracker.observe(scan_repository(repo)) == {"m": set()}  # still growing
    with target.open("ab") as f:
        f.write(good[200:])
    assert tracker.observe(scan_repository(repo)) == {"m": set()}  # grew again
    assert tracker.observe(scan_repository(repo)) == {"m": {1}}  # unchanged: settled
    target.write_bytes(good[:-1])
    assert tracker.observe(scan_repository(repo)) == {"m": set()}  # changed: held back


def test_paths_map_to_models_and_versions():
    assert inference_target("POST", "/v1/detect") == Target(None, None)
    assert inference_target("POST", "/v1/detect/batch") == Target(None, None)
    assert inference_target("POST", "/v1/models/a.b-c/detect") == Target("a.b-c", None)
    assert inference_target("POST", "/v1/models/a/versions/3/detect/batch") == Target("a", "3")
    assert inference_target("POST", "/v2/models/a/infer") == Target("a", None)
    assert inference_target("POST", "/v2/models/a/versions/2/infer") == Target("a", "2")
    for method, path in (
        ("GET", "/v1/detect"),
        ("POST", "/v1/models"),
        ("POST", "/v2/models/a"),
        ("POST", "/v2/models/a/ready"),
        ("POST", "/v1/models/a/b/detect"),
    ):
        assert inference_target(method, path) is None, path  # fmt: skip
    assert is_control_path("POST", "/v2/repository/models/a/load")
    assert is_control_path("POST", "/v2/repository/models/a/unload")
    assert not is_control_path("POST", "/v2/repository/index")
    assert not is_control_path("GET", "/v2/repository/models/a/load")


def test_outputs_must_match_the_metadata():
    from serve.runtime.metadata import ModelMetadata

    meta = ModelMetadata("m", ("a", "b", "c"), (64, 64), batch=None)
    check_outputs(meta, {"output": np.zeros((2, 84, 8), np.float32)}, 2)
    with pytest.raises(ModelCheckError, match=r"\[2, 84, 7\].*3 classes.*\[2, N, 8\]"):
        check_outputs(meta, {"output": np.zeros((2, 84, 7), np.float32)}, 2)
    with pytest.raises(ModelCheckError, match="missing"):
        check_outputs(meta, {"boxes": np.zeros((2, 84, 4), np.float32)}, 2)


def test_the_one_model_shorthand_answers_the_repository_calls(tmp_path):
    """``--model FILE``: the index lists the model, version 1; load and unload are refused with
    409 and say what turns them on (with an admin key given: else 403, they are off)."""
    from fastapi.testclient import TestClient

    from serve.app import create_app
    from serve.settings import ServeSettings

    model = tiny_onnx(tmp_path / "m.onnx", "m")
    for admin, status, hint in ((["adm"], 409, "--repository DIR"), ([], 403, "--admin-key")):
        settings = ServeSettings(model=model, threads=1, admin_keys=admin, name="m")
        with TestClient(create_app(settings)) as client:
            index = client.post("/v2/repository/index")
            assert index.json() == [{"name": "m", "version": "1", "state": "READY", "reason": ""}]
            load = client.post("/v2/repository/models/m/load", headers={"X-API-Key": "adm"})
            assert load.status_code == status and hint in load.json()["error"], load.text
