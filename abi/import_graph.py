"""Which repository files a notebook's code imports, and their content without comments or docstrings.

A notebook's stored run is current while the code it runs is unchanged. Hashing exactly that code (the
import graph from the notebook's cells through the repository's packages, lazy imports in functions and
``importlib.import_module`` over a package included) keeps a changed module from being missed, while a
comment, a module the notebook never imports or an editor swap file re-runs nothing.
"""

from __future__ import annotations

import ast
import json
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# Editor and interpreter leftovers: never part of the code, tracked or not.
_DEBRIS_SUFFIXES = (".pyc", ".pyo", "~", ".swp", ".swo", ".swx", ".tmp")
_DYNAMIC_IMPORTERS = ("import_module", "__import__")


def is_debris(rel: str) -> bool:
    """Swap, lock, backup and bytecode files, which an editor or the interpreter leaves beside the code."""
    parts = rel.split("/")
    name = parts[-1]
    return (
        "__pycache__" in parts
        or name.endswith(_DEBRIS_SUFFIXES)
        or name.startswith(".#")
        or (name.startswith("#") and name.endswith("#"))
    )


def repo_files(root: Path, packages: tuple[str, ...]) -> list[str]:
    """Files under the packages that count: the ones git tracks (an exported tree without git: all files)."""
    try:
        listing = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--", *packages], capture_output=True, check=True
        ).stdout.decode("utf-8", "surrogateescape")
        names = [name for name in listing.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        names = []
    if not names:  # no git, or a tree git does not track (an export unpacked inside another checkout)
        names = [
            path.relative_to(root).as_posix()
            for package in packages
            for path in (root / package).rglob("*")
            if path.is_file()
        ]
    # A tracked file deleted in the working tree is not code any more.
    return sorted(name for name in names if not is_debris(name) and (root / name).is_file())


def module_name(rel: str) -> str | None:
    """``abi/reports/core_nib.py`` -> ``abi.reports.core_nib``; ``abi/zoo/__init__.py`` -> ``abi.zoo``."""
    if not rel.endswith(".py"):
        return None
    parts = rel.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def parse_tolerant(source: str) -> ast.Module:
    """Parse a notebook cell, blanking the lines Python cannot take (IPython magics, ``!`` shell lines)."""
    lines = source.splitlines()
    for _ in range(len(lines) + 1):
        try:
            return ast.parse("\n".join(lines))
        except SyntaxError as error:
            if not error.lineno:
                break
            lines[min(error.lineno, len(lines)) - 1] = ""
    return ast.Module(body=[], type_ignores=[])


def notebook_code(notebook: Path) -> list[ast.Module]:
    """The parsed code cells of a notebook."""
    cells = json.loads(notebook.read_text(encoding="utf-8")).get("cells", [])
    return [parse_tolerant("".join(cell.get("source", ""))) for cell in cells if cell.get("cell_type") == "code"]


def _literal_prefix(node: ast.expr, module: str, package: str) -> tuple[str, bool]:
    """The text a module-name expression is known to start with, and whether that is all of it."""
    known = {"__name__": module, "__package__": package}
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value, True
    if isinstance(node, ast.Name) and node.id in known:
        return known[node.id], True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, complete = _literal_prefix(node.left, module, package)
        if not complete:
            return left, False
        right, complete = _literal_prefix(node.right, module, package)
        return left + right, complete
    if isinstance(node, ast.JoinedStr):
        return _fstring_prefix(node, module, package)
    return "", False


def _fstring_prefix(node: ast.JoinedStr, module: str, package: str) -> tuple[str, bool]:
    """``f"{__name__}.{info.name}"`` inside ``abi.experiments`` -> ``("abi.experiments.", False)``."""
    text = ""
    for part in node.values:
        if isinstance(part, ast.FormattedValue):
            if part.conversion != -1 or part.format_spec is not None:
                return text, False
            part = part.value
        piece, complete = _literal_prefix(part, module, package)
        text += piece
        if not complete:
            return text, False
    return text, True


def _relative_base(level: int, target: str | None, package: str) -> str | None:
    """The absolute name of ``from ..target import`` inside ``package``; None outside any package."""
    if not package:
        return None
    parts = package.split(".")
    if level - 1 >= len(parts):
        return None
    base = ".".join(parts[: len(parts) - level + 1])
    return f"{base}.{target}" if target else base


@dataclass(frozen=True)
class Imports:
    """What one piece of code imports: exact module names, and name prefixes of dynamic imports."""

    names: frozenset[str] = frozenset()
    prefixes: frozenset[str] = frozenset()


def _add_dotted(names: set[str], dotted: str) -> None:
    """``import a.b.c`` imports ``a``, ``a.b`` and ``a.b.c``."""
    parts = dotted.split(".")
    names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))


def _import_from(node: ast.ImportFrom, package: str, names: set[str]) -> None:
    base = node.module if node.level == 0 else _relative_base(node.level, node.module, package)
    if base is None:
        return
    _add_dotted(names, base)
    # ``from pkg import name`` imports the submodule ``pkg.name`` when there is one.
    names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")


def _dynamic_import(node: ast.Call, module: str, package: str) -> tuple[str, bool] | None:
    """``importlib.import_module(<name>)``: the name's known prefix and whether it is complete."""
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if called not in _DYNAMIC_IMPORTERS or not node.args:
        return None
    return _literal_prefix(node.args[0], module, package)


def _statements(body: list[ast.stmt]) -> Iterator[ast.AST]:
    """Every statement, nested ones (function bodies, ``try``, ``if``) included, but no expressions:
    imports are statements, and skipping expressions makes the walk several times faster."""
    for node in body:
        yield node
        for block in ("body", "orelse", "finalbody", "handlers", "cases"):
            yield from _statements(getattr(node, block, []))


def find_imports(tree: ast.Module, module: str = "", is_package: bool = False, dynamic: bool = True) -> Imports:
    """Every module ``tree`` imports anywhere (function bodies included), relative imports made absolute.

    ``importlib.import_module`` with a name only partly known (``f"{__name__}.{info.name}"`` over
    ``pkgutil.iter_modules``, ``f"abi.reports.{claim}"``) gives a prefix: every module it can name counts.
    ``dynamic=False`` skips looking for those calls (the source names no importer).
    """
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    prefixes: set[str] = set()
    for node in ast.walk(tree) if dynamic else _statements(tree.body):
        if isinstance(node, ast.Import):
            for alias in node.names:
                _add_dotted(names, alias.name)
        elif isinstance(node, ast.ImportFrom):
            _import_from(node, package, names)
        elif isinstance(node, ast.Call) and (found := _dynamic_import(node, module, package)):
            text, complete = found
            if complete:
                _add_dotted(names, text)
            elif "." in text:
                prefixes.add(text)
    return Imports(frozenset(names), frozenset(prefixes))


def strip_docstrings(tree: ast.Module) -> ast.Module:
    """Drop the module, class and function docstrings of ``tree`` (in place)."""
    for node in (tree, *_statements(tree.body)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = node.body[1:]
    return tree


@dataclass(frozen=True)
class ModuleFacts:
    """What the graph walk and the hash need from one module's source."""

    imports: Imports
    normalised: bytes


@lru_cache(maxsize=1024)
def module_facts(source: bytes, module: str, is_package: bool) -> ModuleFacts:
    """Imports and normalised content (syntax tree without docstrings: comments and docstrings do not
    count, any code change does). Cached by content: a build checks every notebook against the same files.
    A file that does not parse imports nothing known and is hashed byte for byte."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ModuleFacts(Imports(), source)
    dynamic = any(importer.encode() in source for importer in _DYNAMIC_IMPORTERS)
    return ModuleFacts(find_imports(tree, module, is_package, dynamic), ast.dump(strip_docstrings(tree)).encode())


class RepoIndex:
    """The counted files of a repository's packages, by module name; built afresh for each check."""

    def __init__(self, root: Path, packages: tuple[str, ...] = ("abi",)) -> None:
        self.root = Path(root)
        self.files = repo_files(self.root, packages)
        self._counted = frozenset(self.files)
        self.modules = {name: rel for rel in self.files if (name := module_name(rel))}
        self._facts: dict[str, ModuleFacts] = {}

    def facts(self, name: str) -> ModuleFacts:
        """One module's facts, its file read once per index."""
        rel = self.modules[name]
        if rel not in self._facts:
            self._facts[rel] = module_facts((self.root / rel).read_bytes(), name, rel.endswith("__init__.py"))
        return self._facts[rel]

    def resolve(self, found: Imports) -> set[str]:
        """The in-repo modules named, with the packages (``__init__``) that importing them runs."""
        names = {name for name in found.names if name in self.modules}
        for prefix in found.prefixes:
            if prefix.rpartition(".")[0] in self.modules:
                names.update(name for name in self.modules if name.startswith(prefix))
        for name in list(names):
            _add_dotted(names, name)
        return {name for name in names if name in self.modules}

    def closure(self, trees: Iterable[ast.Module]) -> set[str]:
        """All in-repo modules reachable from ``trees`` (a notebook's cells) through imports."""
        pending: set[str] = set()
        for tree in trees:
            pending |= self.resolve(find_imports(tree))
        seen: set[str] = set()
        while pending:
            name = pending.pop()
            seen.add(name)
            pending |= self.resolve(self.facts(name).imports) - seen
        return seen

    def data_files(self, modules: set[str]) -> list[str]:
        """Non-Python files (committed checkpoints) of the packages in ``modules``: the nearest enclosing
        package owns a data file, and the code that loads it imports that package."""
        packages = {
            self.modules[name].rpartition("/")[0] for name in modules if self.modules[name].endswith("__init__.py")
        }
        return [rel for rel in self.files if not rel.endswith(".py") and self._owner(rel) in packages]

    def _owner(self, rel: str) -> str | None:
        folder = rel.rpartition("/")[0]
        while folder and f"{folder}/__init__.py" not in self._counted:
            folder = folder.rpartition("/")[0]
        return folder or None

    def dependencies(self, notebook: Path) -> list[str]:
        """Relative paths of every counted file a notebook's code imports or loads, sorted."""
        modules = self.closure(notebook_code(notebook))
        return sorted({self.modules[name] for name in modules} | set(self.data_files(modules)))

    def normalised(self, rel: str) -> bytes:
        """A dependency's content as hashed: Python normalised (see :func:`module_facts`), data as is."""
        name = module_name(rel)
        return self.facts(name).normalised if name in self.modules else (self.root / rel).read_bytes()
