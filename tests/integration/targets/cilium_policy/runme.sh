#!/usr/bin/env bash
# Per Cilium version profile: start a lab (drift scenario), then one playbook run publishes a
# changed policy once (netreap.cilium.policy) and applies it on every simulated node.
set -eux
# shellcheck source=../../../lab/runme-lib.sh
source "${ANSIBLE_COLLECTIONS_PATH%%:*}/ansible_collections/netreap/cilium/tests/lab/runme-lib.sh"

for profile in 1.13 1.15 1.18 1.19; do
  kvstore=consul
  case "$profile" in 1.17|1.18|1.19) kvstore=etcd ;; esac
  lab up --state-dir "$LAB" --nodes 2 --cilium "$profile" --kvstore "$kvstore" --scenario drift
  ansible-playbook -i "$LAB/inventory.yml" test.yml -e "profile=$profile" -e @files/policy-vars.yml \
    -e netreap_policy_hosts=reaper "$@"
  lab down --state-dir "$LAB"
done
