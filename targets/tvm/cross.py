"""Building for another ISA: the cross g++, the library's ELF check, and its kernels under qemu.

A target for another ISA (aarch64 on an x86 build machine) is linked with a cross g++ named by
the profile (``cross_compiler``; a missing one is a one-line ``BuildError`` naming its Debian
package) and its ELF header must name the target's ISA (``elf_machine``). Where ``qemu-aarch64``
runs here, ``check_kernels_under_qemu`` runs every kernel of the cross-built library under
qemu-user and compares it with the same kernel built for this machine. It checks the generated
code and the cross link, not the Relax VM that chains the kernels (see docs/TVM.md).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from robopt_compile.errors import BuildError
from robopt_compile.targets.tvm.target import host_arch, target_arch

# target arch -> (default cross g++, Debian package that provides it)
CROSS_COMPILERS = {"aarch64": ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu")}
ELF_MACHINES = {62: "x86_64", 183: "aarch64"}  # ELF e_machine values (System V ABI)


def cross_compiler(target: dict[str, Any], opts: dict[str, Any]) -> str | None:
    """The g++ that links a library for ``target`` on this machine; None when it is native."""
    arch = target_arch(target)
    if arch == host_arch():
        return None
    default, package = CROSS_COMPILERS.get(arch, (f"{arch}-linux-gnu-g++", ""))
    cc = str(opts.get("cross_compiler", default))
    package = str(opts.get("debian_package", package))
    if shutil.which(cc) is None:
        how = f": apt-get install {package} (Debian package {package})" if package else ""
        raise BuildError(f"cross-compiling for {arch} needs the cross compiler `{cc}`{how}.")
    return cc


def elf_machine(path: Path) -> str:
    """The ISA an ELF file is for, from its header's ``e_machine`` field."""
    head = path.read_bytes()[:20]
    if head[:4] != b"\x7fELF":
        return "not an ELF file"
    code = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return ELF_MACHINES.get(code, f"e_machine {code}")


# Runs kernels of a cross-built model.so under qemu-user without the TVM runtime: each kernel is
# a TVM FFI "safe call" symbol `__tvm_ffi_<name>`; the library reaches the runtime only through
# the function-pointer variables set below and TVMFFIErrorSetRaisedFromCStrParts. Parallel loops
# run serially (one task), which is a valid schedule for any of them.
_HARNESS_C = r"""
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tvm/ffi/c_api.h>

typedef struct { void* sync_handle; int32_t num_task; } Env;
typedef int (*Lambda)(int, Env*, void*);
static void* ws_alloc(int dt, int di, uint64_t n, int c, int b) {
  return aligned_alloc(64, (n + 63) / 64 * 64 + 64);
}
static int ws_free(int dt, int di, void* p) { free(p); return 0; }
static int par_launch(Lambda f, void* cdata, int num_task) {
  Env env = {0, 1};
  return f(0, &env, cdata);
}
static int par_barrier(int task_id, Env* env) { return 0; }
void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n) {
  fprintf(stderr, "%s:", kind);
  for (int i = 0; i < n; ++i) fprintf(stderr, " %s", parts[i]);
  fprintf(stderr, "\n");
}
static void set_ptr(void* lib, const char* name, void* value) {
  void** slot = (void**)dlsym(lib, name);
  if (slot) *slot = value;
}
int main(int argc, char** argv) {  /* model.so spec data out_dir */
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
  if (!lib) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 2; }
  set_ptr(lib, "__TVMBackendAllocWorkspace", (void*)ws_alloc);
  set_ptr(lib, "__TVMBackendFreeWorkspace", (void*)ws_free);
  set_ptr(lib, "__TVMBackendParallelLaunch", (void*)par_launch);
  set_ptr(lib, "__TVMBackendParallelBarrier", (void*)par_barrier);
  FILE* spec = fopen(argv[2], "r");
  FILE* data = fopen(argv[3], "rb");
  int nk = 0;
  if (!spec || !data || fscanf(spec, "%d", &nk) != 1) return 3;
  for (int k = 0; k < nk; ++k) {
    char name[512], sym[600];
    int na = 0;
    if (fscanf(spec, "%511s %d", name, &na) != 2) return 3;
    DLTensor* ts = calloc(na, sizeof(DLTensor));
    TVMFFIAny* args = calloc(na, sizeof(TVMFFIAny));
    for (int a = 0; a < na; ++a) {
      int code, bits, ndim;
      if (fscanf(spec, "%d %d %d", &code, &bits, &ndim) != 3) return 3;
      int64_t* shape = calloc(ndim ? ndim : 1, sizeof(int64_t));
      uint64_t n = (bits + 7) / 8;
      for (int d = 0; d < ndim; ++d) {
        long long v; if (fscanf(spec, "%lld", &v) != 1) return 3; shape[d] = v; n *= v;
      }
      void* buf = aligned_alloc(64, (n + 63) / 64 * 64 + 64);
      if (fread(buf, 1, n, data) != n) return 3;
      ts[a].data = buf; ts[a].device.device_type = kDLCPU; ts[a].device.device_id = 0;
      ts[a].ndim = ndim; ts[a].dtype.code = code; ts[a].dtype.bits = bits;
      ts[a].dtype.lanes = 1; ts[a].shape = shape; ts[a].strides = NULL; ts[a].byte_offset = 0;
      args[a].type_index = kTVMFFIDLTensorPtr; args[a].v_ptr = &ts[a];
    }
    snprintf(sym, sizeof sym, "__tvm_ffi_%s", name);
    TVMFFISafeCallType fn = (TVMFFISafeCallType)dlsym(lib, sym);
    if (!fn) { fprintf(stderr, "missing symbol %s\n", sym); return 4; }
    TVMFFIAny result; memset(&result, 0, sizeof result); result.type_index = kTVMFFINone;
    int rc = fn(NULL, args, na, &result);
    if (rc != 0) { fprintf(stderr, "kernel %s returned %d\n", name, rc); return 5; }
    char path[4096];
    snprintf(path, sizeof path, "%s/%d.bin", argv[4], k);
    FILE* out = fopen(path, "wb");
    for (int a = 0; a < na; ++a) {
      uint64_t n = (ts[a].dtype.bits + 7) / 8;
      for (int d = 0; d < ts[a].ndim; ++d) n *= ts[a].shape[d];
      fwrite(ts[a].data, 1, n, out);
    }
    fclose(out);
    printf("ok %s\n", name);
    fflush(stdout);
  }
  return 0;
}
"""
_DLPACK_CODES = {"int": 0, "uint": 1, "float": 2, "bfloat": 4, "bool": 6}


def _kernel_args(func: Any) -> list[tuple[str, list[int]]] | None:
    """(dtype, shape) of each buffer parameter; None when a parameter is not a static buffer."""
    args = []
    for p in func.params:
        try:  # TVM 0.27 TIR: a buffer parameter is a Var of buffer type
            if p.is_scalar():
                return None
            args.append((str(p.dtype), [int(d) for d in p.shape]))
        except (AttributeError, TypeError, ValueError):
            return None
    return args


def check_kernels_under_qemu(
    lowered: Any, arch: str, engine: Path, timeout_s: float = 300.0
) -> dict[str, Any]:
    """Run every kernel of a cross-built ``engine`` under qemu-user and compare each with the
    same kernel built for this machine, on the same random inputs.

    This checks the target's generated code and the cross link, not the Relax VM that chains the
    kernels (the aarch64 TVM runtime is not available here): see docs/TVM.md.
    """
    import subprocess
    import tempfile

    import tvm

    qemu = shutil.which(f"qemu-{arch}")
    gcc = shutil.which(f"{arch}-linux-gnu-gcc")
    sysroot = Path(f"/usr/{arch}-linux-gnu")
    if qemu is None or gcc is None or not sysroot.is_dir():
        return {"status": "not run", "reason": f"needs qemu-{arch} (apt-get install qemu-user) "
                f"and {arch}-linux-gnu-gcc"}  # fmt: skip
    rng = np.random.default_rng(0)
    kernels, skipped = [], []
    host = tvm.target.Target({"kind": "llvm"})
    for gv, func in lowered.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        name = gv.name_hint
        spec = _kernel_args(func)
        if spec is None or any(d.rstrip("0123456789") not in _DLPACK_CODES for d, _ in spec):
            skipped.append(name)
            continue
        bufs = [
            rng.uniform(-1, 1, s).astype(d) if d.startswith(("float", "bfloat"))
            else np.zeros(s, dtype=d)
            for d, s in spec
        ]  # fmt: skip
        try:
            f = func.with_attr("global_symbol", "main").without_attr("target")
            ref = tvm.compile(tvm.IRModule({"main": f}), target=host)
        except Exception:  # TVM's C++ codegen raises any FFI error type: the kernel is skipped
            skipped.append(name)
            continue
        tensors = [tvm.runtime.tensor(b.copy()) for b in bufs]
        ref(*tensors)
        kernels.append((name, spec, bufs, [t.numpy() for t in tensors]))
    with tempfile.TemporaryDirectory(prefix="robopt-qemu-") as tmp:
        d = Path(tmp)
        import tvm_ffi

        inc = [f"-I{Path(tvm_ffi.__file__).parent / 'include'}"]
        (d / "h.c").write_text(_HARNESS_C)
        cc = subprocess.run(
            [gcc, "-O1", "-rdynamic", *inc, "-o", str(d / "h"), str(d / "h.c"), "-ldl"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if cc.returncode != 0:
            return {"status": "not run", "reason": f"harness did not compile: {cc.stderr[:200]}"}
        lines = [str(len(kernels))]
        with open(d / "data.bin", "wb") as data:
            for name, spec, bufs, _ in kernels:
                lines.append(f"{name} {len(spec)}")
                for (dt, shape), b in zip(spec, bufs, strict=True):
                    bits = np.dtype(dt).itemsize * 8
                    code = _DLPACK_CODES[dt.rstrip("0123456789")]
                    lines.append(" ".join(map(str, [code, bits, len(shape), *shape])))
                    data.write(np.ascontiguousarray(b).tobytes())
        (d / "spec.txt").write_text("\n".join(lines) + "\n")
        t0 = time.perf_counter()
        try:
            run = subprocess.run(
                [qemu, "-L", str(sysroot), str(d / "h"), str(engine), str(d / "spec.txt"),
                 str(d / "data.bin"), str(d)],
                capture_output=True, text=True, timeout=timeout_s,
            )  # fmt: skip
            rc, err = run.returncode, run.stderr.strip()
        except subprocess.TimeoutExpired:
            rc, err = None, f"timed out after {timeout_s:.0f} s"
        worst, mismatched, ran = 0.0, [], 0
        for i, (name, spec, _, want) in enumerate(kernels):
            path = d / f"{i}.bin"
            if not path.is_file():
                break
            raw = path.read_bytes()
            ran += 1
            off = 0
            for (dt, shape), w in zip(spec, want, strict=True):
                n = int(np.prod(shape)) * np.dtype(dt).itemsize
                got = np.frombuffer(raw[off : off + n], dtype=dt).reshape(shape)
                off += n
                diff = float(np.max(np.abs(got.astype(np.float64) - w))) if w.size else 0.0
                worst = max(worst, diff)
                # fp32 sums in another order (NEON FMA vs AVX-512): relative to the magnitude.
                scale = max(1.0, float(np.max(np.abs(w)))) if w.size else 1.0
                if not np.allclose(got, w, rtol=1e-4, atol=1e-4 * scale):
                    mismatched.append(name)
    ok = rc == 0 and not mismatched and ran == len(kernels)
    return {
        "status": ("passed" if ran else "not run") if ok else "failed",
        "qemu": qemu,
        "kernels_run": ran,
        "kernels": len(kernels),
        "kernels_skipped": skipped,
        "mismatched": sorted(set(mismatched)),
        "max_abs_diff": worst,
        "seconds": round(time.perf_counter() - t0, 2),
        "error": None if rc == 0 else (err.splitlines() or ["?"])[-1][:200],
    }
