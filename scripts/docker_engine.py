"""A Docker engine for the deployment check: Debian's packages, a dockerd we start, stand-in base images.

* ``ensure_engine()``: installs ``docker.io`` from the machine's Debian suite and the compose v2 and
  buildx plugins from a newer suite (``docker-compose`` / ``docker-buildx``: Go binaries needing only
  libc, fetched with ``apt-get download`` through a temporary source), then starts ``dockerd`` if no
  daemon answers. Returns the dockerd process we started (None when one was already running), so the
  caller stops only what it started.
* ``throwaway_engine(work)``: a second dockerd with an empty data root, in a network namespace of its
  own (its bridges and iptables rules cannot meet the main daemon's), for measuring what a clean
  machine pays beside a daemon whose images others use. Removed, data and all, afterwards.
* ``ensure_bases(tags)``: every tag that is neither present nor pullable gets a stand-in made from
  Debian: the first with ``debootstrap``, ``docker import``ed under that exact tag, the others built
  on it (``standin_dockerfile``). The Dockerfile and compose file keep their real ``FROM``/``image:``
  lines; only this machine's copy of the tag differs.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path

NEWER_SUITE = "trixie"                    # docker-compose 2.x and docker-buildx live here, not in bookworm
PLUGINS = {"compose": "docker-compose", "buildx": "docker-buildx"}
DEBIAN_MIRROR = "http://deb.debian.org/debian"


class EngineUnavailable(RuntimeError):
    """No Docker engine can run here (no root, no packages, dockerd refuses to start)."""


def run(*argv: str, check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, timeout=timeout, text=True, capture_output=True, **kw)


def _apt(*args: str, sources: Path | None = None, cwd: str | None = None) -> None:
    """apt-get with ``args``; ``sources``: read only this sources file; ``cwd``: where ``download`` puts the .debs."""
    opts = ["-o", f"Dir::Etc::sourcelist={sources}", "-o", "Dir::Etc::sourceparts=-",
            "-o", "APT::Get::List-Cleanup=0"] if sources else []
    run("apt-get", *opts, *args, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, cwd=cwd)


def _daemon_answers() -> bool:
    return shutil.which("docker") is not None and run("docker", "info", check=False, timeout=30).returncode == 0


def _install_packages() -> None:
    missing = [p for p, binary in (("docker.io", "dockerd"), ("debootstrap", "debootstrap")) if not shutil.which(binary)]
    plugins = [deb for sub, deb in PLUGINS.items()
               if shutil.which("docker") is None or run("docker", sub, "version", check=False).returncode != 0]
    if not missing and not plugins:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise EngineUnavailable(f"missing {missing + plugins} and cannot install them (needs root and apt-get)")
    try:
        if missing:
            _apt("update", "-qq")
            _apt("install", "-y", "-qq", *missing)
        if plugins:
            with tempfile.TemporaryDirectory() as tmp:
                src = Path(tmp) / "newer.sources"
                src.write_text(f"Types: deb\nURIs: {DEBIAN_MIRROR}\nSuites: {NEWER_SUITE}\nComponents: main\n"
                               "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
                _apt("update", "-qq", sources=src)      # only this source: the system's lists are untouched
                _apt("download", *plugins, sources=src, cwd=tmp)
                run("dpkg", "-i", *map(str, Path(tmp).glob("*.deb")))
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise EngineUnavailable(f"installing {missing + plugins} failed: {getattr(exc, 'stderr', '') or exc}") from exc


def ensure_engine(log_dir: Path) -> subprocess.Popen | None:
    _install_packages()
    if _daemon_answers():
        return None
    if os.environ.get("DOCKER_HOST"):                 # the caller chose a daemon: never start another one
        raise EngineUnavailable(f"DOCKER_HOST={os.environ['DOCKER_HOST']} does not answer")
    if os.geteuid() != 0:
        raise EngineUnavailable("no Docker daemon answers and starting dockerd needs root")
    log = open(log_dir / "dockerd.log", "ab")
    proc = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while not _daemon_answers():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_daemon(proc)
            tail = (log_dir / "dockerd.log").read_text(errors="replace")[-1500:]
            raise EngineUnavailable(f"dockerd did not start (exit {proc.poll()}):\n{tail}")
        time.sleep(0.5)
    return proc


def stop_daemon(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()                                   # dockerd stops its containers and containerd
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def throwaway_engine(work: Path):
    """Yields (environment, argv prefix, CPU seconds so far): DOCKER_HOST names a fresh dockerd whose
    data root, exec root and socket are under ``work``; the prefix runs a command in its network
    namespace (where its published ports are on 127.0.0.1) and its cgroup, which also holds the
    daemon, its build steps and containers (``--cgroup-parent``), so that cgroup v1's cpuacct counts
    the CPU time of the whole run however loaded the machine is. The namespace reaches the network
    through a veth pair, NATed by two FORWARD rules and one MASQUERADE rule on the host; all of it is
    removed on the way out."""
    if os.geteuid() != 0 or not shutil.which("nsenter") or not shutil.which("ip"):
        raise EngineUnavailable("a throwaway engine needs root, nsenter and ip")
    n = os.getpid() % 250 + 1
    ns, host_if, ns_if, net = f"rnnchk{os.getpid()}", f"rc{os.getpid()}h", f"rc{os.getpid()}n", f"10.250.{n}"
    rules = [("nat", "POSTROUTING", "-s", f"{net}.0/30", "-j", "MASQUERADE"),
             ("filter", "FORWARD", "-i", host_if, "-j", "ACCEPT"), ("filter", "FORWARD", "-o", host_if, "-j", "ACCEPT")]
    cpuacct = Path("/sys/fs/cgroup/cpuacct") / ns
    inside = ["nsenter", f"--net=/run/netns/{ns}"]
    if cpuacct.parent.is_dir():                         # cgroup v1: join the cgroup, then enter the namespace
        cpuacct.mkdir(exist_ok=True)
        inside = ["sh", "-c", f'echo $$ > {cpuacct}/cgroup.procs && exec "$@"', "sh", *inside]

    def cpu_seconds() -> float | None:
        usage = cpuacct / "cpuacct.usage"
        return int(usage.read_text()) / 1e9 if usage.is_file() else None

    dockerd, added = None, []
    try:
        run("ip", "netns", "add", ns)
        run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        run("ip", "link", "set", ns_if, "netns", ns)
        run("ip", "addr", "add", f"{net}.1/30", "dev", host_if)
        run("ip", "link", "set", host_if, "up")
        for cmd in (["addr", "add", f"{net}.2/30", "dev", ns_if], ["link", "set", ns_if, "up"],
                    ["link", "set", "lo", "up"], ["route", "add", "default", "via", f"{net}.1"]):
            run("ip", "-n", ns, *cmd)
        for table, chain, *rule in rules:
            run("iptables", "-t", table, "-I", chain, "1", *rule)
            added.append((table, chain, *rule))
        sock = work / "docker.sock"
        log = open(work / "dockerd.log", "ab")
        dockerd = subprocess.Popen([*inside, "dockerd", "--data-root", str(work / "data"), "--exec-root",
                                    str(work / "exec"), "--pidfile", str(work / "dockerd.pid"), "-H", f"unix://{sock}",
                                    "--cgroup-parent", f"/{ns}"],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
        deadline = time.monotonic() + 60
        while run("docker", "info", check=False, timeout=30, env=env).returncode != 0:
            if dockerd.poll() is not None or time.monotonic() > deadline:
                raise EngineUnavailable(f"the throwaway dockerd did not start:\n"
                                        f"{(work / 'dockerd.log').read_text(errors='replace')[-1500:]}")
            time.sleep(0.5)
        yield env, inside, cpu_seconds
    finally:
        stop_daemon(dockerd)
        mounts = run("findmnt", "-rn", "-o", "TARGET", check=False).stdout.split()
        for target in sorted((m for m in mounts if m.startswith(str(work) + "/")), reverse=True):
            run("umount", "-l", target, check=False)              # whatever the daemon left mounted
        for table, chain, *rule in added:
            run("iptables", "-t", table, "-D", chain, *rule, check=False)
        run("ip", "link", "del", host_if, check=False)
        run("ip", "netns", "del", ns, check=False)
        for path in ("data", "exec"):
            shutil.rmtree(work / path, ignore_errors=True)
        for group in Path("/sys/fs/cgroup").glob(f"*/{ns}"):      # empty by now: every process has ended
            for sub in [*sorted((d for d in group.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)), group]:
                with suppress(OSError):
                    sub.rmdir()


# -- stand-in base images ----------------------------------------------------------------------------
# Image name -> (Debian packages, Dockerfile lines): just what our files use of the real image. The
# Dockerfile's base (a Debian, listed first), if it is missing, is one `debootstrap --include` of its
# packages; the other stand-ins are `docker build`s on that base, alongside the images.
STANDINS: dict[str, tuple[list[str], list[str]]] = {
    "python": (["python3", "python3-venv", "ca-certificates"],
               ["ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", 'CMD ["python3"]']),
    "redis": (["redis-server", "redis-tools"], ["WORKDIR /data", 'CMD ["redis-server"]']),
    "nginx": (["nginx-light", "wget"], ['CMD ["nginx", "-g", "daemon off;"]']),
}
# What Debian ships that an image never reads (the slim images drop the same).
TRIM = ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/cache/apt",
        "var/lib/apt/lists", "var/log/apt", "var/cache/debconf/templates.dat-old"]


def _recipe(tag: str) -> tuple[list[str], list[str]]:
    return STANDINS[tag.split(":")[0].rsplit("/", 1)[-1]]


def _bootstrap(tag: str, root: Path, say) -> None:
    """debootstrap (minbase) with the stand-in's packages, on a tmpfs (dpkg's fsyncs cost nothing
    there), then `docker import`ed under ``tag``."""
    packages, changes = _recipe(tag)
    suite = run("sh", "-c", ". /etc/os-release && echo $VERSION_CODENAME").stdout.strip() or "bookworm"
    say(f"  debootstrap {suite} (minbase) + {', '.join(packages)} for {tag}")
    root.mkdir(parents=True)
    run("mount", "-t", "tmpfs", "-o", "size=4g", "tmpfs", str(root))
    try:
        run("debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite, str(root), DEBIAN_MIRROR,
            timeout=900)
        for path in TRIM:
            shutil.rmtree(root / path, ignore_errors=True)
        if (root / "usr/bin/python3").exists():          # the official image's interpreter is /usr/local/bin/python
            (root / "usr/local/bin/python").symlink_to("/usr/bin/python3")
        (root / "etc/resolv.conf").unlink(missing_ok=True)
        argv = ["docker", "import"] + [a for c in changes for a in ("--change", c)] + ["-", tag]
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(argv, stdin=tar.stdout, check=True, capture_output=True, timeout=600)
        tar.wait()
    finally:
        run("umount", str(root), check=False)


def standin_dockerfile(tag: str, base: str) -> str:
    """A stand-in built on another one: its packages from Debian, then its Dockerfile lines."""
    packages, changes = _recipe(tag)
    return "\n".join([
        f"FROM {base}",
        f"RUN apt-get update && apt-get install -y --no-install-recommends {' '.join(packages)} "
        "&& apt-get clean && rm -rf /var/lib/apt/lists/*",
        *changes]) + "\n"


def image_present(tag: str) -> bool:
    return run("docker", "image", "inspect", tag, check=False).returncode == 0


def ensure_bases(tags: list[str], work: Path, say=print) -> tuple[dict[str, str], dict[str, str]]:
    """({tag: "present" | "pulled" | "stand-in"}, {tag: Dockerfile text}). ``tags[0]`` is the Debian
    base: bootstrapped here when missing. The Dockerfiles of the other stand-ins (built on that base)
    are for the caller to build alongside its own images."""
    how, todo = {}, []
    for tag in dict.fromkeys(tags):
        if image_present(tag):
            how[tag] = "present"
        elif run("docker", "pull", "-q", tag, check=False, timeout=120).returncode == 0:
            how[tag] = "pulled"
        else:
            todo.append(tag)
    if not todo:
        return how, {}
    unknown = [t for t in todo if t.split(":")[0].rsplit("/", 1)[-1] not in STANDINS]
    if unknown:
        raise EngineUnavailable(f"cannot pull {unknown} and no stand-in recipe for them")
    say(f"  no registry for {', '.join(todo)}: stand-ins from Debian")
    base = tags[0]
    if base in todo:
        try:
            _bootstrap(base, work / "rootfs", say)
        finally:
            shutil.rmtree(work / "rootfs", ignore_errors=True)
    how.update(dict.fromkeys(todo, "stand-in"))
    return how, {tag: standin_dockerfile(tag, base) for tag in todo if tag != base}
