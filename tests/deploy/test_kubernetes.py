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
