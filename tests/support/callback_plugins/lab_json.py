# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test-only stdout callback: the whole run as one JSON document (plays, tasks, per-host results,
stats), like ansible.posix.json, which is not part of ansible-core."""

from __future__ import annotations

DOCUMENTATION = r"""
name: lab_json
type: stdout
short_description: The run as one JSON document (netreap.cilium tests only)
description:
  - "When the playbook ends, prints one JSON object: C(plays) (each with its C(tasks) and per-host results) and C(stats)."
"""

import json

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "lab_json"

    def __init__(self, display=None):
        super().__init__(display)
        self.plays = []

    def v2_playbook_on_play_start(self, play):
        self.plays.append({"play": {"name": play.get_name()}, "tasks": []})

    def _task(self, task):
        tasks = self.plays[-1]["tasks"]
        if not tasks or tasks[-1]["task"]["id"] != str(task._uuid):  # pylint: disable=protected-access
            tasks.append({"task": {"name": task.get_name(), "id": str(task._uuid)},  # pylint: disable=protected-access
                          "hosts": {}})
        return tasks[-1]

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._task(task)

    def _record(self, result, **extra):
        entry = dict(result._result)  # pylint: disable=protected-access
        entry.update(extra)
        self._task(result._task)["hosts"][result._host.get_name()] = entry  # pylint: disable=protected-access

    def v2_runner_on_ok(self, result):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, failed=True)

    def v2_runner_on_skipped(self, result):
        self._record(result, skipped=True)

    def v2_runner_on_unreachable(self, result):
        self._record(result, unreachable=True)

    def v2_playbook_on_stats(self, stats):
        summary = {host: stats.summarize(host) for host in sorted(stats.processed)}
        self._display.display(json.dumps({"plays": self.plays, "stats": summary}, default=str))
