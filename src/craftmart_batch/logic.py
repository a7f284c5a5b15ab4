"""Fingerprints of the logic behind stored results: a run reuses only what it would make.

The warehouse keeps results from one run to the next: the hash of every source row it
has processed (``craftmart.source_rows``), whose verdict and DWH rows a run does not
compute again while the hash stays the same; and each mart's rows, of which a run
re-aggregates only the entities its changes touch. Both are right only as long as the
logic that made them is the logic that runs. So each concern has a fingerprint, stored
beside its results and compared by every run:

- **rules** (``rules_fingerprint``): which source rows are valid, and how valid rows
  become the DWH's craftsmen, customers, products and orders: ``transform/validate.py``,
  ``transform/identity.py`` and ``transform/diff.py``. Stored in
  ``craftmart.source_rows_state``; when it differs, the next run pulls and validates
  every source row again (``delta.full_pull_reason``).
- **a mart's definition** (``mart_fingerprint``): ``transform/marts.py``, what
  ``load/refresh.py`` reads for the mart and which entities a change touches, and the
  module of the mart's own ``compute`` function. Stored per mart in
  ``craftmart.mart_state``; when it differs, the next run rebuilds that mart in full,
  as ``run --full`` does (``refresh.refresh``).

A fingerprint is derived from the code, not kept by hand: a hand-kept version number is
exactly what gets forgotten in the change that needed it. It is the sha256 of:

- each module's syntax tree (``ast.dump``) with docstrings left out: a change to any
  function, constant or rule changes it; comments, formatting and docstrings do not.
  A new Python version may dump a tree differently, which costs one full pull: the
  safe direction;
- the live values of each module's constants (upper-case names), Polars expressions
  serialised in full (their ``str()`` shortens long lists): a rule set changed while
  the process runs, not in the file, changes the fingerprint too;
- a revision number per concern (``RULES_REVISION``, ``MARTS_REVISION``) for what the
  code does not show, such as a dependency whose behaviour changed: bump it.

It costs a few milliseconds a run (a few hundred lines parsed). A module whose source
cannot be read (an installation without ``.py`` files) contributes the package version.
"""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import inspect
import logging
from collections.abc import Callable, Iterable
from decimal import Decimal
from types import ModuleType
from typing import Protocol

import polars as pl

from . import __version__
from .transform import changes, diff, identity, marts, validate

logger = logging.getLogger(__name__)

#: Bump to make every warehouse pull and validate all source rows again after a change
#: to validity or identity that the fingerprinted modules do not show.
RULES_REVISION = 1

#: Bump to make every warehouse rebuild both marts after a change to their values that
#: the fingerprinted modules do not show.
MARTS_REVISION = 1

#: The modules that decide which rows are valid and what the DWH holds for them.
RULES_MODULES: tuple[ModuleType, ...] = (validate, identity, diff, changes)


class MartDefinition(Protocol):
    """What a mart's fingerprint reads of ``refresh.Mart``."""

    @property
    def name(self) -> str: ...

    @property
    def entity_id(self) -> str: ...

    @property
    def compute(self) -> Callable[[pl.DataFrame], pl.DataFrame]: ...

    @property
    def touched_since(self) -> str: ...


def rules_fingerprint() -> str:
    """The fingerprint of validity and identity, as this process runs them."""
    return _sha256([f"rules revision {RULES_REVISION}", *_modules(RULES_MODULES)])


def mart_fingerprint(mart: MartDefinition) -> str:
    """The fingerprint of one mart's definition, as this process computes the mart."""
    from .load import refresh  # refresh imports this module

    compute = inspect.unwrap(mart.compute)
    compute_module = inspect.getmodule(compute)
    modules = [marts, refresh]
    if compute_module is not None and compute_module not in modules:
        modules.append(compute_module)
    return _sha256([
        f"marts revision {MARTS_REVISION}",
        mart.name,
        mart.entity_id,
        mart.touched_since,
        f"{getattr(compute, '__module__', '')}.{getattr(compute, '__qualname__', '')}",
        *_modules(modules),
    ])


def _sha256(parts: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        encoded = part.encode()
        # length-prefixed: no two different lists of parts give the same bytes
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    return digest.hexdigest()


def _modules(modules: Iterable[ModuleType]) -> list[str]:
    parts = []
    for module in modules:
        parts += [module.__name__, code_text(module), *constants(module)]
    return parts


def code_text(module: ModuleType) -> str:
    """The module's code without what does not run: its syntax tree without docstrings,
    so comments, formatting and docstrings leave it as it was."""
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        logger.debug("no source for %s: its fingerprint is the package version", module)
        return f"version {__version__}"
    return normalised_code(source)


def normalised_code(source: str) -> str:
    """``ast.dump`` of ``source`` with every module, class and function docstring removed."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def constants(module: ModuleType) -> list[str]:
    """``name = value`` of each upper-case module global whose value has a stable text
    (functions, classes and other objects are in the syntax tree instead)."""
    found = []
    for name, value in sorted(vars(module).items()):
        if not name.strip("_").isupper():
            continue
        text = stable_text(value)
        if text is not None:
            found.append(f"{name} = {text}")
    return found


def stable_text(value: object) -> str | None:
    """Text of a constant that is the same in every process, None for a value that has
    none (e.g. an object whose ``repr`` shows its address)."""
    if isinstance(value, pl.Expr):
        return value.meta.serialize().hex()
    if value is None or isinstance(
        value, str | bytes | bool | int | float | Decimal | dt.date | dt.time | dt.timedelta
    ):
        return repr(value)
    if isinstance(value, pl.DataType | pl.Schema) or (
        isinstance(value, type) and issubclass(value, pl.DataType)
    ):
        return repr(value)
    if isinstance(value, dict):
        items = [(stable_text(k), stable_text(v)) for k, v in value.items()]
        if any(k is None or v is None for k, v in items):
            return None
        return "{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"
    if isinstance(value, tuple | list | set | frozenset):
        elements = [stable_text(v) for v in value]
        if any(e is None for e in elements):
            return None
        texts = [e for e in elements if e is not None]
        if isinstance(value, set | frozenset):
            texts.sort()  # a set's iteration order changes with the process's hash seed
        return f"{type(value).__name__}[{', '.join(texts)}]"
    return None
