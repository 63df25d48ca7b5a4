"""Shared fixtures of the reliability suite (fault matrix, concurrency); names start with ``fm_``."""

import pytest

from ansible.module_utils import basic

from ansible_collections.netreap.cilium.plugins.module_utils import _http
from tests.lab.lab import lab_pool


@pytest.fixture
def fm_lab_factory():
    """``fm_lab_factory(**Lab kwargs)``: labs in short temp dirs, all stopped at teardown."""
    with lab_pool("fm-") as make:
        yield make


@pytest.fixture
def fm_no_backoff(monkeypatch):
    """Retries (429, connection refused) happen as usual, without waiting between them: the number
    of attempts is under test here, not the backoff delay.  Returns the list of skipped delays."""
    waited = []
    original = _http.HttpClient._wait_before_retry

    def wait_before_retry(self, attempt, retry_after, started):
        self._sleep = waited.append
        return original(self, attempt, retry_after, started)

    monkeypatch.setattr(_http.HttpClient, "_wait_before_retry", wait_before_retry)
    return waited


@pytest.fixture
def fm_warnings(monkeypatch):
    """Warnings modules emit during in-process runs."""
    seen = []
    monkeypatch.setattr(basic.AnsibleModule, "warn", lambda self, text, **kw: seen.append(text))
    return seen
