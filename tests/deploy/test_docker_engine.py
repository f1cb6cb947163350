"""scripts/docker_engine.py installs what a machine without Docker lacks: the packages from its own
suite, the compose and buildx plugins downloaded from the newer one and installed with dpkg. The
commands are recorded here, not run: CI's deploy check runs them for real on a machine without Docker."""
from pathlib import Path

from scripts import docker_engine


def test_a_machine_without_docker_gets_the_packages_and_the_plugins_downloaded_into_one_place(monkeypatch):
    calls = []

    def record(*argv, check=True, timeout=600, **kw):
        calls.append((argv, kw.get("cwd")))
        if argv[0] == "apt-get" and "download" in argv:                      # what apt-get download leaves
            for name in argv[argv.index("download") + 1:]:
                (Path(kw["cwd"]) / f"{name}.deb").write_bytes(b"")
        return docker_engine.subprocess.CompletedProcess(argv, 1, "", "")

    monkeypatch.setattr(docker_engine, "run", record)
    monkeypatch.setattr(docker_engine.shutil, "which", lambda name: "/usr/bin/apt-get" if name == "apt-get" else None)
    monkeypatch.setattr(docker_engine.os, "geteuid", lambda: 0)
    docker_engine._install_packages()
    commands = [argv for argv, _ in calls]
    assert any(a[0] == "apt-get" and "install" in a and "docker.io" in a and "debootstrap" in a for a in commands)
    download = next((argv, cwd) for argv, cwd in calls if "download" in argv)
    assert set(docker_engine.PLUGINS.values()) <= set(download[0]) and download[1]      # into a directory
    dpkg = next(argv for argv in commands if argv[0] == "dpkg")
    assert sorted(Path(p).name for p in dpkg[2:]) == sorted(f"{d}.deb" for d in docker_engine.PLUGINS.values())
    assert all(str(Path(p).parent) == download[1] for p in dpkg[2:])              # the .debs apt-get put there
