"""Fixtures of the reliability suite (defined in tests.support)."""

from tests.support.fixtures import fm_no_backoff, fm_warnings, lab_factory  # noqa: F401  pylint: disable=unused-import
