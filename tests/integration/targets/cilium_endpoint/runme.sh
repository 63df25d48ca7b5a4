#!/usr/bin/env bash
# Start a drift lab per Cilium version profile and run cilium_endpoint on every simulated node:
# check mode first (no write reaches the agents), then for real, then again (nothing to do).
set -eux
ROOT="${ANSIBLE_COLLECTIONS_PATH%%:*}/ansible_collections/netreap/cilium"
PY="${NETREAP_LAB_PYTHON:-${ANSIBLE_TEST_PYTHON_INTERPRETER:-python3}}"
LAB=$(mktemp -d /tmp/lab-XXXXXX)
lab() { (cd "$ROOT" && "$PY" -m tests.lab "$@"); }
trap 'lab down --state-dir "$LAB" >/dev/null; rm -rf "$LAB"' EXIT

for profile in 1.13 1.16 1.19; do
  kvstore=consul
  [ "$profile" = "1.19" ] && kvstore=etcd
  lab up --state-dir "$LAB" --nodes 2 --cilium "$profile" --kvstore "$kvstore" --scenario drift
  ansible-playbook -i "$LAB/inventory.yml" test.yml -e "profile=$profile" \
    -e "lab_dir=$LAB" -e "lab_root=$ROOT" -e "lab_python=$PY" "$@"
  lab down --state-dir "$LAB"
done
