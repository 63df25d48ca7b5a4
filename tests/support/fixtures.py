"""The pytest fixtures the lab tests share; conftest.py files import them to make them visible."""

import pytest

from ansible.module_utils import basic

from ansible_collections.netreap.cilium.plugins.module_utils import _http
from tests.lab.lab import lab_pool


@pytest.fixture
def lab_factory():
    """``lab_factory(**Lab kwargs)`` starts a lab in a short temp dir; all are stopped at teardown."""
    with lab_pool("lab-") as make:
        yield make


@pytest.fixture
def lab(lab_factory):  # pylint: disable=redefined-outer-name
    return lab_factory(nodes=2, cilium="1.16", kvstore="consul", scenario="clean")


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
