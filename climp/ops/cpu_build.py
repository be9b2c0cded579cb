"""Compile and load the C selective-scan kernel (climp/ops/csrc) on first use.

The shared library is built with the system C compiler into a cache directory keyed by a hash
of the sources, the compiler, its flags and the host CPU (the build uses -march=native), so a
source change or a different machine gets a fresh build. The compiler writes a temporary file
that is renamed into place, which makes concurrent first uses (pytest-xdist, torchrun ranks)
safe. Set CLIMP_CACHE to choose the cache directory and CC to choose the compiler.

OpenMP: the library is linked against the OpenMP runtime PyTorch itself loaded (torch/lib's
libgomp in pip wheels), so the kernels' parallel regions run in the same thread team as
PyTorch's own ops, with its wait policy and `torch.set_num_threads` (the thread count is also
passed to every call), instead of a second pool of spinning threads beside PyTorch's.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import List, Optional

CSRC = Path(__file__).with_name("csrc")
SOURCES = ("selective_scan.c", "selective_scan_impl.h", "selective_scan_state1.h", "ss2d_impl.h", "causal_conv_impl.h",
           "parallel.h", "mamba1d_impl.h", "dwconv2d_impl.h",
           "rms_norm_impl.h")
# The translation units among SOURCES (the rest are headers they include).
C_SOURCES = tuple(name for name in SOURCES if name.endswith(".c"))
BASE_FLAGS = ["-O3", "-std=gnu11", "-shared", "-fPIC", "-fno-math-errno", "-ffp-contract=fast", "-Wno-psabi"]
# Tried in order: the fast build first, then builds without flags some compilers lack.
OPTIONAL_FLAG_SETS = (["-march=native", "-fopenmp"], ["-fopenmp"], ["-march=native"], [])


class KernelBuildError(RuntimeError):
    """The C kernel could not be compiled (no compiler, or the compiler failed)."""


_lock = threading.Lock()
_library: Optional[ctypes.CDLL] = None
_failure: Optional[KernelBuildError] = None


def find_compiler() -> str:
    """Return the C compiler to use: $CC, else cc, gcc or clang from PATH."""
    candidates = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    raise KernelBuildError(
        f"no C compiler found (looked for {', '.join(candidates)}); install gcc or set CC to build "
        "climp's CPU selective-scan kernel, or use selective_scan(..., backend='chunked')"
    )


def cache_root() -> Path:
    """$CLIMP_CACHE, else $XDG_CACHE_HOME/climp, else ~/.cache/climp."""
    if os.environ.get("CLIMP_CACHE"):
        return Path(os.environ["CLIMP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "climp"


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU model and feature flags where Linux exposes them."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() + platform.machine()
    wanted = [line for line in lines if line.split(":")[0].strip() in ("model name", "flags", "Features")]
    return "\n".join(sorted(set(wanted))) + platform.machine()


def _compiler_version(compiler: str) -> str:
    result = subprocess.run([compiler, "--version"], capture_output=True, text=True)
    return result.stdout


def torch_openmp_library() -> Optional[Path]:
    """The OpenMP runtime (libgomp) loaded into this process by PyTorch, if any.

    Read from /proc/self/maps (what is actually loaded), else looked up in torch/lib."""
    import torch  # noqa: F401 - loads torch's libraries, whose runtime is wanted

    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = line.split()[-1]
            if "/" in path and Path(path).name.startswith("libgomp") and ".so" in path:
                return Path(path)
    except OSError:
        pass
    found = sorted(Path(torch.__file__).with_name("lib").glob("libgomp*.so*"))
    return found[0] if found else None


def _link_flags() -> List[str]:
    """Link against torch's libgomp (by path, with an rpath to its folder) rather than the
    compiler's: --as-needed drops the compiler's -lgomp, which -fopenmp appends after it."""
    runtime = torch_openmp_library()
    if runtime is None:
        return []
    return ["-Wl,--as-needed", str(runtime), f"-Wl,-rpath,{runtime.parent}"]


def _library_path(compiler: str) -> Path:
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((CSRC / name).read_bytes())
    for part in (compiler, _compiler_version(compiler), " ".join(BASE_FLAGS), repr(OPTIONAL_FLAG_SETS),
                 " ".join(_link_flags()), _cpu_signature()):
        digest.update(part.encode())
    suffix = ".dll" if os.name == "nt" else ".so"
    return cache_root() / f"selective_scan-{digest.hexdigest()[:16]}" / f"climp_selective_scan{suffix}"


def _compile(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    errors: List[str] = []
    for extra in OPTIONAL_FLAG_SETS:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".build-", suffix=target.suffix)
        os.close(fd)
        openmp = _link_flags() if "-fopenmp" in extra else []
        cmd = [compiler, *BASE_FLAGS, *extra, "-o", tmp, *(str(CSRC / name) for name in C_SOURCES), *openmp, "-lm"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode == 0:
            os.replace(tmp, target)
            return
        os.unlink(tmp)
        errors.append(f"$ {' '.join(cmd)}\n{result.stderr.strip()}")
    raise KernelBuildError("compiling climp's CPU selective-scan kernel failed:\n" + "\n\n".join(errors))


def _declare(lib: ctypes.CDLL) -> None:
    ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix in ("f32", "f64"):
        fwd = getattr(lib, f"selective_scan_fwd_{suffix}")
        fwd.argtypes = [ptr] * 8 + [i32] + [ptr] * 3 + [i64] * 5 + [i32]
        fwd.restype = None
        bwd = getattr(lib, f"selective_scan_bwd_{suffix}")
        bwd.argtypes = [ptr] * 8 + [i32] + [ptr] * 11 + [i64] * 5 + [i32]
        bwd.restype = None
        ss2d_fwd = getattr(lib, f"ss2d_fwd_{suffix}")
        ss2d_fwd.argtypes = [ptr] * 6 + [i32, ptr] + [i64] * 6 + [i32]
        ss2d_fwd.restype = None
        ss2d_bwd = getattr(lib, f"ss2d_bwd_{suffix}")
        ss2d_bwd.argtypes = [ptr] * 6 + [i32] + [ptr] * 7 + [i64] * 6 + [i32]
        ss2d_bwd.restype = None
        conv_fwd = getattr(lib, f"causal_conv_silu_fwd_{suffix}")
        conv_fwd.argtypes = [ptr] + [i64] * 3 + [ptr] * 3 + [i64] * 7 + [i32]
        conv_fwd.restype = None
        conv_bwd = getattr(lib, f"causal_conv_silu_bwd_{suffix}")
        conv_bwd.argtypes = [ptr] + [i64] * 3 + [ptr] * 3 + [i64] * 3 + [ptr] + [i64] * 3 + [ptr] * 2 + [i64] * 4 + [i32]
        conv_bwd.restype = None
        m1d_fwd = getattr(lib, f"mamba1d_fwd_{suffix}")
        m1d_fwd.argtypes = ([ptr, i64, i64] * 3 + [ptr] * 4 + [i32, ptr] + [i64] * 5 + [i32])
        m1d_fwd.restype = None
        m1d_bwd = getattr(lib, f"mamba1d_bwd_{suffix}")
        m1d_bwd.argtypes = ([ptr, i64, i64] * 3 + [ptr] * 4 + [i32] + [ptr] * 8 + [i64] * 5 + [i32])
        m1d_bwd.restype = None
        rms_fwd = getattr(lib, f"rms_norm_fwd_{suffix}")
        rms_fwd.argtypes = [ptr] * 4 + [i64] * 2 + [ctypes.c_double, i32]
        rms_fwd.restype = None
        rms_bwd = getattr(lib, f"rms_norm_bwd_{suffix}")
        rms_bwd.argtypes = [ptr] * 6 + [i64] * 2 + [i32]
        rms_bwd.restype = None
        dw_fwd = getattr(lib, f"dwconv2d_silu_fwd_{suffix}")
        dw_fwd.argtypes = [ptr] + [i64] * 3 + [ptr] * 3 + [i64] * 6 + [i32]
        dw_fwd.restype = None
        dw_bwd = getattr(lib, f"dwconv2d_silu_bwd_{suffix}")
        dw_bwd.argtypes = [ptr] + [i64] * 3 + [ptr] * 3 + [i64] * 3 + [ptr] * 3 + [i64] * 6 + [i32]
        dw_bwd.restype = None


def build_cpu_kernel() -> Path:
    """Compile the CPU kernel now if its cache entry is missing; return the library's path.

    Call it once after installing (`python -c "import climp.ops; climp.ops.build_cpu_kernel()"`)
    so the first training step does not pay the (few seconds of) compilation.
    """
    compiler = find_compiler()
    target = _library_path(compiler)
    if not target.exists():
        try:
            _compile(compiler, target)
        except OSError as err:
            raise KernelBuildError(f"cannot write the kernel cache {target.parent} ({err}); set CLIMP_CACHE") from err
    return target


def load_cpu_kernel() -> ctypes.CDLL:
    """The loaded kernel library, built on first call; raises KernelBuildError if that fails."""
    global _library, _failure
    with _lock:
        if _library is not None:
            return _library
        if _failure is not None:
            raise _failure
        try:
            lib = ctypes.CDLL(str(build_cpu_kernel()))
        except KernelBuildError as err:
            _failure = err
            raise
        _declare(lib)
        _library = lib
        return lib


def cpu_kernel_available() -> bool:
    """Whether the CPU kernel is (or can be) built and loaded on this machine (a constant to
    torch.compile, which traces no locks)."""
    return _kernel_loads()


def kernel_function(name: str, dtype) -> ctypes._CFuncPtr:
    """The kernel's C function `name` for a compute dtype (float64, else float32)."""
    import torch

    return getattr(load_cpu_kernel(), f"{name}_{'f64' if dtype == torch.float64 else 'f32'}")


def refuse_double_backward(backward_op, what: str,
                           alternative: str = "run inside climp.ops.double_backward_mode()") -> None:
    """Register on a kernel's backward op an autograd that raises a clear error: the C kernels
    compute first derivatives only. `what` names the op in the message, `alternative` the way out."""

    def refuse(ctx, *grads):
        raise RuntimeError(f"{what}'s backward is not differentiable; for second derivatives {alternative}")

    backward_op.register_autograd(refuse)


def _constant_for_compile(fn):
    import torch

    return torch.compiler.assume_constant_result(fn)


@_constant_for_compile
def _kernel_loads() -> bool:
    try:
        load_cpu_kernel()
    except KernelBuildError:
        return False
    return True
