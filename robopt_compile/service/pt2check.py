"""Check an uploaded ``.pt2`` (torch.export) program in a child process, for the API.

``python -m robopt_compile.service.pt2check PROGRAM.pt2 OUT.onnx``: load the program and
export it to ONNX with the checks every compile runs (``frontend.load_source``: the torch
exporter, the ONNX checker, parity against torch on its example inputs), write the ONNX to
``OUT.onnx`` for :func:`robopt_compile.api.inspect`, exit 0; or print one line and exit 2.

``torch.export.load`` unpickles, so a ``.pt2`` can run code: the server accepts them only when
started with ``--trust-pt2-uploads`` and never loads one in its own process. The child runs at
nice 10 with a time limit (:func:`check`), so a hostile or broken file cannot stall the API.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TIMEOUT_S = 300.0


def check(program: Path, out: Path, timeout_s: float = TIMEOUT_S) -> None:
    """Run the check in a child process; raise ``ModelLoadError`` with its one line."""
    from robopt_compile.errors import ModelLoadError

    cmd = [sys.executable, "-m", "robopt_compile.service.pt2check", str(program), str(out)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise ModelLoadError(f"the .pt2 took over {timeout_s:g} s to load and export; export it "
                             "to ONNX yourself and upload that.") from exc  # fmt: skip
    if done.returncode != 0 or not out.is_file():
        lines = (done.stderr or done.stdout or "").strip().splitlines()
        raise ModelLoadError(lines[-1] if lines else f"the .pt2 check exited {done.returncode}.")


def main(argv: list[str]) -> int:
    os.nice(10)
    from robopt_compile import ir as rir
    from robopt_compile.compile.frontend import load_source
    from robopt_compile.errors import RoboptError

    program, out = Path(argv[0]), Path(argv[1])
    try:
        src = load_source(str(program))
        rir.save(src.model, out)
    except RoboptError as exc:
        print((str(exc).splitlines() or ["invalid"])[0].replace(str(program), "the .pt2"),
              file=sys.stderr)  # fmt: skip
        return 2
    except Exception as exc:  # anything torch raises on a bad file: one line
        print(f"the .pt2 could not be loaded ({type(exc).__name__}: {str(exc)[:200]})",
              file=sys.stderr)  # fmt: skip
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
