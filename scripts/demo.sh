#!/usr/bin/env bash
# The demo: set everything up, start the lab with the `drift` scenario, run reap.yml against the
# lab inventory, print a before/after table of what was found and fixed, show that one more run
# has nothing left to do, and stop the lab.
#
# Node and identity GC are two-pass (a candidate is deleted only when an earlier run already saw
# it); the demo sets their min_age to 0 so the confirming run can follow right away. In production
# keep the defaults (minutes) and let the timer provide the second pass.
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
lab() { python -m tests.lab "$@"; }
lab down --state-dir "$LAB" >/dev/null 2>&1 || true
trap 'lab down --state-dir "$LAB" >/dev/null' EXIT
lab up --state-dir "$LAB" --scenario drift --cilium "$CILIUM" --nodes "${DEMO_NODES:-3}"
# shellcheck disable=SC1091
source "$LAB/lab.env"
lab report --state-dir "$LAB" --save "$LAB/before.json"

reap() {
  ansible-playbook -i "$LAB/inventory.yml" netreap.cilium.reap \
    -e netreap_node_gc_min_age=0 -e netreap_identity_gc_min_age=0 "$@"
}
echo; echo "### reap run 1: fix endpoints and policy, mark GC candidates"
reap "$@"
echo; echo "### reap run 2: confirm and delete the candidates marked by run 1"
reap "$@"
echo; echo "### what the lab looked like before, and after the two runs"
lab report --state-dir "$LAB" --before "$LAB/before.json"
echo; echo "### reap run 3: nothing left to do"
# (a heartbeat written less than a minute ago is fresh enough: no write, no change)
reap -e netreap_heartbeat_min_interval=60 "$@" | tee "$LAB/run3.log"
if grep -E 'changed=[1-9]' "$LAB/run3.log" >/dev/null; then
  echo "demo: the third run still changed something" >&2
  exit 1
fi
echo; echo "demo: drift fixed; the third run changed nothing"
