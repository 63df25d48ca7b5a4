#!/usr/bin/env bash
# Set everything up, start the lab with the `drift` scenario, run reap.yml against the lab
# inventory, print what was found, and stop the lab.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export NETREAP_COLLECTIONS_DIR="${NETREAP_COLLECTIONS_DIR:-$ROOT/build/collections}"
bash scripts/setup.sh
export PATH="$ROOT/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$NETREAP_COLLECTIONS_DIR"
export ETCD_BIN="$ROOT/.venv/bin/etcd"
CILIUM=${DEMO_CILIUM:-1.16}
LAB="$ROOT/.lab/demo"
python -m tests.lab down --state-dir "$LAB" >/dev/null 2>&1 || true
trap 'python -m tests.lab down --state-dir "$LAB" >/dev/null' EXIT
python -m tests.lab up --state-dir "$LAB" --scenario drift --cilium "$CILIUM" --nodes "${DEMO_NODES:-3}"
# shellcheck disable=SC1091
source "$LAB/lab.env"
ANSIBLE_STDOUT_CALLBACK=${ANSIBLE_STDOUT_CALLBACK:-default} \
  ansible-playbook -i "$LAB/inventory.yml" netreap.cilium.reap "$@"
