"""Simulated cilium-agent REST API (one per simulated Nomad node), for the lab.

Serve it with ``httpd.serve_unix(sim, "/path/cilium.sock")``.  What it models, per version
profile (``PROFILES``, 1.13 .. 1.19), and where it knowingly differs from the real agent:

* Transport: go-swagger/go-openapi server behaviour - any Host header; JSON bodies must be sent
  with ``Content-Type: application/json`` (else 415); a missing required body is 422
  ``{"code":602,...}``; an undecodable body is 400 ``{"code":400,"message":"parsing ..."}``;
  an unknown path is 404 ``{"code":404,"message":"path ... was not found"}``; a known path with
  another method is 405 ``{"code":405,"message":"method X is not allowed, but [Y] are"}`` plus an
  ``Allow`` header.  Agent errors are a bare JSON string (``"policy not found"``); several
  responses have no body.  Success bodies are compact JSON with a trailing newline (Go encoder).
* Endpoints: every ID form of ``pkg/endpoint/id`` with the agent's messages, PATCH semantics of
  ``ProcessChangeRequest`` (labels replace the orchestration labels and are split by the
  ``--labels`` filter into security-relevant and derived; reserved endpoints cannot be patched;
  ``reserved:init`` goes away once identity labels arrive), identity allocation through a
  pluggable allocator (the lab backs it with the kvstore).  When the allocator raises, the
  endpoint stays ``waiting-for-identity`` and a ``resolve-identity-<id>`` controller reports
  the failure until a later read succeeds (the agent retries in a controller).
* Policy repository: ``PUT/DELETE/GET /policy`` with revisions, ``replace`` and
  ``replace-with-labels`` (1.15+), validation through ``policy_rules`` (agent messages), the
  REST write API removed in 1.19, and the ``--static-cnp-path`` directory (1.16+), whose files
  are rewritten on load as the agent does (namespace requirement, and the cluster label per
  ``--policy-default-local-cluster``, a constructor option with each release's default).  1.19's
  ``GET /policy`` lists PolicyEntry objects (``policy_entries``).
  ``policy_history`` records every repository state.
* Rate limiting: a simplification of ``--api-rate-limit`` - the agent *delays* requests and
  answers 429 only when the wait would exceed the limiter's max wait; ``set_rate_limit`` makes
  the lab answer 429 immediately for requests beyond ``burst`` per limiter per second.

Not modelled: datapath, BPF, the service/IPAM/ipcache APIs, identity GC, CRD mode, K8s.

Upstream sources (cilium/cilium release branches 1.15-1.18, per release where they differ) are
recorded in docs/upstream.md: transport and errors #cilium-api-transport, endpoint IDs
#cilium-api-endpoint-ids, endpoint/identity API #cilium-api-endpoints, PATCH
#cilium-api-patch-endpoint, rate limits #cilium-api-rate-limits, healthz #cilium-api-healthz,
release differences #cilium-api-releases.
"""

import copy
import hashlib
import ipaddress
import json
import os
import random
import re
import threading
import time
import uuid

import yaml

from . import httpd
from . import policy_rules as pr

__all__ = ["PROFILES", "CiliumAgentSim", "InMemoryIdentityAllocator", "load_static_file", "parse_to_cilium_rule",
           "policy_entries", "profile_for", "selects"]


# --------------------------------------------------------------------------------------------
# Version profiles (non-policy flags: docs/upstream.md#cilium-api-releases, #kvstore-backends)
# --------------------------------------------------------------------------------------------

def _profile(minor, patch):
    return {
        "minor": minor,
        "version": "1.%d" % minor,
        "full_version": "1.%d.%d" % (minor, patch),
        # Consul kvstore deprecated since 1.12, removed in 1.17 (PR #34300).
        "consul_kvstore": minor <= 16,
        # PUT/DELETE /policy: deprecated in 1.18 (PR #40212), removed in 1.19 (PR #42705).
        "rest_policy_write": minor <= 18,
        "rest_policy_deprecated": minor == 18,
        # GET /policy with a labels body: label search went away with the write API (PR #42705).
        "policy_label_search": minor <= 18,
        # PUT /policy?replace=&replace-with-labels= (PR #27103).
        "policy_replace": minor >= 15,
        # DELETE /policy with labels matching nothing: <= 1.16 answers 500 "policy not found";
        # the importer-based handlers (1.17-1.18, UNCONFIRMED exact version) answer 200.
        "delete_policy_not_found_error": minor <= 16,
        # --static-cnp-path (PR #32599).
        "static_policy_dir": minor >= 16,
        # cni-attachment-id: endpoint IDs and DELETE /endpoint batch (UNCONFIRMED exact: 1.15).
        "cni_attachment_id": minor >= 15,
        "endpoint_batch_delete": minor >= 15,
        # cep-name: endpoint ID prefix (UNCONFIRMED exact version; K8s only anyway).
        "cep_name_prefix": minor >= 15,
        # PUT /endpoint answers with the Endpoint model (UNCONFIRMED exact version).
        "put_endpoint_returns_model": minor >= 15,
        "cli_name": "cilium" if minor <= 14 else "cilium-dbg",
        # SCTP in L4 policy: PR #20033 (merged mid-2022) => every profile here.
        "sctp": True,
        # world-ipv4 / world-ipv6 entities (reserved identities 9 and 10).
        "world_ipv4_entities": minor >= 15,
        # "rule must have at least one of Ingress, IngressDeny, Egress, EgressDeny": PR #35904,
        # release note "Policies now require at least one of ...", merged for 1.17.
        "requires_rule_direction": minor >= 17,
        # 1.16: an explicitly empty fromEndpoints/toCIDR/... selects nothing (semantic only).
        "empty_l3_selects_nothing": minor >= 16,
        # Newest rule_validation.go lower-cases "combining ...", "port must be specified", ...
        "lowercase_combining": minor >= 19,
        # IngressDeny/EgressDeny validation: PR #36598 (1.17; backported to late 1.16.x, after
        # the 1.16.5 modelled here).
        "validate_deny_rules": minor >= 17,
        # Rule.Sanitize fills enableDefaultDeny (non-default-deny policies, 1.16).
        "enable_default_deny_field": minor >= 16,
        # --tunnel was replaced by --routing-mode/--tunnel-protocol (deprecated 1.14, gone 1.15).
        "tunnel_flag": minor <= 14,
        # The etcd heartbeat check (tests/lab/kvstore.py HeartbeatWatch,
        # docs/upstream.md#cilium-heartbeat-per-release): any watch event resets the timer up to
        # 1.16, the timer starts at agent start in 1.17 (and 1.18.0), clustermesh clients only
        # from 1.18.1 (the 1.18 profile is 1.18.2).
        "heartbeat_check": ("watch-events" if minor <= 16 else "agent-start" if minor == 17
                            else "clustermesh-only"),
        # /v1/healthz before every status probe ran once: from 1.18.0 "Not all probes executed
        # at least once" without the version (docs/upstream.md#cilium-healthz-version).
        "probes_pending_status": minor >= 18,
        # GET /v1/policy lists PolicyEntry objects (docs/upstream.md#get-policy-in-119-policyentry).
        "policy_entries": minor >= 19,
        # --policy-default-local-cluster: no such flag before 1.18, default false in 1.18, true in
        # 1.19 (docs/upstream.md#static-files-peer-selectors-rewritten).
        "policy_default_local_cluster": None if minor < 18 else minor >= 19,
    }


PROFILES = {
    "1.13": _profile(13, 18),
    "1.14": _profile(14, 19),
    "1.15": _profile(15, 19),
    "1.16": _profile(16, 5),
    "1.17": _profile(17, 6),
    "1.18": _profile(18, 2),
    "1.19": _profile(19, 1),
}

_GIT_REVISION = "0123abcd"  # shown in "1.16.5 (v1.16.5-0123abcd)"


def profile_for(version):
    """Profile for ``"1.16"`` or ``"1.16.5"``."""
    key = ".".join(str(version).split(".")[:2])
    if key not in PROFILES:
        raise ValueError("no Cilium profile for version %r (known: %s)" % (version, ", ".join(PROFILES)))
    return PROFILES[key]


# Reserved identities (pkg/identity/numericidentity.go; docs/upstream.md#cilium-api-labels).
RESERVED_IDENTITIES = {
    "host": 1, "world": 2, "unmanaged": 3, "health": 4, "init": 5, "remote-node": 6,
    "kube-apiserver": 7, "ingress": 8, "world-ipv4": 9, "world-ipv6": 10,
}

_ENDPOINT_STATES = ["waiting-for-identity", "not-ready", "waiting-to-regenerate", "regenerating",
                    "restoring", "ready", "disconnecting", "disconnected", "invalid"]

# Default --labels filter (pkg/labelsfilter/filter.go defaultLabelPrefixCfg, 1.16;
# docs/upstream.md#cilium-api-patch-endpoint): (source, regex, ignore).
_DEFAULT_LABEL_PREFIXES = [
    ("reserved", ".*", False),
    ("", re.escape("io.kubernetes.pod.namespace"), False),
    ("", re.escape("io.cilium.k8s.namespace.labels"), False),
    ("", re.escape("app.kubernetes.io"), False),
    ("", r"io\.kubernetes", True),
    ("", r"kubernetes\.io", True),
    ("", r".*beta\.kubernetes\.io", True),
    ("", r"k8s\.io", True),
    ("", r"pod-template-generation", True),
    ("", r"pod-template-hash", True),
    ("", r"controller-revision-hash", True),
    ("", r"annotation.*", True),
    ("", r"etcd_node", True),
]

# --api-rate-limit defaults: max wait per limiter, used in the 429 message only
# (daemon/restapi/api_limits.go, 1.16; docs/upstream.md#cilium-api-rate-limits).
_RATE_LIMIT_MAX_WAIT = {"endpoint-create": 60.0, "endpoint-delete": 0.0, "endpoint-get": 10.0,
                        "endpoint-patch": 15.0, "endpoint-list": 0.0}


class LabelFilter:
    """``--labels`` (pkg/labelsfilter/filter.go ``filterLabels``, 1.16): which endpoint labels are
    identity-relevant.

    ``label_filter=None`` is the agent default: everything is identity-relevant except the
    well-known noisy K8s prefixes (``io.kubernetes``, ``kubernetes.io``, ``pod-template-hash``,
    ``annotation.*``, ...).  Entries are ``[source:][!]regex``; a regex must match at the
    start of the label key; once any include entry is given only matching labels (and
    ``reserved:``) are identity-relevant, the rest become ``derived``.  When an include and an
    ignore both match, the longer match wins.
    """

    def __init__(self, prefixes=None):
        self.prefixes = [(src, re.compile(rx), ignore) for src, rx, ignore in _DEFAULT_LABEL_PREFIXES]
        self.allowlist = False
        for entry in prefixes or []:
            if not entry:
                continue
            src, rx = entry.split(":", 1) if ":" in entry else ("", entry)
            if not rx:
                raise ValueError("invalid label source %r, prefix %r" % (src, rx))
            ignore = rx.startswith("!")
            if ignore:
                rx = rx[1:]
            if not ignore:
                self.allowlist = True
            self.prefixes.append((src, re.compile(rx), ignore))

    def split(self, labels):
        """``labels``: dict key -> (source, key, value).  Returns (identity, info) dicts."""
        identity, info = {}, {}
        for key, lbl in labels.items():
            included = ignored = 0
            for src, rx, ignore in self.prefixes:
                if src and src != lbl[0]:
                    continue
                m = rx.search(lbl[1])
                if m is None or m.start() != 0:
                    continue
                if ignore:
                    if ignored == 0 or m.end() < ignored:
                        ignored = m.end()
                elif m.end() > included:
                    included = m.end()
            if (not self.allowlist and ignored == 0) or included > ignored:
                identity[key] = lbl
            else:
                info[key] = lbl
        return identity, info


class InMemoryIdentityAllocator:
    """Default identity allocator: stable numeric IDs per label key, reference counted.

    IDs start at 256 for cluster-id 0 and at ``cluster_id << 16`` otherwise, like the kvstore
    allocator's local-cluster range (docs/upstream.md#kvstore-identity-keys).  ``release`` drops a reference; the ID stays bound to its
    labels (master keys outlive their users until identity GC, which is not modelled here).
    """

    def __init__(self, cluster_id=0):
        self.cluster_id = cluster_id
        self._next = 256 if cluster_id == 0 else cluster_id << 16
        self._ids = {}
        self.refs = {}
        self._lock = threading.Lock()

    def allocate(self, labels_key):
        with self._lock:
            if labels_key not in self._ids:
                self._ids[labels_key] = self._next
                self._next += 1
            self.refs[labels_key] = self.refs.get(labels_key, 0) + 1
            return self._ids[labels_key]

    def release(self, labels_key):
        with self._lock:
            if self.refs.get(labels_key, 0) > 0:
                self.refs[labels_key] -= 1


def _go_duration(seconds):
    """Go ``time.Duration.String()`` for the few magnitudes used here."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return "%gms" % round(seconds * 1000, 3)
    if seconds < 60:
        return "%gs" % round(seconds, 6)
    minutes, rest = divmod(seconds, 60)
    return "%dm%gs" % (minutes, round(rest, 6))


def _go_json_error(text, exc):
    """Go ``encoding/json`` syntax error text for a Python ``JSONDecodeError`` (approximate)."""
    if exc.pos >= len(text.rstrip()):
        return "unexpected EOF"
    char = text[exc.pos]
    if "Expecting value" in exc.msg:
        return "invalid character %s looking for beginning of value" % _go_char(char)
    if "Expecting property name" in exc.msg:
        return "invalid character %s looking for beginning of object key string" % _go_char(char)
    if "Expecting ',' delimiter" in exc.msg:
        where = "array element" if text.lstrip()[:1] == "[" else "object key:value pair"
        return "invalid character %s after %s" % (_go_char(char), where)
    if "Expecting ':' delimiter" in exc.msg:
        return "invalid character %s after object key" % _go_char(char)
    return "invalid character %s" % _go_char(char)


def _go_char(char):
    if char == "'":
        return "'\\''"
    return "'%s'" % char


_json_kind = httpd.json_kind


# --------------------------------------------------------------------------------------------
# Responses (go-openapi runtime, pkg/api/apierror.go; docs/upstream.md#cilium-api-transport)
# --------------------------------------------------------------------------------------------

def _model(obj, status=200, headers=None):
    """A go-openapi JSON response: compact, map keys sorted (go-swagger models list their
    properties alphabetically), trailing newline from ``json.Encoder``."""
    body = json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False) + "\n"
    return httpd.Response(status, body, "application/json", headers)


def _api_error(status, message):
    """``api.Error``/``api.New``: the Error model is a bare JSON string."""
    return _model(message, status)


def _swagger_error(status, code, message, headers=None):
    """go-openapi ``errors.ServeError`` body: ``{"code":..,"message":..}`` without newline."""
    body = json.dumps({"code": code, "message": message}, separators=(",", ":"), ensure_ascii=False)
    return httpd.Response(status, body, "application/json", headers)


def _empty(status):
    return httpd.Response(status, b"", None)


class _Reject(Exception):
    def __init__(self, response):
        super().__init__(response.status)
        self.response = response


# --------------------------------------------------------------------------------------------
# Endpoint state (pkg/endpoint, api/v1/models; docs/upstream.md#cilium-api-endpoints)
# --------------------------------------------------------------------------------------------

class _Endpoint:
    def __init__(self, ep_id):
        self.id = ep_id
        self.container_id = ""
        self.container_name = ""
        self.container_ifname = ""
        self.ifname = ""
        self.ifindex = 0
        self.ipv4 = ""
        self.mac = ""
        self.host_mac = ""
        self.reserved = None
        self.legacy_ids = True
        self.identity_labels = {}  # OpLabels.OrchestrationIdentity: key -> (source, key, value)
        self.info_labels = {}      # OpLabels.OrchestrationInfo
        self.custom_labels = {}    # OpLabels.Custom (PATCH /endpoint/{id}/labels)
        self.identity_id = 0
        self.identity_key = None   # allocated (non-reserved) identity key, or None
        self.identity_labels_model = []
        self.pending_key = None    # identity allocation waiting for a retry
        self.pending_error = ""
        self.pending_failures = 0
        self.state = "ready"
        self.log = []

    def all_identity_labels(self):
        merged = dict(self.custom_labels)
        merged.update(self.identity_labels)
        return merged

    def all_labels(self):
        merged = dict(self.info_labels)
        merged.update(self.custom_labels)
        merged.update(self.identity_labels)
        return merged


def _model_strings(labels):
    return sorted(pr.label_string(*lbl) for lbl in labels.values())


def _labels_from_model(strings):
    """``labels.NewLabelsFromModel``: a map keyed by label key (last one wins)."""
    out = {}
    for text in strings or []:
        lbl = pr.parse_label(text)
        out[lbl[1]] = lbl
    return out


# --------------------------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------------------------

class CiliumAgentSim(httpd.Service):
    """One simulated cilium-agent.  See the module docstring for what is modelled."""

    def __init__(self, node_name, version="1.16", log=None, kvstore="etcd", kvstore_status=None,
                 static_policy_dir=None, cluster_name="default", cluster_id=0, node_ip="127.0.0.1",
                 ipv4_range="10.200.1.0/24", label_filter=None, enable_l7_proxy=True,
                 identity_allocator=None, clock=time.time, *, kvstore_options=None,
                 reserved_endpoints=(), enable_node_selector_labels=False, policy_default_local_cluster=None):
        super().__init__("cilium/%s" % node_name, log)
        self.node_name = node_name
        self.profile = profile_for(version)
        if kvstore not in ("etcd", "consul"):
            raise ValueError('unknown key-value store type "%s"' % kvstore)
        if kvstore == "consul" and not self.profile["consul_kvstore"]:
            # 1.17+ agents refuse to start: 'unknown key-value store type "consul". See
            # cilium.link/err-kvstore for details' (pkg/kvstore/config.go, 1.17.10;
            # docs/upstream.md#kvstore-backends).  The lab's message differs.
            raise ValueError('unknown key-value store type "consul" (Consul support was removed in 1.17)')
        if static_policy_dir is not None and not self.profile["static_policy_dir"]:
            raise ValueError("unknown flag: --static-cnp-path")  # pflag refuses unknown flags
        if policy_default_local_cluster is None:
            policy_default_local_cluster = self.profile["policy_default_local_cluster"]
        elif self.profile["policy_default_local_cluster"] is None:
            raise ValueError("unknown flag: --policy-default-local-cluster")
        # None: the release has no such flag (and adds no cluster label to policy files).
        self.policy_default_local_cluster = policy_default_local_cluster
        self.kvstore = kvstore
        self.kvstore_options = dict(kvstore_options) if kvstore_options else (
            {"etcd.config": "/var/lib/cilium/etcd-config.yml"} if kvstore == "etcd"
            else {"consul.address": "127.0.0.1:8500"})
        self._kvstore_status = kvstore_status
        self.probes_pending = False  # True: a 1.18+ agent whose status probes have not all run yet
        self.cluster_name = cluster_name
        self.cluster_id = cluster_id
        self.node_ip = node_ip
        self.ipv4_range = ipaddress.ip_network(ipv4_range)
        self.label_filter = list(label_filter) if label_filter is not None else None
        self._filter = LabelFilter(label_filter)
        self.enable_l7_proxy = enable_l7_proxy
        self.enable_node_selector_labels = enable_node_selector_labels
        self.identity_allocator = identity_allocator or InMemoryIdentityAllocator(cluster_id)
        self._identity_refs = {}  # label key -> [numeric id, local users]
        self.clock = clock
        self._rng = random.Random("cilium-sim/" + node_name)
        self._hosts = self.ipv4_range.hosts()
        self.router_ip = str(next(self._hosts))
        self._next_ifindex = 10

        self._endpoints = {}
        self._rules = []  # [{"rule": sanitised rule, "source": "api"|"directory", "resource": file}]
        self._revision = 1
        self._history = [{"revision": 1, "rules": []}]

        self._rate_limit = False
        self._rate_burst = 4
        self._rate_windows = {}
        self.rate_limiter = self._rate_limiter

        self.static_policy_dir = static_policy_dir
        self._static_files = {}  # file name -> {"hash": last seen, "loaded": bool}
        self.static_policy_errors = []  # current problems: {"file", "error", "fatal", "time"}
        self.static_policy_ignored = []  # file names skipped by the agent's name check
        self._static_initial = True

        self._register_routes()
        for kind in reserved_endpoints or ():
            self.add_endpoint(reserved=kind)
        if self.static_policy_dir is not None:
            self.sync_static_policies()
        self._static_initial = False

    # ---------------------------------------------------------------- public lab interface --

    @property
    def policy_revision(self):
        self.sync_static_policies()
        with self.lock:
            return self._revision

    @property
    def policy_history(self):
        """Every repository state: ``[{"revision": n, "rules": [...]}, ...]`` (oldest first)."""
        self.sync_static_policies()
        with self.lock:
            return copy.deepcopy(self._history)

    def policy_rules(self):
        """Current repository: sanitised rules, each with its labels."""
        self.sync_static_policies()
        with self.lock:
            return [copy.deepcopy(entry["rule"]) for entry in self._rules]

    def static_effective_rules(self):
        """``{file name: [rules]}``: what the agent enforces from each loaded policy file (the
        file's rules after the agent's rewrite on load, with the labels it sets)."""
        self.sync_static_policies()
        with self.lock:
            out = {}
            for entry in self._rules:
                if entry["source"] == "directory":
                    out.setdefault(entry["resource"], []).append(copy.deepcopy(entry["rule"]))
            return out

    def seed_policy(self, rules):
        """Put rules into the repository as another client of the agent would (for scenarios).

        ``rules`` are plain rule dicts as a user writes them; they are validated and sanitised
        like ``PUT /policy`` (``PolicyError`` on rejection) and added in one revision, on every
        profile (1.19 included: think of an operator's own import path).  Returns the revision.
        """
        sanitized = pr.validate_rules(rules, self.profile, enable_l7_proxy=self.enable_l7_proxy,
                                      enable_node_selector_labels=self.enable_node_selector_labels)
        with self.lock:
            self._rules.extend({"rule": rule, "source": "api", "resource": None} for rule in sanitized)
            self._bump()
            return self._revision

    def set_rate_limit(self, enabled, burst=4):
        with self.lock:
            self._rate_limit = bool(enabled)
            self._rate_burst = int(burst)
            self._rate_windows = {}

    def add_endpoint(self, container_id=None, labels=None, ipv4=None, reserved=None, container_name=None,
                     state="ready", interface_name=None, *, legacy_identifiers=True):
        """Create an endpoint as CNI ADD (or agent start-up, for ``reserved``) would.

        ``legacy_identifiers=False`` models ``disable-legacy-identifiers``: the endpoint can
        then not be looked up by ``container-id:`` or ``container-name:``.
        """
        with self.lock:
            ep = _Endpoint(self._allocate_endpoint_id())
            ep.reserved = reserved
            ep.legacy_ids = legacy_identifiers
            ep.state = state
            if reserved == "host":
                ep.ifname = interface_name or "cilium_host"
                ep.identity_labels = {"host": ("reserved", "host", "")}
            elif reserved == "health":
                ep.ifname = interface_name or "lxc_health"
                ep.ipv4 = ipv4 or self._allocate_ip()
                ep.identity_labels = {"health": ("reserved", "health", "")}
            elif reserved is not None:
                raise ValueError("reserved must be 'host', 'health' or None")
            else:
                ep.container_id = container_id or ""
                ep.container_name = container_name or ""
                ep.container_ifname = "eth0" if container_id else ""
                ep.ifname = interface_name or "lxc%s" % self._rng.getrandbits(48).to_bytes(6, "big").hex()[:11]
                ep.ipv4 = ipv4 or self._allocate_ip()
                identity, info = self._filter.split(_labels_from_model(labels))
                ep.identity_labels = identity or {"init": ("reserved", "init", "")}
                ep.info_labels = info
            ep.ifindex = self._next_ifindex
            self._next_ifindex += 1
            ep.mac = self._random_mac()
            ep.host_mac = self._random_mac()
            self._resolve_identity(ep)
            self._log_state(ep, "Endpoint creation")
            self._endpoints[ep.id] = ep
            return self._endpoint_model(ep)

    def remove_endpoint(self, ep_id):
        with self.lock:
            ep = self._endpoints.pop(int(ep_id), None)
            if ep is not None and ep.identity_key is not None:
                self._release_identity(ep.identity_key)

    def endpoints(self):
        """Endpoint models, as ``GET /v1/endpoint`` returns them."""
        with self.lock:
            self._retry_pending()
            return [self._endpoint_model(ep) for unused, ep in sorted(self._endpoints.items())]

    def sync_static_policies(self):
        """Re-read ``--static-cnp-path`` now.

        The agent reacts to inotify events; the lab re-reads the directory whenever it is asked
        (here, before ``GET /policy`` and ``GET /healthz``, and in ``policy_rules``,
        ``policy_revision`` and ``policy_history``), so it sees final file states, not every
        intermediate write.  Like the agent (``pkg/policy/directory``):

        * only ``*.yaml`` files whose name is a DNS-1123 subdomain are read (so ``.tmp.yaml``,
          ``Foo.yaml``, ``a_b.yaml``, ``*.yml`` and ``*.json`` are ignored);
        * the file is decoded as a ``CiliumNetworkPolicy`` (``kind`` is not checked; no
          namespace => clusterwide), each rule gets the labels ``directory:filename=<file>``,
          ``directory:policy-derived-from=CiliumClusterwideNetworkPolicy`` (or
          ``CiliumNetworkPolicy`` plus ``directory:io.cilium.k8s.policy.namespace=<ns>``),
          replacing any labels in the file;
        * a changed file replaces the rules of that file, a removed file removes them;
        * a file that fails validation leaves the previous rules of that file in force.  A
          file that fails to *decode* (YAML/JSON type error) is fatal in the agent
          (``log.Fatal``: the agent exits and, when restarted, fails again); the lab records it
          in ``static_policy_errors`` with ``"fatal": True`` and keeps serving.  Any error
          during the initial read is fatal in the agent too.
        """
        if self.static_policy_dir is None:
            return
        with self.lock:
            try:
                names = sorted(os.listdir(self.static_policy_dir))
            except OSError as exc:
                self._static_error("", "Failed to read policy directory: %s" % exc, True)
                return
            seen = set()
            ignored = []
            for name in names:
                if os.path.splitext(name)[1] != ".yaml":
                    continue
                if pr.is_dns1123_subdomain(name):
                    ignored.append(name)
                    continue
                try:
                    with open(os.path.join(self.static_policy_dir, name), "rb") as handle:
                        data = handle.read()
                except OSError:
                    continue
                seen.add(name)
                digest = hashlib.sha256(data).hexdigest()
                state = self._static_files.setdefault(name, {"hash": None, "loaded": False})
                if state["hash"] == digest:
                    continue
                state["hash"] = digest
                try:
                    rules = self._load_static_file(name, data)
                except _StaticDecodeError as exc:
                    self._static_error(name, "Failed to translate policy yaml file to cnp object: %s" % exc, True)
                    continue
                except pr.PolicyError as exc:
                    self._static_error(name, "Failed to add network policy to policy engine: %s" % exc.message,
                                       self._static_initial)
                    continue
                self._clear_static_error(name)
                state["loaded"] = True
                self._replace_resource(name, rules)
            self.static_policy_ignored = ignored
            for name in list(self._static_files):
                if name in seen:
                    continue
                state = self._static_files.pop(name)
                self._clear_static_error(name)
                if state["loaded"]:
                    self._replace_resource(name, None)

    # ------------------------------------------------------------------- identities ---------

    def _resolve_identity(self, ep):
        """Pick the numeric identity for the endpoint's identity labels (sync, or pending)."""
        labels = ep.all_identity_labels()
        reserved = [lbl[1] for lbl in labels.values() if lbl[0] == "reserved"]
        model = _model_strings(labels)
        if reserved and len(labels) == len(reserved):
            self._set_identity(ep, RESERVED_IDENTITIES.get(reserved[0], 0), None, model)
            return
        key = pr.labels_kvstore_key(labels.values())
        if key == ep.identity_key:
            ep.pending_key = None
            return
        try:
            new_id = self._acquire_identity(key)
        except Exception as exc:  # the agent keeps retrying in a controller
            ep.pending_key = key
            ep.pending_error = "unable to resolve identity: %s" % exc
            ep.pending_failures += 1
            if ep.state in ("ready", "waiting-for-identity"):
                ep.state = "waiting-for-identity"
            return
        self._set_identity(ep, new_id, key, model)

    def _set_identity(self, ep, new_id, key, model):
        old_key = ep.identity_key
        ep.identity_id = new_id
        ep.identity_key = key
        ep.identity_labels_model = model
        ep.pending_key = None
        ep.pending_error = ""
        ep.pending_failures = 0
        if old_key is not None and old_key != key:
            self._release_identity(old_key)

    def _acquire_identity(self, key):
        """Like the agent's allocator: the kvstore is asked only for the first local user of a
        label set, and released when the last local user goes (``localKeys`` refcount)."""
        entry = self._identity_refs.get(key)
        if entry is None:
            entry = self._identity_refs[key] = [int(self.identity_allocator.allocate(key)), 0]
        entry[1] += 1
        return entry[0]

    def _release_identity(self, key):
        entry = self._identity_refs.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._identity_refs[key]
            self.identity_allocator.release(key)

    def _retry_pending(self):
        for ep in self._endpoints.values():
            if ep.pending_key is not None:
                self._resolve_identity(ep)
                if ep.pending_key is None and ep.state == "waiting-for-identity":
                    ep.state = "ready"
                    self._log_state(ep, "Successfully regenerated endpoint program (Reason: updated security labels)")

    def _identity_model(self, identity_id, labels_model):
        key = ";".join(labels_model) + (";" if labels_model else "")
        sha = hashlib.new("sha512_256", key.encode()).hexdigest()
        return {"id": identity_id, "labels": list(labels_model), "labelsSHA256": sha}

    # --------------------------------------------------------------------- endpoints --------

    def _allocate_endpoint_id(self):
        while True:
            ep_id = self._rng.randint(1, 4095)  # the agent leases IDs 1..4095 from an ID pool
            if ep_id not in self._endpoints:
                return ep_id

    def _allocate_ip(self):
        used = {ep.ipv4 for ep in self._endpoints.values()}
        for host in self._hosts:
            if str(host) not in used:
                return str(host)
        raise RuntimeError("IPAM: range %s is full" % self.ipv4_range)

    def _random_mac(self):
        octets = [self._rng.randint(0, 255) for unused in range(6)]
        octets[0] = (octets[0] & 0xFE) | 0x02
        return ":".join("%02x" % o for o in octets)

    def _log_state(self, ep, message):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))
        ep.log.append({"code": "ok", "message": message, "state": ep.state, "timestamp": stamp})
        del ep.log[:-10]

    def _policy_enabled(self, ep):
        labels = list(ep.all_identity_labels().values())
        ingress = egress = False
        for entry in self._rules:
            rule = entry["rule"]
            if ep.reserved == "host":
                selected = "nodeSelector" in rule and pr.selector_matches(rule["nodeSelector"], labels)
            else:
                selected = "endpointSelector" in rule and pr.selector_matches(rule["endpointSelector"], labels)
            if not selected:
                continue
            default_deny = rule.get("enableDefaultDeny", {})
            if (rule.get("ingress") or rule.get("ingressDeny")) and default_deny.get("ingress", True):
                ingress = True
            if (rule.get("egress") or rule.get("egressDeny")) and default_deny.get("egress", True):
                egress = True
        return {(False, False): "none", (True, False): "ingress", (False, True): "egress",
                (True, True): "both"}[(ingress, egress)]

    def _endpoint_model(self, ep):
        ext = {}
        if ep.container_id and self.profile["cni_attachment_id"]:
            ext["cni-attachment-id"] = "%s:%s" % (ep.container_id, ep.container_ifname) \
                if ep.container_ifname else ep.container_id
        if ep.container_id:
            ext["container-id"] = ep.container_id
        if ep.container_name:
            ext["container-name"] = ep.container_name
        ext["pod-name"] = "/"  # K8s namespace/pod outside K8s (UNCONFIRMED: "/" or absent)
        user = _model_strings(ep.custom_labels)
        networking = {"host-mac": ep.host_mac, "interface-index": ep.ifindex,
                      "interface-name": ep.ifname, "mac": ep.mac}
        networking["addressing"] = [{"ipv4": ep.ipv4}] if ep.ipv4 else []
        if ep.container_ifname:
            networking["container-interface-name"] = ep.container_ifname
        ready = ep.state == "ready"
        enabled = self._policy_enabled(ep)
        policy = {"policy-enabled": enabled, "policy-revision": self._revision if ready else 0}
        controllers = []
        if ep.pending_key is not None:
            controllers.append(self._controller("resolve-identity-%d" % ep.id, ep.pending_failures,
                                                ep.pending_error))
        return {
            "id": ep.id,
            "spec": {
                "label-configuration": {"user": user},
                "options": {"Conntrack": "Enabled", "ConntrackAccounting": "Enabled",
                            "ConntrackLocal": "Disabled", "Debug": "Disabled", "DebugLB": "Disabled",
                            "DebugPolicy": "Disabled", "DropNotification": "Enabled",
                            "MonitorAggregationLevel": "Medium", "PolicyAuditMode": "Disabled",
                            "PolicyVerdictNotification": "Enabled", "TraceNotification": "Enabled"},
            },
            "status": {
                "controllers": controllers,
                "external-identifiers": ext,
                "health": {"bpf": "OK" if ready else "Pending", "connected": True,
                           "overallHealth": "OK" if ready else "Pending", "policy": "OK" if ready else "Pending"},
                "identity": self._identity_model(ep.identity_id, ep.identity_labels_model),
                "labels": {"derived": _model_strings(ep.info_labels), "disabled": [],
                           "realized": {"user": user},
                           "security-relevant": _model_strings(ep.identity_labels)},
                "log": list(ep.log),
                "networking": networking,
                "policy": {"realized": dict(policy), "spec": dict(policy)},
                "state": ep.state,
            },
        }

    def _label_config_model(self, ep):
        user = _model_strings(ep.custom_labels)
        return {"spec": {"user": user},
                "status": {"derived": _model_strings(ep.info_labels), "disabled": [],
                           "realized": {"user": user},
                           "security-relevant": _model_strings(ep.identity_labels)}}

    def _lookup(self, raw_id):
        """``endpointmanager.Lookup``: returns the endpoint or None; bad IDs raise 400.

        pkg/endpoint/id/id.go (1.15-1.18); docs/upstream.md#cilium-api-endpoint-ids.
        """
        prefix, value = raw_id.split(":", 1) if ":" in raw_id else ("cilium-local", raw_id)
        known = {"cilium-local", "cilium-global", "container-id", "docker-endpoint", "container-name",
                 "pod-name", "ipv4", "ipv6"}
        if self.profile["cni_attachment_id"]:
            known.add("cni-attachment-id")
        if self.profile["cep_name_prefix"]:
            known.add("cep-name")
        if prefix not in known:
            raise _Reject(_api_error(400, 'unknown endpoint ID prefix "%s"' % prefix))
        if prefix == "cilium-local":
            number = self._parse_cilium_id(value)
            return self._endpoints.get(number)
        if prefix == "cilium-global":
            raise _Reject(_api_error(400, "unsupported IP address format"))
        for ep in self._endpoints.values():
            if prefix == "container-id" and ep.legacy_ids and ep.container_id and ep.container_id == value:
                return ep
            if prefix == "container-name" and ep.legacy_ids and ep.container_name and ep.container_name == value:
                return ep
            if prefix == "cni-attachment-id" and ep.container_id:
                attachment = "%s:%s" % (ep.container_id, ep.container_ifname) if ep.container_ifname \
                    else ep.container_id
                if attachment == value:
                    return ep
            if prefix == "ipv4" and ep.ipv4 and ep.ipv4 == value:
                return ep
        return None  # docker-endpoint, pod-name, cep-name, ipv6: nothing matches outside K8s/Docker

    @staticmethod
    def _parse_cilium_id(value):
        """``ParseCiliumID``: ``strconv.ParseInt(id, 0, 64)``, 0..65535."""
        text = value
        sign = 1
        body = text
        if body.startswith(("+", "-")):
            sign = -1 if body[0] == "-" else 1
            body = body[1:]
        number = None
        if re.fullmatch(r"0[xX](_?[0-9a-fA-F])+", body):
            number = int(body[2:].replace("_", ""), 16)
        elif re.fullmatch(r"0[bB](_?[01])+", body):
            number = int(body[2:].replace("_", ""), 2)
        elif re.fullmatch(r"0[oO](_?[0-7])+", body):
            number = int(body[2:].replace("_", ""), 8)
        elif re.fullmatch(r"0(_?[0-7])+", body):
            number = int(body.replace("_", ""), 8)
        elif re.fullmatch(r"[1-9][0-9]*|0", body):
            number = int(body)
        if number is None:
            raise _Reject(_api_error(400, 'invalid numeric cilium id: strconv.ParseInt: parsing %s: invalid syntax'
                                     % json.dumps(text)))
        number *= sign
        if not -2 ** 63 <= number < 2 ** 63:
            raise _Reject(_api_error(400, 'invalid numeric cilium id: strconv.ParseInt: parsing %s: value out of '
                                     'range' % json.dumps(text)))
        if number < 0:
            raise _Reject(_api_error(400, "invalid numeric cilium id: %!s(<nil>)"))  # Go prints a nil error so
        if number > 0xFFFF:
            raise _Reject(_api_error(400, "endpoint id too large: %d" % number))
        return number

    # ---------------------------------------------------------------- request plumbing -------

    def _rate_limiter(self, req):
        # Limiter per request kind as in daemon/restapi/api_limits.go (1.16); the lab's 429 rule is
        # a simplification, see the module docstring and docs/upstream.md#cilium-api-rate-limits.
        if not self._rate_limit:
            return None
        path = req.path
        if not path.startswith("/v1/endpoint"):
            return None
        if req.method == "PATCH" and re.match(r"^/v1/endpoint/[^/]+(/labels|/config)?$", path):
            limiter = "endpoint-patch"
        elif req.method == "GET" and re.match(r"^/v1/endpoint/[^/]+", path):
            limiter = "endpoint-get"
        elif req.method == "GET" and path == "/v1/endpoint":
            limiter = "endpoint-list"
        elif req.method == "DELETE":
            limiter = "endpoint-delete"
        elif req.method == "PUT":
            limiter = "endpoint-create"
        else:
            return None
        with self.lock:
            now = self.clock()
            window = [t for t in self._rate_windows.get(limiter, []) if now - t < 1.0]
            if len(window) < self._rate_burst:
                window.append(now)
                self._rate_windows[limiter] = window
                return None
            self._rate_windows[limiter] = window
            wait = 1.0 - (now - window[0])
        return _api_error(429, "request would have to wait %s to be served (maximum wait duration: %s)"
                          % (_go_duration(wait), _go_duration(_RATE_LIMIT_MAX_WAIT[limiter])))

    def not_found(self, req):
        # go-openapi router (docs/upstream.md#cilium-api-transport; texts UNCONFIRMED live).
        return _swagger_error(404, 404, "path %s was not found" % req.raw_path)

    def method_not_allowed(self, req):
        allowed = []
        for method, regex, _handler in self._routes:
            if regex.match(req.path) and method not in allowed:
                allowed.append(method)
        return _swagger_error(405, 405, "method %s is not allowed, but [%s] are" % (req.method, ",".join(allowed)),
                              {"Allow": ",".join(allowed)})

    def _route(self, method, pattern, handler):
        def wrapped(req):
            try:
                return handler(req)
            except _Reject as exc:
                return exc.response
        self.route(method, pattern, wrapped)

    def _register_routes(self):
        # Static segments before parameters, like the go-openapi (denco) router.
        ep_id = r"/v1/endpoint/(?P<id>[^/]+)"
        self._route("GET", r"/v1/healthz", self._h_healthz)
        self._route("GET", r"/v1/config", self._h_config)
        self._route("GET", r"/v1/endpoint", self._h_endpoint_list)
        if self.profile["endpoint_batch_delete"]:
            self._route("DELETE", r"/v1/endpoint", self._h_endpoint_batch_delete)
        self._route("GET", ep_id, self._h_endpoint_get)
        self._route("PUT", ep_id, self._h_endpoint_put)
        self._route("PATCH", ep_id, self._h_endpoint_patch)
        self._route("DELETE", ep_id, self._h_endpoint_delete)
        self._route("GET", ep_id + r"/labels", self._h_labels_get)
        self._route("PATCH", ep_id + r"/labels", self._h_labels_patch)
        self._route("GET", ep_id + r"/healthz", self._h_endpoint_healthz)
        self._route("GET", r"/v1/identity", self._h_identity_list)
        self._route("GET", r"/v1/identity/endpoints", self._h_identity_endpoints)
        self._route("GET", r"/v1/identity/(?P<id>[^/]+)", self._h_identity_get)
        self._route("GET", r"/v1/policy", self._h_policy_get)
        if self.profile["rest_policy_write"]:
            self._route("PUT", r"/v1/policy", self._h_policy_put)
            self._route("DELETE", r"/v1/policy", self._h_policy_delete)
        # Without the write API the path still exists for GET, so go-openapi answers PUT and
        # DELETE /v1/policy with 405 (method not allowed), not 404.

    def _body(self, req, param, required):
        """Bind a JSON body parameter like go-openapi.  Returns (present, value).

        docs/upstream.md#cilium-api-transport (415/400/422 texts UNCONFIRMED against a live agent).
        """
        if req.body:
            ctype = (req.header("content-type") or "application/octet-stream").split(";")[0].strip().lower()
            if ctype != "application/json":
                raise _Reject(_swagger_error(415, 415, 'unsupported media type %s, only [application/json] are '
                                                       'allowed' % json.dumps(req.header("content-type")
                                                                              or "application/octet-stream")))
            text = req.body.decode("utf-8", "replace")
            stripped = text.lstrip()
            if stripped:
                try:
                    value, _end = json.JSONDecoder().raw_decode(stripped)  # trailing data is ignored
                except json.JSONDecodeError as exc:
                    raise _Reject(_swagger_error(400, 400, 'parsing %s body from "" failed, because %s'
                                                 % (param, _go_json_error(stripped, exc))))
                return True, value
        if required:
            raise _Reject(_swagger_error(422, 602, "%s in body is required" % param))
        return False, None

    def _type_error(self, param, value, gotype):
        raise _Reject(_swagger_error(400, 400, 'parsing %s body from "" failed, because json: cannot unmarshal %s '
                                     'into Go value of type %s' % (param, _json_kind(value), gotype)))

    def _labels_body(self, req):
        present, value = self._body(req, "labels", False)
        if not present or value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self._type_error("labels", value, "models.Labels")
        return value

    def _change_request(self, req):
        """Bind an ``EndpointChangeRequest`` (state is required and an enum)."""
        _present, body = self._body(req, "endpoint", True)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            self._type_error("endpoint", body, "models.EndpointChangeRequest")
        for key, kind, gotype in (("container-id", str, "string"), ("container-name", str, "string"),
                                  ("interface-name", str, "string"), ("state", str, "models.EndpointState"),
                                  ("interface-index", int, "int64"), ("labels", list, "models.Labels"),
                                  ("addressing", dict, "models.AddressPair")):
            value = body.get(key)
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                raise _Reject(_swagger_error(400, 400, 'parsing endpoint body from "" failed, because json: cannot '
                                             'unmarshal %s into Go struct field EndpointChangeRequest.%s of type %s'
                                             % (_json_kind(value), key, gotype)))
        if body.get("labels") is not None and not all(isinstance(v, str) for v in body["labels"]):
            raise _Reject(_swagger_error(400, 400, 'parsing endpoint body from "" failed, because json: cannot '
                                         'unmarshal number into Go struct field EndpointChangeRequest.labels of type '
                                         'string'))
        if body.get("state") is None:
            raise _Reject(_swagger_error(422, 602, "state in body is required"))
        if body["state"] not in _ENDPOINT_STATES:
            raise _Reject(_swagger_error(422, 606, "state in body should be one of [%s]" % " ".join(_ENDPOINT_STATES)))
        addressing = body.get("addressing") or {}
        ipv4 = addressing.get("ipv4")
        if ipv4:
            try:
                ipaddress.IPv4Address(ipv4)
            except ValueError:
                raise _Reject(_api_error(400, 'ParseAddr(%s): unable to parse IP' % json.dumps(ipv4)))  # UNCONFIRMED
        return body

    # ------------------------------------------------------------------------- handlers ------

    def _kv_status(self):
        # Message shapes of pkg/kvstore/etcd.go / consul.go status (docs/upstream.md#cilium-api-healthz).
        if self._kvstore_status is not None:
            state, msg = self._kvstore_status()
            return {"state": state, "msg": msg}
        if self.kvstore == "etcd":
            return {"state": "Ok", "msg": "etcd: 1/1 connected, leases=1, lock leases=1, has-quorum=true: "
                                          "http://127.0.0.1:2379 - 3.5.15 (Leader)"}
        return {"state": "Ok", "msg": "Consul: 127.0.0.1:8300"}

    def _controller(self, name, failures=0, error=""):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(self.clock()))
        return {"configuration": {"error-retry": True, "error-retry-base": "1s"}, "name": name,
                "status": {"consecutive-failure-count": failures, "failure-count": failures,
                           "last-failure-msg": error,
                           "last-failure-timestamp": stamp if failures else "0001-01-01T00:00:00.000Z",
                           "last-success-timestamp": stamp, "success-count": 1},
                "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, "cilium-sim/%s/%s" % (self.node_name, name)))}

    def _h_healthz(self, req):
        # daemon/cmd/status.go (<= 1.17), pkg/status/status_collector.go (1.18+);
        # docs/upstream.md#cilium-api-healthz.
        self.sync_static_policies()
        with self.lock:
            self._retry_pending()
            kv = self._kv_status()
            controllers = [self._controller("sync-host-ips"), self._controller("ipcache-inject-labels"),
                           self._controller("kvstore-sync-store-cilium/state/nodes/v1")]
            controllers += [self._controller("resolve-identity-%d" % ep.id, ep.pending_failures, ep.pending_error)
                            for ep in self._endpoints.values() if ep.pending_key is not None]
            cluster = {"ciliumHealth": {"state": "Ok", "msg": ""},
                       "nodes": [{"name": "%s/%s" % (self.cluster_name, self.node_name),
                                  "primary-address": {"ipv4": {"enabled": True, "ip": self.node_ip}}}],
                       "self": "%s/%s" % (self.cluster_name, self.node_name)}
            brief = (req.header("brief") or "").lower() in ("1", "t", "true")
            if brief:  # only cilium-health and failing controllers (omitempty when none fail)
                status = {"cluster": {"ciliumHealth": cluster["ciliumHealth"]}}
                failing = [c for c in controllers if c["status"]["consecutive-failure-count"] > 0]
                if failing:
                    status["controllers"] = failing
            else:
                status = {
                    "cluster": cluster,
                    "controllers": controllers,
                    "ipam": {"ipv4": sorted(ep.ipv4 for ep in self._endpoints.values() if ep.ipv4)},
                    "kubernetes": {"state": "Disabled"},
                    "kvstore": kv,
                    "proxy": {"ip": "0.0.0.0", "port-range": "10000-20000", "redirects": [],
                              "total-redirects": 0} if self.enable_l7_proxy else None,
                }
                if status["proxy"] is None:
                    del status["proxy"]
            # daemon/cmd/status.go (docs/upstream.md#cilium-healthz-version): the message carries
            # the version in every state except 1.19's "Not all probes executed at least once".
            version = self.profile["full_version"]
            version_msg = "%s (v%s-%s)" % (version, version, _GIT_REVISION)
            if self.probes_pending and self.profile["probes_pending_status"]:
                status["cilium"] = {"state": "Warning", "msg": "Not all probes executed at least once"}
            elif kv["state"] not in ("Ok", "Disabled"):
                status["cilium"] = {"state": kv["state"],
                                    "msg": "%s    Kvstore service is not ready: %s" % (version_msg, kv["msg"])}
            else:
                status["cilium"] = {"state": "Ok", "msg": version_msg}
        return _model(status)  # 200 even when degraded; `cilium status` derives its exit code

    def _h_config(self, req):
        # DaemonConfiguration (api/v1/models; docs/upstream.md#cilium-api-endpoints).  The option
        # values and daemonConfigurationMap keys are a plausible subset (UNCONFIRMED per release).
        options = {"Conntrack": "Enabled", "ConntrackAccounting": "Enabled", "Debug": "Disabled",
                   "DebugLB": "Disabled", "DropNotification": "Enabled", "MonitorAggregationLevel": "Medium",
                   "PolicyAuditMode": "Disabled", "PolicyTracing": "Disabled",
                   "PolicyVerdictNotification": "Enabled", "TraceNotification": "Enabled"}
        config_map = {
            "ClusterID": self.cluster_id, "ClusterName": self.cluster_name,
            "EnableIPv4": True, "EnableIPv6": False, "EnableL7Proxy": self.enable_l7_proxy,
            "EnableNodeSelectorLabels": self.enable_node_selector_labels,
            "IdentityAllocationMode": "kvstore", "IPv4Range": str(self.ipv4_range),
            "KVStore": self.kvstore, "KVStoreOpt": dict(self.kvstore_options),
            "Labels": list(self.label_filter or []), "EnablePolicy": "default",
        }
        if self.profile["tunnel_flag"]:
            config_map["Tunnel"] = "vxlan"
        if self.profile["minor"] >= 14:
            config_map.update({"RoutingMode": "tunnel", "TunnelProtocol": "vxlan"})
        # --static-cnp-path lives in a hive cell's config, not in option.Config, so (as far as
        # we know) the agent does not reveal it here; clients must be told the directory.
        spec = {"options": options, "policy-enforcement": "default"}
        return _model({
            "spec": spec,
            "status": {
                "addressing": {"ipv4": {"alloc-range": str(self.ipv4_range), "enabled": True, "ip": self.router_ip},
                               "ipv6": {"enabled": False}},
                "daemonConfigurationMap": config_map,
                "datapathMode": "veth",
                "deviceMTU": 1450,
                "immutable": {},
                "ipam-mode": "cluster-pool",
                "kvstoreConfiguration": {"options": dict(self.kvstore_options), "type": self.kvstore},
                "masquerade": True,
                "realized": spec,
                "routeMTU": 1450,
            },
        })

    def _h_endpoint_list(self, req):
        # Labels filter in the body (api/v1/openapi.yaml; docs/upstream.md#cilium-api-endpoints).
        labels = self._labels_body(req)
        with self.lock:
            self._retry_pending()
            eps = [ep for unused, ep in sorted(self._endpoints.items())]
            if labels is not None:
                wanted = list(_labels_from_model(labels).values())
                eps = [ep for ep in eps if self._has_labels(ep, wanted)]
                if not eps:
                    return _empty(404)
            return _model([self._endpoint_model(ep) for ep in eps])

    @staticmethod
    def _has_labels(ep, wanted):
        have = ep.all_labels()
        for src, key, value in wanted:
            lbl = have.get(key)
            if lbl is None or lbl[2] != value or (src != lbl[0] and src != "any"):
                return False
        return True

    def _h_endpoint_get(self, req):
        with self.lock:
            self._retry_pending()
            ep = self._lookup(req.params["id"])
            if ep is None:
                return _empty(404)
            return _model(self._endpoint_model(ep))

    def _h_endpoint_put(self, req):
        body = self._change_request(req)
        with self.lock:
            raw_id = req.params["id"]
            prefix, value = raw_id.split(":", 1) if ":" in raw_id else ("cilium-local", raw_id)
            if prefix != "cilium-local":
                return _api_error(400, "endpoint ID must be a cilium-local ID")  # UNCONFIRMED wording
            number = self._parse_cilium_id(value)
            if number and number in self._endpoints:
                # Differs from the agent: 1.16.7 answers 400 with this text (daemon/cmd/endpoint.go
                # invalidDataError); the spec's 409 is not used for it (docs/upstream.md#cilium-api-endpoints).
                return _api_error(409, "endpoint ID %d already exists" % number)
            model = self.add_endpoint(container_id=body.get("container-id") or None,
                                      labels=body.get("labels") or [],
                                      ipv4=(body.get("addressing") or {}).get("ipv4"),
                                      container_name=body.get("container-name") or None,
                                      interface_name=body.get("interface-name") or None,
                                      legacy_identifiers=not body.get("disable-legacy-identifiers", False))
            if number:
                ep = self._endpoints.pop(model["id"])
                ep.id = number
                self._endpoints[number] = ep
                model = self._endpoint_model(ep)
        if self.profile["put_endpoint_returns_model"]:
            return _model(model, 201)
        return _empty(201)

    def _h_endpoint_patch(self, req):
        # pkg/endpoint/api.go ProcessChangeRequest (1.15-1.18); docs/upstream.md#cilium-api-patch-endpoint.
        body = self._change_request(req)  # NewEndpointFromChangeModel validates before the lookup
        with self.lock:
            ep = self._lookup(req.params["id"])
            if ep is None:
                return _empty(404)
            if ep.reserved is not None:  # APICanModify: reserved labels other than init
                return _api_error(400, "endpoint cannot be modified by API call")
            if body.get("container-id"):
                ep.container_id = body["container-id"]
            if body.get("container-name"):
                ep.container_name = body["container-name"]
            if body.get("interface-name"):
                ep.ifname = body["interface-name"]
            if body.get("interface-index"):
                ep.ifindex = body["interface-index"]
            labels = body.get("labels")
            changed = False
            if labels:
                identity, info = self._filter.split(_labels_from_model(labels))
                # With every label filtered out, the endpoint keeps the init identity (the
                # agent never leaves an endpoint without identity labels).
                new_identity = identity or {"init": ("reserved", "init", "")}
                changed = new_identity != ep.identity_labels or info != ep.info_labels
                ep.identity_labels = new_identity
                ep.info_labels = info
            if changed:
                self._resolve_identity(ep)
            # Only waiting-for-identity and ready are honoured as requested states (anything
            # else is logged and ignored).  The lab regenerates synchronously, so an endpoint
            # whose identity is resolved ends up ready; one whose identity allocation failed
            # stays waiting-for-identity until a retry succeeds.
            if ep.pending_key is None and ep.state in ("waiting-for-identity", "ready") \
                    and (ep.state != "ready" or changed):
                ep.state = "ready"
                self._log_state(ep, "Successfully regenerated endpoint program (Reason: updated security labels)")
        return _empty(200)

    def _h_endpoint_delete(self, req):
        with self.lock:
            ep = self._lookup(req.params["id"])
            if ep is None:
                return _api_error(404, "endpoint not found")  # body UNCONFIRMED; the client ignores it
            if ep.reserved is not None:
                return _api_error(400, "endpoint cannot be modified by API call")
            self.remove_endpoint(ep.id)
        return _empty(200)

    def _h_endpoint_batch_delete(self, req):
        # 1.15+ (docs/upstream.md#cilium-api-endpoint-ids, first patch UNCONFIRMED).
        _present, body = self._body(req, "endpoint", True)
        if not isinstance(body, dict):
            self._type_error("endpoint", body, "models.EndpointBatchDeleteRequest")
        container_id = body.get("container-id") or ""
        if not isinstance(container_id, str):
            self._type_error("endpoint", container_id, "string")
        if not container_id:
            return _api_error(400, "invalid container id")  # daemon/cmd/endpoint.go, 1.16.7
        with self.lock:
            eps = [ep for ep in self._endpoints.values() if ep.container_id == container_id]
            if not eps:
                # 1.16.7 says "endpoints not found" (daemon/cmd/endpoint.go); body on the wire UNCONFIRMED.
                return _api_error(404, "endpoint not found")
            for ep in eps:
                self.remove_endpoint(ep.id)
        return _empty(200)

    def _h_labels_get(self, req):
        with self.lock:
            ep = self._lookup(req.params["id"])
            if ep is None:
                return _empty(404)
            return _model(self._label_config_model(ep))

    def _h_labels_patch(self, req):
        # Desired user labels, diffed by the agent (docs/upstream.md#cilium-api-endpoints).
        _present, body = self._body(req, "configuration", True)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            self._type_error("configuration", body, "models.LabelConfigurationSpec")
        user = body.get("user") or []
        if not isinstance(user, list) or not all(isinstance(v, str) for v in user):
            self._type_error("configuration", user, "models.Labels")
        with self.lock:
            ep = self._lookup(req.params["id"])
            if ep is None:
                return _empty(404)
            custom = _labels_from_model(user)
            if custom != ep.custom_labels:
                ep.custom_labels = custom
                self._resolve_identity(ep)
        return _empty(200)

    def _h_endpoint_healthz(self, req):
        with self.lock:
            ep = self._lookup(req.params["id"])
            if ep is None:
                return _empty(404)
            return _model(self._endpoint_model(ep)["status"]["health"])

    def _identities(self):
        """Reserved identities plus those of local endpoints."""
        out = {}
        for name, number in RESERVED_IDENTITIES.items():
            if name.startswith("world-ip") and not self.profile["world_ipv4_entities"]:
                continue
            out[number] = ["reserved:" + name]
        for ep in self._endpoints.values():
            out.setdefault(ep.identity_id, ep.identity_labels_model)
        return out

    def _h_identity_list(self, req):
        # api/v1/openapi.yaml GET /identity (docs/upstream.md#cilium-api-endpoints).
        labels = self._labels_body(req)
        with self.lock:
            identities = self._identities()
            if labels is not None:
                wanted = sorted(pr.label_string(*lbl) for lbl in _labels_from_model(labels).values())
                identities = {k: v for k, v in identities.items() if sorted(v) == wanted}
                if not identities:
                    return _empty(404)
            return _model([self._identity_model(k, v) for k, v in sorted(identities.items())])

    def _h_identity_endpoints(self, req):
        with self.lock:
            counts = {}
            for ep in self._endpoints.values():
                counts.setdefault(ep.identity_id, [ep.identity_labels_model, 0])[1] += 1
            return _model([{"identity": self._identity_model(k, v[0]), "refCount": v[1]}
                           for k, v in sorted(counts.items())])

    def _h_identity_get(self, req):
        raw = req.params["id"]
        if not re.fullmatch(r"[0-9]+", raw):
            return _api_error(400, "Invalid identity provided")  # wording UNCONFIRMED
        with self.lock:
            labels = self._identities().get(int(raw))
            if labels is None:
                return _empty(404)
            return _model(self._identity_model(int(raw), labels))

    # ------------------------------------------------------------------------- policy --------

    def _bump(self):
        self._revision += 1
        self._history.append({"revision": self._revision,
                              "rules": [copy.deepcopy(e["rule"]) for e in self._rules]})

    def _policy_payload(self, rules):
        return {"policy": pr.go_marshal_indent(rules), "revision": self._revision}

    def _h_policy_get(self, req):
        self.sync_static_policies()
        labels = self._labels_body(req)
        with self.lock:
            rules = [e["rule"] for e in self._rules]
            if self.profile["policy_entries"]:
                # 1.19: the repository's PolicyEntry objects; no label search.
                entries = [entry for rule in rules for entry in policy_entries(rule)]
                return _model({"policy": pr.go_marshal_indent(entries), "revision": self._revision})
            if labels and self.profile["policy_label_search"]:
                wanted = [pr.parse_select_label(text) for text in labels]
                rules = [r for r in rules if pr.labels_contain(pr.rule_labels(r), wanted)]
                if not rules:
                    return _empty(404)
            return _model(self._policy_payload(rules))

    def _query_bool(self, req, name):
        if not req.has(name):
            return False
        value = req.arg(name)
        truthy = ("true", "1", "yes", "ok", "y", "on", "selected", "checked", "t", "enabled")
        falsy = ("false", "0", "no", "n", "off", "f", "disabled", "")
        if value.lower() in truthy:
            return True
        if value.lower() in falsy:
            return False
        raise _Reject(_swagger_error(400, 400, "%s in query must be of type bool: %s" % (name, json.dumps(value))))

    def _h_policy_put(self, req):
        _present, body = self._body(req, "policy", True)
        if body is None:
            body = ""
        if not isinstance(body, str):
            self._type_error("policy", body, "string")
        replace, replace_labels = False, []
        if self.profile["policy_replace"]:  # older servers ignore unknown query parameters
            replace = self._query_bool(req, "replace")
            for value in req.query.get("replace-with-labels", []):
                replace_labels.extend(item for item in value.split(",") if item)
        try:
            parsed = json.loads(body)
        except ValueError:
            return _empty(400)  # putPolicyInvalidPolicy
        try:
            rules = pr.validate_rules(parsed, self.profile, enable_l7_proxy=self.enable_l7_proxy,
                                      enable_node_selector_labels=self.enable_node_selector_labels)
        except pr.PolicyDecodeError:
            return _empty(400)
        except pr.PolicyError as exc:
            return _api_error(500, exc.message)
        with self.lock:
            if replace:
                for rule in rules:
                    needed = pr.rule_labels(rule)
                    self._rules = [e for e in self._rules if not pr.labels_contain(pr.rule_labels(e["rule"]), needed)]
            if replace_labels:
                needed = [pr.parse_select_label(text) for text in replace_labels]
                self._rules = [e for e in self._rules if not pr.labels_contain(pr.rule_labels(e["rule"]), needed)]
            # Replacing and adding happen under one repository lock: no revision in between.
            self._rules.extend({"rule": rule, "source": "api", "resource": None} for rule in rules)
            self._bump()
            return _model({"policy": pr.go_marshal_indent(rules), "revision": self._revision})

    def _h_policy_delete(self, req):
        labels = self._labels_body(req) or []
        with self.lock:
            if labels:
                needed = [pr.parse_select_label(text) for text in labels]
                keep = [e for e in self._rules if not pr.labels_contain(pr.rule_labels(e["rule"]), needed)]
            else:
                keep = []  # no labels: delete every rule (`cilium policy delete --all`)
            if len(keep) == len(self._rules):
                if labels and self.profile["delete_policy_not_found_error"]:
                    return _api_error(500, "policy not found")  # deletePolicyFailure wraps the 404
            else:
                self._rules = keep
                self._bump()
            return _model(self._policy_payload([e["rule"] for e in self._rules]))

    # ---------------------------------------------------------------- static policies -------

    def _static_error(self, name, message, fatal):
        self._clear_static_error(name)
        self.static_policy_errors.append({"file": name, "error": message, "fatal": bool(fatal),
                                          "time": self.clock()})

    def _clear_static_error(self, name):
        self.static_policy_errors = [e for e in self.static_policy_errors if e["file"] != name]

    def _replace_resource(self, name, rules):
        """``ReplaceByResource``: swap the rules of one file in a single repository change."""
        kept = [e for e in self._rules if e["resource"] != name]
        added = [{"rule": rule, "source": "directory", "resource": name} for rule in rules or []]
        self._rules = kept + added
        self._bump()

    def _load_static_file(self, name, data):
        return load_static_file(name, data, self.profile, cluster_name=self.cluster_name,
                                policy_default_local_cluster=self.policy_default_local_cluster,
                                enable_l7_proxy=self.enable_l7_proxy,
                                enable_node_selector_labels=self.enable_node_selector_labels)


def load_static_file(name, data, profile, cluster_name="default", policy_default_local_cluster=None,
                     enable_l7_proxy=True, enable_node_selector_labels=False, enable_icmp_rules=True):
    """The rules the agent enforces from one ``--static-cnp-path`` file (``data``: its bytes).

    Decode and validate as the agent does, rewrite the selectors as ``ParseToCiliumRule`` does
    (``parse_to_cilium_rule``), and set the labels the directory watcher sets (it replaces the
    file's own): docs/upstream.md#static-files-peer-selectors-rewritten.
    ``policy_default_local_cluster=None`` means the release's default.  Raises
    ``_StaticDecodeError`` (the agent exits) or ``policy_rules.PolicyError`` (file rejected).
    """
    if isinstance(profile, str):
        profile = profile_for(profile)
    if policy_default_local_cluster is None:
        policy_default_local_cluster = profile["policy_default_local_cluster"]
    policy_cluster = cluster_name if policy_default_local_cluster else ""
    try:
        docs = list(yaml.safe_load_all(data.decode("utf-8")))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise _StaticDecodeError("error converting YAML to JSON: yaml: %s" % str(exc).replace("\n", " "))
    obj = _yaml_to_json(docs[0]) if docs else None  # YAMLToJSON converts the first document only
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise _StaticDecodeError("json: cannot unmarshal %s into Go value of type v2.CiliumNetworkPolicy"
                                 % _json_kind(obj))
    meta = obj.get("metadata") or {}
    if not isinstance(meta, dict):
        raise _StaticDecodeError("json: cannot unmarshal %s into Go struct field CiliumNetworkPolicy.metadata "
                                 "of type v1.ObjectMeta" % _json_kind(meta))
    for key in ("name", "namespace"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise _StaticDecodeError("json: cannot unmarshal %s into Go struct field ObjectMeta.metadata.%s of "
                                     "type string" % (_json_kind(meta[key]), key))
    spec, specs = obj.get("spec"), obj.get("specs")
    try:
        decoded_spec = pr.decode_rules([spec], profile)[0] if spec is not None else None
        decoded_specs = pr.decode_rules(specs, profile) if specs is not None else None
    except pr.PolicyDecodeError as exc:
        raise _StaticDecodeError(exc.message)
    namespace = meta.get("namespace") or ""
    kind = "CiliumNetworkPolicy" if namespace else "CiliumClusterwideNetworkPolicy"
    if not meta.get("name"):
        raise pr.PolicyError("CiliumNetworkPolicy must have name")
    if decoded_spec is None and decoded_specs is None:
        raise pr.PolicyError("Invalid %s spec(s): empty policy" % kind)
    out = []
    for which, items in (("spec", [decoded_spec] if decoded_spec is not None else []),
                         ("specs", decoded_specs or [])):
        for rule in items:
            try:
                sanitized = pr.validate_decoded([rule], profile, enable_l7_proxy,
                                                enable_node_selector_labels, enable_icmp_rules)[0]
            except pr.PolicyError as exc:
                raise pr.PolicyError("Invalid %s %s: %s" % (kind, which, exc.message))
            if namespace and "nodeSelector" in rule:
                raise pr.PolicyError("Invalid CiliumNetworkPolicy %s: rule cannot have NodeSelector" % which)
            sanitized = parse_to_cilium_rule(sanitized, namespace, policy_cluster, profile)
            labels = [{"key": "filename", "value": name, "source": "directory"}]
            if namespace:
                labels.append({"key": "io.cilium.k8s.policy.namespace", "value": namespace, "source": "directory"})
            labels.append({"key": "policy-derived-from", "value": kind, "source": "directory"})
            out.append(_with_labels(sanitized, labels))
    return out


class _StaticDecodeError(Exception):
    pass


def _yaml_to_json(value):
    """What ``sigs.k8s.io/yaml.YAMLToJSON`` yields: string keys, timestamps as strings, object
    keys in sorted order (it goes through a Go map), which decides which of two spellings of a
    field the decoder keeps (the last)."""
    if isinstance(value, dict):
        items = {str(k) if not isinstance(k, bool) else str(k).lower(): _yaml_to_json(v) for k, v in value.items()}
        return {k: items[k] for k in sorted(items)}
    if isinstance(value, list):
        return [_yaml_to_json(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


_NS_KEY = "k8s:io.kubernetes.pod.namespace"
_NS_ANY_KEY = "any:io.kubernetes.pod.namespace"
_CLUSTER_KEY = "k8s:io.cilium.k8s.policy.cluster"
_CLUSTER_ANY_KEY = "any:io.cilium.k8s.policy.cluster"
_NS_LABELS_PREFIXES = ("k8s:io.cilium.k8s.namespace.labels", "any:io.cilium.k8s.namespace.labels")


def _selector_key_set(sel):
    return set(sel.get("matchLabels") or {}) | {r["key"] for r in sel.get("matchExpressions") or []}


def _add_match(sel, key, value):
    labels = dict(sel.get("matchLabels") or {})
    labels[key] = value
    sel["matchLabels"] = {k: labels[k] for k in sorted(labels)}  # Go marshals map keys sorted


def _add_exists(sel, key):
    sel["matchExpressions"] = list(sel.get("matchExpressions") or []) + [{"key": key, "operator": "Exists"}]


def _add_cluster_filter(sel, cluster):
    """``addClusterFilterByDefault`` (1.18+)."""
    if cluster and not _selector_key_set(sel) & {_CLUSTER_KEY, _CLUSTER_ANY_KEY}:
        _add_match(sel, _CLUSTER_KEY, cluster)


def _peer_selector(sel, namespace, cluster, reserved_skips, matches_init):
    """``getEndpointSelector``: docs/upstream.md#static-files-peer-selectors-rewritten."""
    sel = copy.deepcopy(sel)
    keys = _selector_key_set(sel)
    if reserved_skips and any(k.startswith("reserved:") for k in keys):
        return sel
    if not keys & {_NS_KEY, _NS_ANY_KEY}:
        if not namespace:
            if not matches_init:
                _add_exists(sel, _NS_KEY)
        elif not any(k.startswith(_NS_LABELS_PREFIXES) for k in keys):
            _add_match(sel, _NS_KEY, namespace)
    _add_cluster_filter(sel, cluster)
    return sel


def parse_to_cilium_rule(rule, namespace, cluster, profile):
    """``ParseToCiliumRule`` on a sanitised rule (keys ``source:key``): what a policy file's rule
    becomes in the agent.  ``namespace`` "" = clusterwide; ``cluster`` "" = no cluster label
    (1.16/1.17, or ``--policy-default-local-cluster`` off).  A namespaced object also confines
    its subject to its namespace, so it selects nothing on Nomad."""
    rule = copy.deepcopy(rule)
    subject = rule.get("endpointSelector")
    matches_init = subject is not None and "reserved:init" in _selector_key_set(subject)
    if namespace and subject is not None:
        keys = _selector_key_set(subject)
        if not any(k.endswith(":io.kubernetes.pod.namespace") or k.startswith("reserved:") for k in keys):
            _add_match(subject, _NS_KEY, namespace)
    if profile["policy_default_local_cluster"] is None:
        cluster = ""  # no such flag before 1.18
    # Deny items share the common rule parser, fromRequires/toRequires included.
    for direction, peers in (("ingress", ("fromEndpoints", "fromRequires")),
                             ("ingressDeny", ("fromEndpoints", "fromRequires")),
                             ("egress", ("toEndpoints", "toRequires")), ("egressDeny", ("toEndpoints", "toRequires"))):
        for item in rule.get(direction) or []:
            for peer in peers:
                if peer.endswith("Requires") and profile["minor"] >= 19:
                    item.pop(peer, None)  # 1.19's parser does not copy them (always empty strings)
                elif item.get(peer) is not None:
                    # 1.16-1.18 skip reserved selectors only for *Endpoints (addK8sPrefix).
                    item[peer] = [_peer_selector(sel, namespace, cluster, peer.endswith("Endpoints"), matches_init)
                                  for sel in item[peer]]
            for peer in ("fromNodes", "toNodes"):
                for sel in item.get(peer) or []:
                    # reserved:remote-node Exists, then the cluster filter (utils.go, 1.16 .. 1.19)
                    _add_exists(sel, "reserved:remote-node")
                    _add_cluster_filter(sel, cluster)
    return rule


def policy_entries(rule):
    """Cilium 1.19's ``RulesToPolicyEntries`` for one (effective) rule, as ``GET /v1/policy``
    marshals them: docs/upstream.md#get-policy-in-119-policyentry.  The ``L3`` of entities,
    CIDRs and FQDNs and the ``L4`` of ICMP rules are simplified (UNCONFIRMED exact form; the
    collection reads only ``Labels``)."""
    node = "nodeSelector" in rule
    subject = rule.get("nodeSelector") if node else rule.get("endpointSelector")
    default_deny = rule.get("enableDefaultDeny") or {}
    labels = [{k: lbl[k] for k in ("key", "value", "source") if lbl.get(k) or k != "value"}
              for lbl in rule.get("labels") or []]
    out = []
    for section, ingress, verdict in (("ingress", True, 0), ("ingressDeny", True, 1),
                                      ("egress", False, 0), ("egressDeny", False, 1)):
        for item in rule.get(section) or []:
            l3 = []
            empty = False
            for peer in ("fromEndpoints", "toEndpoints", "fromNodes", "toNodes", "fromEntities", "toEntities",
                         "fromCIDR", "toCIDR", "fromCIDRSet", "toCIDRSet", "toFQDNs"):
                if peer not in item:
                    continue
                values = item[peer]
                if not values and peer != "toFQDNs":
                    empty = True  # an explicitly empty peer list selects nothing
                for value in values:
                    if peer.endswith(("Endpoints", "Nodes")):
                        l3.append(value)
                    elif peer.endswith("Entities"):
                        l3.append({"matchLabels": {"reserved:%s" % value: ""}})
                    elif peer.endswith("CIDRSet"):
                        l3.append("cidr:%s" % value.get("cidr", value.get("cidrGroupRef", "")))
                    elif peer.endswith("CIDR"):
                        l3.append("cidr:%s" % value)
                    else:
                        l3.append(value.get("matchName") or value.get("matchPattern"))
            ports = list(item.get("toPorts") or [])
            ports += [{"ports": [{"port": str(f.get("type")), "protocol": "ICMP"}]}
                      for icmp in item.get("icmps") or [] for f in icmp.get("fields") or []]
            out.append({
                "Tier": 0, "Priority": 0,
                "Authentication": item.get("authentication") if verdict == 0 else None,
                "Log": rule.get("log") or {},
                "Subject": subject,
                "L3": None if empty else l3,
                "L4": ports or None,
                "Labels": labels,
                "DefaultDeny": default_deny.get("ingress" if ingress else "egress", True) is not False,
                "Verdict": verdict, "Ingress": ingress, "Node": node,
            })
    return out


def selects(selector, labels):
    """Does an effective selector (keys ``source:key``) select an endpoint with ``labels``
    (``"source:key=value"`` strings or ``(source, key, value)``)?"""
    triples = [pr.parse_label(lbl) if isinstance(lbl, str) else tuple(lbl) for lbl in labels]
    return pr.selector_matches(selector, triples)


def _with_labels(rule, labels):
    """Set ``labels`` on a sanitised rule, keeping Go field order."""
    order = ["endpointSelector", "nodeSelector", "ingress", "ingressDeny", "egress", "egressDeny", "labels",
             "enableDefaultDeny", "description", "log"]
    merged = dict(rule, labels=labels)
    return {k: merged[k] for k in order if k in merged}
