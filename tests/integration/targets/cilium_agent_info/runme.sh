#!/usr/bin/env bash
# Start a lab per Cilium version profile and run the module on every simulated node.
set -eux
# shellcheck source=../../../lab/runme-lib.sh
source "${ANSIBLE_COLLECTIONS_PATH%%:*}/ansible_collections/netreap/cilium/tests/lab/runme-lib.sh"

for profile in 1.13 1.16 1.19; do
  kvstore=consul
  [ "$profile" = "1.19" ] && kvstore=etcd
  lab up --state-dir "$LAB" --nodes 2 --cilium "$profile" --kvstore "$kvstore"
  ansible-playbook -i "$LAB/inventory.yml" test.yml -e "profile=$profile" -e "kvstore=$kvstore" "$@"
  lab down --state-dir "$LAB"
done
