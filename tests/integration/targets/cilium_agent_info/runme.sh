#!/usr/bin/env bash
# Start a lab per Cilium version profile and run the module on every simulated node.
set -eux
ROOT="${ANSIBLE_COLLECTIONS_PATH%%:*}/ansible_collections/netreap/cilium"
PY="${NETREAP_LAB_PYTHON:-${ANSIBLE_TEST_PYTHON_INTERPRETER:-python3}}"
LAB=$(mktemp -d /tmp/lab-XXXXXX)
lab() { (cd "$ROOT" && "$PY" -m tests.lab "$@"); }
trap 'lab down --state-dir "$LAB" >/dev/null; rm -rf "$LAB"' EXIT

for profile in 1.13 1.16 1.19; do
  kvstore=consul
  [ "$profile" = "1.19" ] && kvstore=etcd
  lab up --state-dir "$LAB" --nodes 2 --cilium "$profile" --kvstore "$kvstore"
  ansible-playbook -i "$LAB/inventory.yml" test.yml -e "profile=$profile" -e "kvstore=$kvstore" "$@"
  lab down --state-dir "$LAB"
done
