"""The layout rules of tests/: what tests share lives in tests/support, so a test module is never
imported by another module (a test module's fixtures or helpers imported elsewhere run its tests
twice and tie two suites together), conftest.py files only wire fixtures from tests.support, and
only tests.support starts labs for the fixtures."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[3]
SCANNED = ("tests", "benchmarks")
SUPPORT = "tests/support/"


def _python_files(root):
    for top in SCANNED:
        yield from sorted((root / top).rglob("*.py"))


def _imported_modules(path, root):
    """Dotted names a file imports, with ``from a import b`` giving both ``a`` and ``a.b``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(root).parent.parts)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([p for p in parts if p] + ([base] if base else []))
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, base + "." + alias.name


def _module_file(name, root):
    path = root.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _calls(path, function):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == function
               for node in ast.walk(tree))


def _is_test_module(path):
    return path.name.startswith("test_") or path.name == "conftest.py"


def layout_violations(root):
    """Every break of the rules under ``root``, as readable lines."""
    found = []
    for path in _python_files(root):
        rel = path.relative_to(root).as_posix()
        for lineno, name in _imported_modules(path, root):
            target = _module_file(name, root)
            if target is not None and target != path and _is_test_module(target):
                found.append("%s:%d imports the test module %s" % (rel, lineno, target.relative_to(root).as_posix()))
        if path.name == "conftest.py":
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    found.append("%s:%d defines %s: fixtures belong in tests/support" % (rel, node.lineno, node.name))
                elif isinstance(node, ast.ImportFrom) and not (node.module or "").startswith("tests.support"):
                    found.append("%s:%d imports %s: a conftest.py only wires tests.support fixtures"
                                 % (rel, node.lineno, node.module))
                elif isinstance(node, ast.Import):
                    found.append("%s:%d: a conftest.py only wires tests.support fixtures" % (rel, node.lineno))
        if not rel.startswith((SUPPORT, "tests/lab/")) and _calls(path, "lab_pool"):
            found.append("%s starts labs with lab_pool: use the lab_factory fixture of tests/support" % rel)
    return found


def test_no_test_module_is_imported_and_conftests_only_wire_support_fixtures():
    assert any(_python_files(ROOT)), "no test files found under %s" % ROOT
    assert layout_violations(ROOT) == []


def test_the_layout_check_names_each_kind_of_break(tmp_path):
    (tmp_path / "tests" / "suite").mkdir(parents=True)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "tests" / "suite" / "test_a.py").write_text("HELPER = 1\n")
    (tmp_path / "tests" / "suite" / "test_b.py").write_text("from tests.suite.test_a import HELPER\n")
    (tmp_path / "benchmarks" / "bench.py").write_text("from tests.suite import conftest\n")
    (tmp_path / "tests" / "suite" / "conftest.py").write_text(
        "import pytest\nfrom tests.lab.lab import lab_pool\n\n\n@pytest.fixture\ndef lab():\n"
        "    with lab_pool('x') as make:\n        yield make\n")
    found = layout_violations(tmp_path)
    assert found == [
        "tests/suite/conftest.py:1: a conftest.py only wires tests.support fixtures",
        "tests/suite/conftest.py:2 imports tests.lab.lab: a conftest.py only wires tests.support fixtures",
        "tests/suite/conftest.py:6 defines lab: fixtures belong in tests/support",
        "tests/suite/conftest.py starts labs with lab_pool: use the lab_factory fixture of tests/support",
        "tests/suite/test_b.py:1 imports the test module tests/suite/test_a.py",
        "benchmarks/bench.py:1 imports the test module tests/suite/conftest.py",
    ]
