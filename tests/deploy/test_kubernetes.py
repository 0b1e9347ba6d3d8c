"""deploy/kubernetes.yaml against the server it runs: the probes name real routes, the ports
and user match the image, the arguments parse and the variables are settings."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def documents() -> dict[str, dict]:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text()))
    return {doc["kind"]: doc for doc in docs}


def container() -> dict:
    [only] = documents()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def test_probes_answer_on_the_servers_port(onnx_model):
    from fastapi.testclient import TestClient

    from serve.app import create_app
    from serve.settings import ServeSettings, load_settings

    c = container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": ServeSettings.model_fields["port"].default}
    probes = {k: c[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert probe["port"] in ports
    app = create_app(load_settings(model=onnx_model, threads=1))
    with TestClient(app) as client:  # model loaded and warmed up: every probe answers 200
        for probe in probes.values():
            assert client.get(probe["path"]).status_code == 200, probe


def test_service_reaches_the_pods():
    docs = documents()
    deployment, service = docs["Deployment"], docs["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"] for p in container()["ports"]}
    assert all(p["targetPort"] in ports for p in service["spec"]["ports"])


def test_resources_user_and_shutdown():
    c = container()
    resources = c["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
    assert {"cpu", "memory"} <= resources["requests"].keys()
    pod = documents()["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 10001  # the images' USER
    # longer than the server's default --graceful-timeout, so SIGTERM drains before SIGKILL
    assert pod["terminationGracePeriodSeconds"] > 30


def test_api_keys_are_required_not_optional():
    """No Secret, no pod: a missing Secret must not mean a server without authentication."""
    env = {v["name"]: v for v in container()["env"]}
    ref = env["DETECTOR_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] and ref["key"]
    assert ref.get("optional", False) is False
    assert "DETECTOR_ALLOW_INSECURE" not in env


def test_container_is_locked_down():
    c = container()
    pod = documents()["Deployment"]["spec"]["template"]["spec"]
    context = c["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert "add" not in context["capabilities"]
    assert context.get("runAsNonRoot", pod["securityContext"].get("runAsNonRoot")) is True
    assert context.get("privileged", False) is False
    assert pod["automountServiceAccountToken"] is False
    # the one writable path (request bodies the web framework spools to disk) is an emptyDir
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert all(m.get("readOnly") for path, m in mounts.items() if path != "/tmp")


def test_cpu_limit_is_set_for_the_servers_thread_counts():
    resources = container()["resources"]
    assert "cpu" in resources["limits"]
    assert float(resources["limits"]["cpu"]) >= float(resources["requests"]["cpu"])


def test_endpoint_is_removed_before_the_server_stops():
    """preStop runs before SIGTERM: the pod keeps serving while the Service drops it; then the
    server's graceful shutdown (30 s by default) must still fit in the grace period."""
    from detector.cli import build_parser

    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and int(command[1]) >= 3
    graceful = build_parser("serve").parse_args(["serve"]).graceful_timeout
    pod = documents()["Deployment"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > int(command[1]) + graceful


def test_arguments_and_variables_are_the_servers():
    from detector.cli import build_parser
    from serve.settings import ServeSettings

    c = container()
    args = build_parser("serve").parse_args(["serve", *c["args"]])
    assert args.model == "/models/model.engine"
    for variable in c["env"]:
        name = variable["name"]
        assert name.startswith("DETECTOR_")
        assert name.removeprefix("DETECTOR_").lower() in ServeSettings.model_fields, name
