"""The Nomad periodic job specs in extras/nomad/: what `nomad job validate` would check that we
can check here (job type, periodic spec, task groups and tasks, driver config), the rules of
this project (no overlap, secrets only from Nomad Variables into the secrets directory, the
implicit variable path of the job, secret files owned by the image's user, the same settings as
the AWX credential), and that the HCL and its JSON form agree - with NOMAD_BIN set, as Nomad's own
parser reads the HCL (`nomad job run -output`, no agent needed)."""

import json
import os
import re
import subprocess
import textwrap
import zoneinfo

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
NOMAD_DIR = os.path.join(ROOT, "extras", "nomad")
JOBS = ["netreap-reaper", "netreap-heartbeat"]
NOMAD_BIN = os.environ.get("NOMAD_BIN")
# Names a template line exports: "NAME=..." at the start of the line or right after "{{ with .x }}".
EXPORT = re.compile(r"(?:^|\}\})([A-Z][A-Z0-9_]*)=", re.M)
# Keys of the Nomad Variable a template reads: {{ .key }} or {{ with .key }}.
VAR_KEY = re.compile(r"\{\{-?\s*(?:with\s+)?\.([a-z][a-z0-9_]*)\s*-?\}\}")
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|PRIVATE", re.I)
SECRET_VALUE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\bhvs\.|\bs\.[A-Za-z0-9]{20}|"
                          r"BEGIN [A-Z ]*PRIVATE KEY")


# --- a small HCL reader: blocks, attributes, strings, heredocs, numbers, bools, lists ----------

class HclError(ValueError):
    pass


_TOKEN = re.compile(r'''
    (?P<ws>\s+|\#[^\n]*|//[^\n]*)
  | (?P<heredoc><<-?(?P<tag>[A-Z]+)\n(?P<body>.*?)\n[ \t]*(?P=tag)(?=\n))
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_-]*)
  | (?P<punct>[{}\[\]=,])
''', re.S | re.X)


def _tokens(text):
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise HclError("cannot read HCL at %r" % text[pos:pos + 30])
        pos = match.end()
        kind = match.lastgroup
        if kind == "ws":
            continue
        if kind == "heredoc" or match.group("heredoc"):
            body = match.group("body") + "\n"
            yield "value", textwrap.dedent(body) if match.group("heredoc").startswith("<<-") else body
        elif kind == "string":
            yield "value", json.loads(match.group("string"))
        elif kind == "number":
            yield "value", float(match.group("number")) if "." in match.group("number") else int(match.group("number"))
        elif kind == "ident":
            word = match.group("ident")
            yield ("value", word == "true") if word in ("true", "false") else ("ident", word)
        else:
            yield "punct", match.group("punct")


def parse_hcl(text):
    """{"attrs": {...}, "blocks": [(type, labels, body), ...]} for a body, recursively."""
    tokens = list(_tokens(text))
    pos = 0

    def value():
        nonlocal pos
        kind, tok = tokens[pos]
        pos += 1
        if kind == "value":
            return tok
        if (kind, tok) == ("punct", "["):
            items = []
            while tokens[pos] != ("punct", "]"):
                items.append(value())
                if tokens[pos] == ("punct", ","):
                    pos += 1
            pos += 1
            return items
        raise HclError("unexpected %r" % (tok,))

    def body(closing):
        nonlocal pos
        node = {"attrs": {}, "blocks": []}
        while pos < len(tokens) and tokens[pos] != ("punct", "}"):
            kind, name = tokens[pos]
            if kind != "ident":
                raise HclError("expected a name, got %r" % (name,))
            pos += 1
            if tokens[pos] == ("punct", "="):
                pos += 1
                if name in node["attrs"]:
                    raise HclError("attribute %s set twice" % name)
                node["attrs"][name] = value()
                continue
            labels = []
            while tokens[pos][0] == "value":
                labels.append(tokens[pos][1])
                pos += 1
            if tokens[pos] != ("punct", "{"):
                raise HclError("expected { after block %s" % name)
            pos += 1
            node["blocks"].append((name, labels, body(True)))
            pos += 1
        if closing and pos >= len(tokens):
            raise HclError("unclosed block")
        return node

    tree = body(False)
    if pos != len(tokens):
        raise HclError("unbalanced }")
    return tree


def blocks(node, kind):
    return [(labels, child) for name, labels, child in node["blocks"] if name == kind]


def one(node, kind):
    found = blocks(node, kind)
    assert len(found) == 1, "expected one %s block, found %d" % (kind, len(found))
    return found[0][1]


# --- cron (github.com/hashicorp/cronexpr, as Nomad uses it) -------------------------------------

_CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
_NAMES = {3: "jan feb mar apr may jun jul aug sep oct nov dec".split(), 4: "sun mon tue wed thu fri sat".split()}


def cron_field_ok(field, index):
    low, high = _CRON_RANGES[index]
    for part in field.split(","):
        base, _sep, step = part.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            return False
        if base in ("*", "?"):
            continue
        bounds = base.split("-")
        if len(bounds) > 2:
            return False
        values = []
        for bound in bounds:
            if bound.isdigit():
                values.append(int(bound))
            elif bound.lower() in _NAMES.get(index, []):
                values.append(_NAMES[index].index(bound.lower()) + (1 if index == 3 else 0))
            else:
                return False
        if not all(low <= v <= high for v in values) or values != sorted(values):
            return False
    return True


def cron_ok(spec):
    """5 fields (minute..weekday), or 6 with seconds first; or a @-macro."""
    if spec in ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@hourly"):
        return True
    fields = spec.split()
    if len(fields) == 6:
        if not cron_field_ok(fields[0], 0):  # seconds share the 0-59 range of minutes
            return False
        fields = fields[1:]
    return len(fields) == 5 and all(cron_field_ok(f, i) for i, f in enumerate(fields))


def test_cron_checker_accepts_and_refuses():
    for good in ("*/10 * * * *", "* * * * *", "0 */2 * * mon-fri", "30 */10 * * * *", "@hourly", "5,35 1-3 * jan *"):
        assert cron_ok(good), good
    for bad in ("*/10 * * *", "61 * * * *", "* * * * * * * *", "*/0 * * * *", "every 10 minutes", "5-1 * * * *"):
        assert not cron_ok(bad), bad


# --- the job files -------------------------------------------------------------------------------

def load(name):
    with open(os.path.join(NOMAD_DIR, name + ".nomad.json")) as handle:
        data = json.load(handle)
    with open(os.path.join(NOMAD_DIR, name + ".nomad.hcl")) as handle:
        hcl = parse_hcl(handle.read())
    return data, hcl


def all_strings(value):
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from all_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from all_strings(item)
    elif isinstance(value, str):
        yield value


@pytest.mark.parametrize("name", JOBS)
def test_json_job_is_a_valid_periodic_batch_job(name):
    data, unused = load(name)
    assert list(data) == ["Job"]
    job = data["Job"]
    assert job["ID"] == job["Name"] == name
    assert re.match(r"^[a-zA-Z0-9-]{1,128}$", job["ID"])
    assert job["Type"] == "batch"  # periodic jobs must be batch (or sysbatch)
    assert job["Datacenters"]
    periodic = job["Periodic"]
    assert periodic["ProhibitOverlap"] is True
    assert periodic.get("Enabled", True) is True and periodic["SpecType"] == "cron"
    specs = periodic.get("Specs") or []
    assert bool(specs) != bool(periodic.get("Spec")), "Spec and Specs are mutually exclusive; one is required"
    for spec in specs + ([periodic["Spec"]] if periodic.get("Spec") else []):
        assert cron_ok(spec), spec
    zoneinfo.ZoneInfo(periodic.get("TimeZone") or "UTC")

    groups = job["TaskGroups"]
    assert groups and len({g["Name"] for g in groups}) == len(groups)
    for group in groups:
        assert group["Count"] >= 1
        assert group["RestartPolicy"]["Attempts"] == 0 and group["RestartPolicy"]["Mode"] == "fail"
        assert group["ReschedulePolicy"]["Attempts"] == 0 and group["ReschedulePolicy"]["Unlimited"] is False
        tasks = group["Tasks"]
        assert tasks and len({t["Name"] for t in tasks}) == len(tasks)
        for task in tasks:
            assert task["Driver"] == "docker"
            config = task["Config"]
            assert re.match(r"^[\w.-]+(:\d+)?(/[\w.-]+)+:[\w.-]+$", config["image"]), "image needs a registry path and tag"
            assert config["command"] == "ansible-playbook"
            assert isinstance(config["args"], list) and config["args"][-1] == "netreap.cilium.reap"
            assert task["Resources"]["CPU"] > 0 and task["Resources"]["MemoryMB"] > 0
            assert all(isinstance(v, str) for v in task["Env"].values())
            destinations = [t["DestPath"] for t in task["Templates"]]
            assert len(set(destinations)) == len(destinations)
            assert all(not os.path.isabs(d) and ".." not in d.split("/") for d in destinations)


@pytest.mark.parametrize("name", JOBS)
def test_secrets_only_come_from_the_jobs_nomad_variables(name):
    data, unused = load(name)
    job = data["Job"]
    for string in all_strings(data):
        assert not SECRET_VALUE.search(string), "secret-looking literal: %r" % string
    for group in job["TaskGroups"]:
        for task in group["Tasks"]:
            # a secret-named variable may only point at a file in the secrets directory
            for key, val in task["Env"].items():
                assert not SECRET_NAME.search(key) or val.startswith("/secrets/"), "%s set in env {}" % key
            secret_templates = [t for t in task["Templates"] if "nomadVar" in t["EmbeddedTmpl"]]
            assert secret_templates
            for template in secret_templates:
                assert template["DestPath"].startswith("secrets/")
                # tasks read nomad/jobs/<job ID> without an ACL policy; any other path needs one
                paths = set(re.findall(r'nomadVar "([^"]+)"', template["EmbeddedTmpl"]))
                assert paths == {"nomad/jobs/" + job["ID"]}
            env_file = [t for t in secret_templates if t.get("Envvars")]
            assert len(env_file) == 1
            exported = EXPORT.findall(env_file[0]["EmbeddedTmpl"])
            assert {"CONSUL_HTTP_TOKEN", "NOMAD_TOKEN", "ETCDCTL_PASSWORD"} <= set(exported)
            if job["ID"] == "netreap-reaper":  # the heartbeat reaches no node
                key = [t for t in secret_templates if t["DestPath"] == "secrets/id_ed25519"]
                assert key and key[0]["Perms"] == "0600"
                assert task["Env"]["ANSIBLE_PRIVATE_KEY_FILE"] == "/secrets/id_ed25519"


def ee_user():
    with open(os.path.join(ROOT, "extras", "awx", "execution-environment.yml")) as handle:
        return int(yaml.safe_load(handle)["options"]["user"])


@pytest.mark.parametrize("name", JOBS)
def test_secret_files_belong_to_the_container_user(name):
    """Nomad renders templates as root; the image runs as its own user (UID 1000), and ssh refuses
    a key it cannot read. Every file in secrets/ is the image user's, mode 0600."""
    job = load(name)[0]["Job"]
    task = job["TaskGroups"][0]["Tasks"][0]
    secret_files = [t for t in task["Templates"] if t["DestPath"].startswith("secrets/")]
    assert secret_files
    for template in secret_files:
        assert (template.get("Uid"), template.get("Gid")) == (ee_user(), ee_user()), template["DestPath"]
        assert template["Perms"] == "0600", template["DestPath"]


def _credential_type():
    with open(os.path.join(ROOT, "extras", "awx", "credential-type.json")) as handle:
        return json.load(handle)


@pytest.mark.parametrize("name", JOBS)
def test_connection_settings_come_from_nomad_variables_like_the_awx_credential(name):
    """The same settings as the other schedulers: the job exports exactly the environment the AWX
    credential injects (etcd endpoints, user, password, TLS files; Consul and Nomad addresses,
    tokens, TLS files), from Nomad Variable keys named like the credential's inputs; each TLS
    variable names a file that a template renders from the key of the same input."""
    task = load(name)[0]["Job"]["TaskGroups"][0]["Tasks"][0]
    templates = {t["DestPath"]: t for t in task["Templates"]}
    env_template = templates["secrets/netreap.env"]["EmbeddedTmpl"]
    credential = _credential_type()
    exported = EXPORT.findall(env_template)
    assert len(exported) == len(set(exported))
    assert set(exported) == set(credential["injectors"]["env"])
    inputs = {field["id"] for field in credential["inputs"]["fields"]}
    keys_used = set()
    for template in templates.values():
        keys_used |= set(VAR_KEY.findall(template["EmbeddedTmpl"]))
    assert inputs <= keys_used
    assert keys_used - inputs <= ({"ssh_private_key", "ssh_known_hosts"} if name == "netreap-reaper" else set())
    for line in env_template.splitlines():
        match = re.search(r"\{\{ with \.(\w+) \}\}([A-Z_]+)=/secrets/([\w.-]+)\{\{ end \}\}", line)
        if match:
            key, unused_env, filename = match.groups()
            assert ".%s }}" % key in templates["secrets/" + filename]["EmbeddedTmpl"]
    assert {"ETCDCTL_ENDPOINTS", "ETCDCTL_USER", "ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY"} <= set(exported)
    assert "127.0.0.1" not in env_template


def test_the_reap_reaches_the_nodes_with_become():
    """The node duties use become on the nodes (reap.yml): the job names the SSH user, says it
    needs passwordless sudo, and does not turn become off."""
    with open(os.path.join(NOMAD_DIR, "netreap-reaper.nomad.hcl")) as handle:
        text = handle.read()
    task = load("netreap-reaper")[0]["Job"]["TaskGroups"][0]["Tasks"][0]
    assert task["Env"]["ANSIBLE_REMOTE_USER"] == "netreap"
    assert "passwordless" in text and "sudo" in text
    assert not any(key.startswith("ANSIBLE_BECOME") for key in task["Env"])
    assert not any("netreap_node_become" in arg for arg in task["Config"]["args"])


@pytest.mark.parametrize("name", JOBS)
def test_the_documented_nomad_var_put_uses_keys_the_job_reads(name):
    with open(os.path.join(NOMAD_DIR, name + ".nomad.hcl")) as handle:
        text = handle.read()
    task = load(name)[0]["Job"]["TaskGroups"][0]["Tasks"][0]
    read = set()
    for template in task["Templates"]:
        read |= set(VAR_KEY.findall(template["EmbeddedTmpl"]))
    header = text[:text.index('\njob "')]
    command = header[header.index("nomad var put"):header.index("nomad job run")]
    assert "nomad/jobs/%s " % name in command
    put = set(re.findall(r"\b([a-z][a-z0-9_]*)=", command))
    assert put and put <= read, put - read


@pytest.mark.skipif(not NOMAD_BIN, reason="NOMAD_BIN not set (a Nomad binary parses the HCL)")
@pytest.mark.parametrize("name", JOBS)
def test_nomad_parses_the_hcl_into_the_json_form(name):
    """Nomad's own parser (no agent needed) reads the HCL into exactly the API payload of the
    .nomad.json file, and `nomad fmt` has nothing to change."""
    hcl = os.path.join(NOMAD_DIR, name + ".nomad.hcl")
    proc = subprocess.run([NOMAD_BIN, "job", "run", "-output", hcl], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr

    def strip(value):
        if isinstance(value, dict):
            return {key: strip(item) for key, item in value.items() if item is not None}
        if isinstance(value, list):
            return [strip(item) for item in value]
        return value

    assert strip(json.loads(proc.stdout)) == load(name)[0]
    json_file = os.path.join(NOMAD_DIR, name + ".nomad.json")
    proc = subprocess.run([NOMAD_BIN, "job", "run", "-json", "-output", json_file], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([NOMAD_BIN, "fmt", "-check", hcl], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", JOBS)
def test_inventory_has_the_nomad_plugin_and_the_controller_group(name):
    """netreap.cilium.reap runs its once-per-run steps on group `reaper`: the container itself.
    Only the reap lists the Nomad clients: the heartbeat reaches no node, so it does not wait for
    (or fail with) the Nomad API."""
    job = load(name)[0]["Job"]
    task = job["TaskGroups"][0]["Tasks"][0]
    inventory_dir = task["Config"]["args"][task["Config"]["args"].index("--inventory") + 1]
    assert inventory_dir == "/local/inventory"
    files = {t["DestPath"]: t["EmbeddedTmpl"] for t in task["Templates"] if t["DestPath"].startswith("local/inventory/")}
    if name == "netreap-reaper":
        assert yaml.safe_load(files["local/inventory/netreap.nomad.yml"]) == {"plugin": "netreap.cilium.nomad"}
    else:
        assert sorted(files) == ["local/inventory/reaper.yml"]
        assert not {"ANSIBLE_PRIVATE_KEY_FILE", "ANSIBLE_REMOTE_USER"} & set(task["Env"])
    controller = yaml.safe_load(files["local/inventory/reaper.yml"])
    (host,) = controller["reaper"]["hosts"].values()
    assert host["ansible_connection"] == "local"
    with open(os.path.join(ROOT, "extras", "awx", "execution-environment.yml")) as handle:
        ee = yaml.safe_load(handle)
    assert host["ansible_python_interpreter"] == ee["dependencies"]["python_interpreter"]["python_path"]
    assert "{{" not in files["local/inventory/reaper.yml"]  # Nomad's own template engine would eat it


def test_the_heartbeat_runs_every_minute_and_only_the_heartbeat():
    reap = load("netreap-reaper")[0]["Job"]
    heartbeat = load("netreap-heartbeat")[0]["Job"]
    assert heartbeat["Periodic"]["Specs"] == ["* * * * *"]
    hb_args = heartbeat["TaskGroups"][0]["Tasks"][0]["Config"]["args"]
    assert hb_args[hb_args.index("--tags") + 1] == "netreap_heartbeat"
    assert "--tags" not in reap["TaskGroups"][0]["Tasks"][0]["Config"]["args"]
    # A heartbeat run must end (or be killed) before the next minute's run is due.
    assert heartbeat["TaskGroups"][0]["Tasks"][0]["KillTimeout"] <= 30 * 10 ** 9
    assert reap["TaskGroups"][0]["Tasks"][0]["Config"]["image"] == heartbeat["TaskGroups"][0]["Tasks"][0]["Config"]["image"]


def _duration_ns(text):
    match = re.match(r"^(\d+)(ns|us|ms|s|m|h)$", text)
    assert match, text
    return int(match.group(1)) * {"ns": 1, "us": 10 ** 3, "ms": 10 ** 6, "s": 10 ** 9, "m": 60 * 10 ** 9,
                                  "h": 3600 * 10 ** 9}[match.group(2)]


@pytest.mark.parametrize("name", JOBS)
def test_hcl_and_json_agree(name):
    data, hcl = load(name)
    job = data["Job"]
    (labels, body), = blocks(hcl, "job")
    assert labels == [job["ID"]]
    assert body["attrs"]["type"] == job["Type"]
    assert body["attrs"]["datacenters"] == job["Datacenters"]
    periodic = one(body, "periodic")["attrs"]
    assert periodic["crons"] == job["Periodic"]["Specs"]
    assert periodic["prohibit_overlap"] is job["Periodic"]["ProhibitOverlap"] is True
    assert periodic["time_zone"] == job["Periodic"]["TimeZone"]

    hcl_groups = blocks(body, "group")
    assert [g[0][0] for g in hcl_groups] == [g["Name"] for g in job["TaskGroups"]]
    for (glabels, group), jgroup in zip(hcl_groups, job["TaskGroups"]):
        assert group["attrs"]["count"] == jgroup["Count"]
        assert one(group, "restart")["attrs"] == {"attempts": jgroup["RestartPolicy"]["Attempts"],
                                                  "mode": jgroup["RestartPolicy"]["Mode"]}
        assert one(group, "reschedule")["attrs"] == {"attempts": jgroup["ReschedulePolicy"]["Attempts"],
                                                     "unlimited": jgroup["ReschedulePolicy"]["Unlimited"]}
        hcl_tasks = blocks(group, "task")
        assert [t[0][0] for t in hcl_tasks] == [t["Name"] for t in jgroup["Tasks"]]
        for (tlabels, task), jtask in zip(hcl_tasks, jgroup["Tasks"]):
            assert task["attrs"]["driver"] == jtask["Driver"]
            assert one(task, "config")["attrs"] == jtask["Config"]
            assert one(task, "env")["attrs"] == jtask["Env"]
            resources = one(task, "resources")["attrs"]
            assert (resources["cpu"], resources["memory"]) == (jtask["Resources"]["CPU"], jtask["Resources"]["MemoryMB"])
            assert _duration_ns(task["attrs"]["kill_timeout"]) == jtask["KillTimeout"]
            hcl_templates = [t for unused_labels, t in blocks(task, "template")]
            assert len(hcl_templates) == len(jtask["Templates"])
            for template, jtemplate in zip(hcl_templates, jtask["Templates"]):
                attrs = template["attrs"]
                assert attrs["destination"] == jtemplate["DestPath"]
                assert attrs["data"] == jtemplate["EmbeddedTmpl"]
                assert attrs.get("change_mode", "restart") == jtemplate["ChangeMode"]
                assert attrs.get("env", False) == jtemplate.get("Envvars", False)
                assert attrs.get("perms", "0644") == jtemplate.get("Perms", "0644")
                assert (attrs.get("uid"), attrs.get("gid")) == (jtemplate.get("Uid"), jtemplate.get("Gid"))


def test_hcl_reader_refuses_broken_files():
    with pytest.raises(HclError):
        parse_hcl('job "x" {\n  type = "batch"\n')
    with pytest.raises(HclError):
        parse_hcl('job "x" {\n  type = "batch"\n  type = "service"\n}\n')
    tree = parse_hcl('job "x" {\n  # comment\n  data = <<-EOT\n    a\n      b\n    EOT\n  n = 3\n}\n')
    (labels, body), = blocks(tree, "job")
    assert labels == ["x"] and body["attrs"] == {"data": "a\n  b\n", "n": 3}
