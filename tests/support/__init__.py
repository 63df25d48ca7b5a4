"""What the tests share: the lab fixtures, in-process module runs, playbook runs against a lab.
Test modules import from here, never from one another; conftest.py files only wire these
fixtures in."""
