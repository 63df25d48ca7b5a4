#!/usr/bin/env bash
# Set everything up and run every test: pytest (units, lab conformance with py-consul /
# python-nomad / real etcd, module tests against the lab, packaging), ansible-test sanity and
# ansible-test integration (targets start their own lab).  Prints one closing summary line.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
export NETREAP_COLLECTIONS_DIR="${NETREAP_COLLECTIONS_DIR:-$ROOT/build/collections}"
bash scripts/setup.sh || exit 1
export PATH="$ROOT/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$NETREAP_COLLECTIONS_DIR"
export ETCD_BIN="$ROOT/.venv/bin/etcd"
export NETREAP_LAB_PYTHON="$ROOT/.venv/bin/python"
COLL="$NETREAP_COLLECTIONS_DIR/ansible_collections/netreap/cilium"
OUT="$ROOT/build/test-results"
rm -rf "$OUT" && mkdir -p "$OUT"
failed_steps=()
pytest_passed=0; pytest_failed=0

step() { echo; echo "=== $* ==="; }

step "pytest: units, lab conformance, modules on the lab, packaging"
(cd "$COLL" && PYTHONPATH="$NETREAP_COLLECTIONS_DIR:$COLL" python -m pytest -p no:cacheprovider \
    -n "${PYTEST_WORKERS:-2}" --junitxml="$OUT/pytest.xml" -q tests/unit tests/lab_conformance tests/lab_tests tests/roles tests/reliability)
rc=$?
if [ -f "$OUT/pytest.xml" ]; then
  read -r pytest_passed pytest_failed < <(python - "$OUT/pytest.xml" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root)
tests = sum(int(s.get("tests", 0)) for s in suites)
bad = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
print(tests - bad - skipped, bad)
PY
)
fi
[ $rc -eq 0 ] || failed_steps+=("pytest(rc=$rc)")

step "ansible-test sanity (no ignore files)"
# The shellcheck sanity test is skipped when shellcheck is missing: install it (Debian, as root).
if ! command -v shellcheck >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" -eq 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck; } >/dev/null \
    || echo "could not install shellcheck: its sanity test will be skipped"
fi
if [ -n "$(ls "$COLL"/tests/sanity/ignore-*.txt 2>/dev/null)" ]; then
  echo "tests/sanity/ignore-*.txt must not exist"; failed_steps+=("sanity-ignores")
fi
(cd "$COLL" && ansible-test sanity --venv --python 3.11 --color no) || failed_steps+=("sanity")

step "docs: antsibull-docs lint-collection-docs (plugins, roles, the guides as extra docs)"
bash scripts/docs.sh --lint || failed_steps+=("docs")

step "roles under systemd: ansible-lint, molecule test per scenario (extensions/molecule), a broken unit template must fail"
{ bash scripts/molecule.sh && bash scripts/molecule.sh --broken-unit; } || failed_steps+=("roles")

step "ansible-test integration (each target starts its own lab)"
(cd "$COLL" && ansible-test integration --venv --python 3.11 --color no) || failed_steps+=("integration")

echo
# One closing line for CI: pytest's counts plus the four other steps (each one test).
steps_failed=0
for name in "${failed_steps[@]}"; do
  case "$name" in pytest*) ;; *) steps_failed=$((steps_failed + 1)) ;; esac
done
if [ $rc -ne 0 ] && [ "$pytest_failed" -eq 0 ]; then pytest_failed=1; fi
if [ ${#failed_steps[@]} -eq 0 ]; then
  echo "all steps passed: pytest, ansible-test sanity, docs lint, roles under systemd (molecule), ansible-test integration"
else
  echo "failed steps: ${failed_steps[*]}"
fi
echo "$((pytest_passed + 4 - steps_failed)) passed, $((pytest_failed + steps_failed)) failed"
[ ${#failed_steps[@]} -eq 0 ]
