"""The systemd filters the roles write their units with: the exact quoting of a word for a command
line and for Environment=, and the validate command, run for real against stand-ins of
systemd-analyze that pass, warn and fail."""

import shlex
import subprocess

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.netreap.cilium.plugins.filter import systemd
from ansible_collections.netreap.cilium.plugins.filter.systemd import systemd_quote, systemd_verify_command
from tests.support.filters import signature_mismatches


@pytest.mark.parametrize("word, expected", [
    ("--labels=k8s:app$", '"--labels=k8s:app$$"'),       # $VAR would be expanded
    ("--labels=50%", '"--labels=50%%"'),                 # %n would be a specifier
    ('say "hi"', '"say \\"hi\\""'),
    ("C:\\dir\\", '"C:\\\\dir\\\\"'),
    ("${HOME}/%n", '"$${HOME}/%%n"'),
    ("two words", '"two words"'),
    ("", '""'),
    (42, '"42"'),
    (0.5, '"0.5"'),
])
def test_quote_for_a_command_line(word, expected):
    assert systemd_quote(word) == expected
    assert systemd_quote(word, "command") == expected


@pytest.mark.parametrize("word, expected", [
    ("ODD=50% $HOME", '"ODD=50%% $HOME"'),               # Environment= expands specifiers, not variables
    ('QUOTED=a"b\\c', '"QUOTED=a\\"b\\\\c"'),
])
def test_quote_for_an_environment_assignment(word, expected):
    assert systemd_quote(word, "environment") == expected


@pytest.mark.parametrize("word, context, message", [
    ("a\nb", "command", "the word 'a\\nb' contains a line break or NUL, which a unit file cannot hold"),
    ("a\rb", "environment", "the word 'a\\rb' contains a line break or NUL, which a unit file cannot hold"),
    (None, "command", "systemd_quote takes a string or a number, got NoneType None"),
    (True, "command", "systemd_quote takes a string or a number, got bool True"),
    (["a"], "command", "systemd_quote takes a string or a number, got list ['a']"),
    ("a", "shell", "context must be one of command, environment, got 'shell'"),
])
def test_quote_refuses_what_a_unit_cannot_carry(word, context, message):
    with pytest.raises(AnsibleFilterError) as raised:
        systemd_quote(word, context)
    assert raised.value.message == message


def test_verify_command_is_the_documented_line():
    assert systemd_verify_command("/usr/bin/systemd-analyze") == (
        "/bin/sh -c 'out=$(/usr/bin/systemd-analyze verify \"$1\" 2>&1); rc=$?; echo \"$out\"; "
        "[ \"$rc\" -eq 0 ] && [ -z \"$out\" ]' verify %s")


def stand_in(directory, output, exit_code):
    """A systemd-analyze that records its arguments, prints ``output`` and exits ``exit_code``."""
    directory.mkdir(parents=True)
    tool = directory / "systemd-analyze"
    tool.write_text("#!/bin/sh\nprintf '%%s\\n' \"$@\" > \"$(dirname \"$0\")/args\"\nprintf %%s %s\nexit %d\n"
                    % (shlex.quote(output), exit_code))
    tool.chmod(0o755)
    return tool


@pytest.mark.parametrize("output, exit_code, passes", [
    ("", 0, True),
    # verify reports an unknown setting but exits 0: still a failure
    ("my.service:3: Unknown key name 'ExecStrat' in section 'Service', ignoring.\n", 0, False),
    ("Failed to prepare filename my.service\n", 1, False),
])
def test_verify_command_fails_on_any_message(tmp_path, output, exit_code, passes):
    """Run the way the template module runs validate: %s replaced, split like a shell would."""
    tool = stand_in(tmp_path / "tools with space", output, exit_code)
    unit = tmp_path / ".source.service"  # the name Ansible gives the new file
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    command = systemd_verify_command(str(tool)) % str(unit)
    proc = subprocess.run(shlex.split(command), capture_output=True, text=True, check=False)
    assert (proc.returncode == 0) is passes
    assert proc.stdout.strip() == output.strip()
    assert (tmp_path / "tools with space" / "args").read_text().splitlines() == ["verify", str(unit)]


@pytest.mark.parametrize("value, message", [
    ("/opt/50%/systemd-analyze", "the path of systemd-analyze must not contain %: '/opt/50%/systemd-analyze'"),
    ("", "systemd_verify_command takes the path of systemd-analyze, got ''"),
    (None, "systemd_verify_command takes the path of systemd-analyze, got None"),
    ("/usr/bin/systemd-analyze\n", "the path of systemd-analyze '/usr/bin/systemd-analyze\\n' contains a line break or NUL,"
                                   " which a unit file cannot hold"),
])
def test_verify_command_refuses_unusable_paths(value, message):
    with pytest.raises(AnsibleFilterError) as raised:
        systemd_verify_command(value)
    assert raised.value.message == message


def test_documentation_matches_the_filters():
    """ansible-doc shows, for each filter, exactly the options it takes and their defaults."""
    assert sorted(systemd.FilterModule().filters()) == ["systemd_quote", "systemd_verify_command"]
    assert signature_mismatches(systemd) == []
