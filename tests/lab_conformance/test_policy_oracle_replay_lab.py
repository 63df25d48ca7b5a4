"""The lab's agent simulator against the agent's recorded verdicts (tests/fixtures/cilium).

The fixtures were recorded by running Cilium's own policy code (tools/cilium-oracle) over the
corpus of tools/cilium-oracle/corpus.py.  The lab's validator (tests/lab/policy_rules.py) must
give the agent's verdict and message on every ``PUT /v1/policy`` body, and the lab's static
directory loader (tests/lab/cilium.py ``load_static_file``) must refuse what the agent refuses
and produce the same effective rules and selection answers as the agent.
See docs/upstream.md#rule-validation-per-release-recorded.
"""

import json
import os
import re

import pytest

from tests.lab import policy_rules as pr
from tests.lab import cilium as lab_cilium

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "cilium")


def releases():
    if not os.path.isdir(FIXTURES):
        return []
    return sorted(d for d in os.listdir(FIXTURES) if os.path.isfile(os.path.join(FIXTURES, d, "cases.json")))


RELEASES = releases()
_CACHE = {}


def fixture(release):
    if release not in _CACHE:
        with open(os.path.join(FIXTURES, release, "cases.json"), encoding="utf-8") as handle:
            _CACHE[release] = json.load(handle)
    return _CACHE[release]


def profile(release):
    """The lab profile of the release's minor, at the recorded patch version."""
    minor = ".".join(release.split(".")[:2])
    prof = dict(lab_cilium.PROFILES[minor])
    if release.count(".") == 2:
        prof["full_version"] = release
    return prof


def lab_rest_verdict(case, prof):
    flags = case.get("flags") or {}
    try:
        rules = json.loads(case["input"])
    except ValueError:
        return 400, None
    try:
        pr.validate_rules(rules, prof, flags.get("l7_proxy", True), flags.get("node_selector_labels", False),
                          flags.get("icmp_rules", True))
    except pr.PolicyDecodeError as exc:
        return 400, exc.message
    except pr.PolicyError as exc:
        return 500, exc.message
    except Exception as exc:  # noqa: BLE001 - the agent itself crashes on some inputs
        return "crash", repr(exc)
    return 200, None


def _swapped(message):
    match = re.match(r"^(combining|Combining) (\w+) and (\w+) is not supported yet$", message or "")
    return match and "%s %s and %s is not supported yet" % (match.group(1), match.group(3), match.group(2))


def judge_rest(case, verdict):
    status, message = verdict
    if case["ok"]:
        return None if status == 200 else "the agent accepts, the lab answers %s %s" % (status, message)
    if status == 200:
        return "the agent refuses (%s: %s), the lab accepts" % (case.get("stage"), case.get("message"))
    if case.get("stage") == "json":
        return None if status == 400 else "the agent answers 400, the lab %s %s" % (status, message)
    if case.get("stage") == "sanitize":
        if status != 500:
            return "the agent answers 500 %r, the lab %s %s" % (case["message"], status, message)
        if message != case["message"] and _swapped(message) != case["message"]:
            return "message differs:\n  agent: %s\n  lab:   %s" % (case["message"], message)
    return None  # the agent crashes (panic): any refusal will do


@pytest.mark.parametrize("release", RELEASES)
def test_lab_validator_gives_the_agents_verdict_and_message(release):
    prof = profile(release)
    failures = []
    for case in fixture(release)["cases"]:
        if case["kind"] != "rest":
            continue
        problem = judge_rest(case, lab_rest_verdict(case, prof))
        if problem:
            failures.append("%s: %s" % (case["id"], problem))
    assert not failures, "%d cases differ from Cilium %s:\n%s" % (len(failures), release, "\n".join(failures))


def lab_static(case, prof):
    flags = case.get("flags") or {}
    try:
        return lab_cilium.load_static_file("corpus.yaml", case["input"].encode("utf-8"), prof, cluster_name="default",
                                           policy_default_local_cluster=flags.get("default_local_cluster"),
                                           enable_l7_proxy=flags.get("l7_proxy", True),
                                           enable_node_selector_labels=flags.get("node_selector_labels", False),
                                           enable_icmp_rules=flags.get("icmp_rules", True)), None
    except Exception as exc:  # noqa: BLE001 - decode errors and rejections are both refusals
        return None, getattr(exc, "message", None) or str(exc)


def comparable(rules):
    """Effective rules without the directory's file-name label (the oracle leaves it out)."""
    out = []
    for rule in rules or []:
        rule = dict(rule)
        labels = [lbl for lbl in rule.get("labels") or []
                  if not (lbl.get("source") == "directory" and lbl.get("key") == "filename")]
        if labels:
            rule["labels"] = labels
        else:
            rule.pop("labels", None)
        out.append(rule)
    return json.loads(json.dumps(out, sort_keys=True))


def selection(rules, endpoints):
    """The lab's answers in the oracle's shape: for each subject and peer selector, whom it selects."""
    out = []
    for index, rule in enumerate(rules or []):
        where = "[%d]" % index
        paths = []
        for key in ("endpointSelector", "nodeSelector"):
            if key in rule:
                paths.append(("%s.%s" % (where, key), rule[key]))
        for direction, peer in (("ingress", "fromEndpoints"), ("ingressDeny", "fromEndpoints"),
                                ("egress", "toEndpoints"), ("egressDeny", "toEndpoints")):
            for j, item in enumerate(rule.get(direction) or []):
                for k, sel in enumerate(item.get(peer) or []):
                    paths.append(("%s.%s[%d].%s[%d]" % (where, direction, j, peer, k), sel))
        for path, sel in paths:
            out.append({"path": path, "selects": sorted(name for name, labels in endpoints.items()
                                                        if lab_cilium.selects(sel, labels))})
    return out


@pytest.mark.parametrize("release", RELEASES)
def test_lab_static_loader_matches_the_agents_effective_rules(release):
    prof = profile(release)
    data = fixture(release)
    endpoints = data["head"]["endpoints"]
    failures = []
    for case in data["cases"]:
        if case["kind"] != "static":
            continue
        rules, error = lab_static(case, prof)
        if not case["ok"]:
            if rules is not None:
                failures.append("%s: the agent refuses (%s: %s), the lab loads it" % (
                    case["id"], case.get("stage"), case.get("message")))
            continue
        if rules is None:
            failures.append("%s: the agent loads it, the lab refuses: %s" % (case["id"], error))
            continue
        if comparable(rules) != comparable(case["effective"]):
            failures.append("%s: effective rules differ:\n  agent: %s\n  lab:   %s" % (
                case["id"], json.dumps(comparable(case["effective"]), sort_keys=True),
                json.dumps(comparable(rules), sort_keys=True)))
            continue
        if selection(rules, endpoints) != case["selection"]:
            failures.append("%s: selection differs:\n  agent: %s\n  lab:   %s" % (
                case["id"], case["selection"], selection(rules, endpoints)))
    assert not failures, "%d static files differ from Cilium %s:\n%s" % (len(failures), release,
                                                                         "\n".join(failures[:60]))
