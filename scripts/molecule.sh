#!/usr/bin/env bash
# Run the Molecule scenarios (extensions/molecule) from the build copy of the collection:
#   bash scripts/molecule.sh                 # ansible-lint, then every scenario
#   bash scripts/molecule.sh node            # one scenario (no lint)
#   bash scripts/molecule.sh --broken-unit [reaper|node]
#       a copy of the collection whose unit template systemd refuses: the scenario (reaper by
#       default) must fail, and fail at the template's systemd-analyze verify validation
# Each scenario is `molecule test`: destroy, create, prepare, check (node only), converge, idempotence,
# verify, destroy, in one container. The full output goes to build/molecule-<scenario>.log (shown
# when the scenario fails); the time of each step is printed. NETREAP_MOLECULE_SUFFIX gives the
# containers and logs other names (two checkouts on one machine).
# Installs podman, runc and debootstrap from Debian (as root) when missing, the containers.podman
# collection the podman driver needs (taken from the ansible package on PyPI), and builds the
# Debian bookworm image with systemd as PID 1 (cached, shared by the scenarios).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
ANSIBLE_WHEEL=ansible-12.3.0-py3-none-any.whl
ANSIBLE_LINT_VERSION=26.10.1
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
  [ -f "$wheels/$ANSIBLE_WHEEL" ] || .venv/bin/python -m pip download -q --no-deps 'ansible==12.3.0' -d "$wheels" || exit 1
  .venv/bin/python - "$wheels/$ANSIBLE_WHEEL" "$COLLECTIONS" <<'PYEOF' || exit 1
import sys
import zipfile

prefix = "ansible_collections/containers/podman/"
with zipfile.ZipFile(sys.argv[1]) as wheel:
    wheel.extractall(sys.argv[2], [n for n in wheel.namelist() if n.startswith(prefix)])
PYEOF
fi
export PATH="$ROOT/.venv/bin:$PATH" ANSIBLE_COLLECTIONS_PATH="$COLLECTIONS"
export CONTAINERS_CONF="$ROOT/extensions/molecule/containers.conf"
export NO_COLOR=1 ANSIBLE_FORCE_COLOR=0
export NETREAP_MOLECULE_IMAGE
NETREAP_MOLECULE_IMAGE=$(bash extensions/molecule/build_image.sh) || exit 1
COLL="$COLLECTIONS/ansible_collections/netreap/cilium"

# scenario NAME COLLECTION-COPY LOG: molecule test with a timestamp on every line of the log;
# prints how long each step took. Returns molecule's exit status.
scenario() {
  local name=$1 copy=$2 log=$3 status
  echo "== molecule test -s $name"
  # Molecule keeps a scenario's state under a name made of the project directory's base name
  # ("cilium" for every copy): each copy and suffix gets its own, so runs cannot share it.
  (cd "$copy/ansible_collections/netreap/cilium" && ANSIBLE_COLLECTIONS_PATH="$copy" PYTHONUNBUFFERED=1 \
     MOLECULE_EPHEMERAL_DIRECTORY="$copy/molecule-state/$name${NETREAP_MOLECULE_SUFFIX:-}" molecule test -s "$name") 2>&1 \
    | while IFS= read -r line; do printf '%(%s)T %s\n' -1 "$line"; done > "$log"
  status=${PIPESTATUS[0]}
  awk -v name="$name" '
    / > [a-z_]+\] .*Executing/ { step = $0; sub(/\].*/, "", step); sub(/.* /, "", step); began = $1 }
    / > [a-z_]+\] .*Executed/ && step != "" { times = times sprintf(" %s %ds", step, $1 - began); step = "" }
    NR == 1 { first = $1 }
    { last = $1 }
    END { printf "molecule %s:%s; total %ds\n", name, times, last - first }' "$log"
  return "$status"
}

if [ "${1:-}" = "--broken-unit" ]; then
  target=${2:-reaper}
  case "$target" in
    reaper) template=roles/reaper/templates/reaper.service.j2 ;;
    node) template=roles/agent/templates/cilium-agent.service.j2 ;;
    *) echo "molecule: no broken-unit check for scenario $target"; exit 2 ;;
  esac
  # A copy of the collection with a unit template that systemd refuses: the scenario must fail.
  scratch=$(mktemp -d "$ROOT/build/broken-unit.XXXXXX")
  trap 'rm -rf "$scratch"' EXIT
  mkdir -p "$scratch/ansible_collections/netreap"
  cp -a "$COLL" "$scratch/ansible_collections/netreap/cilium"
  ln -s "$COLLECTIONS/ansible_collections/containers" "$scratch/ansible_collections/containers"
  grep -q '^ExecStart=' "$scratch/ansible_collections/netreap/cilium/$template" || exit 1
  sed -i 's/^ExecStart=/ExecStart=relative-path-systemd-refuses /' "$scratch/ansible_collections/netreap/cilium/$template"
  log="$ROOT/build/molecule-broken-unit${NETREAP_MOLECULE_SUFFIX:-}.log"
  if scenario "$target" "$scratch" "$log"; then
    echo "molecule: the broken unit template in $template was not noticed ($log)"; exit 1
  fi
  if ! grep -q 'failed to validate' "$log"; then
    tail -n 60 "$log"
    echo "molecule: $target failed, but not at the unit's validation ($log)"; exit 1
  fi
  echo "molecule: the broken unit template fails the $target scenario at its validation"; exit 0
fi

rc=0
if [ $# -eq 0 ]; then
  # ansible-lint, production profile (own venv: it pins its own dependencies; kept in build/).
  LINT_VENV="$ROOT/build/lint-venv"
  if [ ! -x "$LINT_VENV/bin/ansible-lint" ] || ! "$LINT_VENV/bin/ansible-lint" --version 2>/dev/null | grep -q "ansible-lint $ANSIBLE_LINT_VERSION "; then
    python3 -m venv "$LINT_VENV" \
      && "$LINT_VENV/bin/pip" install -q 'ansible-core>=2.19,<2.20' "ansible-lint==$ANSIBLE_LINT_VERSION" >/dev/null || exit 1
  fi
  echo "== ansible-lint --offline (production profile)"
  (cd "$COLL" && "$LINT_VENV/bin/ansible-lint" --offline --nocolor roles/kernel_modules roles/bpffs roles/cni \
     roles/agent roles/node roles/reaper playbooks/provision.yml playbooks/reap.yml playbooks/policy.yml \
     extensions/molecule) || rc=1
fi
[ $# -gt 0 ] || set -- node reaper
for s in "$@"; do
  log="$ROOT/build/molecule-$s${NETREAP_MOLECULE_SUFFIX:-}.log"
  if ! scenario "$s" "$COLLECTIONS" "$log"; then
    tail -n 120 "$log"
    echo "molecule $s: FAILED (full output: $log)"; rc=1
  fi
  # The scenarios' tokens and secret environment must stay out of the output.
  if grep -nE 's3cr3t|7d1e-secret|4b2f-secret|9a0c-secret' "$log"; then
    echo "molecule $s: a secret appears in the output"; rc=1
  fi
done
exit $rc
