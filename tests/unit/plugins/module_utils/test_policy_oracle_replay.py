"""Replay of the agent's recorded verdicts (tests/fixtures/cilium/<release>/cases.json).

The fixtures were recorded by running Cilium's own policy code (tools/cilium-oracle) over the
corpus of tools/cilium-oracle/corpus.py.  For every recorded release the product validator must
give the agent's verdict on every case, with the agent's message (after the prefix naming rule
and field), and must never accept what the agent refuses.  Where the collection refuses more
on purpose, the case must fall into one of the documented exceptions below (docs/policy.md,
"What the validator refuses on purpose").  See docs/upstream.md#rule-validation-per-release-recorded.
"""

import json
import os
import re

import pytest

from ansible_collections.netreap.cilium.plugins.module_utils import _policy_decode as dec
from ansible_collections.netreap.cilium.plugins.module_utils import _policy_validate as val

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures", "cilium")


def releases():
    if not os.path.isdir(FIXTURES):
        return []
    return sorted(d for d in os.listdir(FIXTURES) if os.path.isfile(os.path.join(FIXTURES, d, "cases.json")))


def load(release):
    with open(os.path.join(FIXTURES, release, "cases.json"), encoding="utf-8") as handle:
        return json.load(handle)


_CACHE = {}


def cases(release):
    if release not in _CACHE:
        _CACHE[release] = load(release)
    return _CACHE[release]["cases"]


def release_version(release):
    """``1.18.3`` -> (18, 3); ``1.19`` (a development build of the line) -> (19, None)."""
    parts = release.split(".")
    return int(parts[1]), (int(parts[2]) if len(parts) > 2 else None)


# The documented exceptions: the agent accepts (or decodes differently) and the collection
# refuses or rewrites on purpose.  Each names a class of input and how to recognise it from
# the collection's own error; nothing outside these classes may differ.
EXCEPTIONS = {
    # The agent's JSON decoder drops fields it does not know (a misspelt ``ingres`` loses a
    # whole direction); the collection refuses them, naming the field.
    "unknown-field": lambda msg: "unknown field" in msg or "unknown selector field" in msg
    or "unknown label field" in msg,
    # ``null`` where a selector is expected decodes to a selector of every endpoint.
    "null-selector": lambda msg: "null selector" in msg or "null list element" in msg,
    # The same field twice under two spellings: Go keeps the last one, silently.
    "field-twice": lambda msg: "field given twice" in msg,
    # ``null`` as the whole policy: the agent reads no rules and answers 200; the collection
    # takes it for a mistake (use [] to mean "no rules").
    "null-rules": lambda msg: "expected a list of rules, got null" in msg,
    # A field the agent of that release does not know (it would drop it, as above).
    "field-of-newer-release": lambda msg: "is not supported before Cilium" in msg,
}


# Inputs the collection rewrites into what the agent accepts before anything is written (so
# the agent never sees the refused form): a rule object becomes a list of one rule, YAML
# numbers where Go wants strings become strings.
def _numbers_where_strings(value, key=None):
    """Whether a JSON number stands where the agent wants a string and the collection writes
    the string: a port, a matchLabels value, a matchExpressions value."""
    def number(item):
        return isinstance(item, int) and not isinstance(item, bool)

    if isinstance(value, dict):
        if key == "matchLabels":
            return any(number(v) for v in value.values())
        if number(value.get("port")):
            return True
        return any(_numbers_where_strings(v, k) for k, v in value.items())
    if isinstance(value, list):
        if key == "values":
            return any(number(v) for v in value)
        return any(_numbers_where_strings(v) for v in value)
    return False


NORMALISED = {
    "single-rule-object": lambda raw: isinstance(raw, dict) and not _numbers_where_strings(raw),
    "number-as-string": _numbers_where_strings,
}


def product_verdict(case, minor, patch):
    flags = case.get("flags") or {}
    target = val.ValidationTarget(minor, flags.get("l7_proxy", True), flags.get("node_selector_labels", False),
                                  flags.get("icmp_rules", True), patch=patch)
    try:
        rules = dec.normalize_rules(case["input"])
        val.validate_rules(rules, [target])
    except dec.PolicyInputError as exc:
        return "input", str(exc), rules_or_none(case)
    except dec.PolicyValidationError as exc:
        return "invalid", exc.message, rules_or_none(case)
    return "ok", None, rules


def rules_or_none(case):
    try:
        return dec.normalize_rules(case["input"])
    except dec.PolicyInputError:
        return None


def _combining_swapped(message):
    match = re.match(r"^(combining|Combining) (\w+) and (\w+) is not supported yet$", message or "")
    if not match:
        return None
    return "%s %s and %s is not supported yet" % (match.group(1), match.group(3), match.group(2))


def _field_unknown_to(minor, message):
    """A decoding error at a field the agent of ``minor`` does not know (it drops the field)."""
    match = re.match(r"^rules\[\d+\][^:]*?\.?([A-Za-z]+)(\[\d+\])?: ", message or "")
    if not match:
        return False
    return any(field == match.group(1) and minor < first for (unused, field), first in dec.FIELDS_SINCE.items())


def judge(case, verdict, minor=None):
    """None when the product agrees with the recorded agent; else what differs."""
    kind, message, unused = verdict
    if case["ok"]:
        if kind == "ok":
            return None
        for name, matches in EXCEPTIONS.items():
            if matches(message):
                return None
        if minor is not None and _field_unknown_to(minor, message):
            return None  # "field-of-newer-release", refused while decoding
        return "the agent accepts, the collection refuses: %s" % message
    if kind == "ok":
        try:
            raw = json.loads(case["input"])
        except ValueError:
            raw = None
        if case.get("stage") == "json" and raw is not None:
            for name, matches in NORMALISED.items():
                if matches(raw):
                    return None
        return "the agent refuses (%s: %s), the collection accepts" % (case.get("stage"), case.get("message"))
    if case.get("stage") == "sanitize":
        for name, matches in EXCEPTIONS.items():
            if matches(message):
                return None  # refused by a stricter check first: still refused
        if kind != "invalid":
            return "the agent's message is %r, the collection refuses while decoding: %s" % (case["message"], message)
        if message != case["message"] and _combining_swapped(message) != case["message"]:
            return "message differs:\n  agent:      %s\n  collection: %s" % (case["message"], message)
    return None


RELEASES = releases()


def _rest_ids(release):
    return [c["id"] for c in cases(release) if c["kind"] == "rest"]


def test_fixtures_are_present_for_every_recorded_release():
    assert RELEASES, "no recorded fixtures under tests/fixtures/cilium"
    for release in RELEASES:
        data = load(release)
        assert data["head"]["release"] == release
        assert len(data["cases"]) >= 400
        assert len({c["id"] for c in data["cases"]}) == len(data["cases"])


@pytest.mark.parametrize("release", RELEASES)
def test_validator_gives_the_agents_verdict_and_message(release):
    minor, patch = release_version(release)
    failures = []
    for case in cases(release):
        if case["kind"] != "rest":
            continue
        problem = judge(case, product_verdict(case, minor, patch), minor)
        if problem:
            failures.append("%s: %s" % (case["id"], problem))
    assert not failures, "%d of %d cases differ from Cilium %s:\n%s" % (
        len(failures), len(_rest_ids(release)), release, "\n".join(failures))


@pytest.mark.parametrize("release", RELEASES)
def test_nothing_the_agent_refuses_in_a_static_file_is_accepted(release):
    """A static file the agent cannot decode or parse stops it (1.17+: Fatal at start and on
    every restart); the collection must refuse the rule before writing the file."""
    minor, patch = release_version(release)
    by_id = {c["id"]: c for c in cases(release)}
    failures = []
    for case in cases(release):
        if case["kind"] != "static" or case["ok"] or not case["id"].startswith("static/"):
            continue
        rest = by_id.get(case["id"][len("static/"):])
        if rest is None:
            continue
        kind, message, unused = product_verdict(rest, minor, patch)
        if kind == "ok" and case.get("stage") == "cnp-decode" and _numbers_where_strings(json.loads(rest["input"])):
            continue  # the collection writes the string (NORMALISED)
        if kind == "ok":
            failures.append("%s: the agent's static loader refuses (%s: %s), the collection accepts"
                            % (case["id"], case.get("stage"), case.get("message")))
    assert not failures, "\n".join(failures)


def test_exceptions_are_used():
    """Every documented exception is needed by at least one recorded case (the list stays short)."""
    used = set()
    for release in RELEASES:
        minor, patch = release_version(release)
        for case in cases(release):
            if case["kind"] != "rest" or not case["ok"]:
                continue
            kind, message, unused = product_verdict(case, minor, patch)
            if kind != "ok":
                used.update(name for name, matches in EXCEPTIONS.items() if matches(message))
    assert used == set(EXCEPTIONS)


def test_judge_fails_when_a_recorded_verdict_or_message_is_changed():
    """The replay notices a hand-edited fixture: flip one verdict, change one message."""
    release = RELEASES[-1]
    minor, patch = release_version(release)
    accepted = next(c for c in cases(release) if c["kind"] == "rest" and c["ok"] and c["id"] == "rule/base")
    refused = next(c for c in cases(release) if c["kind"] == "rest" and c.get("stage") == "sanitize")
    flipped = dict(accepted, ok=False, stage="sanitize", message="edited by hand")
    assert judge(flipped, product_verdict(flipped, minor, patch))
    edited = dict(refused, message=refused["message"] + " (edited)")
    assert judge(edited, product_verdict(edited, minor, patch))
    assert judge(accepted, product_verdict(accepted, minor, patch)) is None


@pytest.mark.parametrize("release", RELEASES)
def test_rendered_static_files_select_what_the_published_rule_meant(release):
    """Every static file the collection renders, as the agent loads it (selectors rewritten),
    selects exactly the Nomad endpoints the published rule selects, subject and peers alike."""
    data = load(release)
    nomad = {name for name in data["head"]["endpoints"] if name.startswith("nomad-")}
    by_id = {c["id"]: c for c in data["cases"]}
    rendered = [c for c in data["cases"] if c["id"].startswith("rendered/")]
    assert rendered, "no rendered static files recorded"
    failures = []
    for case in rendered:
        published = by_id["published/" + case["id"].split("/", 1)[1].split("@", 1)[0]]
        if not case["ok"]:
            failures.append("%s: the agent does not load it: %s" % (case["id"], case.get("message")))
            continue
        meant = {s["path"]: sorted(set(s["selects"]) & nomad) for s in published["selection"]}
        enforced = {s["path"]: sorted(set(s["selects"]) & nomad) for s in case["selection"]}
        if meant != enforced:
            failures.append("%s:\n  published rule selects: %s\n  agent enforces:         %s" % (
                case["id"], meant, enforced))
    assert not failures, "\n".join(failures)
