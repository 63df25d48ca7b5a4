"""The reaper role (systemd timers that run netreap.cilium.reap) on this host, under a temporary
prefix with the service switch off (no systemd as PID 1 here):

* check mode on a fresh host writes nothing; a converge writes the units, the 0600 environment
  file and the extra variables; a second converge changes nothing; tokens stay out of the units
  and the output;
* the units pass ``systemd-analyze verify`` and a bad value is refused before it is written;
* the rendered ExecStart really guards against overlap: with the lock held a run exits 75
  without starting ansible-playbook, the heartbeat has its own lock, and processes a run leaves
  behind (ssh ControlPersist) do not keep the lock;
* switching the heartbeat off removes its units; preflight names a bad schedule.
"""

import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.support.roles import SECRETS, ansible_env, converge, make_stub, role_vars

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
FLOCK = shutil.which("flock")


def recap_changed(out):
    line = [x for x in out.splitlines() if "changed=" in x][-1]
    return int(line.split("changed=")[1].split()[0])


def exec_start(unit_text):
    """ExecStart of a rendered unit as an argv (systemd quoting: "..." words, %% and $$)."""
    joined = unit_text.replace("\\\n", " ")
    line = [x for x in joined.splitlines() if x.startswith("ExecStart=")][0][len("ExecStart="):]
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line)]


@pytest.fixture(scope="module")
def converged(tmp_path_factory):
    work = tmp_path_factory.mktemp("reaper")
    root = work / "root"
    make_stub(root)
    variables = role_vars(root)
    check_rc, check_out = converge(work, variables, "--check", "--diff")
    assert check_rc == 0, check_out
    written_in_check = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert sorted(p.name for p in (root / "etc").iterdir()) == ["systemd"], check_out
    rc, out = converge(work, variables)
    assert rc == 0, out
    rc2, out2 = converge(work, variables)
    assert rc2 == 0, out2
    return {"work": work, "root": root, "variables": variables, "check_out": check_out,
            "written_in_check": written_in_check, "out": out, "out2": out2}


def unit(root, name):
    return (root / "etc/systemd/system" / name).read_text()


# --- specs and docs ------------------------------------------------------------------------------

def test_argument_specs_mirror_defaults():
    base = os.path.join(ROOT, "roles", "reaper")
    with open(os.path.join(base, "defaults", "main.yml")) as handle:
        defaults = yaml.safe_load(handle)
    with open(os.path.join(base, "meta", "argument_specs.yml")) as handle:
        options = yaml.safe_load(handle)["argument_specs"]["main"]["options"]
    assert sorted(options) == sorted(defaults)
    for name, value in defaults.items():
        assert options[name].get("default") == value, name
        assert name.startswith("reaper_") and options[name].get("description"), name


def test_ansible_doc_renders_role():
    proc = subprocess.run([os.path.join(BIN, "ansible-doc"), "-t", "role", "netreap.cilium.reaper"],
                          capture_output=True, text=True, env=ansible_env(), timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "reaper_heartbeat_on_calendar" in proc.stdout and "flock" in proc.stdout


# --- converge ------------------------------------------------------------------------------------

def test_check_mode_on_a_fresh_host_writes_nothing(converged):
    assert converged["written_in_check"] == ["opt/netreap/bin/ansible-playbook"]
    assert "changed=" in converged["check_out"]
    for secret in SECRETS.values():
        assert secret not in converged["check_out"]


def test_converge_writes_units_env_file_and_vars(converged):
    root = converged["root"]
    env_file = root / "etc/netreap/reaper.env"
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    lines = env_file.read_text().splitlines()
    assert 'NOMAD_TOKEN="nomad-7d1e-secret"' in lines
    assert 'CONSUL_HTTP_TOKEN="consul\\"4b2f\\\\secret"' in lines  # systemd EnvironmentFile quoting
    assert 'ETCDCTL_PASSWORD="etcd-9a0c-secret"' in lines
    extra = root / "etc/netreap/reaper-vars.json"
    assert json.loads(extra.read_text()) == {"netreap_node_gc_min_age": 3600}
    assert oct(extra.stat().st_mode & 0o777) == "0o600"
    inventory = yaml.safe_load((root / "etc/netreap/inventory/netreap.nomad.yml").read_text())
    assert inventory == {"plugin": "netreap.cilium.nomad", "nomad_address": "https://nomad.service.consul:4646"}
    # the controller group the playbook's once-per-run steps target; the interpreter stays a template
    controller = yaml.safe_load((root / "etc/netreap/inventory/reaper-controller.yml").read_text())
    assert controller == {"reaper": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}}}}

    reap = unit(root, "netreap-reaper.service")
    assert "Type=oneshot" in reap and "SuccessExitStatus=75" in reap and "TimeoutStartSec=1800" in reap
    assert "EnvironmentFile=%s" % env_file in reap
    assert 'Environment="ODD=50%% $HOME"' in reap  # % doubled, $ kept (not expanded in Environment=)
    assert "SyslogIdentifier=netreap-reaper" in reap and "StandardOutput=journal" in reap
    # Nomad down or a refused token fails the run instead of a run without hosts that "succeeds".
    assert 'Environment="ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED=1"' in reap
    timer = unit(root, "netreap-reaper.timer")
    assert "OnCalendar=*:0/10" in timer and "RandomizedDelaySec=60" in timer and "Persistent=true" in timer
    heartbeat_timer = unit(root, "netreap-heartbeat.timer")
    assert "OnCalendar=*:*:00" in heartbeat_timer and "Unit=netreap-heartbeat.service" in heartbeat_timer
    heartbeat_argv = exec_start(unit(root, "netreap-heartbeat.service"))
    assert heartbeat_argv[-3:] == ["--tags", "netreap_heartbeat", "netreap.cilium.reap"]
    for text in (reap, timer, unit(root, "netreap-heartbeat.service"), converged["out"], converged["out2"]):
        for secret in SECRETS.values():
            assert secret not in text


def test_second_converge_changes_nothing(converged):
    assert recap_changed(converged["out"]) > 0
    assert recap_changed(converged["out2"]) == 0, converged["out2"]


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
def test_units_pass_systemd_analyze_verify(converged):
    units = [str(converged["root"] / "etc/systemd/system" / name) for name in (
        "netreap-reaper.service", "netreap-reaper.timer", "netreap-heartbeat.service", "netreap-heartbeat.timer")]
    proc = subprocess.run([SYSTEMD_ANALYZE, "verify"] + units, capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and (proc.stdout + proc.stderr).strip() == "", proc.stdout + proc.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
def test_a_unit_systemd_cannot_read_is_not_written(tmp_path):
    root = tmp_path / "root"
    make_stub(root)
    rc, out = converge(tmp_path, role_vars(root, reaper_randomized_delay_sec="5 fortnights"))
    assert rc != 0
    assert "failed to validate" in out and "Failed to parse sec value" in out
    assert not (root / "etc/systemd/system/netreap-reaper.timer").exists()


# --- the overlap guard, run for real --------------------------------------------------------------

@pytest.mark.skipif(FLOCK is None, reason="flock not installed")
@pytest.mark.parametrize("held", ["reap.lock", None])
def test_exec_start_skips_a_run_while_the_lock_is_held(converged, tmp_path, held):
    root = converged["root"]
    argv = exec_start(unit(root, "netreap-reaper.service"))
    record = tmp_path / "argv"
    env = dict(os.environ, STUB_RECORD=str(record))
    lock_path = root / "var/lib/netreap/reap.lock"
    holder = open(str(lock_path), "a") if held else None
    try:
        if holder:
            fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)
        heartbeat = subprocess.run(exec_start(unit(root, "netreap-heartbeat.service")), capture_output=True,
                                   text=True, env=dict(env, STUB_RECORD=str(tmp_path / "hb")), timeout=60,
                                   check=False)
    finally:
        if holder:
            holder.close()
        for child in tmp_path.glob("*.child"):
            try:
                os.kill(int(child.read_text()), 9)
            except (ValueError, ProcessLookupError):
                pass
    # The heartbeat has its own lock: a reap that runs long never delays it.
    assert heartbeat.returncode == 0, heartbeat.stderr
    assert (tmp_path / "hb").read_text().splitlines()[-3:] == ["--tags", "netreap_heartbeat", "netreap.cilium.reap"]
    if held:
        assert proc.returncode == 75  # SuccessExitStatus: a skipped run is not a failed unit
        assert "failed to get lock" in proc.stderr
        assert not record.exists()  # ansible-playbook never started
        return
    assert proc.returncode == 0, proc.stderr
    assert record.read_text().splitlines() == [
        "--inventory=%s" % (root / "etc/netreap/inventory"),
        "--extra-vars=@%s" % (root / "etc/netreap/reaper-vars.json"),
        "netreap.cilium.reap"]


@pytest.mark.skipif(FLOCK is None, reason="flock not installed")
def test_processes_left_behind_do_not_keep_the_lock(converged, tmp_path):
    root = converged["root"]
    env = dict(os.environ, STUB_RECORD=str(tmp_path / "argv"))
    proc = subprocess.run(exec_start(unit(root, "netreap-reaper.service")), capture_output=True, text=True,
                          env=env, timeout=60, check=False)
    child = int((tmp_path / "argv.child").read_text())
    try:
        assert proc.returncode == 0, proc.stderr
        os.kill(child, 0)  # the stand-in's background child is still running...
        with open(str(root / "var/lib/netreap/reap.lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ...yet the lock is free (flock --close)
    finally:
        os.kill(child, 9)


# --- switches and preflight -----------------------------------------------------------------------

def test_switching_heartbeat_extra_vars_and_controller_group_off_removes_their_files(tmp_path):
    root = tmp_path / "root"
    make_stub(root)
    # What an earlier converge with the heartbeat and extra variables left.
    for name in ("netreap-heartbeat.service", "netreap-heartbeat.timer"):
        (root / "etc/systemd/system" / name).write_text("[Unit]\n")
    (root / "etc/netreap").mkdir(parents=True)
    (root / "etc/netreap/reaper-vars.json").write_text("{}")
    (root / "etc/netreap/inventory").mkdir()
    (root / "etc/netreap/inventory/reaper-controller.yml").write_text("reaper: {}\n")
    rc, out = converge(tmp_path, role_vars(root, reaper_heartbeat_enabled=False, reaper_extra_vars={},
                                           reaper_controller_group=""))
    assert rc == 0, out
    names = sorted(p.name for p in (root / "etc/systemd/system").iterdir())
    assert names == ["netreap-reaper.service", "netreap-reaper.timer"]
    assert not (root / "etc/netreap/reaper-vars.json").exists()
    assert not (root / "etc/netreap/inventory/reaper-controller.yml").exists()
    assert not any(w.startswith("--extra-vars") for w in exec_start(unit(root, "netreap-reaper.service")))


def test_preflight_names_a_bad_schedule(tmp_path):
    root = tmp_path / "root"
    make_stub(root)
    rc, out = converge(tmp_path, role_vars(root, reaper_on_calendar="every other tuesday"), "--check")
    assert rc != 0
    assert "OnCalendar=every other tuesday is not a valid systemd calendar event" in out
    assert not (root / "etc/netreap").exists()


def test_preflight_wants_ansible_playbook_when_it_manages_the_timers(tmp_path):
    rc, out = converge(tmp_path, role_vars(tmp_path / "root", reaper_service_manage=True), "--check")
    assert rc != 0
    assert "opt/netreap/bin/ansible-playbook is missing or not executable" in out
