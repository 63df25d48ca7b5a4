# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""systemd unit files written by the roles: quoting a word for a unit file, and the command that
checks a unit with systemd-analyze before it replaces the installed one.

The documentation of each filter is in the file next to this one named after it."""

from __future__ import annotations

import shlex

from ansible.errors import AnsibleFilterError

# Inside a double-quoted word systemd undoes C-style backslash escapes; it expands % specifiers in
# every word and, in command lines only, $VAR and ${VAR} (systemd.syntax(7) "Quoting",
# systemd.unit(5) "Specifiers", systemd.service(5) "Command lines", systemd.exec(5) Environment=).
_ESCAPES = {
    "command": (("\\", "\\\\"), ('"', '\\"'), ("%", "%%"), ("$", "$$")),
    "environment": (("\\", "\\\\"), ('"', '\\"'), ("%", "%%")),
}
_LINE_BREAKS = ("\n", "\r", "\0")


def _one_line(value, what):
    if any(char in value for char in _LINE_BREAKS):
        raise AnsibleFilterError("%s %r contains a line break or NUL, which a unit file cannot hold" % (what, value))
    return value


def systemd_quote(word, context="command"):
    """``word`` as one double-quoted word of a unit file, for a command line or an Environment=."""
    if context not in _ESCAPES:
        raise AnsibleFilterError("context must be one of %s, got %r" % (", ".join(sorted(_ESCAPES)), context))
    if isinstance(word, bool) or not isinstance(word, (str, int, float)):
        raise AnsibleFilterError("systemd_quote takes a string or a number, got %s %r" % (type(word).__name__, word))
    text = _one_line(str(word), "the word")
    for char, escaped in _ESCAPES[context]:
        text = text.replace(char, escaped)
    return '"%s"' % text


def systemd_verify_command(systemd_analyze):
    """The ``validate`` command line that runs ``systemd-analyze verify`` on the new unit file and
    fails on any message, not only on a non-zero exit."""
    if not isinstance(systemd_analyze, str) or not systemd_analyze:
        raise AnsibleFilterError("systemd_verify_command takes the path of systemd-analyze, got %r" % (systemd_analyze,))
    # The validate option is a %-format with the temporary file as its one argument.
    if "%" in systemd_analyze:
        raise AnsibleFilterError("the path of systemd-analyze must not contain %%: %r" % systemd_analyze)
    _one_line(systemd_analyze, "the path of systemd-analyze")
    script = ('out=$(%s verify "$1" 2>&1); rc=$?; echo "$out"; [ "$rc" -eq 0 ] && [ -z "$out" ]'
              % shlex.quote(systemd_analyze))
    return "/bin/sh -c %s verify %%s" % shlex.quote(script)


class FilterModule:
    """systemd unit files."""

    def filters(self):
        return {"systemd_quote": systemd_quote, "systemd_verify_command": systemd_verify_command}
