"""Opening a store: where it is (env, URL, .db file), its schema version, and what is refused.

Also the store package's layering: no module imports another in a circle (at module level or
inside a function), and the lower layers never import the session recorder or the Store.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from robopt_compile.store import StoreError, open_store
from robopt_compile.store.locate import store_location
from robopt_compile.store.schema import SCHEMA_VERSION

STORE_PKG = Path(__file__).resolve().parents[2] / "robopt_compile" / "store"


def test_location_env_url_and_db_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBOPT_STORE", str(tmp_path / "env"))
    assert store_location(None) == (tmp_path / "env", tmp_path / "env" / "store.db")
    monkeypatch.delenv("ROBOPT_STORE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store_location(None)[0] == tmp_path / "xdg" / "robopt" / "store"
    url = f"sqlite://{tmp_path}/u/my.db"  # tmp_path starts with the third slash
    assert store_location(url) == (tmp_path / "u", tmp_path / "u" / "my.db")
    assert store_location(str(tmp_path / "f.db")) == (tmp_path, tmp_path / "f.db")
    with pytest.raises(StoreError, match="only sqlite"):
        open_store("postgresql://host/db")
    with pytest.raises(StoreError, match="no robopt store"):
        open_store(str(tmp_path / "missing"), create=False)
    st = open_store(url)
    assert (tmp_path / "u" / "my.db").is_file() and (tmp_path / "u" / "objects").is_dir()
    assert st.schema_version() == SCHEMA_VERSION
    st.close()


def test_newer_schema_refused_and_garbage_db(tmp_path):
    st = open_store(str(tmp_path / "s"))
    st.write(lambda c: c.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,)))
    st.close()
    with pytest.raises(StoreError, match="schema version"):
        open_store(str(tmp_path / "s"))
    bad = tmp_path / "bad" / "store.db"
    bad.parent.mkdir()
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="not a usable robopt store"):
        open_store(str(bad.parent))
    # reopening an existing store migrates nothing and keeps the data
    st = open_store(str(tmp_path / "t"))
    sha = st.put_bytes(b"x")
    st.close()
    st = open_store(str(tmp_path / "t"))
    assert st.get_bytes(sha) == b"x" and st.schema_version() == SCHEMA_VERSION
    st.close()


def _store_imports() -> dict[str, set[str]]:
    """module -> the store modules it imports anywhere: at module level, inside functions or
    under ``TYPE_CHECKING`` (``__init__`` for a name taken from the package itself)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(STORE_PKG.glob("*.py")):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "robopt_compile.store":
                for a in node.names:
                    deps.add(a.name if (STORE_PKG / f"{a.name}.py").is_file() else "__init__")
            elif isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
                for name in names:
                    if name.startswith("robopt_compile.store."):
                        deps.add(name.split(".")[2])
        graph[path.stem] = deps - {path.stem}
    return graph


def test_store_modules_import_no_circle():
    graph = _store_imports()
    assert graph["__init__"] and graph["store"]  # the parse found the imports
    done: set[str] = set()

    def visit(mod: str, path: tuple[str, ...]) -> None:
        assert mod not in path, f"import circle: {' -> '.join((*path, mod))}"
        if mod in done:
            return
        for dep in sorted(graph.get(mod, ())):
            visit(dep, (*path, mod))
        done.add(mod)

    for mod in graph:
        visit(mod, ())
    # the events <-> store circle of issue 16 stays broken: events know only the database
    assert graph["events"] <= {"database", "records", "locate", "schema"}
    for low in ("records", "schema", "locate", "liveness", "database", "objects", "events"):
        assert not graph[low] & {"catalog", "sessions", "store", "maintenance", "cache"}, low
