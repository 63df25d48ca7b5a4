# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium (not a public API): the one run shape of every writing module.

read -> plan (pure) -> guard/lock -> apply -> report/diff.  ``Run.execute`` owns what every
module would otherwise repeat:

* check mode: ``apply`` is never called (nor the lock taken); the report says what would be done;
* a plan with nothing to write is reported without taking the lock or writing;
* diff: ``diff(plan, progress)`` is called only when the task runs in diff mode;
* errors: a ``ServiceError`` anywhere ends the run once, as
  ``fail_json(msg="<verb> <object> <id>: HTTP <status>: <body>")`` where the first part is the
  step being done (``run.doing("list etcd keys under cilium/state/")``); a guard that needs its
  own words raises ``Stop`` and goes through the same exit.  A failure during ``apply`` still
  reports what was done before it (``report(plan, progress)``);
* request counts: every result carries ``requests`` (requests put on the wire during the run,
  per service), counted by the HTTP layer (``_http.requests_sent``), never by the module.

Usage (a module's ``main``)::

    run = Run(module, requests={"kvstore": ("consul", "etcd")})

    def read():
        run.doing("read %s from the %s kvstore" % (key, kv.name))
        return kv.get(key)

    def apply(plan, progress):
        run.doing("write %s to the %s kvstore" % (key, kv.name))
        kv.put(key, plan["value"])
        progress["written"] = True

    run.execute(read, plan=lambda entry: plan_heartbeat(entry, now),   # pure
                has_changes=lambda plan: plan["write"],
                apply=apply,
                report=lambda plan, progress: {"value": plan["value"]},
                diff=lambda plan, progress: {"before": plan["previous"], "after": plan["value"]})

``guard(plan)`` (optional) runs after every plan, in check mode too, and raises ``Stop`` to refuse
(e.g. "refusing to delete 500 keys: more than max_delete"); ``lock`` (optional) returns a context
manager taken around ``apply``; with ``replan=True`` the run reads, plans and guards again once
the lock is held, so what it writes is decided from a read made under the lock.  Results of
every exit carry ``run.result`` (e.g. the lock's key), then ``requests``.  The kvstore GC run
(``_kvstore_gc_run.GCRun``) is the fullest example.
"""

from __future__ import annotations

from ansible_collections.netreap.cilium.plugins.module_utils._http import (
    ServiceError,
    failure_message,
    requests_sent,
)


class Stop(Exception):
    """End the run with ``msg``: a guard's refusal, a lock held elsewhere, a lock lost.

    ``failed=False`` ends it successfully (e.g. ``skipped``: another run holds the lock);
    ``result`` is added to the module's result.
    """

    def __init__(self, msg, failed=True, **result):
        super().__init__(msg)
        self.msg = msg
        self.failed = failed
        self.result = result


class Run:
    """One module run.  ``requests`` maps a result label to the HTTP-layer service names it
    counts (default: each service under its own name)."""

    def __init__(self, module, requests=None):
        self.module = module
        self.labels = dict(requests or {})
        self.action = "run %s" % getattr(module, "_name", "the module")
        self.note = None
        self.result = {}  # extra keys for every result, success or failure
        self._sent_before = requests_sent()

    def doing(self, action, note=None):
        """Name the step under way (``<verb> <object> <id>``); a ServiceError quotes it, then
        ``note`` (what the failure means for the user, e.g. ``Nothing was changed``)."""
        self.action = action
        self.note = note

    def requests(self):
        """Requests sent since the run began: ``{label: count}``."""
        sent = requests_sent()
        delta = {service: count - self._sent_before.get(service, 0) for service, count in sent.items()}
        if not self.labels:
            return {service: count for service, count in sorted(delta.items()) if count}
        return {label: sum(delta.get(service, 0) for service in services)
                for label, services in sorted(self.labels.items())}

    def exit(self, **out):
        self.module.exit_json(**self._with_common(out))

    def fail(self, msg, **out):
        self.module.fail_json(msg=msg, **self._with_common(out))

    def _with_common(self, out):
        merged = dict(self.result)
        merged.update(out)
        merged["requests"] = self.requests()
        return merged

    def execute(self, read, plan, has_changes, apply, report, diff=None, guard=None, lock=None,
                replan=False):
        """Run the flow and exit the module (``exit_json``/``fail_json``); never returns.

        ``read()`` -> state; ``plan(state)`` -> plan (pure); ``has_changes(plan)`` -> bool;
        ``apply(plan, progress)`` writes and records what it did in the dict ``progress``;
        ``report(plan, progress)`` -> result keys (``progress`` is None when nothing was applied:
        check mode or nothing to do); ``diff(plan, progress)`` -> the diff dict.  ``report``
        may set ``changed``; by default a run is changed when it has (would have) changes.
        ``guard(plan)`` runs after every plan, in check mode too, and may raise Stop.
        """
        current, progress = None, None

        def read_and_plan():
            planned = plan(read())
            if guard is not None:
                guard(planned)
            return planned

        try:
            current = read_and_plan()
            if not has_changes(current) or self.module.check_mode:
                self.exit(**self._outcome(current, None, has_changes(current), report, diff))
            progress = {}
            leader = lock() if lock is not None else None
            if leader is None:
                apply(current, progress)
            else:
                with leader:
                    if replan:
                        current = read_and_plan()
                    apply(current, progress)
            self.exit(**self._outcome(current, progress, bool(progress), report, diff))
        except Stop as stop:
            out = dict(self._partial(current, progress, report), **stop.result)
            if stop.failed:
                self.fail(stop.msg, **out)
            self.exit(msg=stop.msg, **out)
        except ServiceError as exc:
            msg = failure_message(self.action, exc) + (". %s" % self.note if self.note else "")
            self.fail(msg, **self._partial(current, progress, report))

    def _outcome(self, current, progress, changed, report, diff):
        out = {"changed": changed}
        out.update(report(current, progress))
        if diff is not None and self.module._diff:
            out["diff"] = diff(current, progress)
        return out

    @staticmethod
    def _partial(current, progress, report):
        """What was done before a failure (only once ``apply`` has begun)."""
        if current is None or progress is None:
            return {}
        return report(current, progress)
