"""Subcommands beyond the core build/run path, one module each.

Every module here defines:
    NAME: str                                   the subcommand word
    def add_parser(sub) -> None                 register its argparse subparser on `sub`
    def run(args, store_factory) -> int         do the work; `store_factory()` opens the Store
The module's file name is its NAME: `pybuild X` imports only `pybuild.commands.X`
(and `pybuild --help` all of them), so a module must still import heavy things
lazily, inside `run`, to keep its own start-up cheap.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def command_names() -> tuple[str, ...]:
    """The subcommand words, from the module files, without importing any of them."""
    return tuple(sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")))


def load(name: str) -> ModuleType:
    """The module of subcommand `name` (one of :func:`command_names`)."""
    mod = importlib.import_module(f"{__name__}.{name}")
    if mod.NAME != name:  # the file name is the contract: see the module docstring
        raise ImportError(f"{mod.__name__} defines NAME={mod.NAME!r}; it must be {name!r}")
    return mod
