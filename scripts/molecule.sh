#!/usr/bin/env bash
# Run the Molecule scenarios (extensions/molecule) from the build copy of the collection:
#   bash scripts/molecule.sh              # every scenario: create, converge, idempotence, verify, destroy
#   bash scripts/molecule.sh node         # one scenario
#   bash scripts/molecule.sh --broken-unit   # a broken unit template must make the node scenario fail
# Installs podman, runc and debootstrap from Debian (as root) when missing, the containers.podman
# collection the podman driver needs (taken from the ansible package on PyPI), and builds the
# Debian bookworm image with systemd as PID 1 (cached).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
missing=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ "${#missing[@]}" -gt 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap podman runc; } >/dev/null || exit 1
fi
bash scripts/setup.sh >/dev/null || exit 1
COLLECTIONS="${NETREAP_COLLECTIONS_DIR:-$ROOT/build/collections}"
# containers.podman: Galaxy may be unreachable, the ansible package on PyPI bundles the collection.
# Only that directory is copied, so the pinned ansible-core stays as it is.
if [ ! -f "$COLLECTIONS/ansible_collections/containers/podman/MANIFEST.json" ]; then
  wheels="$ROOT/build/wheels"
  mkdir -p "$wheels" "$COLLECTIONS/ansible_collections/containers"
  .venv/bin/python -m pip download -q --no-deps 'ansible==12.3.0' -d "$wheels" || exit 1
  .venv/bin/python - "$wheels/ansible-12.3.0-py3-none-any.whl" "$COLLECTIONS" <<'PYEOF' || exit 1
import sys
import zipfile

prefix = "ansible_collections/containers/podman/"
with zipfile.ZipFile(sys.argv[1]) as wheel:
    wheel.extractall(sys.argv[2], [n for n in wheel.namelist() if n.startswith(prefix)])
PYEOF
fi
export PATH="$ROOT/.venv/bin:$PATH" ANSIBLE_COLLECTIONS_PATH="$COLLECTIONS"
export CONTAINERS_CONF="$ROOT/extensions/molecule/containers.conf"
export NETREAP_MOLECULE_IMAGE
NETREAP_MOLECULE_IMAGE=$(bash extensions/molecule/build_image.sh) || exit 1
COLL="$COLLECTIONS/ansible_collections/netreap/cilium"

if [ "${1:-}" = "--broken-unit" ]; then
  # A copy of the collection with a unit template that systemd refuses: the scenario must fail.
  scratch=$(mktemp -d "$ROOT/build/broken-unit.XXXXXX")
  trap 'rm -rf "$scratch"' EXIT
  mkdir -p "$scratch/ansible_collections/netreap"
  cp -a "$COLL" "$scratch/ansible_collections/netreap/cilium"
  ln -s "$COLLECTIONS/ansible_collections/containers" "$scratch/ansible_collections/containers"
  sed -i 's/^ExecStart=/ExecStart=relative-path-systemd-refuses /' \
    "$scratch/ansible_collections/netreap/cilium/roles/agent/templates/cilium-agent.service.j2"
  if (cd "$scratch/ansible_collections/netreap/cilium" && ANSIBLE_COLLECTIONS_PATH="$scratch" \
        MOLECULE_PROJECT_DIRECTORY="$PWD" molecule test -s node) > "$ROOT/build/molecule-broken-unit.log" 2>&1; then
    echo "molecule: a broken unit template was not noticed (build/molecule-broken-unit.log)"; exit 1
  fi
  echo "molecule: the broken unit template fails the node scenario"; exit 0
fi
rc=0
# ansible-lint, production profile (own venv: it pins its own dependencies).
LINT_VENV="$ROOT/build/lint-venv"
if [ $# -eq 0 ]; then
  if [ ! -x "$LINT_VENV/bin/ansible-lint" ]; then
    python3 -m venv "$LINT_VENV" && "$LINT_VENV/bin/pip" install -q 'ansible-core>=2.19,<2.20' ansible-lint >/dev/null
  fi
  echo "== ansible-lint (production profile)"
  (cd "$COLL" && "$LINT_VENV/bin/ansible-lint" --nocolor roles/kernel_modules roles/bpffs roles/cni roles/agent \
     roles/node roles/reaper playbooks/provision.yml playbooks/reap.yml playbooks/policy.yml) || rc=1
fi
for scenario in "${@:-node reaper}"; do
  for s in $scenario; do
    echo "== molecule test -s $s"
    (cd "$COLL" && molecule test -s "$s") 2>&1 | tee "$ROOT/build/molecule-$s.log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
    # The scenarios' tokens and secret environment must stay out of the output.
    if grep -nE 's3cr3t|7d1e-secret|4b2f-secret|9a0c-secret' "$ROOT/build/molecule-$s.log"; then
      echo "molecule $s: a secret appears in the output"; rc=1
    fi
  done
done
exit $rc
