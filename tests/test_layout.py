"""The package's import rules: shared code names no family, the runtime knows no spaCy."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "spacy_gliner2"
FAMILIES = ("gliner2", "gliclass")


def imported(path: Path):
    """Absolute names of the modules a file imports (relative imports resolved)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def files(folder: str):
    return sorted((PACKAGE / folder).rglob("*.py"))


def test_the_rules_see_imports():
    """The checker resolves relative imports (so a break of the rules below would show)."""
    names = set(imported(PACKAGE / "gliner2" / "runner.py"))
    assert "spacy_gliner2.core.runner" in names and "spacy_gliner2.gliner2.model" in names


@pytest.mark.parametrize("folder", ["core", "runtime"])
def test_shared_code_imports_no_family(folder):
    for path in files(folder):
        for name in imported(path):
            assert not name.startswith(tuple(f"spacy_gliner2.{f}" for f in FAMILIES)), f"{path} imports {name}"


def test_runtime_imports_no_spacy():
    for path in files("runtime"):
        for name in imported(path):
            assert name.split(".")[0] not in ("spacy", "thinc"), f"{path} imports {name}"


@pytest.mark.parametrize("family", FAMILIES)
def test_families_do_not_import_each_other(family):
    others = tuple(f"spacy_gliner2.{f}" for f in FAMILIES if f != family)
    for path in files(family):
        for name in imported(path):
            assert not name.startswith(others), f"{path} imports {name}"


def test_package_ships_a_typing_marker():
    """PEP 561: type checkers read the package's annotations."""
    import importlib.resources

    assert importlib.resources.files("spacy_gliner2").joinpath("py.typed").is_file()
