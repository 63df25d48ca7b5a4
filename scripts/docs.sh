#!/usr/bin/env bash
# Lint the collection's documentation and build its HTML docs site with antsibull-docs:
# modules, plugins and roles from their own documentation, the guides under docs/ as extra docs.
#   bash scripts/docs.sh          lint, then build build/docsite/build/html/index.html
#   bash scripts/docs.sh --lint   lint only (the test command runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-build}
case "$MODE" in build|--lint) ;; *) echo "usage: bash scripts/docs.sh [--lint]" >&2; exit 2 ;; esac

bash scripts/setup.sh >/dev/null
stamp=.venv/.docs-requirements-$(sha256sum docs/docsite/requirements.txt | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet -r docs/docsite/requirements.txt
  touch "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
COLLECTIONS="${NETREAP_COLLECTIONS_DIR:-$ROOT/build/collections}"
export ANSIBLE_COLLECTIONS_PATH="$COLLECTIONS"
COLL="$COLLECTIONS/ansible_collections/netreap/cilium"

# The guides become extra docs in the build copy only; the repository keeps them as Markdown.
python scripts/docsite.py "$COLL"
antsibull-docs lint-collection-docs --plugin-docs --check-extra-docs-refs \
  --validate-collection-refs all --disallow-unknown-collection-refs "$COLL"
echo "docs: lint passed"
[ "$MODE" = build ] || exit 0

SITE="$ROOT/build/docsite"
rm -rf "$SITE"
mkdir -p "$SITE"
# The site is generated anew each time; intersphinx stays empty because building must not need
# the network (references to other collections render as plain text).
antsibull-docs sphinx-init --use-current --squash-hierarchy --fail-on-error \
  --project netreap.cilium --title "netreap.cilium" --copyright "netreap.cilium maintainers" \
  --dest-dir "$SITE" netreap.cilium >/dev/null
cat >> "$SITE/conf.py" <<'CONF'
intersphinx_mapping = {}
# The guides' HCL snippets are ACL rule fragments that Pygments' HCL lexer does not take.
suppress_warnings = ['misc.highlighting_failure']
CONF
# What the generated build.sh does, with the page for ansible-core references added in between.
mkdir -p "$SITE/rst"
chmod og-w "$SITE/rst"  # antsibull-docs wants the directory writable by its owner only
(cd "$SITE" && antsibull-docs --config-file antsibull-docs.cfg collection --cleanup everything \
  --fail-on-error --use-current --squash-hierarchy --dest-dir rst netreap.cilium)
python scripts/docsite.py --ansible-references "$SITE/rst"
sphinx-build -M html "$SITE/rst" "$SITE/build" -c "$SITE" -q -W --keep-going
echo "docs: open $SITE/build/html/index.html"
