"""The layers of plugins/: which file may import which.

Every Python file under plugins/ is read (ast, imports anywhere in the file) and each import of
another file of the collection must be an allowed arrow:

    modules (plugins/modules)  -> runs, planners, clients, value types, options, the HTTP layer
                                  (its error type and failure message)
    other plugins (inventory,  -> planners, clients, value types, options, the HTTP layer
      filter, lookup, ...)
    runs                       -> runs, planners, clients, value types, options, the HTTP layer
    clients                    -> the HTTP layer, value types, options (the kvstore adapter also
                                  -> the Consul and etcd clients)
    planners                   -> planners, value types; no I/O from the standard library either
    value types, HTTP layer    -> value types only
    options                    -> the HTTP layer, value types, options
    doc fragments              -> nothing
    anything                   -> never tests/

A file of plugins/module_utils that is in no layer fails the test: a new file is placed in a
layer here, on purpose.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
PACKAGE = "ansible_collections.netreap.cilium"

# plugins/module_utils files by layer (file name without .py).
HTTP_LAYER = {"_http"}
VALUE_TYPES = {"_kvstore_types"}
CLIENTS = {"_consul", "_etcd", "_nomad", "_cilium"}
ADAPTERS = {"_kvstore"}  # one interface over the Consul and etcd clients
RUNS = {"_run", "_kvstore_gc_run", "_endpoint_apply"}
PLANNERS = {"_kvstore_gc", "_endpoint_plan"}
# Every _policy* file is a pure planner step (decode, validate, render, plan), except those
# that talk to the agent or read the disk: these are the policy run.
POLICY_IO = {"_policy_apply"}
OPTION_PREFIXES = ("_options", "_settings", "_argspec")

# Standard-library and Ansible modules that do I/O: never in a planner.
IO_MODULES = ("urllib", "http", "socket", "ssl", "subprocess", "shutil", "ansible.module_utils.urls")

ALLOWED = {
    "module": {"run", "planner", "client", "adapter", "value", "options", "http"},
    "plugin": {"planner", "client", "adapter", "value", "options", "http"},
    "run": {"run", "planner", "client", "adapter", "value", "options", "http"},
    "adapter": {"client", "value", "options", "http"},
    "client": {"value", "options", "http"},
    "planner": {"planner", "value"},
    "value": {"value"},
    "http": {"value"},
    "options": {"http", "value", "options"},
    "doc": set(),
}


def layer(path):
    """The layer of a file given relative to plugins/ (``module_utils/_http.py``), or None."""
    parts = pathlib.PurePosixPath(path).parts
    name = pathlib.PurePosixPath(path).stem
    if parts[0] == "modules":
        return "module"
    if parts[0] == "doc_fragments":
        return "doc"
    if parts[0] != "module_utils":
        return "plugin"
    if name == "__init__":
        return "value"
    if name.startswith("_policy"):
        return "run" if name in POLICY_IO else "planner"
    if name.startswith(OPTION_PREFIXES):
        return "options"
    for names, kind in ((HTTP_LAYER, "http"), (VALUE_TYPES, "value"), (CLIENTS, "client"),
                        (ADAPTERS, "adapter"), (RUNS, "run"), (PLANNERS, "planner")):
        if name in names:
            return kind
    return None


def imported_modules(source, path):
    """Dotted names a file imports (``from x import y`` yields ``x.y`` too: y may be a module)."""
    package = (PACKAGE + ".plugins." + ".".join(pathlib.PurePosixPath(path).parent.parts)).rstrip(".")
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.append(base)
            names.extend("%s.%s" % (base, alias.name) for alias in node.names)
    return names


def target_of(name):
    """``module_utils/_http.py`` for an import of a collection file, ``tests`` for the tests,
    None for anything else."""
    if name == "tests" or name.startswith(("tests.", PACKAGE + ".tests")):
        return "tests"
    prefix = PACKAGE + ".plugins."
    if not name.startswith(prefix):
        return None
    parts = name[len(prefix):].split(".")
    if len(parts) < 2:
        return None
    return "%s/%s.py" % (parts[0], parts[1])


def io_module(name):
    """The I/O module ``name`` is or belongs to, or None."""
    for module in IO_MODULES:
        if name == module or name.startswith(module + "."):
            return module
    return None


def violations(graph):
    """Arrows outside the allowed ones, for ``graph`` = ``{path under plugins/: [imported names]}``."""
    found = []
    for path, names in sorted(graph.items()):
        kind = layer(path)
        if kind is None:
            found.append("%s: in no layer (place it in tests/unit/plugins/test_architecture.py)" % path)
            continue
        problems = set()
        for name in names:
            if kind == "planner" and io_module(name):
                problems.add("%s (planner) imports %s, which does I/O" % (path, io_module(name)))
            target = target_of(name)
            if target == "tests":
                problems.add("%s imports the tests (%s)" % (path, name))
            elif target is not None and target != path and layer(target) not in ALLOWED[kind]:
                problems.add("%s (%s) imports %s (%s)" % (path, kind, target, layer(target)))
        found.extend(sorted(problems))
    return found


def plugin_graph():
    graph = {}
    for file in sorted((ROOT / "plugins").rglob("*.py")):
        path = file.relative_to(ROOT / "plugins").as_posix()
        graph[path] = imported_modules(file.read_text(encoding="utf-8"), path)
    return graph


def test_plugins_import_only_along_allowed_arrows():
    graph = plugin_graph()
    assert "module_utils/_kvstore_gc.py" in graph and "modules/cilium_node_gc.py" in graph
    assert violations(graph) == []


def test_importing_the_planner_loads_no_io_module():
    """What the planner file imports, followed through the collection: no client, no HTTP."""
    graph = plugin_graph()
    seen, todo = set(), ["module_utils/_kvstore_gc.py"]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo.extend(t for t in (target_of(n) for n in graph[path]) if t in graph)
    assert seen == {"module_utils/_kvstore_gc.py", "module_utils/_kvstore_types.py"}


U = PACKAGE + ".plugins.module_utils."


@pytest.mark.parametrize("path, imports, expected", [
    ("module_utils/_kvstore_gc.py", [U + "_etcd"],
     "module_utils/_kvstore_gc.py (planner) imports module_utils/_etcd.py (client)"),
    ("module_utils/_kvstore_gc.py", [U + "_kvstore"],
     "module_utils/_kvstore_gc.py (planner) imports module_utils/_kvstore.py (adapter)"),
    ("module_utils/_policy_render.py", [U + "_http"],
     "module_utils/_policy_render.py (planner) imports module_utils/_http.py (http)"),
    ("module_utils/_endpoint_plan.py", ["urllib.request"],
     "module_utils/_endpoint_plan.py (planner) imports urllib, which does I/O"),
    ("module_utils/_kvstore_types.py", [U + "_consul"],
     "module_utils/_kvstore_types.py (value) imports module_utils/_consul.py (client)"),
    ("module_utils/_consul.py", [U + "_run"],
     "module_utils/_consul.py (client) imports module_utils/_run.py (run)"),
    ("module_utils/_run.py", ["tests.lab.httpd"], "module_utils/_run.py imports the tests (tests.lab.httpd)"),
    ("module_utils/_helpers.py", [], "module_utils/_helpers.py: in no layer"),
])
def test_a_forbidden_arrow_fails(path, imports, expected):
    graph = {path: imports, "module_utils/_etcd.py": [], "module_utils/_http.py": []}
    found = violations(graph)
    assert len(found) == 1 and found[0].startswith(expected)


def test_allowed_arrows_pass_and_relative_imports_resolve():
    graph = {
        "module_utils/_policy_apply.py": imported_modules(
            "from ..module_utils import _policy_plan\nfrom ._cilium import CiliumClient\n",
            "module_utils/_policy_apply.py"),
        "module_utils/_policy_plan.py": [U + "_policy_decode", U + "_kvstore_types"],
        "modules/cilium_policy.py": [U + "_run", U + "_policy_apply", U + "_policy_plan"],
    }
    assert graph["module_utils/_policy_apply.py"][-1] == U + "_cilium.CiliumClient"
    assert violations(graph) == []
    graph["module_utils/_policy_plan.py"].append(U + "_policy_apply")
    assert violations(graph) == [
        "module_utils/_policy_plan.py (planner) imports module_utils/_policy_apply.py (run)"]
