# Sourced by the integration targets' runme.sh: find the collection and a Python for the lab,
# make a short state dir, define `lab ...` (python -m tests.lab), and stop the lab on exit.
# shellcheck shell=bash
NETREAP_ROOT="${ANSIBLE_COLLECTIONS_PATH%%:*}/ansible_collections/netreap/cilium"
NETREAP_LAB_PY="${NETREAP_LAB_PYTHON:-${ANSIBLE_TEST_PYTHON_INTERPRETER:-python3}}"
LAB=$(mktemp -d /tmp/lab-XXXXXX)
lab() { (cd "$NETREAP_ROOT" && "$NETREAP_LAB_PY" -m tests.lab "$@"); }
trap 'lab down --state-dir "$LAB" >/dev/null; rm -rf "$LAB"' EXIT
