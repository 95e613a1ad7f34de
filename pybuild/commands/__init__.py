"""Subcommands beyond the core build/run path, one module each.

Every module here defines:
    NAME: str                                   the subcommand word
    def add_parser(sub) -> None                 register its argparse subparser on `sub`
    def run(args, store_factory) -> int         do the work; `store_factory()` opens the Store
Modules must import heavy things lazily (inside `run`), because they are all
imported to build the parser on every pybuild start.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def discover() -> list[ModuleType]:
    mods = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            mods.append(importlib.import_module(f"{__name__}.{info.name}"))
    return mods
