"""scripts/docsite.py: how the guides' Markdown is prepared for the docs site (no pandoc needed)."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SPEC = importlib.util.spec_from_file_location("docsite", os.path.join(ROOT, "scripts", "docsite.py"))
docsite = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(docsite)

REPO = "https://github.com/netreap/netreap.cilium"
PREFIX = "ansible_collections.netreap.cilium.docsite."


def round_trip(markdown, page="guide", pages=("guide", "upstream")):
    """Prepare, then finish as if pandoc had kept every line (it keeps the tokens unchanged)."""
    return docsite.finish_rst(docsite.prepare_markdown(markdown, page, set(pages), REPO), page)


def test_links_between_guides_become_checked_references():
    rst = round_trip("See [the facts](upstream.md#cilium-kvstore) and [`reap`](reap.md).\n")
    assert ":ref:`the facts <%supstream.cilium-kvstore>`" % PREFIX in rst
    # reap.md is not a guide of this site: the link is left for pandoc as it was.
    assert "[`reap`](reap.md)" in rst


def test_anchor_in_the_same_page_and_links_out_of_docs():
    rst = round_trip("Go [up](#the-top) or read [the README](../README.md#setup).\n")
    assert ":ref:`up <%sguide.the-top>`" % PREFIX in rst
    assert "[the README](%s/blob/main/README.md#setup)" % REPO in rst


def test_headings_and_html_anchors_become_targets_with_github_ids():
    rst = round_trip("# Title\n\n## What it does: `x` (1.19)\n\n## What it does: `x` (1.19)\n\n"
                     '- <a id="fact-one"></a>**fact**\n')
    assert rst.startswith(".. _%sguide:\n" % PREFIX)
    assert ".. _%sguide.title:" % PREFIX in rst
    assert ".. _%sguide.what-it-does-x-119:" % PREFIX in rst
    assert ".. _%sguide.what-it-does-x-119-1:" % PREFIX in rst  # GitHub numbers repeats
    assert ".. _%sguide.fact-one:" % PREFIX in rst
    assert '<a id="fact-one">' not in rst and "- **fact**" in rst


def test_code_blocks_are_left_alone():
    text = "```yaml\n# not a heading\nurl: [x](upstream.md)\n```\n"
    rst = round_trip(text)
    assert "# not a heading" in rst and "[x](upstream.md)" in rst
    assert rst.count(".. _") == 1  # only the page's own target


def test_main_refuses_a_directory_that_is_not_a_collection(tmp_path, capsys):
    assert docsite.main(["docsite.py", str(tmp_path)]) == 2
    assert "no galaxy.yml there" in capsys.readouterr().err
    assert docsite.main(["docsite.py"]) == 2
