"""Fixtures of the module and playbook tests against the lab (defined in tests.support)."""

from tests.support.fixtures import lab, lab_factory  # noqa: F401  pylint: disable=unused-import
