"""The AWX/AAP artifacts in extras/awx/: the custom credential type passes the checks AWX applies
when it is created (input and injector schema, every injector template renders against the
declared inputs only; docs/upstream.md#ansible-awx-and-related-tools) and covers every connection
option of the modules, the secrets are marked secret, the controller configuration ties its
objects together by name without a secret literal, the playbook that applies it runs as written,
and the execution environment definition fits ansible-builder's version 3 schema."""

import copy
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from jinja2 import StrictUndefined, Undefined
from jinja2.exceptions import UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
AWX = os.path.join(ROOT, "extras", "awx")
NAME_RE = re.compile(r"^[a-zA-Z_]+[a-zA-Z0-9_]*$")
FILE_KEY_RE = re.compile(r"^template(\.[a-zA-Z_]+[a-zA-Z0-9_]*)?$")
FIELD_KEYS = {"id", "label", "type", "format", "choices", "help_text", "multiline", "secret", "ask_at_runtime",
              "default"}
SECRET_ID = re.compile(r"token|password|secret|private_key|passphrase|_key$", re.I)
# AWX refuses these names in a credential type's env injectors (awx/main/constants.py ENV_BLOCKLIST),
# and any name starting with ANSIBLE_.
ENV_BLOCKLIST = {"VIRTUAL_ENV", "PATH", "PYTHONPATH", "JOB_ID", "INVENTORY_ID", "INVENTORY_SOURCE_ID",
                 "INVENTORY_UPDATE_ID", "AD_HOC_COMMAND_ID", "REST_API_URL", "REST_API_TOKEN", "MAX_EVENT_RES",
                 "CALLBACK_QUEUE", "CALLBACK_CONNECTION", "CACHE", "JOB_CALLBACK_DEBUG", "INVENTORY_HOSTVARS",
                 "AWX_HOST", "PROJECT_REVISION", "SUPERVISOR_WEB_CONFIG_PATH"}


class _UnsafeLoader(yaml.SafeLoader):
    """Reads Ansible's !unsafe tag as the plain string."""


_UnsafeLoader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def load_json(name):
    with open(os.path.join(AWX, name)) as handle:
        return json.load(handle)


def load_yaml(*parts):
    with open(os.path.join(AWX, *parts)) as handle:
        return yaml.load(handle, Loader=_UnsafeLoader)


@pytest.fixture(scope="module")
def credential_type():
    return load_json("credential-type.json")


@pytest.fixture(scope="module")
def controller():
    return load_yaml("controller-config.yml")


# --- AWX's own checks of a custom credential type ------------------------------------------------

def check_credential_type(ctype):
    """What AWX validates when a credential type is created (CredentialTypeInputField and
    CredentialTypeInjectorField in awx/main/fields.py); raises AssertionError or UndefinedError."""
    assert ctype["kind"] in ("cloud", "net")  # the only kinds a custom type may have
    assert ctype["name"]
    inputs = ctype["inputs"]
    assert set(inputs) <= {"fields", "required"}
    ids = []
    for field in inputs["fields"]:
        assert set(field) <= FIELD_KEYS, field
        assert {"id", "label"} <= set(field)
        assert NAME_RE.match(field["id"]) and field["id"] != "tower"
        kind = field.get("type", "string")
        assert kind in ("string", "boolean")
        if kind != "string":
            assert not {"choices", "multiline", "format", "secret"} & set(field)
        if "default" in field:
            assert isinstance(field["default"], {"string": str, "boolean": bool}[kind])
        ids.append(field["id"])
    assert len(ids) == len(set(ids)), "field IDs must be unique"
    assert set(inputs.get("required", [])) <= set(ids)

    injectors = ctype["injectors"]
    assert set(injectors) <= {"file", "env", "extra_vars"}
    files = injectors.get("file", {})
    assert all(FILE_KEY_RE.match(key) for key in files)
    assert not ("template" in files and len(files) > 1), "multi-file syntax needed for several files"
    for name, value in injectors.get("env", {}).items():
        assert NAME_RE.match(name) and not name.startswith("ANSIBLE_"), name
        assert name not in ENV_BLOCKLIST, name
        assert all(ord(c) < 128 for c in value)
    assert all(NAME_RE.match(name) for name in injectors.get("extra_vars", {}))

    # Every template renders with only the declared inputs (and tower.filename.<file>) defined.
    class Files:
        pass

    namespace = {field_id: "EXAMPLE" for field_id in ids}
    tower = Files()
    tower.filename = Files()
    for key in files:
        if key == "template":
            tower.filename = "EXAMPLE_FILENAME"
        else:
            setattr(tower.filename, key.split(".", 1)[1], "EXAMPLE_FILENAME")
    namespace["tower"] = tower
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined)
    for section in ("file", "env", "extra_vars"):
        for template in injectors.get(section, {}).values():
            env.from_string(template).render(namespace)


def test_credential_type_passes_awx_validation(credential_type):
    check_credential_type(credential_type)


def test_the_checks_catch_an_undeclared_input(credential_type):
    broken = copy.deepcopy(credential_type)
    broken["injectors"]["env"]["VAULT_TOKEN"] = "{{ vault_token }}"
    with pytest.raises(UndefinedError):
        check_credential_type(broken)
    reserved = copy.deepcopy(credential_type)
    reserved["injectors"]["env"]["ANSIBLE_CONFIG"] = "{{ consul_address }}"
    with pytest.raises(AssertionError):
        check_credential_type(reserved)
    blocked = copy.deepcopy(credential_type)
    blocked["injectors"]["env"]["PATH"] = "{{ consul_address }}"
    with pytest.raises(AssertionError):
        check_credential_type(blocked)
    unknown_file = copy.deepcopy(credential_type)
    unknown_file["injectors"]["env"]["X_FILE"] = "{{ tower.filename.not_written }}"
    with pytest.raises(UndefinedError):
        check_credential_type(unknown_file)


def test_secret_inputs_are_marked_secret_and_all_inputs_are_injected(credential_type):
    fields = {f["id"]: f for f in credential_type["inputs"]["fields"]}
    for field_id, field in fields.items():
        assert bool(field.get("secret")) == bool(SECRET_ID.search(field_id)), field_id
    templates = " ".join(v for section in credential_type["injectors"].values() for v in section.values())
    for field_id in fields:
        assert re.search(r"\b%s\b" % field_id, templates), "input %s is never injected" % field_id


def test_injected_names_match_what_the_collection_reads(credential_type):
    """Env names are the ones the collection's clients and the inventory plugin read; extra
    variables are the playbooks' own connection variables (playbooks/vars/connections.yml), and
    never one a host sets for itself (they outrank every other variable: an extra variable
    nomad_address would replace every node's local agent)."""
    with open(os.path.join(ROOT, "playbooks", "vars", "connections.yml")) as handle:
        playbook_variables = {name for options in yaml.safe_load(handle).values() for name in options}
    sources = []
    for folder in ("plugins/module_utils", "plugins/inventory"):
        for name in os.listdir(os.path.join(ROOT, folder)):
            if name.endswith(".py"):
                with open(os.path.join(ROOT, folder, name)) as handle:
                    sources.append(handle.read())
    code = "\n".join(sources)
    for name in credential_type["injectors"]["env"]:
        assert '"%s"' % name in code, "%s is not read by netreap.cilium" % name
    for name in credential_type["injectors"]["extra_vars"]:
        assert name in playbook_variables
        assert name not in ("nomad_address", "cilium_socket", "cilium_static_policy_dir", "nomad_node_id")
    # every token and password also reaches the extra variables: env does not travel to the nodes
    # (PEM inputs become files in the execution environment, for the controller side only)
    extra = " ".join(credential_type["injectors"]["extra_vars"].values())
    for field in credential_type["inputs"]["fields"]:
        if field.get("secret") and not field.get("multiline"):
            assert field["id"] in extra


def _fragment_options(name):
    """Options of a doc fragment (plugins/doc_fragments/_<name>.py) -> the E(...) variables its text names."""
    with open(os.path.join(ROOT, "plugins", "doc_fragments", "_%s.py" % name)) as handle:
        text = handle.read()
    start = text.index('r"""') + 4  # DOCUMENTATION, the first of the fragment's strings
    doc = yaml.safe_load(text[start:text.index('"""', start)])
    return {option: set(re.findall(r"E\(([A-Z_]+)\)", " ".join(spec["description"])))
            for option, spec in doc["options"].items()}


# Connection options the credential leaves out on purpose, and why.
NOT_INJECTED = {
    "consul_token_file": "the token itself is an input",
    "consul_use_ssl": "the address carries the scheme",
    "consul_validate_certs": "verification stays on; give the CA instead",
    "consul_ca_path": "a directory cannot be a credential input; consul_ca_cert is the CA",
    "consul_datacenter": "a per-play choice, not a credential",
    "consul_timeout": "not a credential",
    "nomad_namespace": "the modules read every namespace the token may read",
    "nomad_validate_certs": "verification stays on; give the CA instead",
    "nomad_ca_path": "a directory cannot be a credential input; nomad_ca_cert is the CA",
    "nomad_timeout": "not a credential",
    "etcd_config": "a file on the node, written by the agent role",
    "etcd_validate_certs": "verification stays on; give the CA instead",
    "etcd_tls_server_name": "no environment variable; set etcd_tls_server_name as an extra variable",
    "etcd_timeout": "not a credential",
}


def test_every_connection_option_of_the_modules_is_covered(credential_type):
    """Each connection option of the modules is injected (through an environment variable the
    module reads), or left out for a stated reason."""
    env = credential_type["injectors"]["env"]
    for service in ("consul", "nomad", "etcd"):
        for option, variables in _fragment_options(service).items():
            if option in NOT_INJECTED:
                assert not variables & set(env), "%s is injected after all: drop it from NOT_INJECTED" % option
                continue
            assert variables & set(env), "%s (%s) is not injected" % (option, ", ".join(sorted(variables)) or "no env")


def test_tls_inputs_become_files_in_the_execution_environment(credential_type):
    """CA, client certificate and key of etcd, Consul and Nomad are written to files (AWX's
    multi-file injector) and the environment names them - only when the input is set, since an
    empty file is no certificate."""
    pem = [f["id"] for f in credential_type["inputs"]["fields"] if f.get("multiline")]
    assert sorted(pem) == sorted("%s_%s" % (s, k) for s in ("etcd", "consul", "nomad")
                                 for k in ("ca_cert", "client_cert", "client_key"))
    files = credential_type["injectors"]["file"]
    env = credential_type["injectors"]["env"]
    for field_id in pem:
        (file_key,) = [k for k, v in files.items() if v == "{{ %s }}" % field_id]
        (env_name,) = [k for k, v in env.items() if "tower.filename.%s " % file_key.split(".", 1)[1] in v]
        template = ImmutableSandboxedEnvironment(undefined=Undefined).from_string(env[env_name])
        tower = type("Tower", (), {"filename": type("F", (), {file_key.split(".", 1)[1]: "/runner/env/tmpX"})})
        assert template.render({field_id: "-----BEGIN CERTIFICATE-----", "tower": tower}) == "/runner/env/tmpX"
        assert template.render({"tower": tower}) == ""


def test_missing_optional_inputs_render_empty(credential_type):
    """At launch AWX renders with only the inputs the credential has (a non-strict namespace):
    an unset CA certificate must give an empty NOMAD_CACERT, which the clients ignore."""
    env = ImmutableSandboxedEnvironment(undefined=Undefined)
    rendered = {key: env.from_string(value).render({"nomad_address": "https://nomad:4646"})
                for key, value in credential_type["injectors"]["env"].items()}
    assert rendered["NOMAD_ADDR"] == "https://nomad:4646"
    assert rendered["NOMAD_CACERT"] == "" and rendered["NOMAD_TOKEN"] == ""


# --- controller configuration as code -------------------------------------------------------------

def test_controller_config_credential_type_is_the_json_one(controller, credential_type):
    (ctype,) = controller["controller_credential_types"]
    assert ctype == credential_type


def test_controller_config_injectors_are_kept_from_ansible_templating():
    with open(os.path.join(AWX, "controller-config.yml")) as handle:
        text = handle.read()
    block = text[text.index("  injectors:"):text.index("controller_execution_environments:")]
    values = [line for line in block.splitlines() if ": " in line and "{" in line]
    assert values and all(": !unsafe '" in line for line in values)


def _names(controller, key):
    return {item["name"] for item in controller[key]}


def test_controller_objects_reference_each_other_by_name(controller):
    ees = _names(controller, "controller_execution_environments")
    projects = _names(controller, "controller_projects")
    inventories = _names(controller, "controller_inventories")
    credentials = _names(controller, "controller_credentials")
    types = _names(controller, "controller_credential_types") | {"Machine"}
    templates = _names(controller, "controller_templates")
    for cred in controller["controller_credentials"]:
        assert cred["credential_type"] in types
    for project in controller["controller_projects"]:
        assert project["default_environment"] in ees
    for source in controller["controller_inventory_sources"]:
        assert source["inventory"] in inventories and source["source_project"] in projects
        assert source["credential"] in credentials and source["execution_environment"] in ees
        assert source["source_path"].endswith(("nomad.yml", "nomad.yaml"))  # the plugin's verify_file
        path = os.path.join(AWX, "project", source["source_path"])
        assert load_yaml("project", source["source_path"])["plugin"] == "netreap.cilium.nomad", path
    for template in controller["controller_templates"]:
        assert template["job_type"] == "run"
        assert template["project"] in projects and template["inventory"] in inventories
        assert template["execution_environment"] in ees
        assert set(template["credentials"]) <= credentials
        assert os.path.exists(os.path.join(AWX, "project", template["playbook"]))
        assert template["allow_simultaneous"] is False  # AWX's own overlap guard
        assert template["timeout"] > 0
    for schedule in controller["controller_schedules"]:
        assert schedule["unified_job_template"] in templates
        assert re.match(r"^DTSTART(;TZID=[\w/+-]+)?:\d{8}T\d{6}Z? RRULE:FREQ=(MINUTELY|HOURLY|DAILY)"
                        r"(;INTERVAL=\d+)?$", schedule["rrule"]), schedule["rrule"]


def test_the_inventory_has_the_controller_group(controller):
    """netreap.cilium.reap runs its once-per-run steps on group `reaper`; the inventory source only
    lists Nomad clients, so the configuration adds the execution environment's own localhost to
    every inventory a job template uses."""
    inventories = _names(controller, "controller_inventories")
    hosts = {(h["inventory"], h["name"]): h for h in controller["controller_hosts"]}
    groups = {g["inventory"]: g for g in controller["controller_groups"] if g["name"] == "reaper"}
    ee = load_yaml("execution-environment.yml")
    for template in controller["controller_templates"]:
        group = groups[template["inventory"]]
        assert group["inventory"] in inventories and group["hosts"]
        for name in group["hosts"]:
            variables = hosts[(group["inventory"], name)]["variables"]
            assert variables["ansible_connection"] == "local"
            assert variables["ansible_python_interpreter"] == ee["dependencies"]["python_interpreter"]["python_path"]


def test_the_heartbeat_does_not_wait_for_a_nomad_inventory_update(controller):
    """The every-minute heartbeat reaches no node: its inventory has no source that AWX would
    update (from the Nomad API) before each run, and it carries no SSH credential."""
    templates = {t["name"]: t for t in controller["controller_templates"]}
    heartbeat = templates["netreap.cilium heartbeat"]
    sourced = {s["inventory"] for s in controller["controller_inventory_sources"]}
    assert heartbeat["inventory"] not in sourced
    assert templates["netreap.cilium reap"]["inventory"] in sourced
    types = {c["name"]: c["credential_type"] for c in controller["controller_credentials"]}
    assert "Machine" not in {types[c] for c in heartbeat["credentials"]}


def test_heartbeat_job_runs_only_the_heartbeat_every_minute(controller):
    templates = {t["name"]: t for t in controller["controller_templates"]}
    heartbeat = templates["netreap.cilium heartbeat"]
    assert heartbeat["job_tags"] == "netreap_heartbeat" and heartbeat["timeout"] < 60
    assert "job_tags" not in templates["netreap.cilium reap"]
    schedules = {s["unified_job_template"]: s["rrule"] for s in controller["controller_schedules"]}
    assert schedules["netreap.cilium heartbeat"].endswith("FREQ=MINUTELY;INTERVAL=1")


def test_no_secret_literal_in_the_controller_config(controller, credential_type):
    secret_ids = {f["id"] for f in credential_type["inputs"]["fields"] if f.get("secret")}
    secret_ids |= {"ssh_key_data", "password", "become_password", "ssh_key_unlock"}
    for cred in controller["controller_credentials"]:
        for key, value in cred["inputs"].items():
            if key in secret_ids:
                assert re.match(r"^\{\{ vault_\w+( \| default\(''\))? \}\}$", value), "%s.%s" % (cred["name"], key)


def test_the_node_duties_get_their_rights(controller):
    """reap.yml runs the node duties with become (the agent's socket is 0660 root:cilium): the
    Machine credential of the reap template says how, and no template turns become off."""
    templates = {t["name"]: t for t in controller["controller_templates"]}
    credentials = {c["name"]: c for c in controller["controller_credentials"]}
    machine = [credentials[c] for c in templates["netreap.cilium reap"]["credentials"]
               if credentials[c]["credential_type"] == "Machine"]
    assert len(machine) == 1 and machine[0]["inputs"]["become_method"] == "sudo"
    for template in controller["controller_templates"]:
        assert "netreap_node_become" not in (template.get("extra_vars") or {})


def test_configure_playbook_runs_as_written(tmp_path):
    """configure-controller.yml (shown in docs/awx.md) loads controller-config.yml, takes the
    controller connection from CONTROLLER_* and hands both to the dispatch role of the collection
    requirements.yml pins - here a stand-in role that records what it receives."""
    with open(os.path.join(AWX, "configure-controller.yml")) as handle:
        playbook_text = handle.read()
    with open(os.path.join(ROOT, "docs", "awx.md")) as handle:
        assert playbook_text.split("\n- name:", 1)[1] in handle.read(), "docs/awx.md shows another playbook"
    (play,) = yaml.safe_load(playbook_text)
    assert "awx.awx" in play["collections"]
    (role,) = play["roles"]
    namespace, name, unused = role["role"].split(".")
    requirements = {c["name"]: c.get("version") for c in load_yaml("requirements.yml")["collections"]}
    assert "awx.awx" in requirements
    # the release whose dispatch applies controller_groups (docs/upstream.md#ansible-awx-and-related-tools)
    assert requirements["%s.%s" % (namespace, name)] == "2.11.0"

    seen = tmp_path / "seen.json"
    role_dir = tmp_path / "ansible_collections" / namespace / name / "roles" / "dispatch" / "tasks"
    role_dir.mkdir(parents=True)
    (role_dir.parent.parent.parent / "galaxy.yml").write_text(
        "namespace: %s\nname: %s\nversion: 2.11.0\nauthors: [test]\nreadme: README.md\n" % (namespace, name))
    (role_dir / "main.yml").write_text(yaml.safe_dump([{"name": "Record", "ansible.builtin.copy": {
        "dest": str(seen), "mode": "0600",
        "content": "{{ {'host': controller_hostname, 'user': controller_username, 'password': controller_password,"
                   " 'groups': controller_groups, 'templates': controller_templates | map(attribute='name') | list}"
                   " | to_json }}"}}]))
    secrets = {"vault_netreap_consul_token": "c", "vault_netreap_nomad_token": "n",
               "vault_netreap_etcd_password": "e", "vault_netreap_ssh_private_key": "k"}
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
               ANSIBLE_COLLECTIONS_PATH=str(tmp_path), CONTROLLER_HOST="https://awx.example.com",
               CONTROLLER_USERNAME="admin", CONTROLLER_PASSWORD="pw")
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
                           os.path.join(AWX, "configure-controller.yml"), "-e", json.dumps(secrets),
                           "-e", "ansible_python_interpreter=" + sys.executable],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(seen.read_text())
    assert (got["host"], got["user"], got["password"]) == ("https://awx.example.com", "admin", "pw")
    assert {g["inventory"] for g in got["groups"] if g["name"] == "reaper"} >= {"Nomad clients (netreap)"}
    assert "netreap.cilium heartbeat" in got["templates"]


def test_project_playbook_runs_the_collection_playbook():
    (play,) = load_yaml("project", "reap.yml")
    assert play["ansible.builtin.import_playbook"] == "netreap.cilium.reap"


# --- ansible-builder -------------------------------------------------------------------------------

EE_TOP = {"version", "build_arg_defaults", "dependencies", "images", "additional_build_steps",
          "additional_build_files", "options"}
EE_DEPENDENCIES = {"python", "galaxy", "system", "python_interpreter", "ansible_core", "ansible_runner"}
EE_STEPS = {"%s_%s" % (when, stage) for when in ("prepend", "append") for stage in ("base", "galaxy", "builder", "final")}
EE_OPTIONS = {"relax_passwd_permissions", "skip_ansible_check", "workdir", "package_manager_path", "user",
              "container_init"}


def test_execution_environment_fits_builder_schema_v3():
    ee = load_yaml("execution-environment.yml")
    assert ee["version"] == 3
    assert set(ee) <= EE_TOP
    deps = ee["dependencies"]
    assert set(deps) <= EE_DEPENDENCIES
    assert set(deps["python_interpreter"]) <= {"package_system", "python_path"}
    assert deps["python_interpreter"]["python_path"].startswith("/")
    assert set(deps["ansible_core"]) == {"package_pip"} and set(deps["ansible_runner"]) == {"package_pip"}
    assert re.match(r"^ansible-core\b", deps["ansible_core"]["package_pip"])
    assert isinstance(deps["system"], list) and all(isinstance(s, str) for s in deps["system"])
    assert set(ee["images"]) == {"base_image"} and ee["images"]["base_image"]["name"]
    assert set(ee["additional_build_steps"]) <= EE_STEPS
    assert set(ee.get("options", {})) <= EE_OPTIONS


def test_execution_environment_carries_the_collection_and_a_supported_python():
    ee = load_yaml("execution-environment.yml")
    with open(os.path.join(ROOT, "galaxy.yml")) as handle:
        galaxy = yaml.safe_load(handle)
    collections = ee["dependencies"]["galaxy"]["collections"]
    sources = {c["name"] for c in collections}
    assert sources & {"%s.%s" % (galaxy["namespace"], galaxy["name"]), galaxy["repository"] + ".git",
                      galaxy["repository"]}
    # ansible-core 2.17+ (meta/runtime.yml) runs on Python 3.10 or newer only
    version = re.search(r"python(\d+)\.(\d+)", ee["dependencies"]["python_interpreter"]["python_path"])
    assert version and (int(version.group(1)), int(version.group(2))) >= (3, 10)
    with open(os.path.join(ROOT, "meta", "runtime.yml")) as handle:
        requires = yaml.safe_load(handle)["requires_ansible"]
    assert re.search(r">=\s*2\.17", requires) and ">=2.17" in ee["dependencies"]["ansible_core"]["package_pip"]
    (project_reqs,) = [load_yaml("project", "collections", "requirements.yml")]
    assert {c["name"] for c in project_reqs["collections"]} == sources


def test_ansible_keeps_the_injectors_raw_and_renders_the_vault_references(tmp_path):
    """What infra.aap_configuration / awx.awx get when Ansible loads controller-config.yml."""
    out = tmp_path / "seen.json"
    play = [{"name": "Load the controller configuration", "hosts": "localhost", "gather_facts": False,
             "vars_files": [os.path.join(AWX, "controller-config.yml")],
             "tasks": [{"name": "Write what the modules would receive", "ansible.builtin.copy": {
                 "dest": str(out), "mode": "0600",
                 "content": "{{ {'injectors': controller_credential_types[0].injectors,"
                            " 'credentials': controller_credentials} | to_json }}"}}]}]
    book = tmp_path / "play.yml"
    book.write_text(yaml.safe_dump(play))
    secrets = {"vault_netreap_consul_token": "c-tok", "vault_netreap_nomad_token": "n-tok",
               "vault_netreap_etcd_password": "e-pw", "vault_netreap_ssh_private_key": "KEY"}
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), str(book),
                           "-e", json.dumps(secrets), "-e", "ansible_python_interpreter=" + sys.executable],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = json.loads(out.read_text())
    assert seen["injectors"] == load_json("credential-type.json")["injectors"]  # not rendered by Ansible
    cluster = [c for c in seen["credentials"] if c["name"] == "netreap cluster"][0]["inputs"]
    assert (cluster["consul_token"], cluster["nomad_token"], cluster["etcd_password"]) == ("c-tok", "n-tok", "e-pw")
    assert cluster["nomad_ca_cert"] == ""
