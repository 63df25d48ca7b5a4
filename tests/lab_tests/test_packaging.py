"""The collection as users get it: a tarball from `ansible-galaxy collection build` installs,
its docs render with ansible-doc, and its module runs by FQCN against a lab agent."""

import json
import os
import shutil
import subprocess
import sys

import pytest

COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def tool(name):
    path = os.path.join(BIN, name)
    return path if os.path.exists(path) else shutil.which(name)


def run(args, env=None, cwd=None):
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=300,
                          check=False)
    assert proc.returncode == 0, "%s failed:\n%s\n%s" % (args, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if not tool("ansible-galaxy"):
        pytest.skip("ansible-galaxy not installed")
    work = tmp_path_factory.mktemp("pkg")
    run([tool("ansible-galaxy"), "collection", "build", COLLECTION_ROOT, "--output-path", str(work / "dist")])
    tarballs = os.listdir(str(work / "dist"))
    assert tarballs == ["netreap-cilium-0.1.0.tar.gz"]
    tarball = str(work / "dist" / tarballs[0])
    run([tool("ansible-galaxy"), "collection", "install", tarball, "-p", str(work / "collections")])
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(work / "collections"))
    return tarball, env, work


def test_tarball_leaves_out_test_output_and_ci(installed):
    import tarfile
    tarball = installed[0]
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert "plugins/modules/cilium_agent_info.py" in names
    assert "meta/runtime.yml" in names
    assert not [n for n in names if n.startswith(("tests/output", ".ci", ".venv", "build/", ".lab"))]


# What a user's installed collection holds at its top level; development files (benchmarks,
# the oracle's Go source, the contributor guide, setup and CI scripts) stay in the repository.
TARBALL_TOP_LEVEL = {"MANIFEST.json", "FILES.json", "README.md", "COPYING", "meta", "plugins",
                     "roles", "playbooks", "extras", "extensions", "docs", "changelogs", "tests",
                     ".ansible-lint"}


def test_tarball_holds_only_collection_content(installed):
    import tarfile
    with tarfile.open(installed[0]) as tar:
        names = tar.getnames()
    top = {name.split("/", 1)[0] for name in names if name not in (".", "")}
    assert top <= TARBALL_TOP_LEVEL, sorted(top - TARBALL_TOP_LEVEL)
    assert "COPYING" in top and "README.md" in top
    assert not [n for n in names if n.startswith(("benchmarks", "tools/", "scripts/")) or n == "CONTRIBUTING.md"]


def test_ansible_doc_renders(installed):
    env = installed[1]
    out = run([tool("ansible-doc"), "netreap.cilium.cilium_agent_info"], env=env)
    assert "CILIUM_SOCK" in out and "fail_on_unhealthy" in out
    listing = json.loads(run([tool("ansible-doc"), "-l", "-j", "netreap.cilium"], env=env))
    assert "netreap.cilium.cilium_agent_info" in listing


def test_module_runs_by_fqcn_from_the_tarball(installed, lab):
    env = dict(installed[1], ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    node = lab.nodes[0]
    out = run([tool("ansible"), "localhost", "-c", "local", "-m", "netreap.cilium.cilium_agent_info",
               "-a", "cilium_socket=%s" % node.socket_path, "-o"], env=env, cwd=str(installed[2]))
    assert "SUCCESS" in out and '"healthy": true' in out and '"version": "1.16.' in out
