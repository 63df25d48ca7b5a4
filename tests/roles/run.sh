#!/usr/bin/env bash
# Role scenario under real systemd: a Debian bookworm container (systemd as PID 1, podman + runc)
# converged with playbooks/provision.yml (netreap.cilium.node).  The container runtime the agent
# unit calls is a stand-in that serves the lab's Cilium agent simulator on the agent socket, so
# the unit really starts, the health wait and the restart handler run end to end.
#
# Steps: ansible-lint (production profile) -> check mode on the fresh container changes nothing -> converge -> second converge changes
# nothing -> verify -> a changed setting restarts the agent (new flags, healthy again) -> an agent
# with a failing kvstore makes the role fail with the agent's own message.
#
#   bash tests/roles/run.sh            # installs podman/runc/debootstrap via apt when missing
#   NETREAP_KEEP_CONTAINER=1 bash tests/roles/run.sh   # leave the container for inspection
#   NETREAP_ROLE_CONTAINER=my-node bash tests/roles/run.sh   # another container name
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT" || exit 1
export CONTAINERS_CONF="$HERE/containers.conf"
# NETREAP_ROLE_CONTAINER: another name lets two checkouts run the scenario on one machine.
NAME="${NETREAP_ROLE_CONTAINER:-netreap-role-node1}"
WORK="$ROOT/build/role-tests"
START=$(date +%s)
results=()
failed=0

log() { echo "[roles $(( $(date +%s) - START ))s] $*"; }
record() {  # record NAME RC
  if [ "$2" -eq 0 ]; then results+=("PASS  $1"); else results+=("FAIL  $1"); failed=$((failed + 1)); fi
}
finish() {
  if [ -z "${NETREAP_KEEP_CONTAINER:-}" ]; then podman rm -f -t 0 "$NAME" >/dev/null 2>&1; fi
  echo
  echo "=== role scenario summary ($(( $(date +%s) - START ))s) ==="
  printf '%s\n' "${results[@]}"
  if [ "$failed" -eq 0 ] && [ "${#results[@]}" -gt 0 ]; then echo "roles: PASS"; else echo "roles: FAIL ($failed failed)"; fi
}
trap finish EXIT

# --- tools (Debian apt) and the collection copy -------------------------------------------------
missing=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap podman runc; } >/dev/null \
    || { record "install podman runc debootstrap" 1; exit 1; }
fi
bash scripts/setup.sh >/dev/null || { record "scripts/setup.sh" 1; exit 1; }
export PATH="$ROOT/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$ROOT/build/collections"
export ANSIBLE_CONNECTION_PLUGINS="$HERE/connection_plugins"
export ANSIBLE_PIPELINING=1 ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0 ANSIBLE_DEPRECATION_WARNINGS=0
export ANSIBLE_LOCAL_TEMP="$WORK/tmp"
rm -rf "$WORK" && mkdir -p "$WORK/tmp"

# --- ansible-lint, production profile (own venv: it pins its own dependencies) -------------------
LINT_VENV="$ROOT/build/lint-venv"
if [ ! -x "$LINT_VENV/bin/ansible-lint" ]; then
  log "install ansible-lint into $LINT_VENV"
  python3 -m venv "$LINT_VENV" && "$LINT_VENV/bin/pip" install -q 'ansible-core>=2.19,<2.20' ansible-lint >/dev/null
fi
log "ansible-lint"
(cd "$ROOT/build/collections/ansible_collections/netreap/cilium" \
  && "$LINT_VENV/bin/ansible-lint" --nocolor roles/kernel_modules roles/bpffs roles/cni roles/agent roles/node \
     roles/reaper playbooks/provision.yml playbooks/reap.yml playbooks/policy.yml) > "$WORK/ansible-lint.log" 2>&1
record "ansible-lint --profile production (roles, playbooks)" $?

# --- image (cached) and container ---------------------------------------------------------------
log "image"
IMAGE=$(bash "$HERE/build_image.sh") || { record "build image (debootstrap bookworm)" 1; exit 1; }
log "image $IMAGE"
podman rm -f -t 0 "$NAME" >/dev/null 2>&1
podman run -d --name "$NAME" --hostname "$NAME" --privileged --systemd=always "$IMAGE" /lib/systemd/systemd >/dev/null \
  || { record "start container with systemd as PID 1" 1; exit 1; }
state=""
for _ in $(seq 1 50); do
  state=$(podman exec "$NAME" systemctl is-system-running 2>/dev/null)
  case "$state" in running|degraded) break ;; esac
  sleep 0.2
done
case "$state" in running|degraded) record "container boots systemd ($state)" 0 ;; *) record "container boots systemd ($state)" 1; exit 1 ;; esac

# --- prepare: stand-ins, lab simulator, a local CNI plugins release, a Nomad client stand-in -----
log "prepare"
mkdir -p "$WORK/cni" "$WORK/lab/tests"
for plugin in bridge firewall host-local loopback portmap; do
  printf '#!/bin/sh\necho "CNI %s plugin v1.6.2 (netreap.cilium test stand-in)"\n' "$plugin" > "$WORK/cni/$plugin"
  chmod 0755 "$WORK/cni/$plugin"
done
tar -C "$WORK/cni" -czf "$WORK/cni-plugins-linux-amd64-v1.6.2.tgz" --owner=0 --group=0 ./bridge ./firewall ./host-local ./loopback ./portmap
(cd "$WORK" && sha256sum cni-plugins-linux-amd64-v1.6.2.tgz > cni-plugins-linux-amd64-v1.6.2.tgz.sha256)
cp -a tests/lab "$WORK/lab/tests/lab" && : > "$WORK/lab/tests/__init__.py"
{ echo '#!/usr/bin/python3'; cat "$HERE/files/fake-runtime.py"; } > "$WORK/netreap-fake-podman"
find "$WORK/lab" -name __pycache__ -prune -exec rm -rf {} +
podman exec "$NAME" mkdir -p /srv/cni /opt/netreap-lab /usr/local/sbin
podman cp "$WORK/cni-plugins-linux-amd64-v1.6.2.tgz" "$NAME:/srv/cni/" \
  && podman cp "$WORK/cni-plugins-linux-amd64-v1.6.2.tgz.sha256" "$NAME:/srv/cni/" \
  && podman cp "$WORK/lab/tests" "$NAME:/opt/netreap-lab/" \
  && podman cp "$WORK/netreap-fake-podman" "$NAME:/usr/local/bin/netreap-fake-podman" \
  && podman cp "$HERE/files/fake-modprobe.sh" "$NAME:/usr/local/sbin/netreap-fake-modprobe" \
  && podman cp "$HERE/files/fake-nomad.py" "$NAME:/usr/local/bin/netreap-fake-nomad" \
  && podman cp "$HERE/files/fake-nomad.service" "$NAME:/etc/systemd/system/nomad.service" \
  && podman exec "$NAME" sh -c 'chmod 0755 /usr/local/bin/netreap-fake-podman /usr/local/sbin/netreap-fake-modprobe \
       /usr/local/bin/netreap-fake-nomad \
       && useradd --create-home --shell /bin/sh netreap-test \
       && echo "netreap-test ALL=(ALL) NOPASSWD: ALL" > /etc/sudoers.d/netreap-test \
       && chmod 0440 /etc/sudoers.d/netreap-test \
       && systemctl daemon-reload && systemctl enable --now nomad.service' >/dev/null 2>&1
record "prepare stand-ins in the container" $?

mkdir -p "$WORK/inventory/group_vars"
printf 'cilium_nodes:\n  hosts:\n    %s:\n' "$NAME" > "$WORK/inventory/hosts.yml"
cp "$HERE/group_vars.yml" "$WORK/inventory/group_vars/cilium_nodes.yml"
play() {  # play LOGNAME PLAYBOOK [ansible-playbook args...]
  local name=$1 book=$2; shift 2
  ansible-playbook -i "$WORK/inventory" "$book" "$@" > "$WORK/$name.log" 2>&1
}
recap_changed() { sed -n 's/.*changed=\([0-9]*\).*/\1/p' "$WORK/$1.log" | tail -n1; }
files_absent() {
  podman exec "$NAME" sh -c 'for f in /etc/modules-load.d/cilium.conf /etc/systemd/system/cilium-bpffs.service \
      /opt/cni/bin/cilium-cni /opt/cni/bin/bridge /opt/cni/config/cilium.conflist /etc/cilium \
      /etc/systemd/system/cilium-agent.service /var/lib/netreap-cilium; do [ ! -e "$f" ] || { echo "exists: $f"; exit 1; }; done
    ! grep -qE "\"(pull|create|cp|run)\"" /var/lib/netreap-fake-runtime/calls.log 2>/dev/null
    [ ! -e /var/lib/netreap-fake-modprobe ]
    [ "$(wc -l < /var/lib/netreap-fake-nomad.starts)" -eq 1 ]'
}

# --- 1. check mode on the fresh node ------------------------------------------------------------
log "check mode on the fresh node"
play check-fresh playbooks/provision.yml --check --diff
rc=$?; files_absent >> "$WORK/check-fresh.log" 2>&1; rc2=$?
record "check mode on a fresh node runs (rc=$rc) and changes nothing on it" $(( rc || rc2 ))

# --- 2. converge, 3. idempotence, 4. verify ------------------------------------------------------
log "converge"
play converge playbooks/provision.yml
rc=$?
record "converge (changed=$(recap_changed converge))" $rc
if grep -q 's3cr3t' "$WORK/converge.log"; then record "secrets stay out of the output" 1; else record "secrets stay out of the output" 0; fi
log "idempotence"
play idempotence playbooks/provision.yml
rc=$?; changed=$(recap_changed idempotence)
record "second converge changes nothing (changed=${changed:-?})" $(( rc || changed != 0 ))
log "verify"
play verify "$HERE/verify.yml"
record "verify: modules file, bpffs mounted, CNI files, agent active+healthy, flags, Nomad restarted once" $?

# --- 5. a changed setting restarts the agent ------------------------------------------------------
log "restart handler"
pid_before=$(podman exec "$NAME" systemctl show -p MainPID --value cilium-agent.service)
play restart playbooks/provision.yml -e '{"cilium_cluster_id": 7}'
rc=$?
pid_after=$(podman exec "$NAME" systemctl show -p MainPID --value cilium-agent.service)
flags=$(podman exec "$NAME" cat /var/lib/netreap-fake-runtime/cilium-agent.argv.json)
grep -q -- '--cluster-id=7' <<<"$flags"; has_flag=$?
grep -q 'Wait for the agent\|Ask the agent for its health' "$WORK/restart.log"; waited=$?
record "changed flag restarts the agent (pid $pid_before -> $pid_after), new flags, healthy again" \
  $(( rc || has_flag || waited || pid_before == pid_after ))
play verify-after-restart "$HERE/verify.yml"
record "verify after the restart" $?

# --- 6. node duties of reap.yml as an unprivileged user ---------------------------------------------
# The user reaches the node like reap.yml's SSH user does (no root); its sudo stands for the
# passwordless sudo the schedulers' users get on the nodes (docs/scheduling.md).
log "node duties as an unprivileged user"
mkdir -p "$WORK/duties"
printf 'cilium_nodes:\n  hosts:\n    %s:\n      ansible_connection: netreap_podman\n      ansible_user: netreap-test\n      ansible_python_interpreter: /usr/bin/python3\n      cilium_static_policy_dir: /etc/cilium/policies\n' \
  "$NAME" > "$WORK/duties/hosts.yml"
duties() {  # duties LOGNAME [ansible-playbook args...]
  local name=$1; shift
  ansible-playbook -i "$WORK/duties" playbooks/reap.yml "$@" > "$WORK/$name.log" 2>&1
}
podman exec "$NAME" sh -c 'rm -f /etc/cilium/policies/*'
duties duties-become
rc=$?
grep -q "policy revision [0-9]* (updated)" "$WORK/duties-become.log"; applied=$?
podman exec "$NAME" sh -c 'ls /etc/cilium/policies/ | grep -q .'; written=$?
record "node duties as netreap-test through become: policy applied, file written (rc=$rc)" $(( rc || applied || written ))
duties duties-no-become -e netreap_node_become=false
rc=$?
grep -qi "permission denied" "$WORK/duties-no-become.log"; denied=$?
record "node duties without become fail: permission denied on the agent socket (rc=$rc)" $(( rc == 0 || denied ))
play socket-group playbooks/provision.yml -e '{"agent_socket_group_members": ["netreap-test"]}'
rc=$?
podman exec "$NAME" id -nG netreap-test | grep -qw cilium; member=$?
duties duties-socket-group -e netreap_node_become=false
rc2=$?
record "agent_socket_group_members: netreap-test uses the socket without become (rc=$rc/$rc2)" $(( rc || member || rc2 ))

# --- 7. unhealthy agent -> failure with the agent's own message ----------------------------------
log "unhealthy agent"
play unhealthy "$HERE/converge-unhealthy.yml"
rc=$?
grep -q 'did not become healthy.*context deadline exceeded' "$WORK/unhealthy.log"; msg=$?
record "unhealthy kvstore fails the role with the agent's message (rc=$rc)" $(( rc == 0 || msg ))

[ "$failed" -eq 0 ] || log "logs: $WORK/*.log"
[ "$failed" -eq 0 ]
