"""No dead code: every definition in ``kempnerforge/`` is reached from the library, the examples
or the benchmarks, or is public API.

Read from the source with :mod:`ast`, the way ``tests/test_layering.py`` reads the imports: a
definition (a module-level function, class or constant, or a method) is alive when code that is
itself alive names it. What starts alive: module-level code, ``examples/`` and ``bench/``, the
console script, the names a public module lists in ``__all__`` (the API that users import), the
public methods of the classes so exported, dunders, methods of classes that extend a class from
outside the package (hooks it calls), and functions that a decorator registers. Tests
do not count: a helper that only a test calls is dead, and its test belongs on the public path.

Names resolve through ``from M import name`` (and ``from P import module`` then
``module.name``), the only import styles the package uses; a method is reached by its name as
an attribute anywhere alive (types are not inferred, so a name shared by two classes keeps both).
The strict mode (``python -m tests.test_dead_code --strict``) starts only from the packages'
``__init__`` exports: what it adds are public functions that nothing but tests calls, to judge
by hand (documented API stays).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "kempnerforge"
CONSOLE_SCRIPT = ("kempnerforge.cli.main", "main")  # pyproject.toml [project.scripts]
MODULE = "<module>"

Key = tuple[str, str]  # (module, name) or (module, "Class.method")
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _is_public_module(module: str) -> bool:
    return not any(part.startswith("_") for part in module.split("."))


def _assigned(node: ast.stmt) -> list[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
    return [t.id for t in targets if isinstance(t, ast.Name)]


@dataclass
class Program:
    """Every definition of the package, and which code names which."""

    trees: dict[str, ast.Module]
    defs: dict[Key, ast.AST] = field(default_factory=dict)
    imports: dict[str, dict[str, Key]] = field(default_factory=lambda: defaultdict(dict))
    exports: dict[str, list[str]] = field(default_factory=dict)  # module -> its __all__
    edges: dict[Key, set[Key]] = field(default_factory=lambda: defaultdict(set))
    attrs: dict[Key, set[str]] = field(default_factory=lambda: defaultdict(set))
    registered: set[Key] = field(default_factory=set)  # decorated by a registering call

    @classmethod
    def read(cls, folders: tuple[str, ...] = (PACKAGE, "examples", "bench")) -> Program:
        paths = [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]
        program = cls({_module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in paths})
        for module, tree in program.trees.items():
            program._define(module, tree)
        for module, tree in program.trees.items():
            program._link(module, tree)
        return program

    def _define(self, module: str, tree: ast.Module) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    self.imports[module][alias.asname or alias.name] = (node.module, alias.name)
        if not module.startswith(PACKAGE):
            return
        for node in tree.body:
            if isinstance(node, _DEFS):
                self.defs[(module, node.name)] = node
                if isinstance(node, ast.ClassDef):
                    for sub in node.body:
                        if isinstance(sub, _DEFS):
                            self.defs[(module, f"{node.name}.{sub.name}")] = sub
                if any(isinstance(d, ast.Call) for d in node.decorator_list):
                    self.registered.add((module, node.name))
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                for name in _assigned(node):
                    if name == "__all__" and isinstance(node.value, ast.List | ast.Tuple):
                        self.exports[module] = [ast.literal_eval(e) for e in node.value.elts]
                    elif name != "__all__":
                        self.defs[(module, name)] = node

    def resolve(self, module: str, name: str, depth: int = 0) -> Key | None:
        """The definition that ``name`` means in ``module``, through re-exports."""
        if (module, name) in self.defs:
            return (module, name)
        target = self.imports.get(module, {}).get(name)
        if target is None or depth > 8:
            return None
        return self.resolve(*target, depth + 1)

    def _uses(self, module: str, context: Key, node: ast.AST, modules_named: set[str]) -> None:
        for sub in ast.walk(node):
            target: Key | None = None
            if isinstance(sub, ast.Name) and not isinstance(sub.ctx, ast.Store):
                target = self.resolve(module, sub.id)
            elif isinstance(sub, ast.Attribute) and not isinstance(sub.ctx, ast.Store):
                self.attrs[context].add(sub.attr)
                if isinstance(sub.value, ast.Name):  # `from P import mod` then `mod.name`
                    imported = self.imports.get(module, {}).get(sub.value.id)
                    if imported and ".".join(imported) in self.trees:
                        target = self.resolve(".".join(imported), sub.attr)
            elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                self.attrs[context].add(sub.value)  # getattr(obj, "name")
                # a lazy table: the name, in a module that also names the defining module
                for named in modules_named:
                    if (named, sub.value) in self.defs:
                        self.edges[context].add((named, sub.value))
            if target is not None:
                self.edges[context].add(target)

    def _link(self, module: str, tree: ast.Module) -> None:
        named = {
            n.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in self.trees
        }
        top = (module, MODULE)
        inside = module.startswith(PACKAGE)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                self._uses(
                    module, top, ast.Module(body=node.decorator_list, type_ignores=[]), named
                )
                self._uses(module, (module, node.name) if inside else top, node, named)
            elif isinstance(node, ast.ClassDef):
                cls = (module, node.name) if inside else top
                for part in (*node.bases, *node.keywords, *node.decorator_list):
                    self._uses(module, cls, part, named)
                for sub in node.body:
                    where = (module, f"{node.name}.{sub.name}") if isinstance(sub, _DEFS) else cls
                    self._uses(module, where if inside else top, sub, named)
            elif isinstance(node, ast.Assign | ast.AnnAssign) and inside and _assigned(node):
                names = _assigned(node)
                if names == ["__all__"]:
                    continue
                self._uses(module, (module, names[0]), node, named)
            else:
                self._uses(module, top, node, named)

    def _extends_outside(self, key: Key) -> bool:
        """The class has a base from outside the package: its methods may be hooks it calls."""
        node = self.defs[key]
        assert isinstance(node, ast.ClassDef)
        return any(self.resolve(key[0], ast.unparse(b).split(".")[0]) is None for b in node.bases)

    def _exported(self, *, packages_only: bool = False) -> Iterator[Key]:
        """What the public modules list in ``__all__`` (only the packages' when asked)."""
        for module, names in self.exports.items():
            if not _is_public_module(module):
                continue
            if packages_only and not (ROOT / module.replace(".", "/") / "__init__.py").is_file():
                continue
            for name in names:
                target = self.resolve(module, name)
                if target is not None:
                    yield target

    def roots(self, *, strict: bool) -> Iterator[Key]:
        yield CONSOLE_SCRIPT
        for module in self.trees:
            yield (module, MODULE)
        yield from self._exported(packages_only=strict)
        for key in self.defs:
            if "." not in key[1] and (_is_dunder(key[1]) or key in self.registered):
                yield key

    def alive(self, *, strict: bool = False) -> set[Key]:
        """Every definition reached from the roots."""
        reached: set[Key] = set()
        names: set[str] = set()  # attribute names used by alive code
        pending = list(self.roots(strict=strict))
        exported = set() if strict else set(self._exported())
        while pending:
            while pending:
                key = pending.pop()
                if key in reached:
                    continue
                reached.add(key)
                pending.extend(self.edges.get(key, ()))
                names |= self.attrs.get(key, set())
            for module, name in self.defs:
                if "." not in name or (module, name) in reached:
                    continue
                cls, method = name.split(".", 1)
                if (module, cls) not in reached:
                    continue
                public_api = (module, cls) in exported and not method.startswith("_")
                if (
                    _is_dunder(method)
                    or method in names
                    or public_api
                    or self._extends_outside((module, cls))
                ):
                    pending.append((module, name))
        return reached

    def dead(self, *, strict: bool = False) -> list[str]:
        """``module:line name`` of each definition nothing alive reaches (methods of a dead
        class are reported with their class)."""
        reached = self.alive(strict=strict)
        found = []
        for (module, name), node in self.defs.items():
            cls = name.split(".", 1)[0]
            if (module, name) in reached or ("." in name and (module, cls) not in reached):
                continue
            found.append(f"{module}:{getattr(node, 'lineno', 0)} {name}")
        return sorted(found)


def test_every_definition_is_used_or_public() -> None:
    dead = Program.read().dead()
    assert dead == [], (
        "defined in kempnerforge/ but used by nothing in kempnerforge/, examples/ or bench/ "
        "(remove it, or move its test onto the public path that uses it)"
    )


def test_the_finder_sees_a_private_helper_that_only_tests_call(tmp_path: Path) -> None:
    """The check can fail: an unused private helper, an unused constant, methods nothing calls
    (a public one too, on a class the module does not export), and a helper only dead code calls
    are reported; what the module uses, and the methods of what it exports, are not."""
    source = '''
"""A module."""
__all__ = ["Record", "entry"]
_LIMIT = 3
_UNUSED = 4
def entry() -> int:
    return _helper() + _LIMIT + _Box().used() + len([_make()])
def _helper() -> int:
    return 1
def _only_tests_call_me() -> int:
    return _called_by_dead_code()
def _called_by_dead_code() -> int:
    return 2
class _Box:
    def used(self) -> int:
        return 1
    def never(self) -> int:
        return 0
class Record:
    def api(self) -> int:
        return 0
class Helper:
    def spare(self) -> int:
        return 0
def _make() -> Helper:
    return Helper()
'''
    module = f"{PACKAGE}.probe"
    program = Program({module: ast.parse(source)})
    program._define(module, program.trees[module])
    program._link(module, program.trees[module])
    assert sorted(line.split(" ", 1)[1] for line in program.dead()) == [
        "Helper.spare",
        "_Box.never",
        "_UNUSED",
        "_called_by_dead_code",
        "_only_tests_call_me",
    ]


if __name__ == "__main__":
    for line in Program.read().dead(strict="--strict" in sys.argv):
        print(line)
