"""The benchmark scripts (bench/, scripts rather than a package) as modules, for the tests that check them or
build on them (bench/gen_fabric.py writes the synthetic fabrics)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from support import REPO

BENCH = REPO / "bench"


def bench_module(stem: str, name: str | None = None) -> ModuleType:
    """bench/<stem>.py imported once, as ``name`` (default: ``stem``) in sys.modules: dataclasses and pickling
    resolve their module by that name."""
    name = name or stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{stem}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
