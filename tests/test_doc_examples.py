"""Examples and references in the docs and docstrings name things that exist.

Every ``>>>`` example in a docstring of ``kempnerforge/`` and in the pages under ``docs/`` is
read without being run: each import must import, each name it calls must be bound (by the
example, the docstring's module, or the builtins), and each attribute it reads from a module, a
class, or a value whose type follows from a constructor or a return annotation must exist. Names
that an example only passes around (``model``, ``config``) are the reader's own objects and are
left alone. The examples that are not ``+SKIP`` are also run (the strategy that the registry's
example registers goes into a copy of the registry, dropped afterwards). Every dotted
``kempnerforge.X`` reference (``:mod:`` and ``:class:`` roles, ``automodule`` directives), every
relative ``:mod:`.name``` in a docstring, every ``from kempnerforge... import ...`` line and
every file of the repository named in double backquotes, in the docs, the README and the
docstrings, must resolve too, so a module that moves cannot leave a page pointing at its old
path.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import doctest
import importlib
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "kempnerforge"
PAGES = sorted(
    [*(p for p in (ROOT / "docs").rglob("*.rst") if "_build" not in p.parts), ROOT / "README.md"]
)
SOURCES = sorted(PACKAGE.rglob("*.py"))
_PARSER = doctest.DocTestParser()


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@dataclass(frozen=True)
class Docstring:
    where: str  # "kempnerforge/x.py:12" or "docs/page.rst"
    module: str | None  # the module whose globals the examples see
    text: str


def _docstrings() -> Iterator[Docstring]:
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                text = ast.get_docstring(node, clean=True)
                if text:
                    line = getattr(node, "lineno", 1)
                    where = f"{path.relative_to(ROOT)}:{line}"
                    yield Docstring(where, _module_of(path), text)


def _pages() -> Iterator[Docstring]:
    for path in PAGES:
        yield Docstring(str(path.relative_to(ROOT)), None, path.read_text(encoding="utf-8"))


# --- resolving ------------------------------------------------------------------------------


def _lookup(dotted: str) -> tuple[bool, Any]:
    """Import the longest module prefix of ``dotted``, then walk the attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for i, attr in enumerate(parts[cut:]):
            if not _has(obj, attr):
                return False, ".".join(parts[: cut + i + 1])
            obj = _get(obj, attr)
        return True, obj
    return False, parts[0]


def _fields(cls: type) -> set[str]:
    """Attributes instances of ``cls`` have without the class having them: annotations,
    dataclass fields, and ``self.x = ...`` assignments in its methods."""
    names: set[str] = set()
    for klass in cls.__mro__:
        names |= set(getattr(klass, "__annotations__", {}))
        if dataclasses.is_dataclass(klass):
            names |= {f.name for f in dataclasses.fields(klass)}
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        names |= set(re.findall(r"\bself\.(\w+)\s*(?::[^=\n]+)?=(?!=)", source))
    return names


def _has(obj: Any, attr: str) -> bool:
    if hasattr(obj, attr):
        return True
    if isinstance(obj, types.ModuleType):
        try:
            importlib.import_module(f"{obj.__name__}.{attr}")
        except ImportError:
            return False
        return True
    return isinstance(obj, type) and attr in _fields(obj)


def _get(obj: Any, attr: str) -> Any:
    if hasattr(obj, attr):
        return getattr(obj, attr)
    if isinstance(obj, types.ModuleType):
        return importlib.import_module(f"{obj.__name__}.{attr}")
    return None  # an instance attribute: its value is unknown


@dataclass(frozen=True)
class Instance:
    """A value of a known class (from a constructor call or a return annotation)."""

    cls: type


def _one_class(hint: Any) -> type | None:
    """``X``, ``X | None`` -> X; anything else (generics, unions of classes) -> None."""
    if isinstance(hint, type) and not isinstance(hint, types.GenericAlias):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        return _one_class(rest[0]) if len(rest) == 1 else None
    return None


def _returns(func: Any) -> Instance | None:
    if isinstance(func, type):
        return Instance(func)
    try:
        hint = typing.get_type_hints(func).get("return")
    except Exception:  # a hint that does not evaluate: the type is simply unknown
        return None
    cls = _one_class(hint)
    return Instance(cls) if cls is not None else None


def _attribute_type(cls: type, attr: str) -> Instance | None:
    try:
        hint = typing.get_type_hints(cls).get(attr)
    except Exception:
        hint = None
    if hint is None:
        member = inspect.getattr_static(cls, attr, None)
        if isinstance(member, property) and member.fget is not None:
            return _returns(member.fget)
        return None
    cls_of = _one_class(hint)
    return Instance(cls_of) if cls_of is not None else None


def _import_from(module: str, name: str) -> tuple[bool, Any]:
    """What ``from module import name`` binds: the attribute, else the submodule."""
    try:
        parent = importlib.import_module(module)
    except ImportError:
        return False, module
    if hasattr(parent, name):
        return True, getattr(parent, name)
    try:
        return True, importlib.import_module(f"{module}.{name}")
    except ImportError:
        return False, f"{module}.{name}"


def _package_names() -> set[str]:
    """The public classes and functions the package defines (anywhere in it)."""
    names = set()
    for path in SOURCES:
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_"):
                names.add(node.name)
    return names


class _Checker:
    """Reads one docstring's examples in order, binding names as the examples would.

    ``readers_own``: a page's code block may call the reader's own functions (``train_step``);
    only a call to one of the package's names that the page never imported is reported.
    """

    def __init__(self, where: str, module: str | None, *, readers_own: bool = False) -> None:
        self.where = where
        self.ours = _package_names() if readers_own else None
        self.scope: dict[str, Any] = {}
        if module is not None:
            self.scope.update(vars(importlib.import_module(module)))
        self.bound: set[str] = set(self.scope) | set(dir(builtins))
        self.problems: list[str] = []

    def problem(self, line: int, text: str) -> None:
        self.problems.append(f"{self.where} (example line {line + 1}): {text}")

    def value(self, node: ast.expr, line: int) -> Any:
        """What ``node`` evaluates to, as far as can be told without running it (None: unknown)."""
        if isinstance(node, ast.Name):
            return self.scope.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.value(node.value, line)
            if base is None:
                return None
            if isinstance(base, Instance):
                if not (hasattr(base.cls, node.attr) or node.attr in _fields(base.cls)):
                    self.problem(line, f"{base.cls.__qualname__} has no attribute {node.attr!r}")
                    return None
                return _attribute_type(base.cls, node.attr)
            if not _has(base, node.attr):
                name = getattr(base, "__name__", type(base).__name__)
                self.problem(line, f"{name} has no attribute {node.attr!r}")
                return None
            return _get(base, node.attr)
        if isinstance(node, ast.Call):
            func = self.value(node.func, line)
            if isinstance(node.func, ast.Name) and node.func.id not in self.bound:
                if self.ours is None:
                    self.problem(line, f"calls {node.func.id}(), which nothing defines")
                elif node.func.id in self.ours:
                    self.problem(line, f"calls {node.func.id}() without importing it")
            if func is None or isinstance(func, Instance):
                return None
            return _returns(func)
        return None

    def read(self, example: doctest.Example) -> None:
        try:
            tree = ast.parse(example.source)
        except SyntaxError as exc:
            self.problem(example.lineno, f"does not parse: {exc.msg}")
            return
        for node in ast.walk(tree):  # imports, then every name the example binds
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    ok, found = _import_from(node.module, alias.name)
                    if not ok and node.module.startswith("kempnerforge"):
                        self.problem(
                            example.lineno, f"from {node.module} import {alias.name}: no {found}"
                        )
                    self.scope[alias.asname or alias.name] = found if ok else None
                    self.bound.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    ok, found = _lookup(alias.name)
                    if not ok and alias.name.startswith("kempnerforge"):
                        self.problem(example.lineno, f"import {alias.name}: no {found}")
                    top = alias.asname or alias.name.split(".")[0]
                    if ok:
                        self.scope[top] = found if alias.asname else _lookup(top)[1]
                    self.bound.add(top)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
                self.bound.add(node.id)
            elif isinstance(node, ast.arg):
                self.bound.add(node.arg)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                self.bound.add(node.name)
        for node in ast.walk(tree):  # what each expression reads
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                kind = self.value(node.value, example.lineno)
                if isinstance(target, ast.Name):
                    self.scope[target.id] = kind
            elif isinstance(node, ast.Call) or (
                isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load)
            ):
                self.value(node, example.lineno)


def _example_problems(doc: Docstring) -> list[str]:
    examples = _PARSER.get_examples(doc.text)
    if not examples:
        return []
    checker = _Checker(doc.where, doc.module)
    for example in examples:
        checker.read(example)
    return sorted(set(checker.problems))


EXAMPLES = [d for d in (*_docstrings(), *_pages()) if ">>>" in d.text]


def test_the_examples_are_found() -> None:
    assert len(EXAMPLES) >= 20, [d.where for d in EXAMPLES]


@pytest.mark.parametrize("doc", EXAMPLES, ids=[d.where for d in EXAMPLES])
def test_examples_name_what_exists(doc: Docstring) -> None:
    assert _example_problems(doc) == []


def test_the_checker_catches_a_missing_name() -> None:
    """It can fail: a moved import, a function that was renamed, an attribute a record lost."""
    text = """
    >>> from kempnerforge.checkpoint.inspect import inspect_checkpoint  # doctest: +SKIP
    >>> from kempnerforge.checkpoint.store.retention import plan_retention  # doctest: +SKIP
    >>> plan = plan_retention(catalog, config)  # doctest: +SKIP
    >>> plan.decisions, plan.victims_by_age  # doctest: +SKIP
    >>> print_plan(plan)  # doctest: +SKIP
    >>> manager.save(1)  # doctest: +SKIP
    """
    problems = _example_problems(Docstring("probe", None, inspect.cleandoc(text)))
    assert [p.split(": ", 1)[1] for p in problems] == [
        "from kempnerforge.checkpoint.inspect import inspect_checkpoint: no "
        "kempnerforge.checkpoint.inspect",
        "RetentionPlan has no attribute 'victims_by_age'",
        "calls print_plan(), which nothing defines",
    ]


def _code_blocks(text: str) -> list[str]:
    """The ``.. code-block:: python`` blocks of a page (and a README's fenced ones), in order."""
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:[ ]{3}.*\n|\n)+)", text)
    return [textwrap.dedent(b) for b in blocks] + re.findall(r"```python\n(.*?)```", text, re.S)


def _code_block_problems(where: str, text: str) -> list[str]:
    checker = _Checker(where, None, readers_own=True)
    for block in _code_blocks(text):
        checker.read(doctest.Example(block, ""))
    return sorted(set(checker.problems))


CODE_PAGES = [d for d in _pages() if _code_blocks(d.text)]


@pytest.mark.parametrize("page", CODE_PAGES, ids=[d.where for d in CODE_PAGES])
def test_code_blocks_in_the_docs_name_what_exists(page: Docstring) -> None:
    """The guides' Python blocks import from current paths and call what exists."""
    assert _code_block_problems(page.where, page.text) == []


def test_the_code_block_check_catches_a_missing_import() -> None:
    text = """
.. code-block:: python

   from kempnerforge.config import registry
   from kempnerforge.checkpoint.manager import CheckpointManager

   registry.register_window("every_10")
   manager = CheckpointManager(load_config("job.toml"), model, optimizer)
   loss = train_step(model)  # the reader's own function: fine
"""
    problems = _code_block_problems("probe", text)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "Registry has no attribute 'register_window'",
        "calls load_config() without importing it",
    ]


# --- running the examples that are not skipped ------------------------------------------------


def test_the_docstring_examples_that_are_not_skipped_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    from kempnerforge.config.registry import registry

    # the registry's example registers a strategy: into a copy, dropped after the test
    monkeypatch.setattr(registry, "_dyn_ckpt_strategies", dict(registry._dyn_ckpt_strategies))
    modules = sorted({d.module for d in _docstrings() if d.module and ">>>" in d.text})
    failed, attempted = [], 0
    for name in modules:
        result = doctest.testmod(
            importlib.import_module(name), optionflags=doctest.ELLIPSIS, report=False
        )
        attempted += result.attempted
        if result.failed:
            failed.append(name)
    assert failed == [], "doctest examples fail in these modules (run doctest on them)"
    assert attempted >= 10


# --- dotted references and import lines ------------------------------------------------------

_DOTTED = re.compile(r"(?<![\w./-])~?(kempnerforge(?:\.[A-Za-z_]\w*)+)(?![\w/]|\.rst|\.py)")
_IMPORT = re.compile(r"^\s*(?:>>> )?from (kempnerforge[\w.]*) import \(?([\w, ]+)\)?", re.M)
_RELATIVE = re.compile(r":(?:mod|class|func|meth|attr|data|exc):`~?(\.[\w.]+)`")
# ``store/_lock.py``, ``tests/checkpoint/store/test_catalog.py``: a file of this repository
_FILE = re.compile(
    r"``((?:kempnerforge|tests|docs|bench|examples|checkpoint|store|manager|export|cli|config)"
    r"/[\w./-]*\.(?:py|rst|toml|md))``"
)
_FILE_BASES = (ROOT, ROOT / "kempnerforge", ROOT / "kempnerforge" / "checkpoint")


def _texts() -> Iterator[tuple[str, str, str | None]]:
    """(where, text, module) for each page and each docstring."""
    for doc in _pages():
        yield doc.where, doc.text, None
    for doc in _docstrings():
        yield doc.where, doc.text, doc.module


def _references_in(where: str, text: str, module: str | None) -> list[str]:
    bad = []
    for dotted in _DOTTED.findall(text):
        ok, found = _lookup(dotted.rstrip("."))
        if not ok:
            bad.append(f"{where}: {dotted} (no {found})")
    for source, names in _IMPORT.findall(text):
        for name in filter(None, (n.strip().split(" as ")[0] for n in names.split(","))):
            ok, found = _lookup(f"{source}.{name}")
            if not ok:
                bad.append(f"{where}: from {source} import {name} (no {found})")
    for named in _FILE.findall(text):
        if not any((base / named).exists() for base in _FILE_BASES):
            bad.append(f"{where}: {named} (no such file)")
    if module is not None:
        is_package = (ROOT / module.replace(".", "/")).is_dir()
        package = module if is_package else module.rsplit(".", 1)[0]
        for relative in _RELATIVE.findall(text):
            # Sphinx looks ``.name`` up in the current module, then in its package
            candidates = (f"{module}{relative}", f"{package}{relative}")
            if not any(_lookup(c)[0] for c in candidates):
                bad.append(f"{where}: {relative} (neither {' nor '.join(candidates)})")
    return bad


def _reference_problems() -> list[str]:
    return sorted({p for texts in _texts() for p in _references_in(*texts)})


def test_dotted_references_and_imports_resolve() -> None:
    assert _reference_problems() == []


def test_the_reference_check_catches_old_paths() -> None:
    text = """
    See :mod:`kempnerforge.checkpoint.gc` and :func:`~kempnerforge.checkpoint.store.layout.scan`,
    :mod:`.retention` and :mod:`.inspect`.

    .. code-block:: python

       from kempnerforge.checkpoint.store.catalog import scan, scan_root
       from kempnerforge.checkpoint._manager_fs import write_metadata

    (``store/_lock.py`` exists; ``tests/checkpoint/test_catalog.py`` moved.)
    """
    problems = _references_in("probe", text, "kempnerforge.checkpoint.store.catalog")
    assert [p.split(": ", 1)[1] for p in problems] == [
        "kempnerforge.checkpoint.gc (no kempnerforge.checkpoint.gc)",
        "kempnerforge.checkpoint.store.layout.scan (no kempnerforge.checkpoint.store.layout.scan)",
        "kempnerforge.checkpoint._manager_fs (no kempnerforge.checkpoint._manager_fs)",
        "from kempnerforge.checkpoint.store.catalog import scan_root "
        "(no kempnerforge.checkpoint.store.catalog.scan_root)",
        "from kempnerforge.checkpoint._manager_fs import write_metadata "
        "(no kempnerforge.checkpoint._manager_fs)",
        "tests/checkpoint/test_catalog.py (no such file)",
        ".inspect (neither kempnerforge.checkpoint.store.catalog.inspect nor "
        "kempnerforge.checkpoint.store.inspect)",
    ]
