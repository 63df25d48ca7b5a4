"""Start-up shared by the benchmarks: run them from a checkout after ``bash scripts/setup.sh``.

Each benchmark is run as ``.venv/bin/python -m benchmarks.<name>`` from the repository root.
``prepare()`` makes ``ansible_collections.netreap.cilium`` importable from this checkout (a
temporary collections tree whose ``netreap/cilium`` links to the working tree, so the figures are
always those of the code as it is now), puts the repository root on ``sys.path`` for the lab
(``tests.lab``, ``tests.support``), and sets ``ANSIBLE_COLLECTIONS_PATH`` and ``PATH`` for the ansible-playbook runs
a benchmark starts.
"""

import atexit
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prepare():
    """Make the collection and the lab importable; return the temporary collections tree."""
    tree = tempfile.mkdtemp(prefix="netreap-bench-coll-")
    atexit.register(shutil.rmtree, tree, True)
    os.makedirs(os.path.join(tree, "ansible_collections", "netreap"))
    os.symlink(ROOT, os.path.join(tree, "ansible_collections", "netreap", "cilium"))
    for path in (ROOT, tree):
        if path not in sys.path:
            sys.path.insert(0, path)
    # A previously imported ansible_collections package (from another path) would shadow ours.
    for name in [m for m in sys.modules if m == "ansible_collections" or m.startswith("ansible_collections.")]:
        del sys.modules[name]
    os.environ["ANSIBLE_COLLECTIONS_PATH"] = tree
    bin_dir = os.path.dirname(sys.executable)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    return tree
