"""The connection doc fragments are static text (ansible-doc reads them without running code); these
tests keep them in step with the option tables the modules and plugins resolve with."""

import re

import pytest
import yaml

from ansible_collections.netreap.cilium.plugins.doc_fragments import _cilium, _consul, _etcd, _nomad
from ansible_collections.netreap.cilium.plugins.module_utils._options import CILIUM, CONSUL, ETCD, NOMAD

FRAGMENTS = [(CONSUL, _consul), (NOMAD, _nomad), (CILIUM, _cilium), (ETCD, _etcd)]
IDS = [service.name for service, _fragment in FRAGMENTS]
ENV_MARKUP = re.compile(r"E\(([A-Z0-9_]+)\)")


def documented(fragment, part="DOCUMENTATION"):
    return yaml.safe_load(getattr(fragment.ModuleDocFragment, part))["options"]


def description(entry):
    text = entry["description"]
    return " ".join(text) if isinstance(text, list) else text


def default_phrases(option):
    """What the description must say for the default the resolution applies."""
    if option.default_text:
        return [option.default_text]
    if option.default is None:
        return []
    values = option.default if isinstance(option.default, list) else [option.default]
    return ["(%s)" % value for value in values]


@pytest.mark.parametrize("service, fragment", FRAGMENTS, ids=IDS)
def test_fragment_documents_exactly_the_table(service, fragment):
    docs = documented(fragment)
    assert list(docs) == service.names
    for option in service:
        entry = docs[option.name]
        assert entry["type"] == option.type, option.name
        assert entry.get("elements") == option.elements, option.name
        # the default comes after the environment, so it is prose, never a `default:` key
        assert "default" not in entry, option.name
        for phrase in default_phrases(option):
            assert phrase in description(entry), (option.name, phrase)


@pytest.mark.parametrize("service, fragment", FRAGMENTS, ids=IDS)
def test_fragment_names_the_environment_variables_of_the_table(service, fragment):
    docs = documented(fragment)
    for option in service:
        named = set(ENV_MARKUP.findall(description(docs[option.name])))
        assert set(option.env_names) <= named, option.name
        allowed = set(option.env_names)
        if option.token_file:
            allowed |= set(service.option(option.token_file).env_names)
        assert named <= allowed, (option.name, named - allowed)


@pytest.mark.parametrize("service", [s for s, _f in FRAGMENTS], ids=IDS)
def test_secrets_are_hidden_and_look_alikes_say_so(service):
    for option in service:
        if option.type != "str" and not option.name.endswith("_key"):
            continue
        if re.search(r"(token|password)$", option.name):
            assert option.no_log is True, option.name
        elif re.search(r"(token|password|key|secret)", option.name):
            # explicit False, so Ansible's secret-name heuristics do not guess
            assert option.no_log is False, option.name


def test_plugins_fragment_sets_the_variables_ansible_can_apply():
    env = dict((name, entry.get("env", [])) for name, entry in documented(_nomad, "PLUGINS").items())
    expected = dict((o.name, [{"name": n} for n in o.env_names]) for o in NOMAD if o.env_names and not o.inverted)
    # an inverted variable (NOMAD_SKIP_VERIFY) cannot be an `env:` entry: the resolution reads it
    assert env == expected
