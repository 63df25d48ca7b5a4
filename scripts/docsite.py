"""Turn the guides under docs/ into the collection's extra docs for antsibull-docs.

The guides are written in Markdown (they are read on the repository too); antsibull-docs takes
extra docs as reStructuredText listed in docs/docsite/extra-docs.yml. This script converts each
guide with pandoc into ``docs/docsite/rst/<page>.rst`` of a collection tree (the copy under
build/ that the docs build and lint use, never the repository itself) and writes the
extra-docs.yml that lists them by section.

It also writes, with --ansible-references, the page of a built site that receives references to
ansible-core's own documentation: the site is built without network access (no intersphinx),
so those references point there, and from there to docs.ansible.com.

Usage: python scripts/docsite.py COLLECTION_DIR | --ansible-references SITE_RST_DIR
"""

import os
import re
import sys

import yaml

COLLECTION = "netreap.cilium"
# Section title -> guides in reading order.  A guide under docs/ that is not named here lands in
# the last section, so a new page is never left out of the site.
SECTIONS = [
    ("Running the reaper", ["reap", "scheduling", "awx", "inventory", "eda", "scaling"]),
    ("What the duties do", ["endpoints", "policy", "kvstore-gc", "provisioning"]),
    ("Operating safely", ["operating-safely", "permissions", "fault-matrix"]),
    ("Reference", ["upstream", "lab"]),
]
OTHER_SECTION = "More guides"

ANCHOR = re.compile(r'<a (?:id|name)="([^"]+)"></a>')
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]*)\)")
FENCE = re.compile(r"^\s*(```|~~~)")
# Tokens of letters and digits only pass through pandoc untouched; they become RST targets and
# :ref: roles after conversion.
TARGET_TOKEN = "NETREAPTARGET"
REF_TOKEN = re.compile(r"NETREAPREFx([0-9a-f]+)x([0-9a-f]+)x")


def label(page, anchor=None):
    base = "ansible_collections.%s.docsite.%s" % (COLLECTION, page)
    return base if anchor is None else "%s.%s" % (base, anchor)


def github_slug(title, seen):
    """The id GitHub gives a Markdown heading, so that page.md#anchor links keep working."""
    slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    return slug if count == 0 else "%s-%d" % (slug, count)


def _hex(text):
    return text.encode("utf-8").hex()


def prepare_markdown(text, page, pages, repository):
    """Mark targets and cross-references with tokens pandoc keeps, outside code blocks."""
    out, seen, in_code = [], {}, False

    def target(anchor):
        return ["", TARGET_TOKEN + _hex(label(page, anchor)), ""]

    def link(match):
        words, url = match.group(1), match.group(2)
        where, anchor = (url.split("#", 1) + [""])[:2]
        if where.endswith(".md") and "/" not in where and where[:-3] in pages:
            ref = label(where[:-3], anchor or None)
        elif not where and anchor:
            ref = label(page, anchor)
        elif where.startswith("../"):
            return "[%s](%s/blob/main/%s)" % (words, repository, url[3:])
        else:
            return match.group(0)
        return "NETREAPREFx%sx%sx" % (_hex(ref), _hex(re.sub(r"[`*]", "", words)))

    for line in text.splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code:
            heading = HEADING.match(line)
            if heading:
                out.extend(target(github_slug(heading.group(2), seen)))
            anchors = ANCHOR.findall(line)
            if anchors:
                # An anchor inside a line (a list item, two anchors in a row) becomes a target
                # just before that line.
                for anchor in anchors:
                    out.extend(target(anchor))
                line = ANCHOR.sub("", line)
                if not line.strip():
                    continue
            line = LINK.sub(link, line)
        out.append(line)
    return "\n".join(out) + "\n"


def _unhex(text):
    return bytes.fromhex(text).decode("utf-8")


def finish_rst(rst, page):
    lines = [".. _%s:" % label(page), ""]
    for line in rst.splitlines():
        if line.startswith(TARGET_TOKEN):
            line = ".. _%s:" % _unhex(line[len(TARGET_TOKEN):].strip())
        else:
            line = REF_TOKEN.sub(lambda m: ":ref:`%s <%s>`" % (_unhex(m.group(2)), _unhex(m.group(1))), line)
        lines.append(line)
    return "\n".join(lines) + "\n"


def convert(markdown):
    import pypandoc  # imported here so that --help works before the docs requirements are in

    # No automatic heading ids: every target is one of ours, with the prefix antsibull-docs wants.
    return pypandoc.convert_text(markdown, "rst", format="gfm-gfm_auto_identifiers",
                                 extra_args=["--wrap=preserve"])


def build(collection_dir):
    with open(os.path.join(collection_dir, "galaxy.yml")) as handle:
        repository = yaml.safe_load(handle)["repository"].rstrip("/")
    docs = os.path.join(collection_dir, "docs")
    pages = sorted(name[:-3] for name in os.listdir(docs) if name.endswith(".md"))
    rst_dir = os.path.join(docs, "docsite", "rst")
    os.makedirs(rst_dir, exist_ok=True)
    for page in pages:
        with open(os.path.join(docs, page + ".md")) as handle:
            rst = convert(prepare_markdown(handle.read(), page, pages, repository))
        with open(os.path.join(rst_dir, page + ".rst"), "w") as handle:
            handle.write(finish_rst(rst, page))
    sections, placed = [], set()
    for title, names in SECTIONS:
        present = [name for name in names if name in pages]
        placed.update(present)
        if present:
            sections.append({"title": title, "toctree": present})
    rest = [page for page in pages if page not in placed]
    if rest:
        sections.append({"title": OTHER_SECTION, "toctree": rest})
    with open(os.path.join(docs, "docsite", "extra-docs.yml"), "w") as handle:
        handle.write("---\n# Written by scripts/docsite.py from the guides under docs/.\n")
        yaml.safe_dump({"sections": sections}, handle, sort_keys=False)
    return pages


ANSIBLE_DOCS = "https://docs.ansible.com/projects/ansible/latest/"
KNOWN_PAGES = {
    "common_return_values": "reference_appendices/common_return_values.html",
    "ansible_configuration_settings": "reference_appendices/config.html",
}
OUTSIDE_REF = re.compile(r":ref:`(?:[^`<]*<)?([^`<>]+)>?`")
ENVVAR = re.compile(r":envvar:`([^`]+)`")
ENVVAR_DEFINED = re.compile(r"^\.\. envvar:: (\S+)", re.MULTILINE)
REFERENCES_PAGE = "ansible-core-references"


def write_ansible_references(rst_dir):
    """Give each reference to ansible-core's docs found in the site a target that links out."""
    labels, envvars, defined = set(), set(), set()
    for folder, _dirs, files in os.walk(rst_dir):
        for name in files:
            if name.endswith(".rst") and name != REFERENCES_PAGE + ".rst":
                with open(os.path.join(folder, name)) as handle:
                    text = handle.read()
                labels.update(ref for ref in OUTSIDE_REF.findall(text)
                              if not ref.startswith("ansible_collections."))
                envvars.update(var.replace("\\", "") for var in ENVVAR.findall(text))
                defined.update(var.replace("\\", "") for var in ENVVAR_DEFINED.findall(text))
    envvars -= defined
    title = "References to ansible-core's documentation"
    lines = [":orphan:", "", title, "=" * len(title), "",
             "This site is built offline; what it cites from ansible-core's documentation is "
             "found at `docs.ansible.com <%s>`__." % ANSIBLE_DOCS, ""]
    for ref in sorted(labels):
        heading = ref.replace("_", " ").capitalize()
        url = ANSIBLE_DOCS + KNOWN_PAGES.get(ref, "")
        lines += [".. _%s:" % ref, "", heading, "-" * len(heading), "",
                  "See `%s <%s>`__." % (heading, url), ""]
    if envvars:
        lines += ["Environment variables", "---------------------", ""]
    for var in sorted(envvars):
        lines += [".. envvar:: %s" % var, "",
                  "   See ansible-core's `configuration settings <%s%s>`__." % (
                      ANSIBLE_DOCS, KNOWN_PAGES["ansible_configuration_settings"]), ""]
    with open(os.path.join(rst_dir, REFERENCES_PAGE + ".rst"), "w") as handle:
        handle.write("\n".join(lines))
    return len(labels) + len(envvars)


def main(argv):
    if len(argv) == 3 and argv[1] == "--ansible-references":
        count = write_ansible_references(argv[2])
        print("docsite: %d references to ansible-core's documentation" % count)
        return 0
    if len(argv) != 2 or argv[1].startswith("-"):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    target = argv[1]
    if not os.path.isfile(os.path.join(target, "galaxy.yml")):
        print("%s: no galaxy.yml there, not a collection directory" % target, file=sys.stderr)
        return 2
    pages = build(target)
    print("docsite: %d guides converted into %s" % (len(pages), os.path.join(target, "docs", "docsite")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
