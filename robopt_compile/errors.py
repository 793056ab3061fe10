"""One exception hierarchy for the whole tool.

Every error a user can cause carries a message they can act on. The CLIs print it on one line
and exit with the class's ``exit_code``; tracebacks appear only with ``--debug``.

Exit codes (documented in the README):
    0  success
    1  internal error (a bug in robopt: please report it with ``--debug`` output)
    2  bad input: missing or corrupt model, unknown target, bad option, output folder exists
    3  a backend or tool is missing or failed to build the engine
    4  a check failed: exported model does not match the source, engine output fidelity
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_BACKEND = 3
EXIT_CHECK_FAILED = 4


class RoboptError(Exception):
    """Base of every error robopt raises on purpose. The message says what to do."""

    exit_code = EXIT_INTERNAL


class InputError(RoboptError):
    """The user's input cannot be used as given (file, option, name)."""

    exit_code = EXIT_BAD_INPUT


class ModelLoadError(InputError):
    """A model file is missing, unreadable or corrupt, or a factory failed."""


class UnknownNameError(InputError):
    """An unknown target, backend, zoo model or pass; suggests the closest names."""

    def __init__(self, kind: str, name: str, known: list[str] | tuple[str, ...]):
        import difflib

        close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(f"unknown {kind} {name!r}.{hint} Known: {', '.join(sorted(known))}.")
        self.name = name
        self.suggestions = close


class ProfileError(InputError):
    """A hardware profile file is malformed."""


class OutputExistsError(InputError):
    """The output folder exists and ``--force`` was not given."""


class ExportError(RoboptError):
    """Neither exporter could turn the torch model into ONNX."""

    exit_code = EXIT_BAD_INPUT


class PassError(RoboptError):
    """A pass cannot apply to this model; the message names the node and the reason."""

    exit_code = EXIT_BAD_INPUT


class BackendUnavailableError(RoboptError):
    """The backend's runtime is not installed or cannot run on this machine."""

    exit_code = EXIT_BACKEND


class BuildError(RoboptError):
    """The backend failed to build an engine from the model."""

    exit_code = EXIT_BACKEND


class CheckFailedError(RoboptError):
    """A numerical check failed (export parity, simplify parity, engine fidelity)."""

    exit_code = EXIT_CHECK_FAILED


class ClusterError(RoboptError):
    """The ``--executor`` cluster cannot be reached, or a unit failed on it beyond its retries."""

    exit_code = EXIT_BACKEND


def install_hint(extra: str) -> str:
    """How to add one of robopt's extras (robopt is installed from a checkout or a wheel, not
    from PyPI: docs/DEPLOY.md)."""
    return (f"install robopt's [{extra}] extra: pip install -e '.[{extra}]' in a robopt "
            f"checkout, or pip install 'robopt_compile-*.whl[{extra}]' "
            "(docs/DEPLOY.md)")  # fmt: skip
