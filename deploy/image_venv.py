"""Build the image's virtualenv from pyproject.toml, then drop what the runtime never reads; build the
app's native kernels and the bytecode its startup needs.

    python image_venv.py /opt/venv               # cpu target: the runtime pins only
    python image_venv.py /opt/venv gpu           # gpu target: + CuPy and its CUDA wheels
    python image_venv.py /opt/venv --app app     # the app in ./app: native kernels, startup bytecode

The pins come from pyproject.toml's [project] dependencies and the named extras, so the image and
`pip install .` never drift apart. No Numba (the `fast` extra): the native C kernels replace it for
LSTM, GRU and the plain RNN. Behind a TLS-intercepting
proxy the build passes the host's CA bundle as the BuildKit secret ``ca-bundle``; pip reads it from
/run/secrets for this one step and no layer keeps it.

``--app`` compiles ``model_core/native`` with the engine's own loader (its flags, its OpenMP
fallback, its load test), into ``model_core/native/_rnn_kernels.so`` where the loader looks first,
and fails the build if the kernels are not available: the image has no compiler to fall back on.

Removed after the install (each is build- or test-time only; the image never installs or compiles
C against these packages): pip and setuptools, ``tests``/``test`` packages and ONNX's backend test
data, C/C++/Cython sources and headers (NumPy's once ``--app`` has compiled against them), type
stubs, NumPy's build tools, and the symbol tables of extension modules (binutils' ``strip``, in the
build stage only). For the cpu image, bytecode is
written only for what starting the service imports (``--app``). CuPy and the NVIDIA wheels are left
whole: CuPy compiles its kernels at run time with NVRTC and includes its own and CUDA's headers.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

CA_SECRET = Path("/run/secrets/ca-bundle")
KEEP_WHOLE = ("cupy", "cupyx", "cupy_backends", "nvidia", "cuda")        # NVRTC needs their headers at run time
TEST_DIRS = {"tests", "test"}                # never imported by the package itself (numpy.testing stays)
DEV_SUFFIXES = (".h", ".hpp", ".c", ".cc", ".cpp", ".pxd", ".pyx", ".pxi", ".pyi")
BUILD_TOOLS = {"numpy/distutils", "numpy/f2py", "numpy/_pyinstaller"}    # build-time tools shipped inside numpy
# step_entry.c is built against NumPy's C API: the cpu venv (the one --app builds against) keeps these
# headers (0.5 MB) until --app has compiled it, then drops them
NUMPY_HEADERS = "numpy/_core/include"


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3.*/site-packages"))


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    return project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]


def prune(site: Path, keep: tuple[str, ...] = ()) -> int:
    """Delete what the runtime never reads, but for the folders in ``keep`` (relative to ``site``);
    returns the bytes freed."""
    freed = 0

    def drop(path: Path) -> None:
        nonlocal freed
        if path.is_dir():
            freed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            shutil.rmtree(path)
        elif path.exists():
            freed += path.stat().st_size
            path.unlink()

    for top in site.iterdir():
        if top.name.startswith(KEEP_WHOLE) or not top.is_dir():
            continue
        for path in sorted(top.rglob("*"), reverse=True):              # children before their parents
            if path.is_dir() and (path.name in TEST_DIRS or path.relative_to(site).as_posix() in BUILD_TOOLS):
                drop(path)
            elif path.is_file() and path.suffix in DEV_SUFFIXES and not path.relative_to(site).as_posix().startswith(keep):
                drop(path)
    return freed


def strip_symbols(site: Path) -> int:
    """``strip --strip-unneeded`` the extension modules that still carry a symbol table (llvmlite's
    LLVM, uvloop); libraries auditwheel grafted into ``*.libs`` are left alone (stripping them again
    breaks their load commands). Returns the bytes freed; 0 where binutils is not installed."""
    if not shutil.which("strip"):
        return 0
    freed = 0
    for so in site.rglob("*.so*"):
        if so.parent.name.endswith(".libs") or so.relative_to(site).parts[0].startswith(KEEP_WHOLE):
            continue
        sections = subprocess.run(["readelf", "-S", "-W", str(so)], capture_output=True, text=True).stdout
        if ".symtab" in sections:
            before = so.stat().st_size
            subprocess.run(["strip", "--strip-unneeded", str(so)], check=True)
            freed += before - so.stat().st_size
    return freed


def native_kernels(venv: Path, app: Path) -> str:
    """Compile the engine's C kernels with its own loader into a scratch cache, then put the library
    where the loader looks first; the step entry point too (``step_entry.c``, a CPython extension:
    built where the base image has Python's headers, as the official one does, against the NumPy
    headers ``prune`` left for it, which go afterwards; without them the service steps through
    ctypes). Returns the loader's account (compiler, instruction sets)."""
    target = app / "model_core" / "native" / "_rnn_kernels.so"
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "MODEL_CORE_NATIVE_CACHE": cache, "MODEL_CORE_NATIVE": "1"}
        r = subprocess.run([str(venv / "bin" / "python"), "-c", NATIVE], env=env, cwd=app, check=False,
                           capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"image_venv: the native kernels are not available:\n{r.stderr[-3000:]}")
        path, reason, entry, entry_reason, suffix = r.stdout.splitlines()[-5:]
        if Path(path).parent.resolve() != target.parent.resolve():      # not a library built at install
            shutil.copyfile(path, target)
        if entry != "None" and Path(entry).parent.resolve() != target.parent.resolve():
            shutil.copyfile(entry, target.parent / f"_step_entry{suffix}")
    headers = site_packages(venv) / NUMPY_HEADERS
    shutil.rmtree(headers, ignore_errors=True)                      # built: the runtime never reads them
    return f"{reason}; step entry: {entry_reason}"


NATIVE = """
import sysconfig
from model_core import native
assert native.AVAILABLE, native.REASON
print(native.lib._name)
print(native.REASON)
print(native.step_entry and native.step_entry.__file__)
print(native.STEP_ENTRY_REASON)
print(sysconfig.get_config_var("EXT_SUFFIX"))
"""


def bytecode_for_startup(venv: Path, app: Path) -> None:
    """Byte-compile what starting the service imports (its lifespan loads and warms every model), and
    nothing else: the image runs as a user who cannot write __pycache__, and the rest of a package's
    modules, never imported, would only take space."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([str(venv / "bin" / "python"), "-c", STARTUP], check=True, env=env, cwd=app)


STARTUP = """
import asyncio
import uvicorn
import uvloop
from service.main import create_app
app = create_app()
uvicorn.Config(app, log_config=None).load()     # imports the HTTP and WebSocket protocols `auto` picks
async def start_and_stop():
    async with app.router.lifespan_context(app):
        pass
asyncio.run(start_and_stop())
"""


def build_venv(venv: Path, extras: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    req = Path("requirements.txt")
    req.write_text("\n".join(requirements(Path("pyproject.toml"), extras)) + "\n")
    env = {**os.environ, "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    if CA_SECRET.is_file() and CA_SECRET.stat().st_size:
        env["PIP_CERT"] = str(CA_SECRET)
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    everything = "gpu" in extras                  # CuPy imports much more on a GPU than at startup
    subprocess.run([*pip, "install", "-q", *([] if everything else ["--no-compile"]), "-r", str(req)],
                   check=True, env=env)
    subprocess.run([*pip, "uninstall", "-q", "--yes", "pip", "setuptools"], check=True, env=env)
    site = site_packages(venv)
    keep = () if extras else (NUMPY_HEADERS + "/",)                # no extras: the cpu venv, which --app builds against
    pruned, stripped = prune(site, keep), strip_symbols(site)
    print(f"image_venv: removed {pruned / 2**20:.1f} MiB of tests, sources and headers, "
          f"{stripped / 2**20:.1f} MiB of symbols")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("venv", type=Path)
    parser.add_argument("extras", nargs="*", help="pyproject.toml extras to install (gpu)")
    parser.add_argument("--app", type=Path, help="the app's directory: build its kernels and startup bytecode "
                                                 "against the existing VENV")
    args = parser.parse_args()
    if args.app is None:
        build_venv(args.venv, args.extras)
        return
    print(f"image_venv: native kernels {native_kernels(args.venv, args.app)}")
    bytecode_for_startup(args.venv, args.app)


if __name__ == "__main__":
    main()
