"""TFF's executor protobuf messages, loaded without importing TensorFlow.

The generated modules live in the wheel at
``tensorflow_federated/proto/v0/{data_type,array,computation,executor}_pb2.py``
and need only ``google.protobuf``. Importing them the normal way runs
``tensorflow_federated/__init__.py`` first, which imports all of TensorFlow
(15-20 s). The site gateway must start fast, so this module loads the four
files by path instead:

1. If ``tensorflow_federated`` is already imported, import the modules normally
   (nothing to save, and the classes are then the very ones TFF uses).
2. Otherwise locate the package with ``importlib.util.find_spec`` (which does
   not import a top-level package), put empty stand-in packages for
   ``tensorflow_federated``, ``tensorflow_federated.proto`` and
   ``tensorflow_federated.proto.v0`` into ``sys.modules`` (the generated files
   import each other through those names), execute the four files in
   dependency order under their real module names, and finally remove the
   stand-ins and the four entries from ``sys.modules`` again.

The clean-up means a later ``import tensorflow_federated`` still works: it
executes the generated files a second time, which registers byte-identical
file descriptors in protobuf's default pool (allowed) and, with the upb
runtime, yields the same message classes.

The stand-ins are visible in ``sys.modules`` only while this module is first
imported; do not import ``tensorflow_federated`` from another thread at that
exact moment.

Exposes ``data_type_pb2``, ``array_pb2``, ``computation_pb2`` and
``executor_pb2``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

__all__ = ["array_pb2", "computation_pb2", "data_type_pb2", "executor_pb2"]

_PACKAGE = "tensorflow_federated"
_PROTO_PACKAGE = "tensorflow_federated.proto.v0"
_ORDER = ("data_type_pb2", "array_pb2", "computation_pb2", "executor_pb2")


def _tff_root() -> Path:
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("tensorflow-federated is not installed: cannot load its executor protos")
    return Path(list(spec.submodule_search_locations)[0])


def _load_by_path() -> dict[str, types.ModuleType]:
    """Execute the generated files under stand-in packages; leave ``sys.modules`` as it was."""
    root = _tff_root()
    stand_ins = {
        _PACKAGE: root,
        f"{_PACKAGE}.proto": root / "proto",
        _PROTO_PACKAGE: root / "proto" / "v0",
    }
    added: list[str] = []
    loaded: dict[str, types.ModuleType] = {}
    try:
        for name, path in stand_ins.items():
            package = types.ModuleType(name, "tffprod stand-in: loading TFF protos without TensorFlow")
            package.__path__ = [str(path)]
            sys.modules[name] = package
            added.append(name)
        for short in _ORDER:
            full = f"{_PROTO_PACKAGE}.{short}"
            path = root / "proto" / "v0" / f"{short}.py"
            spec = importlib.util.spec_from_file_location(full, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[full] = module
            added.append(full)
            spec.loader.exec_module(module)
            loaded[short] = module
    finally:
        for name in added:
            sys.modules.pop(name, None)
    return loaded


def _load() -> dict[str, types.ModuleType]:
    if _PACKAGE in sys.modules:
        return {short: importlib.import_module(f"{_PROTO_PACKAGE}.{short}") for short in _ORDER}
    return _load_by_path()


_MODULES = _load()
# Typed Any: mypy cannot see modules loaded by path, and their message classes (``array_pb2.Array``,
# ``executor_pb2.Value``, ...) are used in annotations elsewhere.
data_type_pb2: Any = _MODULES["data_type_pb2"]
array_pb2: Any = _MODULES["array_pb2"]
computation_pb2: Any = _MODULES["computation_pb2"]
executor_pb2: Any = _MODULES["executor_pb2"]
