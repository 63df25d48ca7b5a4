"""The repository cites its upstream sources through docs/upstream.md, never a file outside it.

Two rules of the project (see docs/upstream.md), checked over every text file of the tree:

* no path of a development machine outside the repository (a workspace under ``/work/``, a
  ``../shared/`` directory beside the checkout, a scratch collection copy such as
  ``/tmp/devcoll``) and no section of a reference file kept outside it (``cilium.md §3``);
  system paths the product really uses (``/etc``, ``/opt/cni``, ``/var/run/cilium``, ``/run``,
  ``/tmp/...`` as a runtime or example directory ...) are not outside paths and are not flagged;
* every ``docs/upstream.md#<anchor>`` cited anywhere exists in docs/upstream.md, and no anchor
  is defined twice there.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
UPSTREAM = ROOT / "docs" / "upstream.md"

# Not part of the tree: VCS data, virtualenvs, build output, caches, ansible-test output.
SKIP_DIRS = {".git", ".venv", "build", "dist", ".lab", "__pycache__", ".pytest_cache",
             ".mypy_cache", ".tox", "node_modules"}
SKIP_PREFIXES = ("tests/output/",)
TEXT_SUFFIXES = {".py", ".md", ".rst", ".txt", ".yml", ".yaml", ".json", ".cfg", ".ini", ".toml",
                 ".j2", ".sh", ".hcl", ".conf", ".service", ".timer", ".in", ""}

# (name, regex) of outside references.  Look-behinds keep ordinary paths that merely contain the
# same letters (``/srv/work/``, ``https://host/work/``) out.
OUTSIDE = [
    ("machine workspace path", re.compile(r"(?<![\w./-])/work/")),
    ("directory beside the checkout", re.compile(r"(?<![\w-])\.\./shared\b")),
    ("shared reference directory", re.compile(r"(?<![\w-])shared/(?:reference|consul|nomad|cilium-oracle|style\.md)")),
    ("scratch collection copy", re.compile(r"devcoll")),
    ("section of an outside reference file",
     re.compile(r"\b(?:cilium|nomad-consul|toolchain)\.md\s*(?:§|section)|[Rr]eference\s+§")),
]

# path -> names of the rules it may still break.  ``.ci/run`` unpacks the server binaries kept
# beside the checkout.  The others still cite outside sources and are to be rewritten; remove an
# entry once its file is clean.
ALLOWED = {
    ".ci/run": {"directory beside the checkout", "shared reference directory"},
    # This file names the patterns it looks for.
    "tests/unit/repository/test_upstream_citations.py": {"*"},
}

CITATION = re.compile(r"upstream\.md#([A-Za-z0-9_-]+)")
ANCHOR_ID = re.compile(r"""<a\s+(?:id|name)=["']([^"']+)["']""")


def _text_files():
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT).as_posix()
        if any(part in SKIP_DIRS for part in path.relative_to(ROOT).parts) or rel.startswith(SKIP_PREFIXES):
            continue
        if not path.is_file() or path.is_symlink() or path.suffix not in TEXT_SUFFIXES:
            continue
        try:
            yield rel, path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue


def _slug(heading):
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _defined_anchors():
    text = UPSTREAM.read_text(encoding="utf-8")
    ids = ANCHOR_ID.findall(text)
    slugs = [_slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)]
    return ids, slugs


def test_the_patterns_tell_outside_paths_from_runtime_paths():
    """The check itself: it must flag the outside references and leave real paths alone."""
    flagged = ["see /work/shared/reference/cilium.md", "../shared/consul/consul-1.16.0.xz",
               "PYTHONPATH=/tmp/devcoll:$PWD", "reference cilium.md §3.5", "(reference §2.3)",
               "cd /work/main"]
    legitimate = ["/var/run/cilium/cilium.sock", "/opt/cni/bin", "/etc/cilium/etcd.yml", "/run/netns",
                  "/proc/modules", "/sys/fs/bpf", "/usr/libexec/cni", "/var/lib/cilium",
                  "--state-dir /tmp/lab", "/srv/work/data", "https://example.com/work/x",
                  "docs/upstream.md#consul-kv", "shared/state of the agents"]
    for text in flagged:
        assert any(rx.search(text) for _name, rx in OUTSIDE), text
    for text in legitimate:
        assert not any(rx.search(text) for _name, rx in OUTSIDE), text


def test_no_file_cites_a_path_outside_the_repository():
    problems = []
    for rel, text in _text_files():
        allowed = ALLOWED.get(rel, set())
        if "*" in allowed:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            for name, rx in OUTSIDE:
                if name not in allowed and rx.search(line):
                    problems.append("%s:%d: %s: %s" % (rel, lineno, name, line.strip()[:120]))
    assert not problems, "cite docs/upstream.md instead:\n" + "\n".join(problems)


def test_every_cited_upstream_anchor_exists():
    ids, slugs = _defined_anchors()
    known = set(ids) | set(slugs)
    missing = []
    for rel, text in _text_files():
        for lineno, line in enumerate(text.splitlines(), 1):
            for anchor in CITATION.findall(line):
                if anchor not in known:
                    missing.append("%s:%d: #%s" % (rel, lineno, anchor))
    assert not missing, "anchors cited but not defined in docs/upstream.md:\n" + "\n".join(missing)


def test_upstream_anchors_are_unique():
    ids, slugs = _defined_anchors()
    duplicates = sorted({a for a in ids if ids.count(a) > 1} |
                        {a for a in ids if a in slugs})
    assert not duplicates, "anchors defined twice in docs/upstream.md: %s" % duplicates


@pytest.mark.parametrize("anchor", ["kvstore-layout", "consul-txn", "nomad-event-stream",
                                    "cilium-api-healthz", "cilium-kvstore"])
def test_known_anchors_are_found(anchor):
    """Guards the anchor parser: explicit ids and heading slugs are both recognised."""
    ids, slugs = _defined_anchors()
    assert anchor in set(ids) | set(slugs)
