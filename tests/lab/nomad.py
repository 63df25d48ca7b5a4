"""In-process Nomad simulator for the lab (test infrastructure, never imported by product code).

One ``NomadSim`` is the cluster's servers (the source of truth, service name ``nomad``).  Every
node also runs a Nomad *client agent*; ``NomadSim.client_agent(node_id)`` returns that agent as a
separate ``httpd.Service`` (name ``nomad-agent:<node name>``) that answers ``/v1/agent/self`` and
``/v1/agent/health`` itself and forwards every other request to the servers (same ACLs, log
entries recorded under the agent's name, server faults applied to forwarded requests).

Modelled on Nomad 1.9.x (``command/agent/*_endpoint.go``, ``nomad/*_endpoint.go``,
``nomad/structs`` of hashicorp/nomad), recorded in docs/upstream.md#nomad-http and the entries
after it; the real-server conformance runs check it against Nomad 1.6.5.  Wire details reproduced:

* JSON is compact, UTF-8, PascalCase keys (agent/self: lower-case ``config``/``member``/``stats``,
  every ``stats`` value a string); ``?pretty`` indents.  Errors are ``text/plain`` bodies holding
  only the message; unknown routes 404 with an empty body; wrong method 405 ``Invalid method``.
* The full ``Allocation`` struct carries ``_struct codec:",omitempty"`` in Nomad's source, so the
  HTTP JSON omits top-level fields that are empty ("" / 0 / null / empty map or list, and an
  all-null ``DesiredTransition``) -- e.g. ``DesiredDescription`` is absent while empty.  A live
  1.2 capture confirms this.  ``AllocListStub``, ``Node`` and ``Job`` are NOT omitempty.
  ``NetworkResource`` is omitempty (1.9+).  Zero ``time.Time`` values encode as ``null``.
* ``NetworkStatus``: the client always reports one once it has run the alloc; host-mode / no
  group network gives ``{"InterfaceName": "", "Address": "", "AddressIPv6": "", "DNS": null}``
  (``client/allocrunner/alloc_runner.go``), bridge/cni give ``InterfaceName "eth0"`` and the
  address.  A ``pending`` alloc has no NetworkStatus yet (so the key is absent).
* Blocking queries (``?index=&wait=``): default and maximum 5m (``structs.MaxBlockingRPCQueryTime``
  = 300s; the docs' "max 10m" is not what the server does), plus up to wait/16 jitter.
  ``X-Nomad-Index`` / ``X-Nomad-KnownLeader`` / ``X-Nomad-LastContact`` on every query endpoint
  (also on its 404), ``X-Nomad-NextToken`` when paginating.
* ``?region=`` other than ours -> 500 ``No path to region`` (there are no other regions).
* ACLs: ``X-Nomad-Token`` or ``Authorization: Bearer``; unknown secret -> 403 ``ACL token not
  found``; missing capability -> 403 ``Permission denied``; lists drop unreadable namespaces;
  ``GET /v1/allocation/<id>`` without read-job in the alloc's namespace -> 500
  ``Unknown allocation "<id>"`` (source-read, and observed on Nomad 1.6.5).
* ``filter`` (go-bexpr): supported grammar -- ``and`` / ``or`` / ``not`` / parentheses;
  ``<sel> == <v>``, ``!=``, ``is empty``, ``is not empty``, ``<v> in <sel>``, ``<v> not in <sel>``,
  ``<sel> contains <v>``, ``not contains``, ``matches <regex>``, ``not matches``.  Selectors:
  ``A.B``, ``A["key"]``, ``A.0``, JSON pointers ``"/A/B"``.  Values: "double" or `raw` strings,
  numbers, bare words.  A missing map key follows bexpr's NotPresentDisposition (``is empty`` is
  true, ``==`` false ...); a missing struct field is an error (400).  Filters run on the full
  server-side struct (e.g. allocation filters may use ``Job.Meta``).  ``any``/``all`` collection
  expressions and ``is nil`` are not modelled: 400 with a message.  Error texts are close to, not
  byte-identical with, go-bexpr's.
* Pagination: nodes by ID; allocations by ``<CreateIndex>.<ID>`` (compared numerically, as fixed
  in Nomad 1.11 -- 1.9 compares the token lexicographically, see hashicorp/nomad#25435) or by ID
  when ``prefix`` is set.  ``prefix`` is a UUID-index prefix: an odd trailing hex digit is ignored.

The event stream (``GET /v1/event/stream``) follows what Nomad 1.6.5 was observed to write
(docs/upstream.md#nomad-event-stream, #nomad-event-stream-wire): topics ``Allocation`` and ``Node``
only, every state change of the simulator published as one buffered item.

Not modelled: jobs/evaluations/deployments endpoints and their events, drain/eligibility writes, node pools beyond the two built-ins, gzip, TLS, and
``/v1/client/*`` on client agents.
"""

import base64
import collections
import copy
import hashlib
import json
import random
import re
import threading
import time
import uuid

from tests.lab import httpd

__all__ = ["NomadSim", "NomadClientAgent", "parse_go_duration", "parse_go_bool"]

# ---------------------------------------------------------------------------------------------
# Go-compatible helpers
# ---------------------------------------------------------------------------------------------

_GO_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
             "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}


def parse_go_bool(text):
    """strconv.ParseBool; raises ValueError with Go's message."""
    if text in _GO_BOOLS:
        return _GO_BOOLS[text]
    raise ValueError('strconv.ParseBool: parsing "%s": invalid syntax' % text)


_DUR_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0,
              "m": 60.0, "h": 3600.0}
_DUR_RE = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_go_duration(text):
    """time.ParseDuration -> seconds (float); raises ValueError."""
    s = text
    sign = 1.0
    if s[:1] in ("+", "-"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError("time: invalid duration %r" % text)
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _DUR_RE.match(s, pos)
        if not m:
            raise ValueError("time: invalid duration %r" % text)
        total += float(m.group(1)) * _DUR_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def _go_time(ns):
    """Go's time.RFC3339Nano for a UTC instant given in unix nanoseconds; None -> None (null)."""
    if ns is None:
        return None
    ns = int(ns)
    secs, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        base += ("." + ("%09d" % frac)).rstrip("0")
    return base + "Z"


def _go_duration_str(seconds):
    """fmt.Sprintf("%v", time.Duration) for durations between 1s and 1m."""
    text = ("%.9f" % seconds).rstrip("0").rstrip(".")
    return text + "s"


def _now_ns():
    return time.time_ns()


def _uuid():
    return str(uuid.uuid4())


def _compact(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _netres(mode=None, device=None, cidr=None, ip=None, mbits=None, dns=None, reserved=None,
            dynamic=None, cni=None):
    """A NetworkResource as Nomad >= 1.9 serialises it (struct-level omitempty)."""
    out = {}
    for key, value in (("Mode", mode), ("Device", device), ("CIDR", cidr), ("IP", ip),
                       ("MBits", mbits), ("DNS", dns), ("ReservedPorts", reserved),
                       ("DynamicPorts", dynamic), ("CNI", cni)):
        if value:
            out[key] = value
    return out


def _legacy_resources(cpu=0, memory=0, memory_max=0, disk=0, networks=None):
    return {"CPU": cpu, "Cores": 0, "MemoryMB": memory, "MemoryMaxMB": memory_max, "DiskMB": disk,
            "IOPS": 0, "Networks": networks, "Devices": None, "NUMA": None, "SecretsMB": 0}


# ---------------------------------------------------------------------------------------------
# go-bexpr subset
# ---------------------------------------------------------------------------------------------

class FilterError(Exception):
    pass


# Fields whose Go type is a map (a missing key is "not present", not an error).
_MAP_FIELDS = frozenset((
    "Attributes", "Meta", "Links", "Drivers", "HostVolumes", "HostNetworks", "CSIControllerPlugins",
    "CSINodePlugins", "TaskStates", "TaskResources", "TaskLifecycles", "Details", "NodesAvailable",
    "ClassFiltered", "ConstraintFiltered", "ClassExhausted", "DimensionExhausted",
    "ResourcesExhausted", "Scores", "Config", "Env", "Args", "Tags", "Volumes", "Tasks"))

_WS = " \t\r\n"
_IDENT_RE = re.compile(r"[a-zA-Z][a-zA-Z0-9_/]*")
_NUM_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")
_PTR_SEG_RE = re.compile(r"/[\w\-.~:|]+", re.UNICODE)


class _BexprParser:
    """Recursive-descent parser for the go-bexpr subset described in the module docstring."""

    def __init__(self, text):
        self.s = text
        self.i = 0

    def fail(self, msg="no match found"):
        raise FilterError("1:%d (%d): %s" % (self.i + 1, self.i, msg))

    def ws(self, required=False):
        start = self.i
        while self.i < len(self.s) and self.s[self.i] in _WS:
            self.i += 1
        if required and self.i == start:
            return False
        return True

    def keyword(self, word, need_ws_after=True):
        """Match ``<ws>word<ws>`` at the current position; restore on failure."""
        start = self.i
        self.ws()
        if self.s.startswith(word, self.i):
            end = self.i + len(word)
            if not need_ws_after:
                if end == len(self.s) or not (self.s[end].isalnum() or self.s[end] == "_"):
                    self.i = end
                    return True
            elif end < len(self.s) and self.s[end] in _WS:
                self.i = end
                self.ws()
                return True
        self.i = start
        return False

    def parse(self):
        self.ws()
        expr = self.parse_or()
        self.ws()
        if self.i != len(self.s):
            self.fail()
        return expr

    def parse_or(self):
        left = self.parse_and()
        save = self.i
        if self.ws(required=True) and self.keyword("or"):
            right = self.parse_or()
            return ("or", left, right)
        self.i = save
        return left

    def parse_and(self):
        left = self.parse_not()
        save = self.i
        if self.ws(required=True) and self.keyword("and"):
            right = self.parse_and()
            return ("and", left, right)
        self.i = save
        return left

    def parse_not(self):
        save = self.i
        if self.s.startswith("not", self.i) and self.i + 3 < len(self.s) and self.s[self.i + 3] in _WS:
            self.i += 3
            self.ws()
            try:
                return ("not", self.parse_not())
            except FilterError:
                self.i = save  # "not" may be the start of a selector named not...
        return self.parse_primary()

    def parse_primary(self):
        for word in ("any", "all"):
            if self.s.startswith(word + " ", self.i):
                raise FilterError("collection expressions (%s ... as ...) are not modelled by the lab"
                                  % word)
        if self.s.startswith("(", self.i):
            self.i += 1
            self.ws()
            expr = self.parse_or()
            self.ws()
            if not self.s.startswith(")", self.i):
                self.fail("Unmatched parentheses")
            self.i += 1
            return expr
        return self.parse_match()

    def parse_match(self):
        start = self.i
        sel = self.try_selector()
        if sel is not None:
            after = self.i
            self.ws()
            for op, token in (("==", "=="), ("!=", "!=")):
                if self.s.startswith(token, self.i):
                    self.i += len(token)
                    self.ws()
                    return ("match", op, sel, self.parse_value())
            self.i = after
            if self.ws(required=True):
                if self.keyword("is"):
                    if self.keyword("not", need_ws_after=True) and self.keyword("empty", False):
                        return ("match", "is not empty", sel, None)
                    if self.keyword("empty", False):
                        return ("match", "is empty", sel, None)
                    if self.s.startswith("nil", self.i) or self.s.startswith("not nil", self.i):
                        raise FilterError("'is nil' is not modelled by the lab")
                    self.fail()
                for op in ("not contains", "not matches", "contains", "matches"):
                    save = self.i
                    words = op.split()
                    ok = all(self.keyword(w) for w in words)
                    if ok:
                        value = self.parse_value()
                        name = {"contains": "in", "not contains": "not in"}.get(op, op)
                        return ("match", name, sel, value)
                    self.i = save
            self.i = start
        # value [not] in selector
        value = self.parse_value()
        if self.ws(required=True):
            for op in ("not in", "in"):
                save = self.i
                if all(self.keyword(w) for w in op.split()):
                    sel = self.try_selector()
                    if sel is None:
                        self.fail("Invalid selector")
                    return ("match", op, sel, value)
                self.i = save
        self.fail()

    def try_selector(self):
        if self.s.startswith('"/', self.i) or self.s.startswith('""', self.i):
            j = self.i + 1
            parts = []
            while True:
                m = _PTR_SEG_RE.match(self.s, j)
                if not m:
                    break
                parts.append(m.group(0)[1:].replace("~1", "/").replace("~0", "~"))
                j = m.end()
            if j < len(self.s) and self.s[j] == '"':
                self.i = j + 1
                return parts
            return None
        m = _IDENT_RE.match(self.s, self.i)
        if not m:
            return None
        parts = [m.group(0)]
        j = m.end()
        while j < len(self.s):
            if self.s[j] == ".":
                m2 = _IDENT_RE.match(self.s, j + 1)
                if m2:
                    parts.append(m2.group(0))
                    j = m2.end()
                    continue
                m3 = re.compile(r"[0-9]+").match(self.s, j + 1)
                if m3:
                    parts.append(m3.group(0))
                    j = m3.end()
                    continue
                break
            if self.s[j] == "[":
                k = j + 1
                while k < len(self.s) and self.s[k] in _WS:
                    k += 1
                save = self.i
                self.i = k
                lit = self.try_string()
                if lit is None:
                    self.i = save
                    raise FilterError("1:%d (%d): Invalid index" % (k + 1, k))
                k = self.i
                self.i = save
                while k < len(self.s) and self.s[k] in _WS:
                    k += 1
                if k >= len(self.s) or self.s[k] != "]":
                    raise FilterError("1:%d (%d): Unclosed index expression" % (k + 1, k))
                parts.append(lit)
                j = k + 1
                continue
            break
        self.i = j
        return parts

    def try_string(self):
        if self.i >= len(self.s):
            return None
        quote = self.s[self.i]
        if quote == "`":
            end = self.s.find("`", self.i + 1)
            if end < 0:
                self.fail("Unterminated string literal")
            text = self.s[self.i + 1:end]
            self.i = end + 1
            return text
        if quote == '"':
            end = self.s.find('"', self.i + 1)
            if end < 0:
                self.fail("Unterminated string literal")
            raw = self.s[self.i:end + 1]
            try:
                text = json.loads(raw)  # close to strconv.Unquote for common escapes
            except ValueError:
                self.fail("invalid string literal %s" % raw)
            self.i = end + 1
            return text
        return None

    def parse_value(self):
        m = _NUM_RE.match(self.s, self.i)
        if m and (m.end() == len(self.s) or self.s[m.end()] in _WS + ")"):
            self.i = m.end()
            return m.group(0)
        if self.s.startswith('"/', self.i):
            sel = self.try_selector()
            if sel is not None:
                return "/" + "/".join(sel)
        text = self.try_string()
        if text is not None:
            return text
        sel = self.try_selector()
        if sel is not None:
            return ".".join(sel)
        self.fail()


_MISSING = object()


def _go_kind(value):
    if value is None:
        return "invalid"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "map"
    if isinstance(value, list):
        return "slice"
    return type(value).__name__


def _selector_text(path):
    return ".".join(path)


def _lookup(datum, path):
    """Resolve a selector like pointerstructure; returns _MISSING for a missing map key."""
    cur = datum
    cur_is_map = False
    for n, part in enumerate(path):
        if cur is None and cur_is_map:
            cur = {}  # a nil map behaves like an empty one
        if isinstance(cur, dict):
            if part in cur:
                nxt = cur[part]
                nxt_is_map = (not cur_is_map and part in _MAP_FIELDS and
                              (nxt is None or isinstance(nxt, dict))) or \
                    (cur_is_map and path[n - 1] == "Config" and isinstance(nxt, dict))
                cur, cur_is_map = nxt, nxt_is_map
                continue
            if cur_is_map and n == len(path) - 1:
                return _MISSING
            kind = "key" if cur_is_map else "struct field with name"
            raise FilterError('error finding value in datum: /%s at part %d: couldn\'t find %s "%s"'
                              % ("/".join(path), n, kind, part))
        if isinstance(cur, list):
            try:
                idx = int(part)
            except ValueError:
                idx = -1
            if 0 <= idx < len(cur):
                cur, cur_is_map = cur[idx], False
                continue
            raise FilterError("error finding value in datum: /%s at part %d: invalid index %r"
                              % ("/".join(path), n, part))
        raise FilterError("error finding value in datum: /%s at part %d: invalid value kind: %s"
                          % ("/".join(path), n, _go_kind(cur)))
    return cur


def _coerce(raw, like):
    """bexpr Coerce*: convert the expression's raw value to the selected field's Go kind."""
    try:
        if isinstance(like, bool):
            return parse_go_bool(raw)
        if isinstance(like, int):
            try:
                return int(raw, 0)
            except ValueError:
                try:
                    return int(raw, 10)
                except ValueError:
                    raise ValueError('strconv.ParseInt: parsing "%s": invalid syntax' % raw)
        if isinstance(like, float):
            try:
                return float(raw)
            except ValueError:
                raise ValueError('strconv.ParseFloat: parsing "%s": invalid syntax' % raw)
    except ValueError as exc:
        raise FilterError("error getting match value in expression: %s" % exc)
    return raw


_NOT_PRESENT = {"==": False, "!=": True, "in": False, "not in": True, "is empty": True,
                "is not empty": False, "matches": False, "not matches": True}


def _eval(node, datum):
    kind = node[0]
    if kind == "or":
        return _eval(node[1], datum) or _eval(node[2], datum)
    if kind == "and":
        return _eval(node[1], datum) and _eval(node[2], datum)
    if kind == "not":
        return not _eval(node[1], datum)
    op, path, raw = node[1:]
    value = _lookup(datum, path)
    if value is _MISSING:
        return _NOT_PRESENT[op]
    if op in ("==", "!="):
        if isinstance(value, (dict, list)) or value is None:
            raise FilterError("unable to find suitable primitive comparison function for matching")
        result = _coerce(raw, value) == value
        return result if op == "==" else not result
    if op in ("in", "not in"):
        if isinstance(value, dict):
            result = raw in value
        elif isinstance(value, list):
            result = False
            for item in value:
                if isinstance(item, (dict, list)) or item is None:
                    raise FilterError('unable to find suitable primitive comparison function for "in" '
                                      'comparison')
                if _coerce(raw, item) == item:
                    result = True
                    break
        elif isinstance(value, str):
            result = raw in value
        elif value is None:
            result = False
        else:
            raise FilterError('cannot perform in/contains operations on type %s for selector: "%s"'
                              % (_go_kind(value), _selector_text(path)))
        return result if op == "in" else not result
    if op in ("is empty", "is not empty"):
        if value is None:
            result = True
        elif isinstance(value, (dict, list, str)):
            result = len(value) == 0
        else:
            raise FilterError('cannot perform is-empty operations on type %s for selector: "%s"'
                              % (_go_kind(value), _selector_text(path)))
        return result if op == "is empty" else not result
    if op in ("matches", "not matches"):
        if not isinstance(value, str):
            raise FilterError("value of type %s is not convertible to []byte" % _go_kind(value))
        try:
            result = re.search(raw, value) is not None
        except re.error as exc:
            raise FilterError("failed to compile regular expression %r: %s" % (raw, exc))
        return result if op == "matches" else not result
    raise FilterError("invalid match operation: %s" % op)


def compile_filter(text):
    """Parse a bexpr filter; returns a predicate(datum) -> bool that may raise FilterError.

    go-bexpr as Nomad 1.9 vendors it, evaluated on the full struct (docs/upstream.md#nomad-nodes).
    """
    ast = _BexprParser(text).parse()
    return lambda datum: _eval(ast, datum)


# ---------------------------------------------------------------------------------------------
# ACLs (nomad/acl, command/agent/http.go, 1.9; docs/upstream.md#nomad-http)
# ---------------------------------------------------------------------------------------------

_NS_READ = ["list-jobs", "parse-job", "read-job", "csi-list-volume", "csi-read-volume",
            "read-job-scaling", "list-scaling-policies", "read-scaling-policy"]
_NS_WRITE = _NS_READ + ["scale-job", "submit-job", "dispatch-job", "read-logs", "read-fs",
                        "alloc-exec", "alloc-lifecycle", "csi-mount-volume", "csi-write-volume",
                        "submit-recommendation"]
_NS_POLICIES = {"read": _NS_READ, "write": _NS_WRITE, "deny": ["deny"],
                "scale": ["list-scaling-policies", "read-scaling-policy", "read-job-scaling",
                          "scale-job"]}


class _ACL:
    """A resolved token: management, namespace rules (name or glob -> capability set), node/agent."""

    def __init__(self, management=False, namespaces=None, node=None, agent=None, disabled=False,
                 accessor=None, secret=None):
        self.management = management
        self.disabled = disabled
        self.node = node
        self.agent = agent
        self.accessor = accessor or _uuid()
        self.secret = secret
        self.rules = []  # (pattern, set(caps)) in insertion order
        for pattern, caps in (namespaces or {}).items():
            if isinstance(caps, str):
                caps = [caps]
            expanded = set()
            for cap in caps:
                expanded.update(_NS_POLICIES.get(cap, [cap]))
            self.rules.append((pattern, expanded))

    @property
    def all(self):
        return self.disabled or self.management

    def _caps_for(self, ns):
        for pattern, caps in self.rules:
            if pattern == ns:
                return caps
        best = None
        for pattern, caps in self.rules:
            if "*" not in pattern:
                continue
            regex = "^" + ".*".join(re.escape(p) for p in pattern.split("*")) + "$"
            if re.match(regex, ns):
                diff = len(ns) - len(pattern.replace("*", ""))
                if best is None or diff < best[0]:
                    best = (diff, caps)
        return best[1] if best else None

    def allow_ns_op(self, ns, op):
        if self.all:
            return True
        if ns == "*" and any(op in caps and "deny" not in caps for unused, caps in self.rules):
            return True
        caps = self._caps_for(ns)
        return bool(caps) and "deny" not in caps and op in caps

    def allow_namespace(self, ns):
        if self.all:
            return True
        if ns == "*" and any(caps and "deny" not in caps for unused, caps in self.rules):
            return True
        caps = self._caps_for(ns)
        return bool(caps) and "deny" not in caps

    def allow_node_read(self):
        return self.all or self.node in ("read", "write")

    def allow_node_write(self):
        return self.all or self.node == "write"

    def allow_agent_read(self):
        return self.all or self.agent in ("read", "write")


_ACL_DISABLED = _ACL(disabled=True)

# ---------------------------------------------------------------------------------------------
# Node / allocation builders (nomad/structs/structs.go, nomad/structs/alloc.go, 1.9;
# docs/upstream.md#nomad-nodes, docs/upstream.md#nomad-allocations)
# ---------------------------------------------------------------------------------------------

_ALLOC_LOST = "alloc is lost since its node is down"
_ALLOC_UNKNOWN = "alloc is unknown since its node is disconnected"
_CLIENT_DESC = {"pending": "No tasks have started", "running": "Tasks are running",
                "complete": "All tasks have completed", "failed": "Failed tasks"}
_TERMINAL_CLIENT = ("complete", "failed", "lost")
_NODE_STATUSES = ("initializing", "ready", "down", "disconnected")
_CLIENT_STATUSES = ("pending", "running", "complete", "failed", "lost", "unknown")
_DESIRED_STATUSES = ("run", "stop", "evict")

_OS_SIGNALS = ("SIGABRT,SIGALRM,SIGBUS,SIGCHLD,SIGCONT,SIGFPE,SIGHUP,SIGILL,SIGINT,SIGIO,SIGIOT,"
               "SIGKILL,SIGPIPE,SIGPROF,SIGQUIT,SIGSEGV,SIGSTOP,SIGSYS,SIGTERM,SIGTRAP,SIGTSTP,"
               "SIGTTIN,SIGTTOU,SIGURG,SIGUSR1,SIGUSR2,SIGWINCH,SIGXCPU,SIGXFSZ")


def _task_event(etype, t_ns, message="", display="", details=None, exit_code=0, fails=False):
    return {"Type": etype, "Time": t_ns, "Message": message, "DisplayMessage": display or message,
            "Details": details if details is not None else {}, "FailsTask": fails,
            "RestartReason": "", "SetupError": "", "DriverError": "", "ExitCode": exit_code,
            "Signal": 0, "KillTimeout": 0, "KillError": "", "KillReason": "", "StartDelay": 0,
            "DownloadError": "", "ValidationError": "", "DiskLimit": 0, "FailedSibling": "",
            "VaultError": "", "TaskSignalReason": "", "TaskSignal": "", "DriverMessage": "",
            "GenericSource": ""}


def _task_state(client_status, created_ns, now_ns):
    received = created_ns + 2_000_000
    events = [_task_event("Received", received, display="Task received by client")]
    state = {"State": "pending", "Failed": False, "Restarts": 0, "LastRestart": None,
             "StartedAt": None, "FinishedAt": None, "Events": events, "TaskHandle": None,
             "Paused": ""}
    if client_status == "pending":
        return state
    setup = received + 1_500_000
    started = setup + 850_000_000
    events.append(_task_event("Task Setup", setup, "Building Task Directory",
                              details={"message": "Building Task Directory"}))
    events.append(_task_event("Started", started, display="Task started by client"))
    state["State"] = "running"
    state["StartedAt"] = _go_time(started)
    if client_status in ("complete", "failed"):
        _finish_task(state, client_status, max(now_ns, started + 1_000_000))
    return state


def _finish_task(state, client_status, at_ns):
    if state["State"] == "dead":
        return
    failed = client_status == "failed"
    code = 1 if failed else 0
    state["Events"].append(_task_event(
        "Terminated", at_ns, display="Exit Code: %d" % code,
        details={"exit_code": str(code), "signal": "0", "oom_killed": "false"}, exit_code=code))
    if failed:
        state["Events"].append(_task_event(
            "Not Restarting", at_ns + 1000,
            "Error was unrecoverable",
            details={"fails_task": "true", "restart_reason": "Error was unrecoverable"},
            fails=True))
    state["State"] = "dead"
    state["Failed"] = failed
    state["FinishedAt"] = _go_time(at_ns)
    if state["StartedAt"] is None:
        state["StartedAt"] = _go_time(at_ns)


def _alloc_omitempty(alloc):
    """Render a full Allocation the way Nomad's codec does (struct-level omitempty, observed on
    1.6.5 too; docs/upstream.md#nomad-allocations): drop "",
    0, false, null, empty maps/lists and an all-null DesiredTransition (a struct value)."""
    out = {}
    for key, value in alloc.items():
        if value is None or value is False or value == "":
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
            continue
        if isinstance(value, (list, dict)) and not value:
            continue
        if key == "DesiredTransition" and all(v is None for v in value.values()):
            continue
        out[key] = value
    return out


def _alloc_id_token(alloc):
    return alloc["ID"]


def _alloc_index_token(alloc):
    return "%d.%s" % (alloc["CreateIndex"], alloc["ID"])


class NomadSim(httpd.Service):
    """The Nomad servers of the lab cluster: state, ACLs and the HTTP API."""

    SERVER_ADDR = "127.0.0.1:4647"

    # Event buffer and heartbeat of a Nomad agent with default settings (event_buffer_size 100;
    # a `{}` every 30 s; docs/upstream.md#nomad-event-stream-wire).
    EVENT_BUFFER_SIZE = 100
    EVENT_HEARTBEAT = 30.0

    def __init__(self, log=None, region="global", datacenter="dc1", acl_enabled=False,
                 version="1.9.7", event_buffer_size=EVENT_BUFFER_SIZE,
                 event_heartbeat=EVENT_HEARTBEAT):
        super().__init__("nomad", log)
        # Seconds between two `{}` heartbeats of an event stream; tests shorten it.
        self.event_heartbeat = float(event_heartbeat)
        self._events = collections.deque(maxlen=int(event_buffer_size))  # (serial, frame)
        self._event_serial = 0
        self.region = region
        self.datacenter = datacenter
        self.acl_enabled = acl_enabled
        self.version = version
        self.revision = hashlib.sha1(("nomad-" + version).encode()).hexdigest()
        self.management_token = _uuid()
        self.signing_key_id = _uuid()
        self.server_node_id = _uuid()
        self._cond = threading.Condition(self.lock)
        self._index = 1
        self._table_index = {"nodes": 1, "allocs": 1, "namespaces": 1, "acl_token": 1}
        self._nodes = {}
        self._node_ordinal = {}
        self._allocs = {}
        self._jobs = {}
        self._ip_next = {}
        self._ips_used = set()
        self._agents = {}
        self._alloc_address = {}
        self._tokens = {self.management_token: _ACL(management=True, secret=self.management_token)}
        self._anonymous = _ACL()
        self._namespaces = {}
        self._put_namespace("default", "Default shared namespace", index=1)
        self._register_routes()

    # -- index bookkeeping -------------------------------------------------------------------

    def _bump(self, *tables):
        self._index += 1
        for table in tables:
            self._table_index[table] = self._index
        self._cond.notify_all()
        return self._index

    @property
    def index(self):
        with self.lock:
            return self._index

    # -- event stream: publishing (docs/upstream.md#nomad-event-stream) ----------------------

    def _publish(self, index, topic, event_type, key, namespace, filter_keys, payload):
        """Buffer one item of the event stream (call with the lock held); the oldest item goes
        when the buffer is full, as in Nomad's event buffer."""
        self._event_serial += 1
        event = {"Topic": topic, "Type": event_type, "Key": key, "Namespace": namespace,
                 "FilterKeys": filter_keys, "Index": index, "Payload": {topic: payload}}
        self._events.append((self._event_serial, {"Index": index, "Events": [event]}))
        self._cond.notify_all()

    def _publish_alloc(self, alloc, event_type):
        """An Allocation event: the allocation without ``Job`` (so without meta), keyed by its
        ID, FilterKeys [JobID, DeploymentID or ""] (observed on 1.6.5)."""
        payload = _alloc_omitempty(alloc)
        payload.pop("Job", None)
        self._publish(alloc["ModifyIndex"], "Allocation", event_type, alloc["ID"],
                      alloc["Namespace"], [alloc["JobID"], alloc["DeploymentID"] or ""],
                      copy.deepcopy(payload))

    def _publish_node(self, node, event_type):
        self._publish(node["ModifyIndex"], "Node", event_type, node["ID"], "", None,
                      self._render_node(node))

    def clear_event_buffer(self):
        """Forget every buffered event, as a restarted agent whose buffer starts empty."""
        with self.lock:
            self._events.clear()

    # -- state API: namespaces and tokens ----------------------------------------------------

    def _put_namespace(self, name, description, index):
        existing = self._namespaces.get(name)
        digest = hashlib.blake2b((name + "\x00" + description).encode(), digest_size=32).digest()
        self._namespaces[name] = {
            "Name": name, "Description": description, "Quota": "", "Capabilities": None,
            "NodePoolConfiguration": None, "VaultConfiguration": None, "ConsulConfiguration": None,
            "Meta": None, "Hash": base64.b64encode(digest).decode(),
            "CreateIndex": existing["CreateIndex"] if existing else index, "ModifyIndex": index}

    def add_namespace(self, name, description=""):
        with self.lock:
            index = self._bump("namespaces")
            self._put_namespace(name, description, index)

    def add_token(self, secret, namespaces=None, node="read", agent="read", management=False):
        """Register an ACL token; returns its secret.  namespaces: {ns or glob: [caps|policy]}."""
        with self.lock:
            self._tokens[secret] = _ACL(management=management, namespaces=namespaces, node=node,
                                        agent=agent, secret=secret)
            self._bump("acl_token")
        return secret

    def remove_token(self, secret):
        with self.lock:
            self._tokens.pop(secret, None)
            self._bump("acl_token")

    def set_anonymous_policy(self, namespaces=None, node=None, agent=None):
        """Rules applied to requests without a token when ACLs are enabled (default: nothing)."""
        with self.lock:
            self._anonymous = _ACL(namespaces=namespaces, node=node, agent=agent)
            self._bump("acl_token")

    # -- state API: nodes --------------------------------------------------------------------

    def add_node(self, name, node_id=None, datacenter=None, node_class="", status="ready",
                 address="127.0.0.1", attributes=None, meta=None, status_updated_at=None,
                 node_pool="default", cni_networks=None):
        """Register a client node; returns the full Node as GET /v1/node/<id> shows it.

        attributes are merged over realistic fingerprint defaults (a value of None removes a
        default, e.g. {"plugins.cni.version.cilium-cni": None}).  cni_networks: names of the CNI
        networks in the client's cni_config_dir (default ["cilium"] while the cilium-cni plugin
        attribute is present, else []).
        """
        if status not in _NODE_STATUSES:
            raise ValueError("unknown node status %r" % status)
        node_id = node_id or _uuid()
        now_ns = _now_ns()
        with self.lock:
            if node_id in self._nodes:
                raise ValueError("node %s already registered" % node_id)
            index = self._bump("nodes")
            dc = datacenter or self.datacenter
            attrs = self._default_attributes(name, address)
            for key, value in (attributes or {}).items():
                if value is None:
                    attrs.pop(key, None)
                else:
                    attrs[key] = str(value)
            node_meta = {"connect.gateway_image": "docker.io/envoyproxy/envoy:v${NOMAD_envoy_version}",
                         "connect.log_level": "info", "connect.proxy_concurrency": "1",
                         "connect.sidecar_image": "docker.io/envoyproxy/envoy:v${NOMAD_envoy_version}"}
            node_meta.update({k: str(v) for k, v in (meta or {}).items()})
            if cni_networks is None:
                cni_networks = ["cilium"] if "plugins.cni.version.cilium-cni" in attrs else []
            self._node_ordinal[node_id] = len(self._node_ordinal) + 1
            drivers_time = _go_time(now_ns)
            node = {
                "ID": node_id,
                "SecretID": _uuid(),
                "Datacenter": dc,
                "Name": name,
                "CgroupParent": "nomad.slice",
                "HTTPAddr": "%s:4646" % address,
                "TLSEnabled": False,
                "Attributes": attrs,
                "NodeResources": self._node_resources(address, cni_networks),
                "ReservedResources": {"Cpu": {"CpuShares": 0, "ReservedCpuCores": None},
                                      "Memory": {"MemoryMB": 0}, "Disk": {"DiskMB": 0},
                                      "Networks": {"ReservedHostPorts": ""}},
                "Resources": _legacy_resources(),
                "Reserved": _legacy_resources(),
                "Links": {"consul": "%s.%s" % (dc, name)} if "consul.version" in attrs else {},
                "Meta": node_meta,
                "NodeClass": node_class,
                "NodePool": node_pool,
                "ComputedClass": "v1:%d" % (int(hashlib.sha1((dc + node_class + node_pool).encode())
                                                .hexdigest()[:15], 16)),
                "DrainStrategy": None,
                "SchedulingEligibility": "eligible",
                "Status": status,
                "StatusDescription": "",
                "StatusUpdatedAt": int(status_updated_at if status_updated_at is not None
                                       else now_ns // 1_000_000_000),
                "Events": [{"Message": "Node registered", "Subsystem": "Cluster", "Details": None,
                            "Timestamp": _go_time(now_ns), "CreateIndex": index}],
                "Drivers": self._drivers(attrs, drivers_time),
                "CSIControllerPlugins": {},
                "CSINodePlugins": {},
                "HostVolumes": {},
                "HostNetworks": {},
                "LastDrain": None,
                "LastMissedHeartbeatIndex": 0,
                "LastAllocUpdateIndex": 0,
                "CreateIndex": index,
                "ModifyIndex": index,
            }
            self._nodes[node_id] = node
            self._publish_node(node, "NodeRegistration")
            return self._render_node(node)

    def _default_attributes(self, name, address):
        return {
            "cpu.arch": "amd64", "cpu.frequency": "2600", "cpu.modelname": "AMD EPYC 7B13",
            "cpu.numcores": "4", "cpu.reservablecores": "0-3", "cpu.totalcompute": "10400",
            "cpu.usablecompute": "10400",
            "consul.connect": "true", "consul.datacenter": self.datacenter,
            "consul.grpc": "8502", "consul.revision": "fb3a8e4e", "consul.server": "false",
            "consul.sku": "oss", "consul.version": "1.20.2",
            "driver.docker": "1", "driver.docker.bridge_ip": "172.17.0.1",
            "driver.docker.os_type": "linux", "driver.docker.privileged.enabled": "false",
            "driver.docker.runtimes": "io.containerd.runc.v2,runc",
            "driver.docker.version": "27.5.1", "driver.docker.volumes.enabled": "false",
            "driver.exec": "1",
            "kernel.arch": "x86_64", "kernel.landlock": "v3", "kernel.name": "linux",
            "kernel.version": "6.8.0-51-generic",
            "memory.totalbytes": "8323317760",
            "nomad.advertise.address": "%s:4646" % address, "nomad.bridge.hairpin_mode": "false",
            "nomad.revision": self.revision, "nomad.service_discovery": "true",
            "nomad.version": self.version,
            "numa.node.count": "1", "numa.node0.cores": "0-3",
            "os.cgroups.version": "2", "os.name": "ubuntu", "os.signals": _OS_SIGNALS,
            "os.version": "24.04",
            "plugins.cni.version.bandwidth": "v1.6.2", "plugins.cni.version.bridge": "v1.6.2",
            "plugins.cni.version.cilium-cni": "1.16.5", "plugins.cni.version.firewall": "v1.6.2",
            "plugins.cni.version.host-local": "v1.6.2", "plugins.cni.version.loopback": "v1.6.2",
            "plugins.cni.version.portmap": "v1.6.2",
            "unique.cgroup.mountpoint": "/sys/fs/cgroup", "unique.cgroup.version": "v2",
            "unique.consul.name": name, "unique.hostname": name,
            "unique.network.ip-address": address, "unique.storage.bytesfree": "31457280000",
            "unique.storage.bytestotal": "52521566208", "unique.storage.volume": "/dev/sda1",
        }

    @staticmethod
    def _drivers(attrs, when):
        docker_attrs = {k: v for k, v in attrs.items() if k.startswith("driver.docker")}
        return {
            "docker": {"Attributes": docker_attrs or None, "Detected": "driver.docker" in attrs,
                       "Healthy": "driver.docker" in attrs,
                       "HealthDescription": "Healthy" if "driver.docker" in attrs else "",
                       "UpdateTime": when},
            "exec": {"Attributes": {"driver.exec": "true"} if "driver.exec" in attrs else None,
                     "Detected": "driver.exec" in attrs, "Healthy": "driver.exec" in attrs,
                     "HealthDescription": "Healthy" if "driver.exec" in attrs else "",
                     "UpdateTime": when},
            "raw_exec": {"Attributes": None, "Detected": False, "Healthy": False,
                         "HealthDescription": "disabled", "UpdateTime": when},
            "java": {"Attributes": None, "Detected": False, "Healthy": False,
                     "HealthDescription": "", "UpdateTime": when},
            "qemu": {"Attributes": None, "Detected": False, "Healthy": False,
                     "HealthDescription": "", "UpdateTime": when},
        }

    @staticmethod
    def _node_resources(address, cni_networks):
        node_networks = [
            {"Mode": "host", "Device": "eth0", "MacAddress": "52:54:00:12:34:56", "Speed": 1000,
             "Addresses": [{"Family": "ipv6" if ":" in address else "ipv4", "Alias": "default",
                            "Address": address, "ReservedPorts": "", "Gateway": ""}]},
            {"Mode": "bridge", "Device": "nomad", "MacAddress": "", "Speed": 0, "Addresses": None},
        ]
        networks = [_netres(mode="host", device="eth0",
                            cidr=address + ("/128" if ":" in address else "/32"), ip=address,
                            mbits=1000),
                    _netres(mode="bridge")]
        for name in cni_networks:
            node_networks.append({"Mode": "cni/%s" % name, "Device": "", "MacAddress": "",
                                  "Speed": 0, "Addresses": None})
            networks.append(_netres(mode="cni/%s" % name))
        cores = [{"SocketID": 0, "NodeID": 0, "ID": i, "Grade": True, "Disable": False,
                  "BaseSpeed": 2600, "MaxSpeed": 3500, "GuessSpeed": 0} for i in range(4)]
        return {
            "Cpu": {"CpuShares": 10400, "TotalCpuCores": 4, "ReservableCpuCores": [0, 1, 2, 3]},
            "Processors": {"Topology": {"Nodes": [0], "Distances": [[10]], "Cores": cores,
                                        "OverrideTotalCompute": 0, "OverrideWitholdCompute": 0}},
            "Memory": {"MemoryMB": 7937},
            "Disk": {"DiskMB": 29999},
            "Devices": None,
            "NodeNetworks": node_networks,
            "Networks": networks,
            "MinDynamicPort": 20000,
            "MaxDynamicPort": 32000,
        }

    def _node_event(self, node, message, index, now_ns, subsystem="Cluster"):
        node["Events"].append({"Message": message, "Subsystem": subsystem, "Details": None,
                               "Timestamp": _go_time(now_ns), "CreateIndex": index})
        del node["Events"][:-10]

    def set_node_status(self, node_id, status, status_updated_at=None):
        """ready|down|disconnected|initializing (nomad/heartbeat.go; docs/upstream.md#nomad-node-gc).
        down: non-terminal allocs become lost (desired
        stop); disconnected: running/pending allocs become unknown; ready again after
        disconnected: unknown allocs are running again."""
        if status not in _NODE_STATUSES:
            raise ValueError("unknown node status %r" % status)
        now_ns = _now_ns()
        with self.lock:
            node = self._nodes[node_id]
            previous = node["Status"]
            index = self._bump("nodes")
            node["Status"] = status
            node["StatusUpdatedAt"] = int(status_updated_at if status_updated_at is not None
                                          else now_ns // 1_000_000_000)
            node["ModifyIndex"] = index
            if status in ("down", "disconnected") and previous not in ("down", "disconnected"):
                node["LastMissedHeartbeatIndex"] = index
                self._node_event(node, "Node heartbeat missed", index, now_ns)
            elif status == "ready" and previous in ("down", "disconnected"):
                node["LastMissedHeartbeatIndex"] = 0
                self._node_event(node, "Node reregistered by heartbeat", index, now_ns)
            if status == "down":
                self._lose_allocs(node_id, now_ns)
            elif status == "disconnected":
                self._unknown_allocs(node_id, now_ns)
            elif status == "ready" and previous == "disconnected":
                self._reconnect_allocs(node_id, now_ns)
            # A status change is a NodeStreamEvent, not the NodeEvent the docs name (observed).
            self._publish_node(node, "NodeStreamEvent")

    def _allocs_on(self, node_id):
        return [a for a in self._allocs.values() if a["NodeID"] == node_id]

    @staticmethod
    def _server_terminal(alloc):
        return alloc["DesiredStatus"] in ("stop", "evict") or \
            alloc["ClientStatus"] in _TERMINAL_CLIENT

    def _lose_allocs(self, node_id, now_ns):
        victims = [a for a in self._allocs_on(node_id) if not self._server_terminal(a)]
        if not victims:
            return
        index = self._bump("allocs")
        for alloc in victims:
            alloc["DesiredStatus"] = "stop"
            alloc["DesiredDescription"] = _ALLOC_LOST
            alloc["ClientStatus"] = "lost"
            alloc["AllocStates"] = (alloc["AllocStates"] or []) + [
                {"Field": 0, "Value": "lost", "Time": _go_time(now_ns)}]
            alloc["ModifyIndex"] = alloc["AllocModifyIndex"] = index
            alloc["ModifyTime"] = now_ns
            # UNCONFIRMED: the node-update eval's plan marks them lost (a PlanResult event).
            self._publish_alloc(alloc, "PlanResult")

    def _unknown_allocs(self, node_id, now_ns):
        victims = [a for a in self._allocs_on(node_id)
                   if not self._server_terminal(a) and a["ClientStatus"] in ("running", "pending")]
        if not victims:
            return
        index = self._bump("allocs")
        for alloc in victims:
            alloc["ClientStatus"] = "unknown"
            alloc["ClientDescription"] = _ALLOC_UNKNOWN
            alloc["AllocStates"] = (alloc["AllocStates"] or []) + [
                {"Field": 0, "Value": "unknown", "Time": _go_time(now_ns)}]
            alloc["ModifyIndex"] = alloc["AllocModifyIndex"] = index
            alloc["ModifyTime"] = now_ns
            self._publish_alloc(alloc, "PlanResult")  # UNCONFIRMED, as for lost allocations

    def _reconnect_allocs(self, node_id, now_ns):
        victims = [a for a in self._allocs_on(node_id) if a["ClientStatus"] == "unknown"]
        if not victims:
            return
        index = self._bump("allocs")
        for alloc in victims:
            alloc["ClientStatus"] = "running"
            alloc["ClientDescription"] = _CLIENT_DESC["running"]
            alloc["ModifyIndex"] = index
            alloc["ModifyTime"] = now_ns
            self._publish_alloc(alloc, "AllocationUpdated")

    def remove_node(self, node_id):
        """Node GC / purge (nomad/core_sched.go; docs/upstream.md#nomad-node-gc): gone from
        /v1/nodes; /v1/node/<id> -> 404.  Allocations stay (until
        alloc GC); non-terminal ones are marked lost, as the purge's node-update eval does."""
        with self.lock:
            if node_id not in self._nodes:
                raise KeyError(node_id)
            del self._nodes[node_id]
            self._bump("nodes")
            self._lose_allocs(node_id, _now_ns())

    def get_node(self, node_id):
        with self.lock:
            return self._render_node(self._nodes[node_id])

    def nodes(self):
        """Every registered node (full objects)."""
        with self.lock:
            return [self._render_node(n) for n in self._nodes.values()]

    # -- state API: allocations --------------------------------------------------------------

    def add_allocation(self, node_id, job_id, task_group="web", namespace="default", job_meta=None,
                       group_meta=None, task_meta=None, task_names=("app",), client_status="running",
                       desired_status="run", network_mode="cni/cilium", address=None, alloc_id=None,
                       create_time_ns=None, job_type="service"):
        """Place an allocation on a node; returns the full Allocation (GET /v1/allocation form).

        task_meta: one dict applied to every task, or {task name: dict}.  network_mode: the
        group network mode ("cni/<name>", "bridge", "host") or None for no group network.
        address: the alloc's IP for bridge/cni modes (auto-assigned from the node's pod CIDR when
        None).  The namespace must exist (add_namespace)."""
        if client_status not in _CLIENT_STATUSES:
            raise ValueError("unknown client status %r" % client_status)
        if desired_status not in _DESIRED_STATUSES:
            raise ValueError("unknown desired status %r" % desired_status)
        created = int(create_time_ns) if create_time_ns is not None else _now_ns()
        now_ns = max(_now_ns(), created)
        task_names = list(task_names)
        with self.lock:
            node = self._nodes.get(node_id)
            if node is None:
                raise KeyError("unknown node %s" % node_id)
            if namespace not in self._namespaces:
                raise KeyError("unknown namespace %s (add_namespace first)" % namespace)
            alloc_id = alloc_id or _uuid()
            if alloc_id in self._allocs:
                raise ValueError("allocation %s exists" % alloc_id)
            job_key = (namespace, job_id)
            job = self._jobs.get(job_key)
            if job is None:
                jindex = self._bump("allocs")
                job = {"CreateIndex": jindex, "SubmitTime": created - 1_500_000,
                       "DeploymentID": _uuid() if job_type == "service" else "", "groups": {}}
                self._jobs[job_key] = job
            group_idx = job["groups"].get(task_group, 0)
            job["groups"][task_group] = group_idx + 1
            index = self._bump("allocs")

            host_ip = node["HTTPAddr"].rsplit(":", 1)[0]
            shared_networks = None
            if network_mode:
                shared_networks = [_netres(mode=network_mode, ip=host_ip)]
            if isinstance(task_meta, dict) and task_meta and \
                    all(isinstance(v, dict) for v in task_meta.values()) and \
                    set(task_meta) <= set(task_names):
                per_task_meta = {t: task_meta.get(t) for t in task_names}
            else:
                per_task_meta = {t: task_meta for t in task_names}

            tasks = [self._task(t, per_task_meta[t]) for t in task_names]
            tg = self._task_group(task_group, group_idx + 1, group_meta, tasks,
                                  [_netres(mode=network_mode)] if network_mode else None)
            job_snapshot = self._job(job_id, namespace, job_type, job_meta, [tg], job)

            task_res = {t: _legacy_resources(cpu=100, memory=300) for t in task_names}
            alloc = {
                "ID": alloc_id,
                "Namespace": namespace,
                "EvalID": _uuid(),
                "Name": "%s.%s[%d]" % (job_id, task_group, group_idx),
                "NodeID": node_id,
                "NodeName": node["Name"],
                "JobID": job_id,
                "Job": job_snapshot,
                "TaskGroup": task_group,
                "Resources": _legacy_resources(cpu=100 * len(task_names),
                                               memory=300 * len(task_names),
                                               memory_max=300 * len(task_names), disk=300,
                                               networks=shared_networks),
                "SharedResources": _legacy_resources(disk=300, networks=shared_networks),
                "TaskResources": task_res,
                "AllocatedResources": {
                    "Tasks": {t: {"Cpu": {"CpuShares": 100, "ReservedCores": None},
                                  "Memory": {"MemoryMB": 300, "MemoryMaxMB": 0},
                                  "Networks": None, "Devices": None} for t in task_names},
                    "TaskLifecycles": {t: None for t in task_names},
                    "Shared": {"Networks": shared_networks, "DiskMB": 300, "Ports": None},
                },
                "Metrics": {
                    "NodesEvaluated": len(self._nodes), "NodesFiltered": 0,
                    "NodesInPool": len(self._nodes), "NodesAvailable": {node["Datacenter"]: 1},
                    "ClassFiltered": None, "ConstraintFiltered": None, "NodesExhausted": 0,
                    "ClassExhausted": None, "DimensionExhausted": None, "QuotaExhausted": None,
                    "ResourcesExhausted": None, "Scores": None,
                    "ScoreMetaData": [{"NodeID": node_id, "NormScore": 0.1953,
                                       "Scores": {"binpack": 0.1953, "job-anti-affinity": 0,
                                                  "node-affinity": 0,
                                                  "node-reschedule-penalty": 0}}],
                    "AllocationTime": 61447, "CoalescedFailures": 0},
                "DesiredStatus": desired_status,
                "DesiredDescription": "",
                "DesiredTransition": {"Migrate": None, "Reschedule": None, "ForceReschedule": None,
                                      "NoShutdownDelay": None},
                "ClientStatus": client_status,
                "ClientDescription": _CLIENT_DESC.get(client_status, ""),
                "TaskStates": {t: _task_state(client_status, created, now_ns) for t in task_names},
                "AllocStates": None,
                "PreviousAllocation": "",
                "NextAllocation": "",
                "DeploymentID": job["DeploymentID"],
                "DeploymentStatus": None,
                "RescheduleTracker": None,
                "NetworkStatus": None,
                "FollowupEvalID": "",
                "PreemptedAllocations": None,
                "PreemptedByAllocation": "",
                "SigningKeyID": self.signing_key_id,
                "CreateIndex": index,
                "ModifyIndex": index,
                "AllocModifyIndex": index,
                "CreateTime": created,
                "ModifyTime": created if client_status == "pending" else now_ns,
            }
            self._alloc_address[alloc_id] = address
            if address:
                self._ips_used.add(address)
            self._maybe_network_status(alloc, node_id, network_mode, address)
            if client_status == "running" and job["DeploymentID"]:
                alloc["DeploymentStatus"] = {"Healthy": True, "Timestamp": _go_time(now_ns),
                                             "Canary": False, "ModifyIndex": index}
            self._allocs[alloc_id] = alloc
            # The scheduler's placement is a PlanResult (pending); an allocation added already
            # running stands for placement and client update at once.
            self._publish_alloc(alloc, "PlanResult" if client_status == "pending"
                                else "AllocationUpdated")
            return self._render_alloc(alloc)

    def _maybe_network_status(self, alloc, node_id, mode, address):
        """The client reports NetworkStatus once it has started running the alloc.

        client/allocrunner (1.9); docs/upstream.md#nomad-allocations.
        """
        if alloc["NetworkStatus"] is not None or alloc["ClientStatus"] == "pending":
            return
        if not mode or mode == "host" or mode == "none":
            alloc["NetworkStatus"] = {"InterfaceName": "", "Address": "", "AddressIPv6": "",
                                      "DNS": None}
            return
        if address is None:
            address = self._assign_ip(node_id, mode)
        self._ips_used.add(address)
        v6 = ":" in address
        alloc["NetworkStatus"] = {"InterfaceName": "eth0", "Address": address,
                                  "AddressIPv6": address if v6 else "", "DNS": None}

    def _assign_ip(self, node_id, mode):
        ordinal = self._node_ordinal.get(node_id, 1)
        if mode == "bridge":
            key = (node_id, "bridge")
            base = (172 << 24) | (26 << 16) | (64 << 8)
            start = 2
        else:  # cilium cluster-pool style: one /24 per node out of 10.0.0.0/8
            key = (node_id, "cni")
            base = (10 << 24) | (((ordinal >> 8) & 0xFF) << 16) | ((ordinal & 0xFF) << 8)
            start = 10
        while True:
            n = self._ip_next.get(key, start)
            self._ip_next[key] = n + 1
            value = base + n
            ip = "%d.%d.%d.%d" % (value >> 24, (value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF)
            if ip not in self._ips_used:
                return ip

    def _task(self, name, meta):
        return {
            "Name": name, "Driver": "docker", "User": "",
            "Config": {"image": "registry.lab/%s:latest" % name},
            "Env": None, "Services": None, "Vault": None, "Consul": None, "Templates": None,
            "Constraints": None, "Affinities": None,
            "Resources": _legacy_resources(cpu=100, memory=300),
            "RestartPolicy": {"Attempts": 2, "Interval": 1800000000000, "Delay": 15000000000,
                              "Mode": "fail", "RenderTemplates": False},
            "DispatchPayload": None, "Lifecycle": None,
            "Meta": dict(meta) if meta else None,
            "KillTimeout": 5000000000,
            "LogConfig": {"MaxFiles": 10, "MaxFileSizeMB": 10, "Disabled": False},
            "Artifacts": None, "Leader": False, "ShutdownDelay": 0, "VolumeMounts": None,
            "ScalingPolicies": None, "KillSignal": "", "Kind": "", "CSIPluginConfig": None,
            "Identity": {"Name": "default", "Audience": ["nomadproject.io"], "ChangeMode": "",
                         "ChangeSignal": "", "Env": False, "File": False, "ServiceName": "",
                         "TTL": 0},
            "Identities": None, "Actions": None, "Schedule": None,
        }

    @staticmethod
    def _task_group(name, count, meta, tasks, networks):
        return {
            "Name": name, "Count": count,
            "Update": {"Stagger": 30000000000, "MaxParallel": 1, "HealthCheck": "checks",
                       "MinHealthyTime": 10000000000, "HealthyDeadline": 300000000000,
                       "ProgressDeadline": 600000000000, "Canary": 0, "AutoRevert": False,
                       "AutoPromote": False},
            "Migrate": {"MaxParallel": 1, "HealthCheck": "checks", "MinHealthyTime": 10000000000,
                        "HealthyDeadline": 300000000000},
            "Constraints": None, "Scaling": None,
            "RestartPolicy": {"Attempts": 2, "Interval": 1800000000000, "Delay": 15000000000,
                              "Mode": "fail", "RenderTemplates": False},
            "Disconnect": None,
            "Tasks": tasks,
            "EphemeralDisk": {"Sticky": False, "SizeMB": 300, "Migrate": False},
            "Meta": dict(meta) if meta else None,
            "ReschedulePolicy": {"Attempts": 0, "Interval": 0, "Delay": 30000000000,
                                 "DelayFunction": "exponential", "MaxDelay": 3600000000000,
                                 "Unlimited": True},
            "Affinities": None, "Spreads": None,
            "Networks": networks,
            "Consul": {"Namespace": "", "Cluster": "default", "Partition": ""},
            "Services": None, "Volumes": None, "ShutdownDelay": None,
            "StopAfterClientDisconnect": None, "MaxClientDisconnect": None,
            "PreventRescheduleOnLost": False,
        }

    def _job(self, job_id, namespace, job_type, meta, groups, job):
        return {
            "Stop": False, "Region": self.region, "Namespace": namespace, "ID": job_id,
            "ParentID": "", "Name": job_id, "Type": job_type, "Priority": 50, "AllAtOnce": False,
            "Datacenters": ["*"], "NodePool": "default", "Constraints": None, "Affinities": None,
            "Spreads": None, "TaskGroups": groups,
            "Update": {"Stagger": 30000000000, "MaxParallel": 1, "HealthCheck": "",
                       "MinHealthyTime": 0, "HealthyDeadline": 0, "ProgressDeadline": 0,
                       "Canary": 0, "AutoRevert": False, "AutoPromote": False},
            "Multiregion": None, "Periodic": None, "ParameterizedJob": None, "Dispatched": False,
            "DispatchIdempotencyToken": "", "Payload": None,
            "Meta": dict(meta) if meta else None,
            "ConsulToken": "", "ConsulNamespace": "", "VaultToken": "", "VaultNamespace": "",
            "NomadTokenID": "", "Status": "pending", "StatusDescription": "", "Stable": False,
            "Version": 0, "SubmitTime": job["SubmitTime"], "CreateIndex": job["CreateIndex"],
            "ModifyIndex": job["CreateIndex"], "JobModifyIndex": job["CreateIndex"], "UI": None,
            "VersionTag": None,
        }

    _FIELD_ALIASES = {"client_status": "ClientStatus", "desired_status": "DesiredStatus",
                      "client_description": "ClientDescription",
                      "desired_description": "DesiredDescription",
                      "network_status": "NetworkStatus", "deployment_id": "DeploymentID",
                      "next_allocation": "NextAllocation", "followup_eval_id": "FollowupEvalID"}

    def update_allocation(self, alloc_id, **fields):
        """Update an allocation.  Snake-case keys: client_status, desired_status,
        client_description, desired_description, address (sets NetworkStatus.Address),
        network_status, deployment_id, ...; PascalCase keys set that raw field.  Client-side
        changes bump ModifyIndex; desired-side (server) changes also AllocModifyIndex."""
        now_ns = _now_ns()
        with self.lock:
            alloc = self._allocs[alloc_id]
            index = self._bump("allocs")
            server_side = False
            address = fields.pop("address", None)
            for key, value in fields.items():
                field = self._FIELD_ALIASES.get(key, key)
                if field not in alloc:
                    raise KeyError("unknown allocation field %r" % key)
                if field == "ClientStatus":
                    if value not in _CLIENT_STATUSES:
                        raise ValueError("unknown client status %r" % value)
                    self._client_status_change(alloc, value, now_ns)
                    if "client_description" not in fields and "ClientDescription" not in fields:
                        alloc["ClientDescription"] = _CLIENT_DESC.get(value, alloc["ClientDescription"])
                    continue
                if field == "DesiredStatus":
                    if value not in _DESIRED_STATUSES:
                        raise ValueError("unknown desired status %r" % value)
                    server_side = True
                if field in ("DesiredDescription", "DesiredTransition", "NextAllocation",
                             "FollowupEvalID", "DeploymentID"):
                    server_side = True
                alloc[field] = copy.deepcopy(value)
            if address is not None:
                self._ips_used.add(address)
                alloc["NetworkStatus"] = {"InterfaceName": "eth0", "Address": address,
                                          "AddressIPv6": address if ":" in address else "",
                                          "DNS": None}
            alloc["ModifyIndex"] = index
            alloc["ModifyTime"] = now_ns
            if server_side:
                alloc["AllocModifyIndex"] = index
            # Client updates are AllocationUpdated; server decisions (stop) PlanResult (observed).
            self._publish_alloc(alloc, "PlanResult" if server_side else "AllocationUpdated")

    def _client_status_change(self, alloc, status, now_ns):
        previous = alloc["ClientStatus"]
        alloc["ClientStatus"] = status
        if previous == "pending" and status != "pending":
            for state in alloc["TaskStates"].values():
                if state["State"] == "pending":
                    fresh = _task_state("running", alloc["CreateTime"], now_ns)
                    state.update(fresh)
            mode = None
            nets = alloc["AllocatedResources"]["Shared"]["Networks"]
            if nets:
                mode = nets[0].get("Mode")
            self._maybe_network_status(alloc, alloc["NodeID"], mode,
                                       self._alloc_address.get(alloc["ID"]))
        if status in ("complete", "failed"):
            for state in alloc["TaskStates"].values():
                _finish_task(state, status, now_ns)
        if status == "running" and alloc["DeploymentID"] and alloc["DeploymentStatus"] is None:
            alloc["DeploymentStatus"] = {"Healthy": True, "Timestamp": _go_time(now_ns),
                                         "Canary": False, "ModifyIndex": self._index}

    def remove_allocation(self, alloc_id):
        """Alloc GC: gone from every endpoint (404 alloc not found)."""
        with self.lock:
            alloc = self._allocs.pop(alloc_id)
            self._alloc_address.pop(alloc_id, None)
            if alloc.get("NetworkStatus"):
                self._ips_used.discard(alloc["NetworkStatus"]["Address"])
            self._bump("allocs")

    def get_allocation(self, alloc_id):
        with self.lock:
            return self._render_alloc(self._allocs[alloc_id])

    def allocations(self, node_id=None):
        with self.lock:
            return [self._render_alloc(a) for a in self._sorted_allocs(node_id)]

    # -- rendering ---------------------------------------------------------------------------

    @staticmethod
    def _render_node(node):
        out = copy.deepcopy(node)
        out["SecretID"] = ""
        out["Drain"] = node["DrainStrategy"] is not None
        return out

    @staticmethod
    def _node_stub(node, resources=False, os_=False):
        stub = {"Address": node["HTTPAddr"].rsplit(":", 1)[0], "ID": node["ID"]}
        if os_:
            stub["Attributes"] = {"os.name": node["Attributes"].get("os.name", "")}
        stub.update({
            "Datacenter": node["Datacenter"], "Name": node["Name"], "NodePool": node["NodePool"],
            "NodeClass": node["NodeClass"], "Version": node["Attributes"].get("nomad.version", ""),
            "Drain": node["DrainStrategy"] is not None,
            "SchedulingEligibility": node["SchedulingEligibility"], "Status": node["Status"],
            "StatusDescription": node["StatusDescription"],
            "Drivers": copy.deepcopy(node["Drivers"]),
            "HostVolumes": copy.deepcopy(node["HostVolumes"])})
        if resources:
            stub["NodeResources"] = copy.deepcopy(node["NodeResources"])
            stub["ReservedResources"] = copy.deepcopy(node["ReservedResources"])
        stub.update({"LastDrain": copy.deepcopy(node["LastDrain"]),
                     "CreateIndex": node["CreateIndex"], "ModifyIndex": node["ModifyIndex"]})
        return stub

    @staticmethod
    def _render_alloc(alloc):
        return copy.deepcopy(_alloc_omitempty(alloc))

    @staticmethod
    def _alloc_stub(alloc, resources=False, task_states=True):
        stub = {
            "ID": alloc["ID"], "EvalID": alloc["EvalID"], "Name": alloc["Name"],
            "Namespace": alloc["Namespace"], "NodeID": alloc["NodeID"],
            "NodeName": alloc["NodeName"], "JobID": alloc["JobID"],
            "JobType": alloc["Job"]["Type"], "JobVersion": alloc["Job"]["Version"],
            "TaskGroup": alloc["TaskGroup"]}
        if resources:
            stub["AllocatedResources"] = alloc["AllocatedResources"]
        stub.update({
            "DesiredStatus": alloc["DesiredStatus"],
            "DesiredDescription": alloc["DesiredDescription"],
            "ClientStatus": alloc["ClientStatus"], "ClientDescription": alloc["ClientDescription"],
            "DesiredTransition": alloc["DesiredTransition"],
            "TaskStates": alloc["TaskStates"] if task_states else None,
            "DeploymentStatus": alloc["DeploymentStatus"],
            "FollowupEvalID": alloc["FollowupEvalID"], "NextAllocation": alloc["NextAllocation"],
            "RescheduleTracker": alloc["RescheduleTracker"],
            "PreemptedAllocations": alloc["PreemptedAllocations"],
            "PreemptedByAllocation": alloc["PreemptedByAllocation"],
            "CreateIndex": alloc["CreateIndex"], "ModifyIndex": alloc["ModifyIndex"],
            "CreateTime": alloc["CreateTime"], "ModifyTime": alloc["ModifyTime"]})
        return copy.deepcopy(stub)

    def _sorted_allocs(self, node_id=None):
        # Filter before sorting: a node's allocations are a few of a large lab's many, and every
        # node asks for its own on each reap.yml run.
        allocs = self._allocs.values()
        if node_id is not None:
            allocs = [a for a in allocs if a["NodeID"] == node_id]
        return sorted(allocs, key=lambda a: (a["CreateIndex"], a["ID"]))

    # -- client agents -----------------------------------------------------------------------

    def client_agent(self, node_id):
        """The Nomad client agent running on that node (one Service per node, cached)."""
        with self.lock:
            agent = self._agents.get(node_id)
            if agent is None:
                if node_id not in self._nodes:
                    raise KeyError("unknown node %s" % node_id)
                agent = NomadClientAgent(self, node_id)
                self._agents[node_id] = agent
            return agent

    # -- HTTP plumbing -----------------------------------------------------------------------

    _ALL_METHODS = ("GET", "PUT", "POST", "DELETE", "PATCH", "HEAD")

    def _route_all(self, pattern, handler):
        for method in self._ALL_METHODS:
            self.route(method, pattern, handler)

    def _register_routes(self):
        self._route_all(r"/v1/agent/self", self._h_agent_self)
        self._route_all(r"/v1/agent/health", self._h_agent_health)
        self._route_all(r"/v1/status/leader", self._h_status_leader)
        self._route_all(r"/v1/status/peers", self._h_status_peers)
        self._route_all(r"/v1/regions", self._h_regions)
        self._route_all(r"/v1/nodes", self._h_nodes)
        self._route_all(r"/v1/node/pools", self._h_node_pools)
        self._route_all(r"/v1/node/(?P<rest>.*)", self._h_node_specific)
        self._route_all(r"/v1/allocations", self._h_allocations)
        self._route_all(r"/v1/allocation/(?P<rest>.*)", self._h_alloc_specific)
        self._route_all(r"/v1/namespaces", self._h_namespaces)
        self._route_all(r"/v1/namespace/(?P<name>.*)", self._h_namespace)
        self._route_all(r"/v1/event/stream", self._h_event_stream)

    @staticmethod
    def _q(req, name):
        """Go's url.Values.Get: the first value, '' when absent."""
        values = req.query.get(name)
        return values[0] if values else ""

    @staticmethod
    def _err(status, text, headers=None):
        return httpd.HttpError(status, text, headers=headers)

    def _json(self, req, obj, headers=None, status=200):
        h = {"Vary": "Accept-Encoding"}
        h.update(headers or {})
        pretty = "pretty" in req.query and (req.query["pretty"][0] in ("",) or
                                            req.query["pretty"][0] != "0")
        if pretty:
            body = (json.dumps(obj, indent=4, ensure_ascii=False) + "\n").encode("utf-8")
        else:
            body = _compact(obj)
        return httpd.Response(status, body, "application/json", h)

    @staticmethod
    def _token_of(req):
        # command/agent/http.go parseToken (1.9); docs/upstream.md#nomad-http.
        token = req.header("X-Nomad-Token")
        if token:
            return token.strip()
        auth = req.header("Authorization")
        if auth:
            parts = auth.split(" ")
            if len(parts) > 1 and parts[0].lower() == "bearer":
                value = " ".join(parts[1:]).strip()
                return value.split(" ", maxsplit=1)[0].strip()
        return ""

    def _resolve(self, req):
        """Resolve the request's ACL object (403 'ACL token not found' for unknown secrets)."""
        if not self.acl_enabled:
            return _ACL_DISABLED
        secret = self._token_of(req)
        with self.lock:
            if not secret:
                return self._anonymous
            acl = self._tokens.get(secret)
        if acl is None:
            raise self._err(403, "ACL token not found")
        return acl

    def _parse(self, req):
        """command/agent/http.go parse(): region, token, stale, prefix, namespace, pagination,
        filter, reverse, wait/index.  Raises the 400s Nomad writes itself."""
        opts = {"region": self._q(req, "region") or self.region,
                "prefix": self._q(req, "prefix"),
                "namespace": self._q(req, "namespace") or "default",
                "filter": self._q(req, "filter"),
                "reverse": self._q(req, "reverse") == "true",
                "next_token": self._q(req, "next_token"),
                "per_page": 0, "wait": 0.0, "min_index": 0}
        if "stale" in req.query and req.query["stale"][0] != "":
            try:
                parse_go_bool(req.query["stale"][0])
            except ValueError:
                raise self._err(400, "Expect `true` or `false` for `stale` query string parameter")
        raw = self._q(req, "per_page")
        if raw:
            try:
                value = int(raw, 10)
                if not -2 ** 31 <= value < 2 ** 31 or raw.strip() != raw or "_" in raw:
                    raise ValueError(raw)
            except ValueError:
                raise self._err(400, "Expect a number for `per_page` query string parameter")
            opts["per_page"] = value
        raw = self._q(req, "wait")
        if raw:
            try:
                opts["wait"] = parse_go_duration(raw)
            except ValueError:
                raise self._err(400, "Invalid wait time")
        raw = self._q(req, "index")
        if raw:
            if not raw.isdigit() or not raw.isascii() or int(raw) >= 2 ** 64:
                raise self._err(400, "Invalid index")
            opts["min_index"] = int(raw)
        return opts

    def _check_region(self, opts):
        if opts["region"] != self.region:
            raise self._err(500, "No path to region")

    @staticmethod
    def _meta_headers(index, next_token=""):
        headers = {"X-Nomad-Index": str(index), "X-Nomad-KnownLeader": "true",
                   "X-Nomad-LastContact": "0"}
        if next_token:
            headers["X-Nomad-NextToken"] = next_token
        return headers

    def _blocking(self, opts, run):
        """blockingRPC (docs/upstream.md#nomad-http): run() under the lock -> (index, payload);
        re-run until index > ?index or
        the wait (default/max 5m, + up to wait/16 jitter) expires.  HttpErrors from run() are
        returned at once, like Nomad's run-func errors."""
        deadline = None
        if opts["min_index"] > 0:
            wait = opts["wait"]
            if wait == 0 or wait > 300:
                wait = 300.0
            if wait > 0:
                wait += random.uniform(0, wait / 16.0)
            deadline = time.monotonic() + wait
        with self._cond:
            while True:
                index, payload = run()
                index = max(int(index), 1)
                if deadline is None or index > opts["min_index"]:
                    return index, payload
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return index, payload
                self._cond.wait(remaining)

    @staticmethod
    def _paginate(items, token_of, opts, predicate, compare=None):
        """nomad/state/paginator: filters, next_token seek, per_page, reverse (pre-sorted).

        docs/upstream.md#nomad-allocations (paging).
        """
        per_page = opts["per_page"]
        seeking = opts["next_token"]
        found = seeking == ""
        out = []
        for item in items:
            token = token_of(item)
            if not found:
                cmp = compare(token, seeking) if compare else (token > seeking) - (token < seeking)
                passed = cmp == 1 if opts["reverse"] else cmp == -1
                if passed:
                    continue
            if predicate is not None:
                try:
                    keep = predicate(item)
                except FilterError as exc:
                    raise httpd.HttpError(400, "failed to read result page: %s" % exc)
                if not keep:
                    continue
            found = True
            if per_page and len(out) >= per_page:
                return out, token
            out.append(item)
        return out, ""

    @staticmethod
    def _compile(opts):
        if not opts["filter"]:
            return None
        try:
            return compile_filter(opts["filter"])
        except FilterError as exc:
            raise httpd.HttpError(400, "failed to create result paginator: failed to read filter "
                                       "expression: %s" % exc)

    @staticmethod
    def _uuid_prefix(prefix):
        """memdb UUIDFieldIndex prefix: hyphens ignored, an odd trailing hex digit dropped."""
        compact = prefix.replace("-", "")
        if len(compact) % 2 == 1:
            compact = compact[:-1]
        return compact.lower()

    # -- handlers: agent / status ------------------------------------------------------------

    def _h_agent_self(self, req):
        # command/agent/agent_endpoint.go (1.9); docs/upstream.md#nomad-agent-self.
        if req.method != "GET":
            raise self._err(405, "Invalid method")
        acl = self._resolve(req)
        if not acl.allow_agent_read():
            raise self._err(403, "Permission denied")
        with self.lock:
            body = {"config": self._agent_config(server=True),
                    "member": self._server_member(),
                    "stats": self._server_stats()}
        return self._json(req, body)

    def _h_agent_health(self, req):
        return self._json_or_500(req, self._health(req, has_client=False, has_server=True))

    def _health(self, req, has_client, has_server):
        """command/agent/agent_endpoint.go HealthRequest for a server-only or client-only agent."""
        if req.method != "GET":
            raise self._err(405, "Invalid method")
        opts = self._parse(req)
        types = req.query.get("type")
        want_client = want_server = True
        health = {}
        if types is not None:
            want_client = want_server = False
            for kind in types:
                if kind == "client":
                    want_client = True
                    health["client"] = {"ok": False, "message": "client not enabled"}
                elif kind == "server":
                    want_server = True
                    health["server"] = {"ok": False, "message": "server not enabled"}
        if want_client and has_client:
            health["client"] = {"ok": True, "message": "ok"}
        if want_server and has_server:
            ok = opts["region"] == self.region  # Status.Leader is forwarded by region
            health["server"] = {"ok": ok, "message": "ok" if ok else "No path to region"}
        return health

    def _json_or_500(self, req, health):
        if all(v["ok"] for v in health.values()):
            return self._json(req, health)
        # unhealthy: 500 whose text body is the JSON document (CodedError(500, json))
        raise self._err(500, json.dumps(health, separators=(",", ":")))

    def _h_status_leader(self, req):
        if req.method != "GET":
            raise self._err(405, "Invalid method")
        opts = self._parse(req)
        self._check_region(opts)
        return self._json(req, self.SERVER_ADDR)

    def _h_status_peers(self, req):
        if req.method != "GET":
            raise self._err(405, "Invalid method")
        opts = self._parse(req)
        self._check_region(opts)
        return self._json(req, [self.SERVER_ADDR])

    def _h_regions(self, req):
        if req.method != "GET":
            raise self._err(405, "Invalid method")
        return self._json(req, [self.region])

    def _agent_config(self, server, node=None):
        addr = "127.0.0.1" if node is None else node["HTTPAddr"].rsplit(":", 1)[0]
        client_enabled = node is not None
        return {
            "Region": self.region,
            "Datacenter": node["Datacenter"] if node else self.datacenter,
            "NodeName": node["Name"] if node else "nomad-server-1",
            "DataDir": "/opt/nomad/data",
            "PluginDir": "/opt/nomad/data/plugins",
            "LogLevel": "INFO", "LogJson": False, "LogFile": "", "LogIncludeLocation": False,
            "BindAddr": "0.0.0.0", "EnableDebug": False,
            "Ports": {"HTTP": 4646, "RPC": 4647, "Serf": 4648},
            "Addresses": {"HTTP": "0.0.0.0", "RPC": "0.0.0.0", "Serf": "0.0.0.0"},
            "AdvertiseAddrs": {"HTTP": "%s:4646" % addr, "RPC": "%s:4647" % addr,
                               "Serf": "%s:4648" % addr},
            "Client": {
                "Enabled": client_enabled,
                "StateDir": "/opt/nomad/data/client", "AllocDir": "/opt/nomad/data/alloc",
                "AllocMountsDir": "/opt/nomad/data/alloc_mounts",
                "Servers": [self.SERVER_ADDR] if client_enabled else None,
                "NodeClass": node["NodeClass"] if node else "",
                "NodePool": node["NodePool"] if node else "",
                "Options": {}, "Meta": dict(node["Meta"]) if node else {},
                "NetworkInterface": "", "NetworkSpeed": 0, "CpuCompute": 0, "MemoryMB": 0,
                "DiskTotalMB": 0, "DiskFreeMB": 0, "MaxKillTimeout": "30s",
                "ClientMaxPort": 14512, "ClientMinPort": 14000,
                "MaxDynamicPort": 32000, "MinDynamicPort": 20000,
                "Reserved": {"CPU": 0, "Cores": "", "MemoryMB": 0, "DiskMB": 0,
                             "ReservedPorts": ""},
                "GCInterval": 60000000000, "GCParallelDestroys": 2, "GCDiskUsageThreshold": 80,
                "GCInodeUsageThreshold": 70, "GCMaxAllocs": 50, "NoHostUUID": None,
                "CNIPath": "/opt/cni/bin", "CNIConfigDir": "/opt/cni/config",
                "BridgeNetworkName": "nomad", "BridgeNetworkSubnet": "172.26.64.0/20",
                "BridgeNetworkSubnetIPv6": "", "BridgeNetworkHairpinMode": False,
                "HostVolumes": None, "HostNetworks": None, "CgroupParent": "nomad.slice",
            },
            "Server": {
                "Enabled": server, "AuthoritativeRegion": "", "BootstrapExpect": 1 if server else 0,
                "DataDir": "", "ProtocolVersion": 0, "RaftProtocol": 3 if server else 0,
                "NumSchedulers": None, "EnabledSchedulers": None, "NodeGCThreshold": "",
                "JobGCInterval": "", "JobGCThreshold": "", "EvalGCThreshold": "",
                "DeploymentGCThreshold": "", "HeartbeatGrace": 0, "MinHeartbeatTTL": 0,
                "MaxHeartbeatsPerSecond": 0, "FailoverHeartbeatTTL": 0, "StartJoin": [],
                "RetryJoin": [], "RetryMaxAttempts": 0, "RetryInterval": "30s",
                "RejoinAfterLeave": False, "NonVotingServer": False, "RedundancyZone": "",
                "UpgradeVersion": "", "EncryptKey": "", "LicensePath": "",
            },
            "ACL": {"Enabled": self.acl_enabled, "TokenTTL": 30000000000,
                    "PolicyTTL": 30000000000, "RoleTTL": 30000000000,
                    "TokenMinExpirationTTL": 60000000000,
                    "TokenMaxExpirationTTL": 86400000000000 * 365,
                    "ReplicationToken": ""},
            "Telemetry": {"CollectionInterval": "1s", "PublishAllocationMetrics": False,
                          "PublishNodeMetrics": False, "PrometheusMetrics": False,
                          "DisableHostname": False, "UseNodeName": False},
            "LeaveOnInt": False, "LeaveOnTerm": False, "EnableSyslog": False,
            "SyslogFacility": "LOCAL0", "DisableUpdateCheck": True,
            "DisableAnonymousSignature": False,
            "Consuls": [{"Name": "default", "Addr": "127.0.0.1:8500", "Token": "",
                         "ServiceIdentityAuthMethod": "nomad-workloads",
                         "TaskIdentityAuthMethod": "nomad-workloads", "ServerServiceName": "nomad",
                         "ClientServiceName": "nomad-client", "AutoAdvertise": True,
                         "ChecksUseAdvertise": False, "EnableSSL": False}],
            "Vaults": [{"Name": "default", "Enabled": False, "Addr": "https://vault.service.consul:8200",
                        "Token": "", "Role": ""}],
            "UI": {"Enabled": server},
            "DevMode": False,
            "Version": {"Revision": self.revision, "Version": self.version,
                        "VersionMetadata": "", "VersionPrerelease": "",
                        "BuildDate": "2025-03-11T09:07:15Z"},
            "Files": ["/etc/nomad.d/nomad.hcl"],
            "TLSConfig": {"EnableHTTP": False, "EnableRPC": False, "VerifyServerHostname": False,
                          "VerifyHTTPSClient": False, "CAFile": "", "CertFile": "", "KeyFile": "",
                          "RPCUpgradeMode": False, "TLSCipherSuites": "", "TLSMinVersion": "",
                          "TLSPreferServerCipherSuites": False},
            "HTTPAPIResponseHeaders": {},
            "Plugins": None,
            "Limits": {"HTTPSHandshakeTimeout": "5s", "HTTPMaxConnsPerClient": 100,
                       "RPCHandshakeTimeout": "5s", "RPCMaxConnsPerClient": 100},
        }

    def _server_member(self):
        return {"Name": "nomad-server-1.%s" % self.region, "Addr": "127.0.0.1", "Port": 4648,
                "Tags": {"build": "%s:%s" % (self.version, self.revision[:8]),
                         "dc": self.datacenter, "expect": "1", "id": self.server_node_id,
                         "mvn": "1", "port": "4647", "raft_vsn": "3", "region": self.region,
                         "revision": self.revision, "role": "nomad", "rpc_addr": "127.0.0.1",
                         "bootstrap": "1", "vsn": "1"},
                "Status": "alive", "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
                "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4}

    @staticmethod
    def _runtime_stats():
        return {"kernel.name": "linux", "arch": "amd64", "version": "go1.24.1",
                "max_procs": "4", "goroutines": "87", "cpu_count": "4"}

    def _server_stats(self):
        idx = str(self._index)
        return {
            "nomad": {"server": "true", "leader": "true", "leader_addr": self.SERVER_ADDR,
                      "bootstrap": "true", "known_regions": "1"},
            "raft": {"applied_index": idx, "commit_index": idx, "fsm_pending": "0",
                     "last_contact": "0", "last_log_index": idx, "last_log_term": "2",
                     "last_snapshot_index": "0", "last_snapshot_term": "0",
                     "latest_configuration": "[{Suffrage:Voter ID:%s Address:%s}]"
                                             % (self.server_node_id, self.SERVER_ADDR),
                     "latest_configuration_index": "0", "num_peers": "0",
                     "protocol_version": "3", "protocol_version_max": "3",
                     "protocol_version_min": "0", "snapshot_version_max": "1",
                     "snapshot_version_min": "0", "state": "Leader", "term": "2"},
            "serf": {"coordinate_resets": "0", "encrypted": "false", "event_queue": "0",
                     "event_time": "1", "failed": "0", "health_score": "0", "intent_queue": "0",
                     "left": "0", "member_time": "1", "members": "1", "query_queue": "0",
                     "query_time": "1"},
            "runtime": self._runtime_stats(),
            "vault": {"token_expire_time": "", "token_last_renewal_time": "",
                      "token_next_renewal_time": "", "token_ttl": "0s",
                      "tracked_for_revoked": "0"},
        }

    # -- handlers: nodes ---------------------------------------------------------------------

    def _h_nodes(self, req):
        # command/agent/node_endpoint.go (1.9); docs/upstream.md#nomad-nodes.
        if req.method != "GET":
            raise self._err(405, "Invalid method")
        opts = self._parse(req)
        fields = {}
        for name in ("resources", "os"):
            raw = self._q(req, name)
            fields[name] = False
            if raw:
                try:
                    fields[name] = parse_go_bool(raw)
                except ValueError as exc:
                    raise self._err(400, 'Failed to parse node list fields: Failed to parse value of '
                                         '"%s" (%s) as a bool: %s' % (name, raw, exc))
        self._check_region(opts)
        acl = self._resolve(req)
        if not acl.allow_node_read():
            raise self._err(403, "Permission denied")
        predicate = self._compile(opts)

        def run():
            nodes = sorted(self._nodes.values(), key=lambda n: n["ID"])
            if opts["prefix"]:
                p = self._uuid_prefix(opts["prefix"])
                nodes = [n for n in nodes if n["ID"].replace("-", "").lower().startswith(p)]
            # Node.List iterates by ID only (no reverse support).
            page, token = self._paginate(nodes, lambda n: n["ID"], dict(opts, reverse=False),
                                         predicate)
            stubs = [self._node_stub(n, fields["resources"], fields["os"]) for n in page]
            return self._table_index["nodes"], (stubs, token)

        index, (stubs, token) = self._blocking(opts, run)
        return self._json(req, stubs, self._meta_headers(index, token))

    def _h_node_pools(self, req):
        if req.method != "GET":
            raise self._err(405, "Invalid method")
        opts = self._parse(req)
        self._check_region(opts)
        self._resolve(req)
        with self.lock:
            index = self._table_index["nodes"]
        pools = [{"Name": "all", "Description": "Node pool with all nodes in the cluster.",
                  "Meta": None, "SchedulerConfiguration": None, "CreateIndex": 1,
                  "ModifyIndex": 1},
                 {"Name": "default", "Description": "Default node pool.", "Meta": None,
                  "SchedulerConfiguration": None, "CreateIndex": 1, "ModifyIndex": 1}]
        return self._json(req, pools, self._meta_headers(index))

    def _h_node_specific(self, req):
        rest = req.params["rest"]
        for suffix, handler in (("/evaluate", self._node_unmodelled_write),
                                ("/allocations", self._node_allocations),
                                ("/drain", self._node_unmodelled_write),
                                ("/eligibility", self._node_unmodelled_write),
                                ("/purge", self._node_purge)):
            if rest.endswith(suffix):
                return handler(req, rest[:-len(suffix)])
        return self._node_query(req, rest)

    def _node_query(self, req, node_id):
        if req.method != "GET":
            raise self._err(405, "Invalid method")
        opts = self._parse(req)
        self._check_region(opts)
        acl = self._resolve(req)
        if not acl.allow_node_read():
            raise self._err(403, "Permission denied")
        if node_id == "":
            raise self._err(500, "missing node ID")

        def run():
            node = self._nodes.get(node_id)
            if node is None:
                return self._table_index["nodes"], None
            return node["ModifyIndex"], self._render_node(node)

        index, node = self._blocking(opts, run)
        headers = self._meta_headers(index)
        if node is None:
            raise self._err(404, "node not found", headers)
        return self._json(req, node, headers)

    def _node_allocations(self, req, node_id):
        # Full allocations from every readable namespace; unknown node -> [] (observed on 1.6.5;
        # docs/upstream.md#nomad-nodes).
        if req.method != "GET":
            raise self._err(405, "Invalid method")
        opts = self._parse(req)
        self._check_region(opts)
        acl = self._resolve(req)
        if not acl.allow_node_read():
            raise self._err(403, "Permission denied")
        if node_id == "":
            raise self._err(500, "missing node ID")

        def run():
            allocs = self._sorted_allocs(node_id)
            if not allocs:
                return self._table_index["allocs"], []
            index = max(a["ModifyIndex"] for a in allocs)
            readable = [self._render_alloc(a) for a in allocs
                        if acl.allow_ns_op(a["Namespace"], "read-job")]
            return index, readable

        index, allocs = self._blocking(opts, run)
        return self._json(req, allocs, self._meta_headers(index))

    def _node_purge(self, req, node_id):
        if req.method not in ("PUT", "POST"):
            raise self._err(405, "Invalid method")
        opts = {"region": self._q(req, "region") or self.region}
        self._check_region(opts)
        acl = self._resolve(req)
        if not acl.allow_node_write():
            raise self._err(403, "Permission denied")
        if node_id == "":
            raise self._err(500, "missing node ID for client deregistration")
        with self.lock:
            if node_id not in self._nodes:
                raise self._err(500, "node not found")
            self.remove_node(node_id)
            index = self._index
            nodes = len(self._nodes)
        body = {"HeartbeatTTL": 0, "EvalIDs": [_uuid()], "EvalCreateIndex": index,
                "NodeModifyIndex": index, "LeaderRPCAddr": self.SERVER_ADDR, "NumNodes": nodes,
                "Servers": None, "SchedulingEligibility": "", "Index": index}
        return self._json(req, body, {"X-Nomad-Index": str(index)})

    def _node_unmodelled_write(self, req, node_id):
        if req.method not in ("PUT", "POST"):
            raise self._err(405, "Invalid method")
        raise self._err(500, "lab: node evaluate/drain/eligibility writes are not modelled")

    # -- handlers: allocations ---------------------------------------------------------------

    def _h_allocations(self, req):
        # command/agent/alloc_endpoint.go (1.9): stubs, namespace "default" unless ?namespace=*
        # (docs/upstream.md#nomad-allocations).
        if req.method != "GET":
            raise self._err(405, "Invalid method")
        opts = self._parse(req)
        fields = {"resources": False, "task_states": True}
        for name in ("resources", "task_states"):
            raw = self._q(req, name)
            if raw:
                try:
                    fields[name] = parse_go_bool(raw)
                except ValueError as exc:
                    raise self._err(500, 'Failed to parse value of "%s" (%s) as a bool: %s'
                                    % (name, raw, exc))
        self._check_region(opts)
        acl = self._resolve(req)
        namespace = opts["namespace"]
        if not acl.allow_ns_op(namespace, "read-job"):
            raise self._err(403, "Permission denied")
        predicate = self._compile(opts)

        def by_index(token, seeking):
            # CreateIndex compared numerically (Nomad >= 1.11 behaviour, see module docstring).
            a_idx, a_id = (token.split(".", 1) + [""])[:2]
            b_idx, b_id = (seeking.split(".", 1) + [""])[:2]
            if b_idx.isdigit():
                a_key, b_key = (int(a_idx), a_id), (int(b_idx), b_id)
            else:
                a_key, b_key = token, seeking
            return (a_key > b_key) - (a_key < b_key)

        def run():
            allocs = list(self._allocs.values())
            if namespace != "*":
                allocs = [a for a in allocs if a["Namespace"] == namespace]
            allocs = [a for a in allocs if acl.allow_ns_op(a["Namespace"], "read-job")]
            if opts["prefix"]:
                p = self._uuid_prefix(opts["prefix"])
                allocs = sorted((a for a in allocs
                                 if a["ID"].replace("-", "").lower().startswith(p)),
                                key=lambda a: a["ID"])
                token_of, compare = _alloc_id_token, None
            else:
                allocs = sorted(allocs, key=lambda a: (a["CreateIndex"], a["ID"]))
                token_of, compare = _alloc_index_token, by_index
            if opts["reverse"]:
                allocs.reverse()
            page, token = self._paginate(allocs, token_of, opts, predicate, compare)
            stubs = [self._alloc_stub(a, fields["resources"], fields["task_states"]) for a in page]
            return self._table_index["allocs"], (stubs, token)

        index, (stubs, token) = self._blocking(opts, run)
        return self._json(req, stubs, self._meta_headers(index, token))

    def _h_alloc_specific(self, req):
        tokens = req.params["rest"].split("/")
        if len(tokens) > 2:
            raise self._err(404, "resource not found")
        alloc_id = tokens[0]
        if len(tokens) == 1:
            return self._alloc_get(req, alloc_id)
        if tokens[1] == "stop":
            return self._alloc_stop(req, alloc_id)
        if tokens[1] in ("checks", "services"):
            raise self._err(500, "lab: /v1/allocation/<id>/%s is not modelled" % tokens[1])
        raise self._err(404, "resource not found")

    def _alloc_get(self, req, alloc_id):
        if req.method != "GET":
            raise self._err(405, "Invalid method")
        opts = self._parse(req)
        self._check_region(opts)
        acl = self._resolve(req)

        def run():
            alloc = self._allocs.get(alloc_id)
            if alloc is None:
                return self._table_index["allocs"], None
            if not acl.allow_ns_op(alloc["Namespace"], "read-job"):
                # nomad/alloc_endpoint.go GetAlloc: NewErrUnknownAllocation -> generic 500.
                # Observed on Nomad 1.6.5 too (docs/upstream.md#nomad-allocations).
                raise self._err(500, 'Unknown allocation "%s"' % alloc_id)
            return alloc["ModifyIndex"], self._render_alloc(alloc)

        index, alloc = self._blocking(opts, run)
        headers = self._meta_headers(index)
        if alloc is None:
            # docs/upstream.md#nomad-allocations.  Differs from Nomad (1.6.5 observed): an ID that
            # is not 36 characters answers 500 "alloc lookup failed: index error: UUID must be
            # 36 characters"; the lab answers this 404 for every unknown ID.
            raise self._err(404, "alloc not found", headers)
        return self._json(req, alloc, headers)

    def _alloc_stop(self, req, alloc_id):
        if req.method not in ("PUT", "POST"):
            raise self._err(405, "Invalid method")
        raw = self._q(req, "no_shutdown_delay")
        no_delay = False
        if raw:
            try:
                no_delay = parse_go_bool(raw)
            except ValueError as exc:
                raise self._err(500, "no_shutdown_delay value is not a boolean: %s" % exc)
        self._check_region({"region": self._q(req, "region") or self.region})
        acl = self._resolve(req)
        now_ns = _now_ns()
        with self.lock:
            alloc = self._allocs.get(alloc_id)
            if alloc is None:
                raise self._err(404, "allocation not found")
            if not acl.allow_ns_op(alloc["Namespace"], "alloc-lifecycle"):
                raise self._err(403, "Permission denied")
            index = self._bump("allocs")
            # Alloc.Stop sets DesiredTransition.Migrate; the scheduler then stops the alloc
            # ("alloc is being migrated", scheduler/generic_sched.go).  Both modelled at once.
            alloc["DesiredTransition"] = {"Migrate": True, "Reschedule": None,
                                          "ForceReschedule": None, "NoShutdownDelay": no_delay}
            if not self._server_terminal(alloc):
                alloc["DesiredStatus"] = "stop"
                alloc["DesiredDescription"] = "alloc is being migrated"
            alloc["ModifyIndex"] = alloc["AllocModifyIndex"] = index
            alloc["ModifyTime"] = now_ns
            self._publish_alloc(alloc, "AllocationUpdateDesiredStatus")
        return self._json(req, {"EvalID": _uuid(), "Index": index}, {"X-Nomad-Index": str(index)})

    # -- handlers: event stream (docs/upstream.md#nomad-event-stream-wire) -------------------

    _ATOI_RE = re.compile(r"^[+-]?[0-9]+$")

    @staticmethod
    def _event_topics(req):
        """command/agent/event_endpoint.go parseEventTopics: no ``topic`` is every topic;
        ``Topic`` alone is ``Topic:*``; more than one ``:`` is a 400."""
        raw = req.query.get("topic")
        if raw is None:
            return {"*": ["*"]}
        topics = {}
        for topic in raw:
            parts = topic.split(":")
            if len(parts) > 2:
                raise NomadSim._err(400, "Invalid topic query: error parsing topics: Invalid key "
                                         "value pair for topic, topic: %s" % topic)
            topics.setdefault(parts[0], []).append(parts[1] if len(parts) == 2 else "*")
        return topics

    @staticmethod
    def _event_wanted(event, topics, namespace, acl):
        keys = topics.get(event["Topic"], topics.get("*"))
        if keys is None:
            return False
        # The key filter matches Key or one of FilterKeys (observed on 1.6.5: a job ID works).
        if "*" not in keys and event["Key"] not in keys and \
                not set(keys) & set(event["FilterKeys"] or []):
            return False
        # Events without a namespace (Node) reach every subscriber; `*` is every namespace.
        if namespace != "*" and event["Namespace"] and event["Namespace"] != namespace:
            return False
        # UNCONFIRMED: with ACLs, events a token could not read are left out (node:read for Node,
        # read-job in the namespace for the others) rather than the stream refused.
        if event["Topic"] == "Node":
            return acl.allow_node_read()
        return acl.allow_ns_op(event["Namespace"], "read-job")

    def _h_event_stream(self, req):
        if req.method != "GET":
            raise self._err(405, "Invalid method")
        raw = self._q(req, "index") or "0"
        if not self._ATOI_RE.match(raw):
            raise self._err(400, 'Unable to parse index: strconv.Atoi: parsing %s: invalid syntax'
                            % json.dumps(raw))
        index = int(raw)
        topics = self._event_topics(req)
        self._check_region({"region": self._q(req, "region") or self.region})
        namespace = self._q(req, "namespace") or "default"
        acl = self._resolve(req)
        with self.lock:
            # The first item with Index >= index; past the newest, the newest; older than the
            # buffer, the oldest one kept (no error, no gap marker).
            start = next((serial for serial, frame in self._events if frame["Index"] >= index),
                         self._events[-1][0] if self._events else self._event_serial + 1)

        def chunks(stopping):
            beat_every = self.event_heartbeat
            next_beat = time.monotonic() + beat_every
            cursor = start
            # One chunk per JSON object and one for its newline, a heartbeat first (observed).
            yield b"{}"
            yield b"\n"
            while not stopping.is_set():
                with self._cond:
                    frames = [item for item in self._events if item[0] >= cursor]
                    if not frames:
                        self._cond.wait(max(0.0, min(0.2, next_beat - time.monotonic())))
                        frames = [item for item in self._events if item[0] >= cursor]
                for serial, frame in frames:
                    cursor = serial + 1
                    events = [e for e in frame["Events"]
                              if self._event_wanted(e, topics, namespace, acl)]
                    if events:
                        yield _compact({"Index": frame["Index"], "Events": events})
                        yield b"\n"
                if time.monotonic() >= next_beat:
                    next_beat += beat_every
                    yield b"{}"
                    yield b"\n"

        return httpd.StreamResponse(chunks, headers={"Cache-Control": "no-cache",
                                                     "Vary": "Accept-Encoding"})

    # -- handlers: namespaces ----------------------------------------------------------------

    def _h_namespaces(self, req):
        if req.method != "GET":
            raise self._err(405, "Invalid method")
        opts = self._parse(req)
        self._check_region(opts)
        acl = self._resolve(req)

        def run():
            names = sorted(n for n in self._namespaces if n.startswith(opts["prefix"]))
            out = [copy.deepcopy(self._namespaces[n]) for n in names if acl.allow_namespace(n)]
            return self._table_index["namespaces"], out

        index, namespaces = self._blocking(opts, run)
        return self._json(req, namespaces, self._meta_headers(index))

    def _h_namespace(self, req):
        name = req.params["name"]
        if name == "":
            raise self._err(400, "Missing Namespace Name")
        if req.method in ("PUT", "POST", "DELETE"):
            raise self._err(500, "lab: namespace writes are not modelled (use add_namespace)")
        if req.method != "GET":
            raise self._err(405, "Invalid method")
        opts = self._parse(req)
        self._check_region(opts)
        acl = self._resolve(req)
        if not acl.allow_namespace(name):
            raise self._err(403, "Permission denied")

        def run():
            ns = self._namespaces.get(name)
            if ns is None:
                return self._table_index["namespaces"], None
            return ns["ModifyIndex"], copy.deepcopy(ns)

        index, ns = self._blocking(opts, run)
        headers = self._meta_headers(index)
        if ns is None:
            raise self._err(404, "Namespace not found", headers)
        return self._json(req, ns, headers)


class NomadClientAgent(httpd.Service):
    """The Nomad client agent on one node: answers agent/self and agent/health locally and
    forwards everything else to the servers (``NomadSim``).

    ``stats.client.node_id`` is the client node's ID (docs/upstream.md#nomad-agent-self).
    """

    def __init__(self, sim, node_id):
        with sim.lock:
            node = sim._nodes[node_id]
            self._node_snapshot = copy.deepcopy(node)
        super().__init__("nomad-agent:%s" % node["Name"], sim.log)
        self.sim = sim
        self.node_id = node_id
        self.node_name = node["Name"]
        self._started = time.monotonic()

    def dispatch(self, req):
        if req.path == "/v1/agent/self":
            return self._local(req, self._agent_self)
        if req.path == "/v1/agent/health":
            return self._local(req, self._agent_health)
        return self._forward(req)

    @staticmethod
    def _local(req, handler):
        try:
            return handler(req)
        except httpd.HttpError as exc:
            return exc.response

    def _forward(self, req):
        """Client -> server RPC forwarding; a fault injected on the servers applies here too."""
        fault = self.sim.faults.take(req)
        if fault is not None:
            if fault.action == "delay":
                time.sleep(fault.delay)
            elif fault.action == "status":
                return httpd.Response(fault.status, fault.body, fault.content_type, fault.headers)
            else:  # hang/drop/truncate/garbage: the RPC to the servers fails
                if fault.action == "hang":
                    time.sleep(fault.delay)
                return httpd.Response(500, b"rpc error: EOF", "text/plain; charset=utf-8")
        return self.sim.dispatch(req)

    def _node(self):
        with self.sim.lock:
            node = self.sim._nodes.get(self.node_id)
            if node is not None:
                self._node_snapshot = copy.deepcopy(node)
            return self._node_snapshot

    def _agent_self(self, req):
        if req.method != "GET":
            raise httpd.HttpError(405, "Invalid method")
        acl = self.sim._resolve(req)
        if not acl.allow_agent_read():
            raise httpd.HttpError(403, "Permission denied")
        node = self._node()
        with self.sim.lock:
            num_allocs = sum(1 for a in self.sim._allocs.values() if a["NodeID"] == self.node_id)
        elapsed = (time.monotonic() - self._started) % 10.0 + 0.5
        body = {
            "config": self.sim._agent_config(server=False, node=node),
            # Client-only agent: the serf member is zero-valued (no server).
            "member": {"Name": "", "Addr": None, "Port": 0, "Tags": None, "Status": "none",
                       "ProtocolMin": 0, "ProtocolMax": 0, "ProtocolCur": 0, "DelegateMin": 0,
                       "DelegateMax": 0, "DelegateCur": 0},
            "stats": {
                "client": {"node_id": self.node_id, "known_servers": NomadSim.SERVER_ADDR,
                           "num_allocations": str(num_allocs),
                           "last_heartbeat": _go_duration_str(elapsed),
                           "heartbeat_ttl": _go_duration_str(16.362884035)},
                "runtime": NomadSim._runtime_stats(),
            },
        }
        return self.sim._json(req, body)

    def _agent_health(self, req):
        return self.sim._json_or_500(req, self.sim._health(req, has_client=True, has_server=False))
