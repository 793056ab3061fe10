"""The model store (docs/STORE.md): models, sessions, events and artifacts in one folder.

The names callers outside the store use; the modules hold the rest (``store.py`` lists them).
"""

from robopt_compile.store.records import StoreError, UnknownIdError
from robopt_compile.store.sessions import Session
from robopt_compile.store.store import Store, open_store

__all__ = ["Session", "Store", "StoreError", "UnknownIdError", "open_store"]
