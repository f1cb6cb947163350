"""deploy/k8s: each overlay rendered (the kustomize subset it uses) and validated against the Kubernetes
schemas that kubernetes-validate carries (no network), plus the invariants the schemas cannot see:
probes on /v2/health/*, a grace period that outlasts the drain, selectors that match, the GPU request,
API keys from a Secret, and a KServe runtime consistent with the image.
"""
from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers import DOCKERFILE, dockerfile_stages

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the manifests")
K8S = ROOT / "deploy" / "k8s"
KUBERNETES = "1.31"                          # oldest release still supported upstream when this was written
KUSTOMIZE_FIELDS = {"apiVersion", "kind", "resources", "images", "patches"}


# -- render: the part of kustomize these overlays use, refusing any field it does not implement --------
def _merge(base, patch):
    """Strategic merge as kustomize does it for these kinds: maps merge, lists of named maps merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) and "name" in x for x in base + patch):
        out, index = [copy.deepcopy(x) for x in base], {x["name"]: i for i, x in enumerate(base)}
        for item in patch:
            if item["name"] in index:
                out[index[item["name"]]] = _merge(out[index[item["name"]]], item)
            else:
                out.append(item)
        return out
    return patch


def render(directory: Path) -> list[dict]:
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kust) <= KUSTOMIZE_FIELDS, f"{directory}: this renderer does not implement {set(kust) - KUSTOMIZE_FIELDS}"
    docs: list[dict] = []
    for res in kust.get("resources", []):
        path = (directory / res).resolve()
        docs += render(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in kust.get("patches", []):
        p = yaml.safe_load((directory / patch["path"]).read_text())
        hits = [i for i, d in enumerate(docs) if (d["kind"], d["metadata"]["name"]) == (p["kind"], p["metadata"]["name"])]
        assert len(hits) == 1, f"patch {patch['path']} matches {len(hits)} resources"
        docs[hits[0]] = _merge(docs[hits[0]], p)
    for image in kust.get("images", []):
        for d in docs:
            for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                name, _, _ = c["image"].partition(":")
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    return docs


def by_kind(docs: list[dict], kind: str, name: str = "rnn-serve") -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir())


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request):
    return request.param, render(K8S / "overlays" / request.param)


# -- the schemas --------------------------------------------------------------------------------------
def validate(doc: dict) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate==1.37.0")
    try:
        kv.validate(doc, KUBERNETES, strict=True)            # strict: an unknown (misspelt) field fails
    except kv.ValidationError as exc:
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")


def test_overlays_match_the_kubernetes_schemas(overlay):
    _, docs = overlay
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                                         "StatefulSet"}
    for doc in docs:
        validate(doc)


def test_custom_metric_autoscaler_example_matches_the_schema():
    doc = yaml.safe_load((K8S / "examples" / "hpa-steps-per-second.yaml").read_text())
    validate(doc)
    assert doc["spec"]["metrics"][0]["pods"]["metric"]["name"] == "rnn_steps_per_second"


def test_a_misspelt_field_is_caught():
    """The schema check can fail: strict validation rejects a field Kubernetes does not know."""
    kv = pytest.importorskip("kubernetes_validate")
    doc = copy.deepcopy(by_kind(render(K8S / "overlays" / "cpu"), "Deployment"))
    doc["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, KUBERNETES, strict=True)


# -- what the schemas cannot see -----------------------------------------------------------------------
def env_of(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def test_deployment_probes_drain_and_secrets(overlay):
    from service.settings import Settings
    name, docs = overlay
    dep = by_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == c["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    env = env_of(c)
    assert set(env) <= {f"RNN_SERVE_{f.upper()}" for f in Settings.model_fields}, set(env)
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    drain = float(env["RNN_SERVE_SHUTDOWN_TIMEOUT_SECONDS"]["value"])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain          # the drain ends before SIGKILL
    assert env["RNN_SERVE_API_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "rnn-serve-api-keys"
    assert env["RNN_SERVE_SESSION_STORE"]["value"] == "redis"
    redis_svc = by_kind(docs, "Service", "rnn-serve-redis")
    assert re.match(rf"redis://{redis_svc['metadata']['name']}:{redis_svc['spec']['ports'][0]['port']}/",
                    env["RNN_SERVE_REDIS_URL"]["value"])
    assert pod["securityContext"]["runAsUser"] == int(dict(dockerfile_stages(DOCKERFILE.read_text())["runtime"])["USER"])
    assert c["image"] == f"rnn-serve:{name}" and name in dockerfile_stages(DOCKERFILE.read_text())
    limits = c["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) == (name == "gpu") and c["resources"]["requests"]["cpu"]
    if name == "gpu":
        assert env["RNN_SERVE_DEVICE"]["value"] == "gpu" and pod["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_selectors_ports_and_autoscaler_agree(overlay):
    _, docs = overlay
    dep = by_kind(docs, "Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    for doc in (by_kind(docs, "Service"), by_kind(docs, "PodDisruptionBudget")):
        selector = doc["spec"]["selector"].get("matchLabels", doc["spec"]["selector"])
        assert selector.items() <= labels.items(), doc["kind"]
    exposed = {int(p) for p in dict(dockerfile_stages(DOCKERFILE.read_text())["runtime"])["EXPOSE"].split()}
    ports = {p["name"]: p["containerPort"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert set(ports.values()) == exposed
    assert {p["targetPort"] for p in by_kind(docs, "Service")["spec"]["ports"]} == set(ports)
    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "rnn-serve"}
    assert hpa["spec"]["minReplicas"] > by_kind(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("name", OVERLAYS)
def test_render_agrees_with_kubectl_kustomize(name):
    r = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / name)], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        pytest.skip(f"kubectl kustomize unavailable here: {r.stderr.strip()[:200]}")

    def key(d):
        return d["kind"], d["metadata"]["name"]

    assert sorted(yaml.safe_load_all(r.stdout), key=key) == sorted(render(K8S / "overlays" / name), key=key)


# -- KServe ----------------------------------------------------------------------------------------------
def test_kserve_runtime_and_inference_service_agree():
    from service.settings import Settings
    runtime = yaml.safe_load((K8S / "kserve" / "servingruntime.yaml").read_text())
    isvc = yaml.safe_load((K8S / "kserve" / "inferenceservice.yaml").read_text())
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] and model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    (c,) = runtime["spec"]["containers"]
    assert c["name"] == "kserve-container"
    args = c["args"]
    cmd = dict(dockerfile_stages(DOCKERFILE.read_text())["runtime"])["CMD"]
    assert args[:3] == yaml.safe_load(cmd)[:3]                     # the image's own entry point
    port = int(args[args.index("--port") + 1])
    assert args[args.index("--model-dir") + 1] == "/mnt/models"      # where KServe's storage initializer writes
    env = env_of(c)
    assert int(env["RNN_SERVE_PORT"]["value"]) == port == c["readinessProbe"]["httpGet"]["port"]
    assert set(env) <= {f"RNN_SERVE_{f.upper()}" for f in Settings.model_fields}
    assert {p["containerPort"] for p in c["ports"]} == {port, 8001}
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    # the container spec itself is a core/v1 Container: check it against that schema
    validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime"}, "spec": {"containers": [c]}})
