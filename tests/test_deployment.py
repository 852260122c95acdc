"""The deployment files under deploy/: Kubernetes manifests valid against the Kubernetes schemas
(kubernetes-validate, strict: an unknown field is an error), consistent with each other and with
the gateway (probe paths it serves without a key, the port it listens on, the Secret keys the
policy reads); the Dockerfile checked by a small linter of our own (docker itself is not available
here) — multi-stage, non-root, pinned base image, the README's install steps, the encoder prepared
at build; the compose file's services wired together; and the shipped policy served for real
against the simulated upstream configured as compose runs it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml

from sigroute.gateway.sim import create_sim_app, load_sim_config
from sigroute.gateway.serving import ServerThread
from sigroute.policies.loader import load_policy

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S_VERSION = "1.30.0"   # the oldest Kubernetes these manifests promise to work on


def manifests() -> dict[str, dict]:
    return {path.name: yaml.safe_load(path.read_text()) for path in sorted((DEPLOY / "kubernetes").glob("*.yaml"))}


def kustomization() -> dict:
    return yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())


def policy_configmap() -> dict:
    """The ConfigMap kustomize generates from `configMapGenerator` (name without its hash suffix)."""
    (generator,) = kustomization()["configMapGenerator"]
    data = {name: (DEPLOY / name).read_text() for name in generator["files"]}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}


@pytest.mark.parametrize("name", sorted(manifests()))
def test_each_manifest_is_valid_against_the_kubernetes_schema(name):
    kubernetes_validate.validate(manifests()[name], K8S_VERSION, strict=True)


def test_the_generated_policy_configmap_is_valid_and_every_resource_is_listed():
    kubernetes_validate.validate(policy_configmap(), K8S_VERSION, strict=True)
    listed = {Path(p).name for p in kustomization()["resources"]}
    assert listed == set(manifests()) - {"secret.example.yaml"}   # the real Secret is made out of band


def test_the_validator_refuses_a_broken_manifest():
    broken = manifests()["deployment.yaml"]
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def container() -> dict:
    (one,) = manifests()["deployment.yaml"]["spec"]["template"]["spec"]["containers"]
    return one


def test_manifests_agree_with_each_other():
    m = manifests()
    deployment, service, hpa, pdb = m["deployment.yaml"], m["service.yaml"], m["hpa.yaml"], m["pdb.yaml"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in ports
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                              "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"]   # a drain never takes every replica
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["policy"]["configMap"]["name"] == policy_configmap()["metadata"]["name"]
    mounts = {v["name"]: v["mountPath"] for v in container()["volumeMounts"]}
    assert container()["args"] == ["--policy", f"{mounts['policy']}/policy.yaml"]


def test_the_pod_runs_as_non_root_and_read_only():
    spec = manifests()["deployment.yaml"]["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    security = container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


def test_every_environment_variable_the_policy_reads_comes_from_the_secret():
    policy = yaml.safe_load((DEPLOY / "policy.yaml").read_text())
    wanted = {k["key_env"] for k in policy["auth"]["keys"]} | {
        m["api_key_env"] for m in policy["models"].values() if "api_key_env" in m}
    env = {e["name"]: e for e in container()["env"]}
    assert wanted <= set(env)
    secret = manifests()["secret.example.yaml"]
    for name in wanted | {"SIGROUTE_REDIS_URL"}:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]


# --------------------------------------------------------------------------------------------
# the Dockerfile

def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in dockerfile():
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def test_dockerfile_is_multi_stage_non_root_and_pinned():
    build, runtime = stages()
    assert build[0][1].endswith("AS build") and runtime[0][1].endswith("AS runtime")
    args = dict(a.split("=", 1) for i, a in dockerfile() if i == "ARG" and "=" in a)
    image = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", image), f"base image not pinned to a patch release: {image}"
    users = [a for i, a in runtime if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert not any(i == "ADD" for i, _ in dockerfile())          # COPY only: nothing fetched by URL
    assert any(i == "COPY" and a.startswith("--from=build") for i, a in runtime)
    assert not any(i == "RUN" and "pip install" in a for i, a in runtime)   # nothing built in the final stage


def test_dockerfile_installs_as_the_readme_says_and_prepares_the_policy():
    runs = [a for i, a in stages()[0] if i == "RUN"]
    install = next(r for r in runs if "pip install" in r)
    steps = [s.strip() for s in install.split("&&")]
    assert steps[0] == "pip install torch==2.13.0"      # the CPU torch first, as the README's set-up does
    assert shlex.split(steps[1]) == ["pip", "install", ".[server]"]
    readme = (DEPLOY.parent / "README.md").read_text()
    assert "pip install torch==2.13.0 && pip install -e '.[server]'" in readme
    assert any("sigroute prepare --policy /etc/sigroute/policy.yaml" in r for r in runs)
    assert any("sigroute validate /etc/sigroute/policy.yaml" in r for r in runs)


def test_dockerfile_serves_on_the_port_the_manifests_probe():
    instructions = dockerfile()
    exposed = [a for i, a in instructions if i == "EXPOSE"]
    (entrypoint,) = [a for i, a in instructions if i == "ENTRYPOINT"]
    command = yaml.safe_load(entrypoint)    # the JSON (exec) form
    assert command[:2] == ["sigroute", "serve"] and command[command.index("--port") + 1] == exposed[0]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert {p["containerPort"] for p in container()["ports"]} == {int(exposed[0])}
    assert any(i == "HEALTHCHECK" and "/health" in a for i, a in instructions)
    copied = [a.split()[0] for i, a in stages()[0] if i == "COPY" and not a.startswith("--")]
    for path in copied:
        if not path.startswith("${"):
            assert (DEPLOY.parent / path).exists(), f"the Dockerfile copies {path}, which does not exist"


def test_compose_wires_redis_and_the_upstreams_the_policy_names():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    gateway = services["sigroute"]
    assert gateway["environment"]["SIGROUTE_REDIS_URL"] == "redis://redis:6379/0"
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    assert (DEPLOY / gateway["build"]["context"] / gateway["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    policy = yaml.safe_load((DEPLOY / "policy.yaml").read_text())
    hosts = {httpx.URL(m["api_base"]).host for m in policy["models"].values() if "api_base" in m}
    assert hosts <= set(services)
    sim = load_sim_config(DEPLOY / "sim.yaml")
    served = {m["provider"].split("/", 1)[1] for m in policy["models"].values() if "api_base" in m}
    assert served <= set(sim.models)


def test_the_shipped_policy_serves_for_real_with_public_probes(gateway_factory, monkeypatch):
    """deploy/policy.yaml with the compose file's simulated vLLM servers: a keyed request is routed
    and answered; /health and /ready (the probes) and /metrics answer without a key."""
    app_key, admin_key = "sk-deploy-app-1", "sk-deploy-admin-1"
    monkeypatch.setenv("SIGROUTE_APP_KEY", app_key)
    monkeypatch.setenv("SIGROUTE_ADMIN_KEY", admin_key)
    with ServerThread(create_sim_app(DEPLOY / "sim.yaml")) as sim:
        policy = yaml.safe_load((DEPLOY / "policy.yaml").read_text())
        for model in policy["models"].values():
            if "api_base" in model:
                model["api_base"] = sim.url + "/v1"
        assert load_policy(DEPLOY / "policy.yaml")   # the file itself loads
        gw = gateway_factory(policy)
        for probe in ("/health", "/ready", "/metrics"):
            assert gw.http.get(probe).status_code == 200, probe
        assert gw.http.get("/v1/models").status_code == 401
        r = gw.chat("my python code throws a stack trace", api_key=app_key)
        assert r.status_code == 200 and r.headers["x-sigroute-decision"] == "coding"
        assert r.headers["x-sigroute-model"] == "llama-70b"
        r = gw.chat("hello there", api_key=app_key)
        assert r.status_code == 200 and r.headers["x-sigroute-model"] == "llama-8b"   # cheapest
        assert gw.http.get("/v1/admin/dashboard", headers={"authorization": f"Bearer {admin_key}"}).status_code == 200
