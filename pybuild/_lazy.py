"""Package namespaces whose names are imported on first use (PEP 562).

A package `__init__` that re-exports its submodules' names makes every
`import pybuild.pkg.one_module` load all of them; for `pybuild run` that was
the cache index (sqlite3), the layer codec and the archive code, tens of
milliseconds of start-up it never uses. With `lazy_exports` the package keeps
its public names, and each submodule loads when one of its names is first read.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]
                 ) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """`(__all__, __getattr__, __dir__)` for `package`, whose submodule `m` provides `exports[m]`."""
    module_of = {name: module for module, names in exports.items() for name in names}
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value  # later reads are plain attribute lookups
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(module_of))

    return list(module_of), __getattr__, __dir__
