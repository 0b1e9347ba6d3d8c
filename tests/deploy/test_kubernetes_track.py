"""deploy/kubernetes-track.yaml against the command it runs: its arguments parse as ``detector
track``, the servers those arguments start answer the probe and the scrape on the declared port,
the camera list is read as live sources, and the pod is locked down like kubernetes.yaml's."""

from __future__ import annotations

import urllib.request
from pathlib import Path, PurePosixPath

import yaml

ROOT = Path(__file__).resolve().parents[2]


def documents(name: str = "kubernetes-track.yaml") -> dict[str, dict]:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / name).read_text()))
    return {doc["kind"]: doc for doc in docs}


def pod() -> dict:
    return documents()["Deployment"]["spec"]["template"]


def container() -> dict:
    [only] = pod()["spec"]["containers"]
    return only


def track_args():  # noqa: ANN201 - an argparse.Namespace
    from detector.cli import build_parser

    c = container()
    assert c["command"] == ["detector", "track"]  # the image's entrypoint is `detector serve`
    return build_parser("track").parse_args(["track", *c["args"]])


def mounts() -> dict[str, dict]:
    return {m["mountPath"]: m for m in container()["volumeMounts"]}


def volume_of(path: str) -> dict:
    """The pod volume mounted at the folder holding ``path``."""
    owner = max((m for m in mounts() if PurePosixPath(path).is_relative_to(m)), key=len)
    volumes = {v["name"]: v for v in pod()["spec"]["volumes"]}
    return volumes[mounts()[owner]["name"]]


def test_arguments_are_tracks_and_name_the_mounts():
    args = track_args()
    [sources] = args.source
    assert volume_of(sources)["configMap"]["name"] == documents()["ConfigMap"]["metadata"]["name"]
    assert PurePosixPath(sources).name in documents()["ConfigMap"]["data"]
    assert "persistentVolumeClaim" in volume_of(args.model)
    output = volume_of(args.out)
    assert "persistentVolumeClaim" in output and not output["persistentVolumeClaim"].get("readOnly")
    # a service: JSON lines kept across restarts, no ever-growing video, no progress lines
    assert args.append and args.no_video and args.progress_every == 0
    assert not args.show and args.serve_preview is None


def test_camera_list_is_read_as_live_sources(tmp_path):
    from serve.runtime.sources import expand_sources

    listing = tmp_path / "sources.txt"
    listing.write_text(documents()["ConfigMap"]["data"]["sources.txt"])
    specs = expand_sources([str(listing)])
    assert len(specs) >= 2
    assert all(spec.kind == "live" and spec.spec.startswith("rtsp://") for spec in specs)


def test_metrics_port_answers_the_probes_and_the_scrape():
    """The servers ``detector track`` starts for these arguments (on a free loopback port
    instead of 0.0.0.0:9108) answer the probes' and the annotations' paths."""
    from detector.cli.track import start_live_outputs

    c = container()
    args = track_args()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": args.metrics_port}
    assert args.metrics_host == "0.0.0.0"  # reachable by the scraper and the kubelet
    annotations = pod()["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == args.metrics_port
    probes = [c[k]["httpGet"] for k in ("startupProbe", "livenessProbe")]
    assert all(probe["port"] in ports for probe in probes)

    args.metrics_host, args.metrics_port = "127.0.0.1", 0
    live = start_live_outputs(args, ["camera"])
    try:
        [server] = live.servers
        for path in [p["path"] for p in probes] + [annotations["prometheus.io/path"]]:
            with urllib.request.urlopen(server.url + path.lstrip("/"), timeout=10) as response:
                assert response.status == 200, path
                body = response.read().decode()
        assert "detector_track_frames_read" in body  # the last one: the scrape
        assert live.preview is None  # no video leaves the pod
    finally:
        live.close()


def test_service_reaches_the_metrics_port():
    service = documents()["Service"]
    labels = pod()["metadata"]["labels"]
    deployment = documents()["Deployment"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["name"] for p in container()["ports"]}
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["metrics"]
    assert ports == {"metrics"}


def test_one_reader_per_camera_list():
    """Two pods on one list would track every camera twice: one replica, and a rollout that
    stops the old pod before starting the new one."""
    spec = documents()["Deployment"]["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"


def test_container_is_locked_down_like_the_server():
    c = container()
    spec = pod()["spec"]
    context = c["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert "add" not in context["capabilities"]
    assert context.get("runAsNonRoot", spec["securityContext"].get("runAsNonRoot")) is True
    assert context.get("privileged", False) is False
    assert spec["automountServiceAccountToken"] is False
    server_pod = documents("kubernetes.yaml")["Deployment"]["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsUser"] == server_pod["securityContext"]["runAsUser"]
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # writable: the output volume and a memory-backed /tmp; everything else read-only
    args = track_args()
    writable = {path for path, m in mounts().items() if not m.get("readOnly")}
    assert writable == {"/tmp", args.out}
    assert "emptyDir" in volume_of("/tmp/x")


def test_cpu_and_memory_limits_are_set():
    resources = container()["resources"]
    assert float(resources["limits"]["cpu"]) >= float(resources["requests"]["cpu"]) > 0
    assert {"cpu", "memory"} <= resources["limits"].keys()
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]


def test_same_image_as_the_server():
    [server] = documents("kubernetes.yaml")["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container()["image"] == server["image"]
