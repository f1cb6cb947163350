"""The compiled recurrent kernels (``rnn_kernels.c``), loaded with ctypes; optional, chosen once.

Where the library comes from, first found wins:

1. built at install by ``setup.py`` (``model_core/native/_rnn_kernels*.so``; an optional
   extension, so ``pip install .`` still succeeds without a compiler);
2. compiled here on first import when a C compiler is on the PATH (``cc``, ``gcc`` or ``clang``),
   into ``MODEL_CORE_NATIVE_CACHE`` or ``~/.cache/model_core``, keyed by the sources' hash, so a
   checkout works without an install step and only the first process pays (~15 s of CPU).

Without either, or with ``MODEL_CORE_NATIVE=0``, ``AVAILABLE`` is False and the engine runs its
Numba or NumPy cells; ``REASON`` says why. ``MODEL_CORE_NATIVE_ISA`` = ``baseline`` / ``avx2`` /
``avx512`` caps the instruction set (tests run the portable build this way).

The kernels take no lock and every call gets its own buffers (the step entry points: a per-thread
scratch buffer), so sessions served from several threads may call them at once (ctypes releases
the GIL during a call). They run on one thread
unless ``set_threads(n)`` (``model_core.set_num_threads``) asks for more: then a long enough
sequence is split across an OpenMP team, with a barrier per step.

``step_entry`` is a second, small library: a CPython extension (``step_entry.c``) through which a
frozen layer's ``step()`` is one call, checks, new state and kernels in C (``RecurrentBase``). It
comes from the same two places (built at install, else compiled into the cache where Python's
and NumPy's headers are present: it reads and makes arrays with NumPy's C API) and is optional on
top of the kernels: without it, or with ``MODEL_CORE_NATIVE_STEP_ENTRY=0``, ``step()`` calls the
kernels through ctypes as before; ``STEP_ENTRY_REASON`` says which.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np

ENV_VAR, CACHE_VAR, ISA_VAR = "MODEL_CORE_NATIVE", "MODEL_CORE_NATIVE_CACHE", "MODEL_CORE_NATIVE_ISA"
_HERE = Path(__file__).resolve().parent
SOURCES = (_HERE / "rnn_kernels.c", _HERE / "rnn_kernels_body.h", _HERE / "bf16_body.h")
# The flags setup.py uses too. No -ffast-math: NaN and inf must pass through as in NumPy; GCC's
# default -ffp-contract=fast already fuses a*b+c into FMAs.
CFLAGS = ["-O3", "-fPIC", "-shared", "-Wno-psabi"]
OPENMP = ["-fopenmp"]    # threads for model_core.set_num_threads; the build retries without it
_ISAS = {"auto": 0, "baseline": 1, "avx2": 2, "avx512": 3}
SPINCOUNT = "10000000"   # GOMP_SPINCOUNT unless the user set it or OMP_WAIT_POLICY (_team_spin)

_F = ctypes.c_void_p                                 # pointers passed as ints: a.ctypes.data
_I = ctypes.c_int64
_SIGNATURES = {
    "mc_select": ([ctypes.c_int32], ctypes.c_char_p),
    "mc_pack_rows": ([_I, _I, _I, _F, _F], None),
    "mc_row_form": ([_I, _I, _I, _F], ctypes.c_int32),
    "mc_product": ([_I, _I, _I, _F, _F, _I, _I, _I, _F], None),
    "mc_project": ([_I, _I, _I, _I, _F, _I, _F, _F, _F, _I], ctypes.c_int32),
    "mc_lstm_forward": ([_I, _I, _I, ctypes.c_int32, _F, _I, _I, _F, _F, _F, _I, _I, _I, _F, _F, _F, _I, _I,
                         _F, _F, _F, _F, _F, _F, _F], None),
    "mc_lstm_forward_fused": ([_I, _I, _I, _I, ctypes.c_int32, _F, _I, _I, _F, _F, _F, _F, _I, _I, _I, _F, _F, _F,
                               _I, _I, _F, _F, _F, _F, _F, _F, _F], ctypes.c_int32),
    "mc_lstm_backward": ([_I, _I, _I, ctypes.c_int32, _F, _F, _I, _I, _F, _F, _F, _F, _F, _F, _F, _F, _F], None),
    "mc_gru_forward_fused": ([_I, _I, _I, _I, ctypes.c_int32, _F, _I, _I, _F, _F, _F, _F, _I, _I, _I, _F, _F, _F,
                              _I, _I, _F, _F, _F, _F, _F], ctypes.c_int32),
    "mc_gru_forward": ([_I, _I, _I, ctypes.c_int32, _F, _I, _I, _F, _F, _F, _I, _I, _I, _F, _F, _F, _I, _I,
                        _F, _F, _F, _F, _F], None),
    "mc_gru_backward": ([_I, _I, _I, ctypes.c_int32, _F, _F, _I, _I, _F, _F, _F, _F, _F, _F, _F, _F], None),
    "mc_pack_panels": ([_I, _I, _F, _F], None),
    "mc_rnn_forward": ([_I, _I, _I, _I, ctypes.c_int32, ctypes.c_int32, _F, _I, _I, _F, _F, _F, _F, ctypes.c_int32, _F,
                        _F, _I, _I, _F, _F, _F], ctypes.c_int32),
    "mc_rnn_backward": ([_I, _I, _I, ctypes.c_int32, ctypes.c_int32, _F, _F, _I, _I, _F, _F, _F, _F, _F], None),
    "mc_forward_bf16": ([_I, _I, _I, _I, _I, ctypes.c_int32, _F, _I, _I, _F, _F, _F, _F, _F, _F, _I, _I, _F, _F],
                        ctypes.c_int32),
    "mc_fma_peak": ([_I], ctypes.c_double),
    "mc_read_peak": ([_F, _I, _I, _F], ctypes.c_double),
    "mc_set_threads": ([ctypes.c_int32], ctypes.c_int32),
    "mc_blas_team_calls": ([], _I),
    "mc_team_forwards": ([], _I),
    "mc_team_projections": ([], _I),
    "mc_row_steps_run": ([], _I),
    "mc_one_row_steps": ([], _I),
    "mc_blas_team": ([ctypes.c_int, _F, ctypes.c_int, ctypes.c_size_t, _F, ctypes.c_int], None),   # OpenBLAS calls it
    "mc_set_handles": ([_I], None),
    # handles (see handle()): plain ints, so a call converts no ctypes objects
    "mc_lstm_step": ([_I] * 8, ctypes.c_int32),
    "mc_gru_step": ([_I] * 7, ctypes.c_int32),
    "mc_lstm_input_step": ([_I] * 16, ctypes.c_int32),
    "mc_gru_input_step": ([_I] * 14, ctypes.c_int32),
    "mc_rnn_input_step": ([_I] * 13, ctypes.c_int32),
    # the same with data pointers: what the compiled step entry point (step_entry.c) calls
    "mc_lstm_input_step_data": ([_I, _I, _I, _F, _F, _F, _F, _I, _F, _F, _F, _F, _F, _F, _F, _F], ctypes.c_int32),
    "mc_gru_input_step_data": ([_I, _I, _I, _F, _F, _F, _F, _F, _I, _F, _F, _F, _F, _F], ctypes.c_int32),
    "mc_rnn_input_step_data": ([_I, _I, _I, _I, _F, _F, _F, _F, _I, _F, _F, _F, _F], ctypes.c_int32),
}


def _sources_hash(sources, flags) -> str:
    h = hashlib.sha256()
    for path in sources:
        h.update(path.read_bytes())
    h.update(" ".join(flags).encode())
    return h.hexdigest()[:16]


def _installed() -> Path | None:
    for path in sorted(_HERE.glob("_rnn_kernels*" + (sysconfig.get_config_var("SHLIB_SUFFIX") or ".so"))):
        return path
    return None


def _compile_into_cache(sources=SOURCES, stem: str = "rnn_kernels", flag_sets=(CFLAGS + OPENMP, CFLAGS),
                        suffix: str | None = None) -> tuple[Path | None, str]:
    """Compile ``sources[0]`` into the cache as ``{stem}-{hash}{suffix}``, trying each flag set in turn
    (the kernels: without OpenMP second, one thread, still fast). Returns (path or None, how)."""
    compiler = next((c for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c and shutil.which(c)), None)
    if compiler is None:
        return None, "no C compiler on the PATH and no library built at install"
    cache = Path(os.environ.get(CACHE_VAR) or Path.home() / ".cache" / "model_core")
    suffix = suffix or sysconfig.get_config_var("SHLIB_SUFFIX") or ".so"
    target = cache / f"{stem}-{_sources_hash(sources, flag_sets[0])}{suffix}"
    if target.exists():
        return target, f"compiled by {compiler} (cached)"
    failure = ""
    for flags in flag_sets:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:   # compile aside, rename into place: atomic
                out = Path(tmp) / target.name
                subprocess.run([compiler, *flags, "-o", str(out), str(sources[0])], check=True,
                               capture_output=True, timeout=300)
                ctypes.CDLL(str(out))                              # links and loads here (libgomp present)
                os.replace(out, target)
            return target, f"compiled by {compiler}"
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            failure = f"compiling with {compiler} failed ({type(exc).__name__}: {detail.decode()[:200]})"
    return None, failure


def _bind(path: Path) -> ctypes.CDLL:
    """The library with every entry point's signature set; AttributeError if one is missing."""
    lib = ctypes.CDLL(str(path))
    for name, (args, res) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


def _team_spin() -> None:
    """How long the OpenMP team's threads spin after a multi-threaded call before they sleep
    (libgomp reads it when it loads, with the library): 10M pauses, ~0.11 s here, where libgomp's
    default is 300k (~3 ms). On the Xeon KVM guest a team whose threads had gone to sleep after
    the short spin woke slowly and unevenly: a frozen B=1 forward at 2 threads (T=100, H=256),
    median of 12 calls each after 0.3 s idle and one untimed call, took 4.2 ms (RNN) and 7.8 ms
    (LSTM) where 0.26 and 0.79 were its best; with 10M spins 0.33-0.37 and 0.82, after 0.3-3 s
    idle. bench_onnx at 2 threads, the B=1 and B=16 rows: paired medians up to 5.94 -> all at or
    under 0.87. Shorter spins did worse (3000: its B=1 GRU 0.67 -> 3.03, the team asleep while
    onnxruntime's workers ran). The cost: after a call on a team, its threads hold a core for up to
    ~0.1 s. One thread (the service's request paths) starts no team. A user's OMP_WAIT_POLICY or
    GOMP_SPINCOUNT wins."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", SPINCOUNT)


def _load():
    """(ctypes library or None, why): the one place that decides whether the native path exists."""
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return None, f"disabled by {ENV_VAR}={os.environ[ENV_VAR]}"
    _team_spin()
    if sys.byteorder != "little":
        return None, "big-endian platform"
    lib, how, stale = None, "built at install", ""
    installed = _installed()
    if installed is not None:
        try:
            lib = _bind(installed)
        except (OSError, AttributeError) as exc:
            # built from older sources (a checkout updated without reinstalling): compile this one's
            stale = f"the library built at install does not match these sources ({exc}); "
    if lib is None:
        path, how = _compile_into_cache()
        if path is None:
            return None, stale + how
        try:
            lib = _bind(path)
        except (OSError, AttributeError) as exc:
            return None, f"{stale}cannot load {path} ({exc})"
        how = stale + how
    want = os.environ.get(ISA_VAR, "auto").strip().lower()
    isa = lib.mc_select(_ISAS.get(want, 0)).decode()
    return lib, f"{how}, {isa}"


lib, REASON = _load()
AVAILABLE = lib is not None


def _handles_work() -> bool:
    """Can the step entry points read an array's data pointer from the array object itself?

    NumPy's array struct starts with the object header, then the data pointer; CPython's id() is
    the object's address. Checked on arrays of several kinds (fresh, view, offset view) against
    ``a.ctypes.data``; where any differs (another interpreter or NumPy ABI), handles are off and
    ``handle`` falls back to the data pointer."""
    if sys.implementation.name != "cpython":
        return False
    offset = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)      # ob_refcnt, ob_type
    base = np.arange(64, dtype=np.float32).reshape(8, 8)
    for a in (base, base[3], base[2:, 1:], np.empty(0, np.float32)):
        if ctypes.c_void_p.from_address(id(a) + offset).value != a.ctypes.data:
            return False
    return True


if AVAILABLE and _handles_work():
    _DATA_OFFSET = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)
    lib.mc_set_handles(_DATA_OFFSET)
    _pointer_at = ctypes.c_void_p.from_address

    def handle(a: np.ndarray | None) -> int:
        """What the step entry points take for an array: its address (they read its data pointer);
        the caller keeps ``a`` referenced until the call returns. None passes NULL."""
        return 0 if a is None else id(a)

    def data_pointer(a: np.ndarray) -> int:
        """``a.ctypes.data``, read from the array object as the step entry points read it: 0.5 us
        against 2 (a sequence call passes a dozen pointers). Only an ndarray has that layout."""
        if not isinstance(a, np.ndarray):
            return a.ctypes.data
        return _pointer_at(id(a) + _DATA_OFFSET).value or 0
else:
    def handle(a: np.ndarray | None) -> int:
        """What the step entry points take for an array: here its data pointer. None passes NULL."""
        return 0 if a is None else a.ctypes.data

    def data_pointer(a: np.ndarray) -> int:
        """``a.ctypes.data``."""
        return a.ctypes.data


# -- the compiled entry point of a frozen layer's step (step_entry.c) --------------------------------
STEP_ENTRY_VAR = "MODEL_CORE_NATIVE_STEP_ENTRY"
STEP_ENTRY_SOURCES = (_HERE / "step_entry.c",)
STEP_KINDS = {"lstm": 0, "gru": 1, "rnn_tanh": 2, "rnn_relu": 3}      # step_entry.c's KIND_*


def step_entry_hash() -> str | None:
    """What a build of step_entry.c embeds as SOURCE_HASH (setup.py computes it the same way): a
    module built from other sources is not loaded. None where the source is not installed."""
    try:
        return hashlib.sha256(STEP_ENTRY_SOURCES[0].read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def _step_entry_headers() -> tuple[list[str], list[str]]:
    """(Python's and NumPy's include directories, the headers missing from them)."""
    dirs = [sysconfig.get_paths()["include"], np.get_include()]
    wanted = [Path(dirs[0]) / "Python.h", Path(dirs[1]) / "numpy" / "arrayobject.h"]
    return dirs, [str(h) for h in wanted if not h.exists()]


def _step_entry_flags(source_hash: str) -> list[str] | None:
    """The flags that build step_entry.c (``step_entry_hash``: ``source_hash``) against this
    interpreter's and this NumPy's headers; None without them. NumPy's version is among the flags,
    so the cached build is remade when NumPy changes."""
    dirs, missing = _step_entry_headers()
    if missing:
        return None
    flags = ["-O2", "-fPIC", "-shared", "-I", dirs[0], "-I", dirs[1], f'-DMC_SOURCE_HASH="{source_hash}"',
             f'-DMC_NUMPY_VERSION="{np.__version__}"']
    return flags + (["-undefined", "dynamic_lookup"] if sys.platform == "darwin" else [])


def _load_step_entry():
    """(the extension module configured with the kernels' addresses, or None; why)."""
    if lib is None:
        return None, "no native kernels"
    if os.environ.get(STEP_ENTRY_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return None, f"disabled by {STEP_ENTRY_VAR}={os.environ[STEP_ENTRY_VAR]}"
    if sys.implementation.name != "cpython":
        return None, f"a CPython extension, and this is {sys.implementation.name}"
    try:
        from model_core.native import _step_entry as mod                # built at install
        how = "built at install"
    except ImportError:
        mod = None
    want = step_entry_hash()
    if mod is None or (want is not None and mod.SOURCE_HASH != want):  # none, or built from other sources
        flags = _step_entry_flags(want) if want is not None else None
        if flags is None:
            missing = "its source" if want is None else " or ".join(_step_entry_headers()[1])
            return None, f"none built at install, and no {missing} to compile it"
        path, how = _compile_into_cache(STEP_ENTRY_SOURCES, "step_entry", (flags,),
                                        sysconfig.get_config_var("EXT_SUFFIX"))
        if path is None:
            return None, how
        try:
            spec = importlib.util.spec_from_file_location("model_core.native._step_entry", path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        except ImportError as exc:
            return None, f"cannot import {path} ({exc})"
        if mod.SOURCE_HASH != want:
            return None, f"{path} was not built from {STEP_ENTRY_SOURCES[0]}"
    addresses = [ctypes.cast(getattr(lib, f"mc_{k}_input_step_data"), ctypes.c_void_p).value for k in ("lstm", "gru", "rnn")]
    mod.configure(*addresses)
    return mod, how


step_entry, STEP_ENTRY_REASON = _load_step_entry()

_threads = 1


def set_threads(n: int) -> int:
    """Threads for later kernel calls; returns the count this build can use (1 without OpenMP)."""
    global _threads
    _threads = int(lib.mc_set_threads(n)) if lib is not None else 1
    return _threads


def threads() -> int:
    """The kernels' thread count (``set_threads``)."""
    return _threads


def blas_team() -> int | None:
    """The address of ``mc_blas_team``: OpenBLAS's threads callback that runs its parallel jobs on
    the kernels' OpenMP team (``model_core.threads``); None without the library."""
    return None if lib is None else ctypes.cast(lib.mc_blas_team, ctypes.c_void_p).value
