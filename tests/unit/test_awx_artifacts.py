"""The AWX/AAP artifacts in extras/awx/: the custom credential type passes the checks AWX applies
when it is created (input and injector schema, every injector template renders against the
declared inputs only), the secrets are marked secret, the controller configuration ties its
objects together by name without a secret literal, and the execution environment definition
fits ansible-builder's version 3 schema."""

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

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AWX = os.path.join(ROOT, "extras", "awx")
NAME_RE = re.compile(r"^[a-zA-Z_]+[a-zA-Z0-9_]*$")
FILE_KEY_RE = re.compile(r"^template(\.[a-zA-Z_]+[a-zA-Z0-9_]*)?$")
FIELD_KEYS = {"id", "label", "type", "format", "choices", "help_text", "multiline", "secret", "ask_at_runtime",
              "default"}
SECRET_ID = re.compile(r"token|password|secret|private_key|passphrase", re.I)


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


def test_secret_inputs_are_marked_secret_and_all_inputs_are_injected(credential_type):
    fields = {f["id"]: f for f in credential_type["inputs"]["fields"]}
    for field_id, field in fields.items():
        assert bool(field.get("secret")) == bool(SECRET_ID.search(field_id)), field_id
    templates = " ".join(v for section in credential_type["injectors"].values() for v in section.values())
    for field_id in fields:
        assert re.search(r"\b%s\b" % field_id, templates), "input %s is never injected" % field_id


def test_injected_names_match_what_the_collection_reads(credential_type):
    """Env names are the ones the collection's clients and the inventory plugin read; extra
    variables carry a netreap_ prefix (they outrank every other variable, so they must not
    take a name a host or group already uses, like nomad_address)."""
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
        assert name.startswith("netreap_")
    # every secret also reaches the extra variables: env does not travel to the nodes
    extra = " ".join(credential_type["injectors"]["extra_vars"].values())
    for field in credential_type["inputs"]["fields"]:
        if field.get("secret"):
            assert field["id"] in extra


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
    lists Nomad clients, so the configuration adds the execution environment's own localhost."""
    inventories = _names(controller, "controller_inventories")
    hosts = {h["name"]: h for h in controller["controller_hosts"]}
    (group,) = [g for g in controller["controller_groups"] if g["name"] == "reaper"]
    assert group["inventory"] in inventories and group["hosts"]
    ee = load_yaml("execution-environment.yml")
    for name in group["hosts"]:
        assert hosts[name]["inventory"] == group["inventory"]
        assert hosts[name]["variables"]["ansible_connection"] == "local"
        assert hosts[name]["variables"]["ansible_python_interpreter"] == \
            ee["dependencies"]["python_interpreter"]["python_path"]


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
