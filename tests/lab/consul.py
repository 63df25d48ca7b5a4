"""Consul simulator for the lab (test infrastructure, never imported by product code).

An API-faithful, in-process model of one Consul server agent (leader of a one-node cluster):
KV with CAS, locks, tombstones and blocking queries; atomic ``/v1/txn``; sessions with TTL,
lock-delay and release/delete behaviour; token ACLs with Consul's wording; ``/v1/status/*`` and
``/v1/agent/self``.  Behaviour follows Consul 1.16.0 (tag ``v1.16.0`` of hashicorp/consul:
``agent/kvs_endpoint.go``, ``agent/consul/state/kvs.go``, ``state/txn.go``,
``agent/session_endpoint.go``, ``agent/blockingquery``), recorded in docs/upstream.md#consul-http
and the entries after it; ``version`` switches the few differences by release.  Where a fact
is UNCONFIRMED, the choice made here is commented at the place it is made.

Time: TTLs and lock-delays run on the sim clock (``clock() + advance()`` offset) so tests can
skip ahead; blocking-query waits run on real time because the HTTP client waits in real time.
Session expiry is lazy: it happens at the start of every request, inside every blocking wait
(polled), on every direct state call and in ``expire_sessions_now()``/``advance()``.

Stdlib only, so the lab runs anywhere.
"""

import base64
import json
import re
import threading
import time
import uuid
from urllib.parse import quote, quote_plus

from . import httpd
from .kvstore import go_path_clean

# --------------------------------------------------------------------------------------------
# Constants taken from Consul (v1.16.0; docs/upstream.md#consul-sessions, #consul-blocking)
# --------------------------------------------------------------------------------------------

ANONYMOUS_ACCESSOR_ID = "00000000-0000-0000-0000-000000000002"
MANAGEMENT_SECRET = "e95b599e-166e-7d80-08ad-aee76e7ddf19"
MANAGEMENT_ACCESSOR_ID = "2e1f0c47-3d41-4b8a-9a7e-0d1c5a6b7c8d"

NS_PER_SECOND = 1_000_000_000
SESSION_TTL_MIN_NS = 10 * NS_PER_SECOND          # server option session_ttl_min, default 10s
SESSION_TTL_MAX_NS = 24 * 3600 * NS_PER_SECOND   # structs.SessionTTLMax
SESSION_TTL_MULTIPLIER = 2                       # structs.SessionTTLMultiplier
DEFAULT_LOCK_DELAY_NS = 15 * NS_PER_SECOND
MAX_LOCK_DELAY_NS = 60 * NS_PER_SECOND           # structs.MaxLockDelay
LOCK_DELAY_MIN_THRESHOLD = 1000                  # numbers below this are seconds, not ns
DEFAULT_QUERY_WAIT_S = 5 * 60                    # blocking query without ?wait
MAX_QUERY_WAIT_S = 10 * 60                       # ?wait is capped here
SERF_CHECK_ID = "serfHealth"
LEADER_ADDRESS = "127.0.0.1:8300"
KV_MAX_VALUE_SIZE_DOC = ("https://developer.hashicorp.com/docs/agent/config/config-files"
                         "#kv_max_value_size")
TXN_MAX_REQ_LEN_DOC = "https://www.consul.io/docs/agent/config/config-files#txn_max_req_len"

# A fresh cluster has already written some internal raft entries (raft config, autopilot, CA
# config...), so the first user write does not get index 1.  Starting above 1 also catches
# clients that assume indexes start at 1 or are contiguous per key.
INITIAL_RAFT_INDEX = 12

KV_WRITE_VERBS = ("set", "delete", "delete-cas", "delete-tree", "cas", "lock", "unlock")

_TEXT = "text/plain; charset=utf-8"


def _version_tuple(version):
    parts = re.findall(r"\d+", version)[:3]
    return tuple(int(p) for p in parts + ["0"] * (3 - len(parts)))


def _go_quote(text):
    """Go's %q for ordinary strings (close enough: both escape quotes and backslashes)."""
    return json.dumps(text, ensure_ascii=False)


def _text_error(status, message):
    return httpd.HttpError(status, message, _TEXT)


# --------------------------------------------------------------------------------------------
# Go-compatible parsing helpers
# --------------------------------------------------------------------------------------------

_DURATION_UNITS_NS = {"ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000,
                      "s": NS_PER_SECOND, "m": 60 * NS_PER_SECOND, "h": 3600 * NS_PER_SECOND}
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)([^0-9.]*)")


def parse_go_duration(text):
    """time.ParseDuration: returns nanoseconds, raises ValueError with Go's message."""
    quoted = _go_quote(text)
    rest = text
    negative = False
    if rest[:1] in ("-", "+"):
        negative = rest[0] == "-"
        rest = rest[1:]
    if rest == "0":
        return 0
    if rest == "":
        raise ValueError("time: invalid duration %s" % quoted)
    total = 0.0
    while rest:
        match = _DURATION_PART.match(rest)
        number, unit = match.group(1), match.group(2)
        if number in ("", "."):
            raise ValueError("time: invalid duration %s" % quoted)
        if unit == "":
            raise ValueError("time: missing unit in duration %s" % quoted)
        if unit not in _DURATION_UNITS_NS:
            raise ValueError("time: unknown unit %s in duration %s" % (_go_quote(unit), quoted))
        total += float(number) * _DURATION_UNITS_NS[unit]
        rest = rest[match.end():]
    return -int(total) if negative else int(total)


def parse_go_uint(text):
    """strconv.ParseUint(text, 10, 64); raises ValueError with Go's message."""
    if not re.fullmatch(r"[0-9]+", text or ""):
        raise ValueError('strconv.ParseUint: parsing %s: invalid syntax' % _go_quote(text))
    value = int(text)
    if value >= 2 ** 64:
        raise ValueError('strconv.ParseUint: parsing %s: value out of range' % _go_quote(text))
    return value


_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def go_b64decode(src):
    """base64.StdEncoding.DecodeString with Go's error positions.

    Raises ValueError("illegal base64 data at input byte N").  The position logic is a port of
    Go's decodeQuantum; Go skips CR/LF inside the input, so do we.
    """
    def corrupt(pos):
        return ValueError("illegal base64 data at input byte %d" % pos)

    si, n = 0, len(src)
    while True:
        j = 0
        while j < 4:
            if si == n:
                if j == 0:
                    return base64.b64decode(re.sub(r"[\r\n]", "", src))
                raise corrupt(si - j)
            ch = src[si]
            si += 1
            if ch in "\r\n":
                continue
            if ch in _B64_ALPHABET:
                j += 1
                continue
            if ch != "=":
                raise corrupt(si - 1)
            # Padding: only valid after 2 or 3 data characters of a quantum, then end of input.
            if j in (0, 1):
                raise corrupt(si - 1)
            if j == 2:
                while si < n and src[si] in "\r\n":
                    si += 1
                if si == n:
                    raise corrupt(n)
                if src[si] != "=":
                    raise corrupt(si - 1)
                si += 1
            while si < n and src[si] in "\r\n":
                si += 1
            if si < n:
                raise corrupt(si)
            return base64.b64decode(re.sub(r"[\r\n]", "", src))


def _go_values_encode(query):
    """url.Values.Encode(): keys sorted, each value QueryEscape'd (space -> '+')."""
    parts = []
    for key in sorted(query):
        for value in query[key]:
            parts.append("%s=%s" % (quote_plus(key, safe=""), quote_plus(value, safe="")))
    return "&".join(parts)


# --------------------------------------------------------------------------------------------
# State objects
# --------------------------------------------------------------------------------------------

class DirEntry:
    """One KV entry (structs.DirEntry).  Stored entries are never mutated in place, so a txn can
    roll back by restoring the containers it copied."""

    __slots__ = ("key", "value", "flags", "lock_index", "session", "create_index", "modify_index")

    def __init__(self, key, value=None, flags=0, lock_index=0, session="", create_index=0,
                 modify_index=0):
        self.key = key
        self.value = value or None  # Consul stores an empty value as nil -> JSON null
        self.flags = flags
        self.lock_index = lock_index
        self.session = session or ""
        self.create_index = create_index
        self.modify_index = modify_index

    def clone(self):
        return DirEntry(self.key, self.value, self.flags, self.lock_index, self.session,
                        self.create_index, self.modify_index)

    def same_content(self, other):
        """DirEntry.Equal: indexes are not compared."""
        return (self.lock_index == other.lock_index and self.key == other.key
                and self.flags == other.flags and (self.value or b"") == (other.value or b"")
                and self.session == other.session)

    def to_api(self, with_value=True):
        """JSON shape, field order as Consul marshals it; Session omitted when empty."""
        value = self.value if with_value else None
        out = {"LockIndex": self.lock_index, "Key": self.key, "Flags": self.flags,
               "Value": base64.b64encode(value).decode("ascii") if value else None}
        if self.session:
            out["Session"] = self.session
        out["CreateIndex"] = self.create_index
        out["ModifyIndex"] = self.modify_index
        return out

    def to_state(self):
        """Shape of the direct state API: Value as bytes (or None)."""
        out = {"Key": self.key, "Value": self.value, "Flags": self.flags,
               "CreateIndex": self.create_index, "ModifyIndex": self.modify_index,
               "LockIndex": self.lock_index}
        if self.session:
            out["Session"] = self.session
        return out


class Session:
    """structs.Session plus the TTL deadline the leader keeps in memory."""

    def __init__(self, sid, name, node, lock_delay_ns, behavior, ttl, node_checks,
                 service_checks, index):
        self.id = sid
        self.name = name
        self.node = node
        self.lock_delay_ns = lock_delay_ns
        self.behavior = behavior
        self.ttl = ttl
        self.ttl_ns = parse_go_duration(ttl) if ttl else 0
        self.node_checks = node_checks
        self.service_checks = service_checks
        self.create_index = index
        self.modify_index = index
        self.deadline = None  # sim-clock time at which the TTL timer invalidates the session

    def reset_timer(self, now):
        # Consul arms the TTL timer at TTL x SessionTTLMultiplier (2): the docs only promise
        # invalidation "up to double this TTL"; we pick exactly 2 x TTL, the source-read value.
        if self.ttl_ns:
            self.deadline = now + SESSION_TTL_MULTIPLIER * self.ttl_ns / NS_PER_SECOND

    def to_api(self):
        return {"ID": self.id, "Name": self.name, "Node": self.node,
                "LockDelay": self.lock_delay_ns, "Behavior": self.behavior, "TTL": self.ttl,
                "NodeChecks": self.node_checks, "ServiceChecks": self.service_checks,
                "CreateIndex": self.create_index, "ModifyIndex": self.modify_index}


class Authorizer:
    """A resolved ACL token: prefix rules per resource, Consul longest-prefix-match semantics."""

    def __init__(self, accessor_id, secret, default_policy, key_rules=None, session_rules=None,
                 agent_rules=None, management=False):
        self.accessor_id = accessor_id
        self.secret = secret
        self.default_allows = default_policy == "allow"
        self.management = management
        self.rules = {"key": dict(key_rules or {}), "session": dict(session_rules or {}),
                      "agent": dict(agent_rules or {})}

    @staticmethod
    def _grants(policy, level):
        if level == "read":
            return policy in ("read", "write")
        return policy == "write"

    def _longest_match(self, resource, name):
        matches = [p for p in self.rules[resource] if name.startswith(p)]
        if not matches:
            return None
        return self.rules[resource][max(matches, key=len)]

    def allowed(self, resource, level, name):
        if self.management:
            return True
        policy = self._longest_match(resource, name)
        if policy is None:
            return self.default_allows
        return self._grants(policy, level)

    def key_write_prefix(self, prefix):
        """KeyWritePrefix: the governing rule and every rule under the prefix must grant write."""
        if self.management:
            return True
        for rule_prefix, policy in self.rules["key"].items():
            if rule_prefix.startswith(prefix) and not self._grants(policy, "write"):
                return False
        policy = self._longest_match("key", prefix)
        if policy is None:
            return self.default_allows
        return self._grants(policy, "write")

    def denied(self, resource, level, name):
        """acl.PermissionDeniedError text (Consul >= 1.12 wording)."""
        anonymous = self.accessor_id == ANONYMOUS_ACCESSOR_ID
        who = "anonymous token" if anonymous else "token with AccessorID '%s'" % self.accessor_id
        message = "Permission denied: %s lacks permission '%s:%s'" % (who, resource, level)
        if name:
            message += " on %s" % _go_quote(name)
        if anonymous:
            message += (". The anonymous token is used implicitly when a request does not"
                        " specify a token.")
        return message


class _AllowAll(Authorizer):
    """What ACL-disabled Consul resolves every token to."""

    def __init__(self):
        super().__init__(MANAGEMENT_ACCESSOR_ID, "", "allow", management=True)


class _QueryOptions:
    """Parsed ?dc, token, consistency and ?index/?wait (agent/http.go parse())."""

    def __init__(self, dc, token, min_index, wait_s):
        self.dc = dc
        self.token = token
        self.min_index = min_index
        self.wait_s = wait_s


class _TxnFailure(Exception):
    """An error of one txn op; becomes {"OpIndex": i, "What": message}."""


class _KVOp:
    """One KV op of a txn body, already decoded."""

    def __init__(self, verb, key, value, flags, index, session):
        self.verb = verb
        self.key = key
        self.value = value
        self.flags = flags
        self.index = index
        self.session = session

    def entry(self):
        return DirEntry(self.key, self.value, self.flags, 0, self.session, 0, self.index)


# --------------------------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------------------------

class ConsulSim(httpd.Service):
    server_header = False  # Consul sends no Server header (verified on Consul 1.16.0)

    """One Consul server agent, leader of a one-node cluster."""

    BLOCKING_POLL_S = 0.1  # blocking waits re-check TTL expiry this often

    def __init__(self, log=None, version="1.16.0", acl_enabled=False, default_policy="deny",
                 datacenter="dc1", node_name="lab-consul", kv_max_value_size=524288,
                 clock=time.monotonic):
        super().__init__("consul", log)
        self.version = version
        self.version_tuple = _version_tuple(version)
        self.acl_enabled = acl_enabled
        self.default_policy = default_policy
        self.datacenter = datacenter
        self.node_name = node_name
        self.node_id = str(uuid.uuid5(uuid.NAMESPACE_DNS, node_name))
        self.kv_max_value_size = kv_max_value_size
        self.txn_max_req_len = 524288
        # Hard-coded in agent/txn_endpoint.go: 64 up to 1.13, 128 since 1.14.0 (PR #14599).
        self.txn_max_ops = 64 if self.version_tuple < (1, 14, 0) else 128
        self.management_token = MANAGEMENT_SECRET
        self.nodes = {node_name}                 # catalog nodes sessions may be bound to
        self.node_checks = {(node_name, SERF_CHECK_ID)}

        self._clock = clock
        self._offset = 0.0
        self._changed = threading.Condition(self.lock)

        self._raft_index = INITIAL_RAFT_INDEX
        self._table_index = {"kvs": 0, "tombstones": 0, "sessions": 0}
        self._kv = {}          # key -> DirEntry
        self._tombstones = {}  # key -> raft index of the delete (never reaped in the lab)
        self._lock_delays = {}  # key -> sim-clock time the lock-delay ends
        self._sessions = {}    # id -> Session
        self._tokens = {}      # secret -> Authorizer
        self._allowed_methods = []  # (compiled path regex, [methods]) for 405 answers
        self._tokens[MANAGEMENT_SECRET] = Authorizer(
            MANAGEMENT_ACCESSOR_ID, MANAGEMENT_SECRET, default_policy, management=True)
        self._register_routes()

    # ----------------------------------------------------------------------------------------
    # Direct state API (lab seeding, test inspection)
    # ----------------------------------------------------------------------------------------

    def kv_put(self, key, value, flags=0):
        """Write a key like a plain PUT would (keeps a lock holder); returns the stored entry."""
        if isinstance(value, str):
            value = value.encode("utf-8")
        with self.lock:
            self._reap_expired_sessions()
            idx = self._next_raft_index()
            entry = DirEntry(key, value, flags)
            self._kvs_set(idx, entry, update_session=False)
            self._changed.notify_all()
            return self._kv[key].to_state()

    def kv_get(self, key):
        """The stored entry (Value as bytes or None), or None if the key does not exist."""
        with self.lock:
            self._reap_expired_sessions()
            entry = self._kv.get(key)
            return entry.to_state() if entry else None

    def kv_keys(self, prefix=""):
        """Sorted keys under a prefix."""
        with self.lock:
            self._reap_expired_sessions()
            return sorted(k for k in self._kv if k.startswith(prefix))

    def kv_delete(self, key, recurse=False):
        """Delete a key (or a prefix), leaving tombstones like the HTTP API does."""
        with self.lock:
            self._reap_expired_sessions()
            idx = self._next_raft_index()
            if recurse:
                self._kvs_delete_tree(idx, key)
            else:
                self._kvs_delete(idx, key)
            self._changed.notify_all()

    def add_token(self, secret, key_prefix_rules=None, session_prefix_rules=None,
                  agent_prefix_rules=None, accessor_id=None):
        """Register an ACL token; rules map prefix -> "read"|"write"|"deny" ("" = everything).
        Rules apply by longest prefix; names no rule covers fall back to default_policy."""
        for rules in (key_prefix_rules, session_prefix_rules, agent_prefix_rules):
            for prefix, policy in (rules or {}).items():
                if policy not in ("read", "write", "deny"):
                    raise ValueError("policy for %r must be read, write or deny, not %r"
                                     % (prefix, policy))
        accessor_id = accessor_id or str(uuid.uuid4())
        with self.lock:
            self._tokens[secret] = Authorizer(accessor_id, secret, self.default_policy,
                                              key_prefix_rules, session_prefix_rules,
                                              agent_prefix_rules)
        return accessor_id

    def sessions(self):
        """Every live session as the API shows it (test inspection helper)."""
        with self.lock:
            self._reap_expired_sessions()
            return [s.to_api() for unused, s in sorted(self._sessions.items())]

    @property
    def last_index(self):
        """The last raft index handed out (test inspection helper)."""
        with self.lock:
            return self._raft_index

    def expire_sessions_now(self):
        """Invalidate every session whose TTL timer (2 x TTL after the last renew) has run out."""
        with self.lock:
            self._reap_expired_sessions()

    def advance(self, seconds):
        """Move the sim clock forward (TTL timers, lock-delays), then expire what is due."""
        with self.lock:
            self._offset += float(seconds)
            self._reap_expired_sessions()
            self._changed.notify_all()

    # ----------------------------------------------------------------------------------------
    # Service plumbing
    # ----------------------------------------------------------------------------------------

    def _now(self):
        return self._clock() + self._offset

    def _next_raft_index(self):
        self._raft_index += 1
        return self._raft_index

    def _route(self, methods, pattern, handler):
        for method in methods:
            self.route(method, pattern, handler)
        self._allowed_methods.append((re.compile("^" + pattern + "$"), list(methods)))

    def _register_routes(self):
        self._route(["GET", "PUT", "DELETE"], r"/v1/kv/(?P<key>[\s\S]*)", self._kv_endpoint)
        self._route(["PUT"], r"/v1/txn", self._txn)
        self._route(["PUT"], r"/v1/session/create", self._session_create)
        self._route(["PUT"], r"/v1/session/destroy/(?P<sid>[\s\S]*)", self._session_destroy)
        self._route(["PUT"], r"/v1/session/renew/(?P<sid>[\s\S]*)", self._session_renew)
        self._route(["GET"], r"/v1/session/info/(?P<sid>[\s\S]*)", self._session_info)
        self._route(["GET"], r"/v1/session/list", self._session_list)
        self._route(["GET"], r"/v1/session/node/(?P<node>[\s\S]*)", self._session_node)
        self._route(["GET"], r"/v1/status/leader", self._status_leader)
        self._route(["GET"], r"/v1/status/peers", self._status_peers)
        self._route(["GET"], r"/v1/agent/self", self._agent_self)
        self._route(["GET"], r"/v1/acl/token/self", self._acl_token_self)

    def dispatch(self, req):
        redirect = self._mux_redirect(req)
        if redirect is not None:
            return redirect
        with self.lock:
            self._reap_expired_sessions()
        resp = super().dispatch(req)
        # agent/http.go wrap(): set on every wrapped response since 1.9
        # (docs/upstream.md#consul-http).  With ACLs disabled the agent's acl.default_policy
        # config default is "allow".
        policy = self.default_policy if self.acl_enabled else "allow"
        resp.headers.setdefault("X-Consul-Default-ACL-Policy", policy)
        # gzip handler around every API response (verified on Consul 1.16.0)
        resp.headers.setdefault("Vary", "Accept-Encoding")
        return resp

    @staticmethod
    def _mux_redirect(req):
        """Go's http.ServeMux (Go 1.21, which builds Consul 1.16) answers a path that path.Clean
        would change -- ``a//b``, ``a/./b``, ``a/../b``, a trailing ``/.`` -- with a 301 to the
        cleaned path (a trailing ``/`` is kept) before Consul sees the request: nothing is written
        (docs/upstream.md#consul-cleans-kv-paths; verified on Consul 1.16.0).  ``/v1/kv`` gets
        a 301 to ``/v1/kv/`` (only the subtree pattern is registered).  GET and HEAD answers
        carry a small HTML body; none carries Consul's own headers."""
        path = req.path
        cleaned = go_path_clean(path if path.startswith("/") else "/" + path)
        if path.endswith("/") and cleaned != "/":
            cleaned += "/"
        if cleaned == "/v1/kv":
            cleaned = "/v1/kv/"
        if cleaned == path:
            return None
        location = quote(cleaned, safe="/:@!$&'()*+,;=-._~") + ("?" + req.raw_query if req.raw_query else "")
        if req.method in ("GET", "HEAD"):
            body = '<a href="%s">Moved Permanently</a>.\n\n' % location
            return httpd.Response(301, body.encode(), "text/html; charset=utf-8", {"Location": location})
        return httpd.Response(301, b"", None, {"Location": location})

    def not_found(self, req):
        # Unregistered paths fall through to Consul's index handler.
        if "/v1/" in req.path:
            return httpd.text_response("Invalid URL path: not a recognized HTTP API endpoint\n",
                                       404)
        return httpd.text_response("Invalid URL path: if attempting to use the HTTP API, ensure "
                                   "the path starts with '/v1/'\n", 404)

    def method_not_allowed(self, req):
        allowed = []
        for regex, methods in self._allowed_methods:
            if regex.match(req.path):
                allowed = methods
                break
        return httpd.text_response("method %s not allowed" % req.method, 405,
                                   {"Allow": ",".join(["OPTIONS"] + allowed)})

    @staticmethod
    def _json(req, obj, status=200, headers=None):
        """Marshal like Go's encoding/json: compact, UTF-8, HTML-safe escapes; ?pretty indents."""
        if req.has("pretty"):
            body = json.dumps(obj, indent=4, ensure_ascii=False) + "\n"
        else:
            body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                             ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
            body = body.replace(char, escape)
        return httpd.Response(status, body.encode("utf-8"), "application/json", headers)

    # ----------------------------------------------------------------------------------------
    # Request parsing shared by endpoints (agent/http.go, v1.16.0; docs/upstream.md#consul-http)
    # ----------------------------------------------------------------------------------------

    @staticmethod
    def _first(req, name, default=None):
        """url.Values.Get(): the first value of a parameter."""
        values = req.query.get(name)
        return values[0] if values else default

    @staticmethod
    def _request_token(req):
        """?token= (deprecated) wins, then X-Consul-Token, then Authorization: Bearer."""
        token = ConsulSim._first(req, "token", "")
        if token:
            return token
        token = req.header("X-Consul-Token", "")
        if token:
            return token
        auth = req.header("Authorization", "")
        parts = auth.split(" ")
        if len(parts) > 1 and parts[0].lower() == "bearer":
            return " ".join(parts[1:]).strip().split(" ", maxsplit=1)[0].strip()
        return ""

    def _parse_query(self, req):
        """parse(): dc, token, consistency and blocking parameters, with Consul's 400s."""
        dc = self._first(req, "dc", "") or self.datacenter
        token = self._request_token(req)
        if req.has("stale") and req.has("consistent"):
            raise _text_error(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        wait_s = 0.0
        wait = self._first(req, "wait", "")
        if wait:
            try:
                wait_s = parse_go_duration(wait) / NS_PER_SECOND
            except ValueError:
                raise _text_error(400, "Invalid wait time")
        min_index = 0
        index = self._first(req, "index", "")
        if index:
            try:
                min_index = parse_go_uint(index)
            except ValueError:
                raise _text_error(400, "Invalid index")
        return _QueryOptions(dc, token, min_index, wait_s)

    def _light_options(self, req):
        """parseDC + parseToken only (session create/destroy, write txns)."""
        return _QueryOptions(self._first(req, "dc", "") or self.datacenter,
                             self._request_token(req), 0, 0.0)

    def _check_datacenter(self, opts):
        # A foreign dc would be forwarded over the WAN; the lab has no other datacenter.
        if opts.dc != self.datacenter:
            raise _text_error(500, "No path to datacenter")

    def _resolve_token(self, opts):
        """ResolveToken: unknown secrets are a 403 "ACL not found" before anything else."""
        if not self.acl_enabled:
            return _AllowAll()
        if opts.token in ("", "anonymous"):
            return Authorizer(ANONYMOUS_ACCESSOR_ID, "anonymous", self.default_policy)
        authz = self._tokens.get(opts.token)
        if authz is None:
            raise _text_error(403, "ACL not found")
        return authz

    def _require(self, authz, resource, level, name):
        if not authz.allowed(resource, level, name):
            raise _text_error(403, authz.denied(resource, level, name))

    def _query_headers(self, index, opts=None, filtered=False):
        """setMeta(): X-Consul-Index (never 0), KnownLeader, LastContact, filtered-by-ACLs."""
        headers = {"X-Consul-Index": str(max(index, 1)), "X-Consul-KnownLeader": "true",
                   "X-Consul-LastContact": "0", "X-Consul-Query-Backend": "blocking-query"}
        # maskResultsFilteredByACLs: an anonymous caller is never told results were hidden.
        # Sent from 1.11 only; 1.8.7 never sends it (docs/upstream.md#consul-acl-filtering).
        if filtered and opts is not None and opts.token and self.version_tuple >= (1, 11):
            headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
        return headers

    def _blocking_query(self, opts, run):
        """blockingquery.Query().  run() -> (index, result, not_found), called under self.lock.

        Returns (index, result).  Without ?index the query runs once.  With it, the request
        waits (real time, default 5m, capped at 10m, no jitter so tests are deterministic) until
        the index moves past ?index.  Like Consul >= 1.13, a result that stays "not found" on a
        re-run raises the bar to the current index, so a watch on a missing key only returns
        when that key appears (or on timeout), not on unrelated writes.
        """
        index, result, not_found = run()
        if opts.min_index == 0:
            return index, result
        wait_s = opts.wait_s if opts.wait_s > 0 else DEFAULT_QUERY_WAIT_S
        deadline = time.monotonic() + min(wait_s, MAX_QUERY_WAIT_S)
        min_index = opts.min_index
        seen_not_found = not_found
        while index <= min_index:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._changed.wait(min(remaining, self.BLOCKING_POLL_S))
            self._reap_expired_sessions()
            index, result, not_found = run()
            if not_found and seen_not_found:
                min_index = max(min_index, index)
            seen_not_found = seen_not_found or not_found
        return index, result

    # ----------------------------------------------------------------------------------------
    # KV state (agent/consul/state/kvs.go, v1.16.0; docs/upstream.md#consul-kv)
    # ----------------------------------------------------------------------------------------

    def _kvs_max_index(self):
        return max(self._table_index["kvs"], self._table_index["tombstones"])

    def _kvs_insert(self, idx, entry):
        self._kv[entry.key] = entry
        self._table_index["kvs"] = idx

    def _kvs_set(self, idx, entry, update_session):
        """kvsSetTxn.  A plain set keeps the lock holder but, as in Consul's source, takes
        LockIndex from the request (0): only lock/unlock carry it forward."""
        existing = self._kv.get(entry.key)
        entry.create_index = existing.create_index if existing else idx
        if not update_session:
            entry.session = existing.session if existing else ""
        if existing is not None and existing.same_content(entry):
            entry.modify_index = existing.modify_index  # identical write: index unchanged
            return
        entry.modify_index = idx
        self._kvs_insert(idx, entry)

    def _kvs_set_cas(self, idx, entry):
        """kvsSetCASTxn: entry.modify_index carries the CAS index; 0 means create-only."""
        existing = self._kv.get(entry.key)
        if entry.modify_index == 0 and existing is not None:
            return False
        if entry.modify_index != 0 and existing is None:
            return False
        if existing is not None and entry.modify_index != existing.modify_index:
            return False
        self._kvs_set(idx, entry, update_session=False)
        return True

    def _kvs_lock(self, idx, entry):
        """kvsLockTxn.  Raises _TxnFailure for a missing/unknown session (500 over HTTP)."""
        if not entry.session:
            raise _TxnFailure("missing session")
        if entry.session not in self._sessions:
            raise _TxnFailure("invalid session %s" % _go_quote(entry.session))
        existing = self._kv.get(entry.key)
        if existing is not None:
            if existing.session == entry.session:
                entry.lock_index = existing.lock_index  # re-acquire by the holder
            elif existing.session:
                return False                            # someone else holds it
            else:
                entry.lock_index = existing.lock_index + 1
            entry.create_index = existing.create_index
        else:
            entry.create_index = idx
            entry.lock_index = 1
        self._kvs_set(idx, entry, update_session=True)
        return True

    def _kvs_unlock(self, idx, entry):
        """kvsUnlockTxn: only the holder can release; the value is replaced by the request's."""
        if not entry.session:
            raise _TxnFailure("missing session")
        existing = self._kv.get(entry.key)
        if existing is None or existing.session != entry.session:
            return False
        entry.session = ""
        entry.lock_index = existing.lock_index
        entry.create_index = existing.create_index
        self._kvs_set(idx, entry, update_session=True)
        return True

    def _kvs_delete(self, idx, key):
        existing = self._kv.pop(key, None)
        if existing is None:
            return
        self._tombstones[key] = idx
        self._table_index["tombstones"] = idx
        self._table_index["kvs"] = idx

    def _kvs_delete_cas(self, idx, cas_index, key):
        """kvsDeleteCASTxn: true if the key is missing, false if the index differs."""
        existing = self._kv.get(key)
        if existing is None:
            return True
        if existing.modify_index != cas_index:
            return False
        self._kvs_delete(idx, key)
        return True

    def _kvs_delete_tree(self, idx, prefix):
        for key in [k for k in self._kv if k.startswith(prefix)]:
            self._kvs_delete(idx, key)

    def _kvs_list(self, prefix):
        """kvsListTxn: (index, sorted entries).  The index is the highest ModifyIndex among the
        entries and tombstones under the prefix, or the table index for the empty prefix."""
        index = self._kvs_max_index()
        entries = [self._kv[k] for k in sorted(self._kv) if k.startswith(prefix)]
        list_index = max((e.modify_index for e in entries), default=0)
        if prefix:
            tomb_index = max((i for k, i in self._tombstones.items() if k.startswith(prefix)),
                             default=0)
            list_index = max(list_index, tomb_index)
        else:
            list_index = index
        if list_index:
            index = list_index
        return index, entries

    def _lock_delay_active(self, key):
        expires = self._lock_delays.get(key)
        return expires is not None and expires > self._now()

    # ----------------------------------------------------------------------------------------
    # Sessions state (agent/consul/state/session.go, v1.16.0; docs/upstream.md#consul-sessions)
    # ----------------------------------------------------------------------------------------

    def _invalidate_session(self, sid):
        """sessionDeleteWithSession: one raft write; held keys are released (or deleted) and
        each gets the session's lock-delay (destroy and TTL expiry alike; an explicit
        ?release never reaches here and starts no lock-delay)."""
        session = self._sessions.pop(sid, None)
        idx = self._next_raft_index()
        if session is None:
            return
        self._table_index["sessions"] = idx
        delay_s = min(session.lock_delay_ns, MAX_LOCK_DELAY_NS) / NS_PER_SECOND
        now = self._now()
        for key in sorted(k for k, e in self._kv.items() if e.session == sid):
            if session.behavior == "delete":
                self._kvs_delete(idx, key)
            else:
                released = self._kv[key].clone()
                released.session = ""
                self._kvs_set(idx, released, update_session=True)
            if delay_s > 0:
                self._lock_delays[key] = now + delay_s
        self._changed.notify_all()

    def _reap_expired_sessions(self):
        now = self._now()
        expired = [sid for sid, s in sorted(self._sessions.items())
                   if s.deadline is not None and s.deadline <= now]
        for sid in expired:
            self._invalidate_session(sid)

    # ----------------------------------------------------------------------------------------
    # KV HTTP endpoint (agent/kvs_endpoint.go, v1.16.0; docs/upstream.md#consul-kv)
    # ----------------------------------------------------------------------------------------

    def _kv_endpoint(self, req):
        opts = self._parse_query(req)
        key = req.params["key"]
        if key:
            self._validate_key(key)
        with self.lock:
            if req.method == "GET":
                if req.has("keys"):
                    return self._kv_get_keys(req, opts, key)
                return self._kv_get(req, opts, key)
            if req.method == "PUT":
                return self._kv_put(req, opts, key)
            return self._kv_delete(req, opts, key)

    def _validate_key(self, key):
        # A leading "/" (GET /v1/kv//foo) never gets here: the path holds "//" and
        # _mux_redirect answers 301 first, as Consul 1.16.0 does.
        # UNCONFIRMED status: since 1.21.6/1.22 path traversal is rejected (CVE-2025-11392).
        if self.version_tuple >= (1, 21, 6) and ("../" in key or "..\\" in key):
            raise _text_error(400, "key contains path traversal sequence")

    def _conflicting_flags(self, req, *flags):
        if sum(1 for flag in flags if req.has(flag)) > 1:
            # no trailing newline (verified on Consul 1.16.0)
            raise _text_error(400, "Conflicting flags: %s" % _go_values_encode(req.query))

    def _kv_get(self, req, opts, key):
        recurse = req.has("recurse")
        if not recurse and key == "":
            raise _text_error(400, "Missing key name")
        self._check_datacenter(opts)
        authz = self._resolve_token(opts)
        state = {"filtered": False}

        def run_get():
            self._require(authz, "key", "read", key)
            entry = self._kv.get(key)
            if entry is None:
                return self._kvs_max_index(), [], True
            return entry.modify_index, [entry], False

        def run_list():
            index, entries = self._kvs_list(key)
            visible = [e for e in entries if authz.allowed("key", "read", e.key)]
            state["filtered"] = len(visible) != len(entries)
            return index, visible, False

        index, entries = self._blocking_query(opts, run_list if recurse else run_get)
        headers = self._query_headers(index, opts, state["filtered"])
        if not entries:
            return httpd.Response(404, b"", _TEXT, headers)
        if req.has("raw") and not recurse:
            headers.update({"X-Content-Type-Options": "nosniff",
                            "Content-Security-Policy": "sandbox"})
            return httpd.Response(200, entries[0].value or b"", "text/plain", headers)
        return self._json(req, [e.to_api() for e in entries], 200, headers)

    def _kv_get_keys(self, req, opts, prefix):
        separator = None
        if req.has("seperator"):  # historical misspelling, still accepted
            separator = self._first(req, "seperator")
        if req.has("separator"):
            separator = self._first(req, "separator")
        self._check_datacenter(opts)
        authz = self._resolve_token(opts)
        state = {"filtered": False}

        def run():
            index, entries = self._kvs_list(prefix)
            visible = [e for e in entries if authz.allowed("key", "read", e.key)]
            state["filtered"] = len(visible) != len(entries)
            keys, seen = [], set()
            for entry in visible:
                if not separator:
                    keys.append(entry.key)
                    continue
                cut = entry.key.find(separator, len(prefix))
                if cut < 0:
                    keys.append(entry.key)
                    continue
                rolled = entry.key[:cut + len(separator)]
                if rolled not in seen:
                    seen.add(rolled)
                    keys.append(rolled)
            return index, keys, False

        index, keys = self._blocking_query(opts, run)
        headers = self._query_headers(index, opts, state["filtered"])
        if not keys and prefix:
            return httpd.Response(404, b"", _TEXT, headers)
        return self._json(req, keys, 200, headers)

    def _kv_put(self, req, opts, key):
        if key == "":
            raise _text_error(400, "Missing key name")
        self._conflicting_flags(req, "cas", "acquire", "release")
        flags = self._uint_param(req, "flags", 0)
        op, entry = "set", DirEntry(key, req.body, flags)
        if req.has("cas"):
            op, entry.modify_index = "cas", self._uint_param(req, "cas", 0)
        if req.has("acquire"):
            op, entry.session = "lock", self._first(req, "acquire", "")
        if req.has("release"):
            op, entry.session = "unlock", self._first(req, "release", "")
        if len(req.body) > self.kv_max_value_size:
            raise _text_error(413, "Request body(%d bytes) too large, max size: %d bytes. See %s."
                              % (len(req.body), self.kv_max_value_size, KV_MAX_VALUE_SIZE_DOC))
        self._check_datacenter(opts)
        authz = self._resolve_token(opts)
        self._require(authz, "key", "write", key)
        if op == "lock" and self._lock_delay_active(key):
            return self._json(req, False)  # kvsPreApply: refused before raft, no index used
        idx = self._next_raft_index()
        try:
            if op == "set":
                self._kvs_set(idx, entry, update_session=False)
                result = True
            elif op == "cas":
                result = self._kvs_set_cas(idx, entry)
            elif op == "lock":
                result = self._kvs_lock(idx, entry)
            else:
                result = self._kvs_unlock(idx, entry)
        except _TxnFailure as exc:
            # The FSM error comes back as a 500.  Newer servers may prefix it with
            # "raft apply failed: " (source-read, version boundary UNCONFIRMED); clients
            # should match the substring, e.g. 'invalid session "<id>"'.
            raise _text_error(500, str(exc))
        self._changed.notify_all()
        return self._json(req, result)

    def _kv_delete(self, req, opts, key):
        self._conflicting_flags(req, "recurse", "cas")
        recurse = req.has("recurse")
        if not recurse and key == "":
            raise _text_error(400, "Missing key name")
        cas = self._uint_param(req, "cas", None) if req.has("cas") else None
        self._check_datacenter(opts)
        authz = self._resolve_token(opts)
        if recurse:
            if not authz.key_write_prefix(key):
                raise _text_error(403, authz.denied("key", "write", key))
        else:
            self._require(authz, "key", "write", key)
        idx = self._next_raft_index()
        result = True
        if recurse:
            self._kvs_delete_tree(idx, key)
        elif cas is not None:
            result = self._kvs_delete_cas(idx, cas, key)
        else:
            self._kvs_delete(idx, key)
        self._changed.notify_all()
        return self._json(req, result)

    def _uint_param(self, req, name, default):
        if not req.has(name):
            return default
        try:
            return parse_go_uint(self._first(req, name, ""))
        except ValueError as exc:
            # KVSPut returns the strconv error as-is, which the HTTP layer turns into a 500.
            raise _text_error(500, str(exc))

    # ----------------------------------------------------------------------------------------
    # Transactions (agent/txn_endpoint.go, agent/consul/txn_endpoint.go, state/txn.go)
    # v1.16.0; docs/upstream.md#consul-txn
    # ----------------------------------------------------------------------------------------

    def _txn(self, req):
        max_len = max(self.txn_max_req_len, self.kv_max_value_size)
        if len(req.body) > max_len:
            # wording verified on Consul 1.16.0
            raise _text_error(413, "Request body(%d bytes) too large, max size: %d bytes. See %s."
                              % (len(req.body), max_len, TXN_MAX_REQ_LEN_DOC))
        ops = self._decode_txn_body(req.body)
        if len(ops) > self.txn_max_ops:
            raise _text_error(413, "Transaction contains too many operations (%d > %d)"
                              % (len(ops), self.txn_max_ops))
        writes = 0
        for op in ops:
            if isinstance(op, _KVOp):
                size = len(op.value or b"")
                if size > self.kv_max_value_size:
                    raise _text_error(413, "Value for key %s is too large (%d > %d bytes)"
                                      % (_go_quote(op.key), size, self.kv_max_value_size))
                writes += op.verb in KV_WRITE_VERBS
            else:
                writes += op["verb"] != "get"
        read_only = writes == 0
        opts = self._parse_query(req) if read_only else self._light_options(req)
        with self.lock:
            self._check_datacenter(opts)
            authz = self._resolve_token(opts)
            errors = self._txn_precheck(authz, ops)
            results = None
            if not errors:
                results, errors = self._txn_apply(ops, read_only)
            headers = {}
            # A read-only transaction answers with its QueryMeta next to Results/Errors
            # (verified on Consul 1.16.0: Index 1, the other fields at their zero values).
            meta = {}
            if read_only:
                headers = {"X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0"}
                meta = {"Index": 1, "LastContact": 0, "KnownLeader": True, "ConsistencyLevel": "",
                        "NotModified": False, "Backend": 0, "ResultsFilteredByACLs": False}
            if errors:
                body = {"Results": None,
                        "Errors": [{"OpIndex": i, "What": what} for i, what in errors]}
                body.update(meta)
                return self._json(req, body, 409, headers)
            # FilterTxnResults: results for keys the token cannot read are dropped.
            kept = [{"KV": entry.to_api(with_value=keep_value)} for entry, keep_value in results
                    if authz.allowed("key", "read", entry.key)]
            body = {"Results": kept, "Errors": None}
            if meta:  # UNCONFIRMED: set like the listing header would be
                meta["ResultsFilteredByACLs"] = len(kept) < len(results) and bool(opts.token) \
                    and self.version_tuple >= (1, 11)
            body.update(meta)
            return self._json(req, body, 200, headers)

    def _decode_txn_body(self, body):
        """Decode the API-format ops.  Field names match case-insensitively (Go's json).
        Ops with none of KV/Node/Service/Check are dropped, as convertOps does."""
        if not body.strip():
            raise _text_error(400, "Failed to parse body: EOF")
        try:
            raw = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise _text_error(400, "Failed to parse body: %s" % self._go_json_error(body, exc))
        if raw is None:
            raw = []  # JSON null decodes to an empty op list, as in Go
        if not isinstance(raw, list):
            raise _text_error(400, "Failed to parse body: json: cannot unmarshal %s into Go value"
                              " of type api.TxnOps" % self._json_kind(raw))
        ops = []
        for item in raw:
            if not isinstance(item, dict):
                raise _text_error(400, "Failed to parse body: json: cannot unmarshal %s into Go "
                                  "value of type api.TxnOp" % self._json_kind(item))
            fields = {k.lower(): v for k, v in item.items()}
            if fields.get("kv") is not None:
                ops.append(self._decode_kv_op(fields["kv"]))
            else:
                for kind in ("node", "service", "check"):
                    if fields.get(kind) is not None:
                        verb = fields[kind].get("Verb", fields[kind].get("verb", "")) \
                            if isinstance(fields[kind], dict) else ""
                        ops.append({"kind": kind.capitalize(), "verb": verb})
                        break
        return ops

    def _decode_kv_op(self, raw):
        if not isinstance(raw, dict):
            raise self._txn_type_error(raw, "KV", "api.KVTxnOp")
        fields = {k.lower(): v for k, v in raw.items()}

        def text(name):
            value = fields.get(name.lower())
            if value is None:
                return ""
            if not isinstance(value, str):
                raise self._txn_type_error(value, "KV." + name, "string")
            return value

        def uint(name):
            value = fields.get(name.lower())
            if value is None:
                return 0
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or value < 0 or value != int(value):
                raise self._txn_type_error(value, "KV." + name, "uint64")
            return int(value)

        value = fields.get("value")
        if value is not None:
            if not isinstance(value, str):
                raise self._txn_type_error(value, "KV.Value", "[]uint8")
            try:
                value = go_b64decode(value)
            except ValueError as exc:
                raise _text_error(400, "Failed to parse body: %s" % exc)
        return _KVOp(text("Verb"), text("Key"), value or None, uint("Flags"), uint("Index"),
                     text("Session"))

    _json_kind = staticmethod(httpd.json_kind)

    def _txn_type_error(self, value, field, go_type):
        kind = self._json_kind(value)
        if kind == "number":
            kind = "number %s" % json.dumps(value)
        return _text_error(400, "Failed to parse body: json: cannot unmarshal %s into Go struct "
                           "field TxnOp.%s of type %s" % (kind, field, go_type))

    @staticmethod
    def _go_json_error(body, exc):
        # Approximation of encoding/json's messages (UNCONFIRMED wording beyond the prefix).
        if isinstance(exc, json.JSONDecodeError):
            if exc.pos >= len(exc.doc):
                return "unexpected EOF"
            return "invalid character %s looking for beginning of value" % (
                "'%s'" % exc.doc[exc.pos])
        return "invalid character in body"

    def _txn_precheck(self, authz, ops):
        """Txn.preCheck: key presence, ACLs and lock-delay, before anything is applied."""
        errors = []
        for i, op in enumerate(ops):
            if not isinstance(op, _KVOp):
                continue
            if op.key == "" and op.verb != "delete-tree":
                errors.append((i, "Must provide key"))
                continue
            if op.verb == "delete-tree":
                if not authz.key_write_prefix(op.key):
                    errors.append((i, authz.denied("key", "write", op.key)))
                    continue
            elif op.verb in ("get", "get-tree", "get-or-empty"):
                pass  # filtered on the way out instead
            elif op.verb in ("check-session", "check-index"):
                if not authz.allowed("key", "read", op.key):
                    errors.append((i, authz.denied("key", "read", op.key)))
                    continue
            elif not authz.allowed("key", "write", op.key):
                errors.append((i, authz.denied("key", "write", op.key)))
                continue
            if op.verb == "lock" and self._lock_delay_active(op.key):
                errors.append((i, "failed to lock key %s due to lock delay" % _go_quote(op.key)))
        return errors

    def _txn_apply(self, ops, read_only):
        """TxnRW/TxnRO: run every op (later ops see earlier ones), collect every error, and roll
        everything back if there was any.  A write txn uses one raft index for all its ops."""
        idx = 0 if read_only else self._next_raft_index()
        saved = (dict(self._kv), dict(self._tombstones), dict(self._table_index))
        results, errors = [], []
        for i, op in enumerate(ops):
            try:
                if isinstance(op, _KVOp):
                    results.extend(self._txn_kv_op(idx, op))
                else:
                    raise _TxnFailure("lab: %s operations in a txn are not simulated" % op["kind"])
            except _TxnFailure as exc:
                errors.append((i, str(exc)))
        if errors:
            self._kv, self._tombstones, self._table_index = saved
            return None, errors
        if not read_only:
            self._changed.notify_all()
        return results, []

    def _txn_kv_op(self, idx, op):
        """state.txnKVS: returns [(entry copy, keep_value)].  Only get, get-or-empty and
        get-tree return values; delete verbs and check-not-exists return no result."""
        verb, key = op.verb, op.key
        entry = None
        if verb == "set":
            entry = op.entry()
            self._kvs_set(idx, entry, update_session=False)
        elif verb == "delete":
            self._kvs_delete(idx, key)
        elif verb == "delete-cas":
            if not self._kvs_delete_cas(idx, op.index, key):
                raise _TxnFailure("failed to delete key %s, index is stale" % _go_quote(key))
        elif verb == "delete-tree":
            self._kvs_delete_tree(idx, key)
        elif verb == "cas":
            entry = op.entry()
            if not self._kvs_set_cas(idx, entry):
                raise _TxnFailure("failed to set key %s, index is stale" % _go_quote(key))
        elif verb == "lock":
            entry = op.entry()
            if not self._kvs_lock(idx, entry):
                raise _TxnFailure("failed to lock key %s, lock is already held" % _go_quote(key))
        elif verb == "unlock":
            entry = op.entry()
            if not self._kvs_unlock(idx, entry):
                raise _TxnFailure("failed to unlock key %s, lock isn't held, or is held by "
                                  "another session" % _go_quote(key))
        elif verb == "get":
            entry = self._kv.get(key)
            if entry is None:
                raise _TxnFailure("key %s doesn't exist" % _go_quote(key))
        elif verb == "get-or-empty":
            entry = self._kv.get(key)
            if entry is None:
                entry = op.entry()
                entry.value = None
        elif verb == "get-tree":
            entries = self._kvs_list(key)[1]
            return [(e.clone(), True) for e in entries]
        elif verb == "check-session":
            entry = self._kv.get(key)
            if entry is None:
                raise _TxnFailure("failed to check session, key %s doesn't exist"
                                  % _go_quote(key))
            if entry.session != op.session:
                raise _TxnFailure("failed session check for key %s, current session %s != %s"
                                  % (_go_quote(key), _go_quote(entry.session),
                                     _go_quote(op.session)))
        elif verb == "check-index":
            entry = self._kv.get(key)
            if entry is None:
                raise _TxnFailure("failed to check index, key %s doesn't exist" % _go_quote(key))
            if entry.modify_index != op.index:
                raise _TxnFailure("failed index check for key %s, current modify index %d != %d"
                                  % (_go_quote(key), entry.modify_index, op.index))
        elif verb == "check-not-exists":
            if key in self._kv:
                raise _TxnFailure("key %s exists" % _go_quote(key))
        else:
            raise _TxnFailure("unknown KV verb %s" % _go_quote(verb))
        if entry is None:
            return []
        return [(entry.clone(), verb in ("get", "get-or-empty"))]

    # ----------------------------------------------------------------------------------------
    # Sessions HTTP endpoints (agent/session_endpoint.go, agent/consul/session_endpoint.go)
    # v1.16.0; docs/upstream.md#consul-sessions
    # ----------------------------------------------------------------------------------------

    def _session_create(self, req):
        opts = self._light_options(req)
        spec = self._decode_session_body(req.body)
        with self.lock:
            self._check_datacenter(opts)
            if not spec["Node"]:
                raise _text_error(500, "Must provide Node")
            authz = self._resolve_token(opts)
            self._require(authz, "session", "write", spec["Node"])
            behavior = spec["Behavior"] or "release"
            if behavior not in ("release", "delete"):
                raise _text_error(500, "Invalid Behavior setting '%s'" % behavior)
            ttl = spec["TTL"]
            if ttl:
                try:
                    ttl_ns = parse_go_duration(ttl)
                except ValueError as exc:
                    raise _text_error(500, "Session TTL '%s' invalid: %s" % (ttl, exc))
                if ttl_ns != 0 and not SESSION_TTL_MIN_NS <= ttl_ns <= SESSION_TTL_MAX_NS:
                    raise _text_error(500, "Invalid Session TTL '%d', must be between "
                                      "[10s=24h0m0s]" % ttl_ns)
            self._check_session_registrations(spec)
            sid = str(uuid.uuid4())
            idx = self._next_raft_index()
            session = Session(sid, spec["Name"], spec["Node"], spec["LockDelay"], behavior, ttl,
                              spec["NodeChecks"], spec["ServiceChecks"], idx)
            session.reset_timer(self._now())
            self._sessions[sid] = session
            self._table_index["sessions"] = idx
            self._changed.notify_all()
            return self._json(req, {"ID": sid})

    def _check_session_registrations(self, spec):
        """sessionCreateTxn: the node and every linked check must exist (and not be critical;
        the lab's only check, serfHealth on the agent's node, is always passing)."""
        if spec["Node"] not in self.nodes:
            # the raft apply's error, prefixed (verified on Consul 1.16.0)
            raise _text_error(500, "apply failed: Missing node registration")
        # Checks (deprecated) only survives the fixup when it names something other than
        # serfHealth; it is validated but never shown (omitempty since 1.7).
        check_ids = list(spec["NodeChecks"] or []) + list(spec["Checks"] or [])
        check_ids += [c.get("ID", "") for c in spec["ServiceChecks"] or []]
        for check_id in check_ids:
            if (spec["Node"], check_id) not in self.node_checks:
                raise _text_error(500, "Missing check '%s' registration" % check_id)

    def _decode_session_body(self, body):
        """Decode a session/create body into structs.Session defaults + fixups."""
        spec = {"Name": "", "Node": self.node_name, "LockDelay": DEFAULT_LOCK_DELAY_NS,
                "Behavior": "release", "TTL": "", "NodeChecks": [SERF_CHECK_ID],
                "Checks": [SERF_CHECK_ID], "ServiceChecks": None}
        if len(body) > 0:
            try:
                raw = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise _text_error(400, "Request decode failed: %s"
                                  % self._go_json_error(body, exc))
            if raw is not None and not isinstance(raw, dict):
                raise _text_error(400, "Request decode failed: json: cannot unmarshal %s into Go"
                                  " value of type structs.Session" % self._json_kind(raw))
            for name, value in (raw or {}).items():
                self._apply_session_field(spec, name, value)
        self._fixup_empty_session_checks(spec)
        return spec

    def _apply_session_field(self, spec, name, value):
        field = {k.lower(): k for k in ("Name", "Node", "LockDelay", "Behavior", "TTL",
                                        "NodeChecks", "Checks", "ServiceChecks")}.get(name.lower())
        if field is None:
            return  # unknown fields are ignored by encoding/json

        def type_error(go_type):
            kind = self._json_kind(value)
            if kind == "number":
                kind = "number %s" % json.dumps(value)
            return _text_error(400, "Request decode failed: json: cannot unmarshal %s into Go "
                               "struct field Session.%s of type %s" % (kind, field, go_type))

        if field == "LockDelay":
            spec[field] = self._decode_lock_delay(value, spec[field])
        elif field in ("Name", "Node", "Behavior", "TTL"):
            if value is not None and not isinstance(value, str):
                raise type_error("string")
            spec[field] = value or ""
        elif field in ("NodeChecks", "Checks"):
            if value is not None and (not isinstance(value, list)
                                      or not all(isinstance(v, str) for v in value)):
                raise type_error("[]string")
            spec[field] = value
        else:
            if value is not None and (not isinstance(value, list)
                                      or not all(isinstance(v, dict) for v in value)):
                raise type_error("[]structs.ServiceCheck")
            spec[field] = value

    @staticmethod
    def _decode_lock_delay(value, default):
        """Session.UnmarshalJSON: a duration string or a number; below 1000 means seconds."""
        if value is None:
            return default
        if isinstance(value, str):
            try:
                delay = parse_go_duration(value)
            except ValueError as exc:
                raise _text_error(400, "Request decode failed: %s" % exc)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            delay = int(value)
        else:
            delay = 0
        if delay < LOCK_DELAY_MIN_THRESHOLD:
            delay *= NS_PER_SECOND
        return delay

    @staticmethod
    def _fixup_empty_session_checks(spec):
        """fixupEmptySessionChecks: a "Checks" key present at all (even []) replaces the
        serfHealth default; "NodeChecks": [] also removes it."""
        checks = spec["Checks"]
        if not checks:
            spec["NodeChecks"] = []
            return
        if checks == [SERF_CHECK_ID]:
            spec["Checks"] = None
            return
        if not spec["NodeChecks"]:
            spec["Checks"] = None

    def _session_destroy(self, req):
        opts = self._light_options(req)
        sid = req.params["sid"]
        if not sid:
            raise _text_error(400, "Missing session")
        with self.lock:
            self._check_datacenter(opts)
            authz = self._resolve_token(opts)
            session = self._sessions.get(sid)
            if session is not None:
                self._require(authz, "session", "write", session.node)
            # Destroying an unknown (or malformed) ID is a no-op that still answers true.
            self._invalidate_session(sid)
            return self._json(req, True)

    def _session_renew(self, req):
        opts = self._parse_query(req)
        sid = req.params["sid"]
        if not sid:
            raise _text_error(400, "Missing session")
        with self.lock:
            self._check_datacenter(opts)
            session = self._sessions.get(sid)
            if session is None:
                raise _text_error(404, "Session id '%s' not found" % sid)
            authz = self._resolve_token(opts)
            self._require(authz, "session", "write", session.node)
            session.reset_timer(self._now())
            return self._json(req, [session.to_api()])

    def _session_query(self, req, opts, select):
        """Shared by info/list/node: blocking on the sessions table, ACL-filtered."""
        with self.lock:
            self._check_datacenter(opts)
            authz = self._resolve_token(opts)
            state = {"filtered": False}

            def run():
                chosen = select()
                visible = [s for s in chosen if authz.allowed("session", "read", s.node)]
                state["filtered"] = len(visible) != len(chosen)
                return self._table_index["sessions"], visible, False

            index, sessions = self._blocking_query(opts, run)
            headers = self._query_headers(index, opts, state["filtered"])
            return self._json(req, [s.to_api() for s in sessions], 200, headers)

    def _session_info(self, req):
        opts = self._parse_query(req)
        sid = req.params["sid"]
        if not sid:
            raise _text_error(400, "Missing session")
        return self._session_query(
            req, opts, lambda: [self._sessions[sid]] if sid in self._sessions else [])

    def _session_list(self, req):
        opts = self._parse_query(req)
        return self._session_query(
            req, opts, lambda: [s for unused, s in sorted(self._sessions.items())])

    def _session_node(self, req):
        opts = self._parse_query(req)
        node = req.params["node"]
        if not node:
            raise _text_error(400, "Missing node name")
        return self._session_query(
            req, opts, lambda: [s for unused, s in sorted(self._sessions.items()) if s.node == node])

    # ----------------------------------------------------------------------------------------
    # Status and agent (agent/status_endpoint.go, agent/agent_endpoint.go, v1.16.0;
    # docs/upstream.md#consul-status-agent).  The agent/self body is a subset of 1.16.0's.
    # ----------------------------------------------------------------------------------------

    def _status_leader(self, req):
        return self._json(req, LEADER_ADDRESS)

    def _status_peers(self, req):
        return self._json(req, [LEADER_ADDRESS])

    def _acl_token_self(self, req):
        """agent/acl_endpoint.go ACLTokenSelf: 401 "ACL support disabled" without ACLs (verified on
        Consul 1.16.0); otherwise the caller's own token (no permission needed).  The lab's
        tokens carry one policy of their own, the management token global-management."""
        if not self.acl_enabled:
            raise _text_error(401, "ACL support disabled")
        with self.lock:
            opts = self._light_options(req)
            authz = self._resolve_token(opts)
        if getattr(authz, "management", False):
            policies = [{"ID": "00000000-0000-0000-0000-000000000001", "Name": "global-management"}]
        else:
            policies = [{"ID": str(uuid.uuid5(uuid.NAMESPACE_URL, "lab-policy/" + authz.accessor_id)),
                         "Name": "lab-%s" % authz.accessor_id[:8]}]
        return self._json(req, {"AccessorID": authz.accessor_id, "SecretID": authz.secret,
                                "Description": "", "Policies": policies, "Local": False,
                                "CreateTime": "2023-06-26T00:00:00Z", "Hash": "", "CreateIndex": 1,
                                "ModifyIndex": 1})

    def _agent_self(self, req):
        with self.lock:
            authz = self._resolve_token(self._light_options(req))
            self._require(authz, "agent", "read", self.node_name)
        return self._json(req, {
            "Config": {"Datacenter": self.datacenter, "PrimaryDatacenter": self.datacenter,
                       "NodeName": self.node_name, "NodeID": self.node_id,
                       "Revision": "lab", "Server": True, "Version": self.version,
                       "BuildDate": "2023-06-26T00:00:00Z"},
            "DebugConfig": {"ACLsEnabled": self.acl_enabled,
                            "KVMaxValueSize": self.kv_max_value_size,
                            "TxnMaxReqLen": self.txn_max_req_len},
            "Coord": {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-05},
            "Member": {"Name": self.node_name, "Addr": "127.0.0.1", "Port": 8301,
                       "Tags": {"acls": "1" if self.acl_enabled else "0",
                                "build": "%s:lab" % self.version, "dc": self.datacenter,
                                "id": self.node_id, "role": "consul", "port": "8300",
                                "vsn": "2", "vsn_max": "3", "vsn_min": "2"},
                       "Status": 1, "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
                       "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4},
            "Meta": {"consul-network-segment": "", "consul-version": self.version},
            "xDS": {"SupportedProxies": {"envoy": ["1.26.2", "1.25.7"]}, "Port": -1,
                    "Ports": {"Plaintext": -1, "TLS": -1}},
        })


# --------------------------------------------------------------------------------------------
# A real Consul server next to the simulator (tests that run against both)
# --------------------------------------------------------------------------------------------

def find_consul():
    """The real Consul binary named by $CONSUL_BIN, or None (tests against it then skip)."""
    import os
    path = os.environ.get("CONSUL_BIN")
    if path and os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    return None


CONSUL_SKIP_REASON = "set CONSUL_BIN to a Consul server binary (1.16.0) to run this against a real Consul"


class RealConsul:
    """A throw-away single-node Consul server on free loopback ports with its state in a temp
    directory, named ``lab-consul`` in datacenter ``dc1`` like the simulator.  With ``acl``
    ACLs are on (default deny) and ``management_token`` is the initial management token."""

    def __init__(self, binary=None, acl=False, node_name="lab-consul"):
        self.binary = binary or find_consul()
        if self.binary is None:
            raise RuntimeError(CONSUL_SKIP_REASON)
        self.acl = acl
        self.node_name = node_name
        self.management_token = str(uuid.uuid4()) if acl else None
        self.process = None
        self.data_dir = None
        self.port = None
        self.server_port = None

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def leader(self):
        return "127.0.0.1:%d" % self.server_port

    def start(self, timeout=60.0):
        import os
        import subprocess
        import tempfile
        from tests.lab.etcd import free_port

        self.data_dir = tempfile.mkdtemp(prefix="consul-", dir="/tmp")
        self.port, self.server_port = free_port(), free_port()
        args = [self.binary, "agent", "-server", "-bootstrap-expect=1", "-bind=127.0.0.1",
                "-client=127.0.0.1", "-data-dir", os.path.join(self.data_dir, "data"),
                "-node", self.node_name, "-datacenter", "dc1", "-log-level", "warn",
                "-http-port=%d" % self.port, "-dns-port=-1", "-grpc-port=-1", "-grpc-tls-port=-1",
                "-serf-lan-port=%d" % free_port(), "-serf-wan-port=%d" % free_port(),
                "-server-port=%d" % self.server_port]
        if self.acl:
            config = os.path.join(self.data_dir, "acl.hcl")
            with open(config, "w") as handle:
                handle.write('acl { enabled = true, default_policy = "deny", '
                             'tokens { initial_management = "%s" } }\n' % self.management_token)
            args += ["-config-file", config]
        log = open(os.path.join(self.data_dir, "consul.log"), "ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def request(self, method, path, body=None, token=None):
        """``(status, headers, body bytes)`` of one request (no redirect following)."""
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {}
        token = token if token is not None else self.management_token
        if token:
            headers["X-Consul-Token"] = token
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                with open(self.data_dir + "/consul.log", "rb") as handle:
                    tail = handle.read()[-2000:].decode("utf-8", "replace")
                raise RuntimeError("consul exited with %s:\n%s" % (self.process.returncode, tail))
            try:
                status, unused, body = self.request("GET", "/v1/status/leader")
                if status == 200 and json.loads(body or b'""'):
                    # the leader is elected; wait until the KV store answers (ACL bootstrap done)
                    status, unused, body = self.request("GET", "/v1/kv/?keys")
                    if status in (200, 404):
                        return
                last = (status, body)
            except OSError as exc:
                last = exc
            time.sleep(0.2)
        raise RuntimeError("consul not ready after %ss: %s" % (timeout, last))

    def reset(self):
        """Remove every key and session (between tests sharing one server).  Held locks are
        released first: destroying their session would start a lock-delay on the key."""
        status, unused, body = self.request("GET", "/v1/kv/?recurse")
        for entry in json.loads(body or b"[]") if status == 200 else []:
            if entry.get("Session"):
                self.request("PUT", "/v1/kv/%s?release=%s" % (quote(entry["Key"]), entry["Session"]))
        status, unused, body = self.request("GET", "/v1/session/list")
        for session in json.loads(body or b"[]") if status == 200 else []:
            self.request("PUT", "/v1/session/destroy/" + session["ID"])
        self.request("DELETE", "/v1/kv/?recurse")

    def add_token(self, secret, key_prefix_rules=None, session_prefix_rules=None, accessor_id=None,
                  agent_prefix_rules=None):
        """Create a token with these prefix rules (the simulator's ``add_token``)."""
        rules = []
        for kind, table in (("key_prefix", key_prefix_rules), ("session_prefix", session_prefix_rules),
                            ("agent_prefix", agent_prefix_rules)):
            for prefix, policy in sorted((table or {}).items()):
                rules.append('%s "%s" { policy = "%s" }' % (kind, prefix, policy))
        name = "lab-%s" % uuid.uuid4().hex[:12]
        status, unused, body = self.request("PUT", "/v1/acl/policy", {"Name": name, "Rules": "\n".join(rules)})
        if status != 200:
            raise RuntimeError("create ACL policy: %s %s" % (status, body))
        token = {"SecretID": secret, "Policies": [{"Name": name}]}
        if accessor_id:
            token["AccessorID"] = accessor_id
        status, unused, body = self.request("PUT", "/v1/acl/token", token)
        if status != 200:
            raise RuntimeError("create ACL token: %s %s" % (status, body))
        return json.loads(body)

    # The simulator's direct state calls, over HTTP (with the management token).
    def kv_put(self, key, value, flags=0):
        status, unused, body = self.request("PUT", "/v1/kv/%s?flags=%d" % (quote(key), flags),
                                            value if value is not None else b"")
        if status != 200:
            raise RuntimeError("PUT %s: %s %s" % (key, status, body))

    def kv_get(self, key):
        status, unused, body = self.request("GET", "/v1/kv/" + quote(key))
        if status == 404:
            return None
        entry = json.loads(body)[0]
        entry["Value"] = base64.b64decode(entry["Value"]) if entry.get("Value") is not None else None
        return entry

    def kv_keys(self, prefix=""):
        status, unused, body = self.request("GET", "/v1/kv/%s?keys" % quote(prefix))
        return json.loads(body) if status == 200 else []

    def kv_delete(self, key, recurse=False):
        self.request("DELETE", "/v1/kv/%s%s" % (quote(key), "?recurse" if recurse else ""))

    def stop(self):
        import shutil
        import signal
        import subprocess
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None


class ConsulProxy(httpd.Service):
    """An HTTP front for a real Consul server: the same API, plus the lab's fault table and
    request log (service name ``consul``).  Redirects are passed on, never followed."""

    PASSED_HEADERS = ("x-consul-token", "authorization", "content-type")
    server_header = False

    def __init__(self, server, log=None, name="consul"):
        super().__init__(name, log)
        self.server = server

    def dispatch(self, req):
        import http.client
        target = req.raw_path + ("?" + req.raw_query if req.raw_query else "")
        headers = {k: v for k, v in req.headers.items() if k.lower() in self.PASSED_HEADERS}
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=120)
        try:
            conn.request(req.method, target, body=req.body if req.body else None, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            passed = {k: v for k, v in resp.getheaders()
                      if k.lower() not in ("content-type", "content-length", "date", "connection",
                                           "transfer-encoding", "keep-alive")}
            return httpd.Response(resp.status, body, resp.getheader("Content-Type"), passed)
        finally:
            conn.close()
