# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run the oracle over the corpus and write the fixtures the tests replay.

    python3 tools/cilium-oracle/record.py --oracle ./cilium-oracle --release 1.18.3

writes ``tests/fixtures/cilium/<release>/cases.json``: the oracle's release line, the agent
flags, the endpoints of the selection answers, and one compact JSON line per corpus case
with its input and what the agent did (verdict, HTTP status, stage, message, rule index,
effective rules and selection answers of accepted static files).  Run it from a checkout
that sits at ``ansible_collections/netreap/cilium`` so the rendered static files of the
collection are part of the corpus.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus as corpus_mod  # noqa: E402

FLAG_NAMES = {"l7_proxy": "-l7-proxy", "node_selector_labels": "-node-selector-labels",
              "icmp_rules": "-icmp-rules", "default_local_cluster": "-default-local-cluster"}


def run_oracle(oracle, cases, flags, endpoints_file):
    """Run the oracle once over ``cases`` (all with the same ``flags``); {id: result}."""
    with tempfile.TemporaryDirectory() as tmp:
        names = {}
        for index, case in enumerate(cases):
            ext = ".rest" if case["kind"] == "rest" else ".yaml"
            name = os.path.join(tmp, "%05d%s" % (index, ext))
            with open(name, "w", encoding="utf-8") as handle:
                handle.write(case["input"])
            names[name] = case["id"]
        args = [oracle, "-show-sanitized", "-endpoints", endpoints_file]
        for key, value in sorted(flags.items()):
            args.append("%s=%s" % (FLAG_NAMES[key], "true" if value else "false"))
        proc = subprocess.run(args + sorted(names), capture_output=True, text=True, check=False)
        if proc.returncode != 0:  # Cilium logs to stderr; only the exit status says it failed
            raise SystemExit("oracle failed (%d): %s" % (proc.returncode, proc.stderr[-2000:]))
        out = {}
        for line in proc.stdout.splitlines():
            result = json.loads(line)
            out[names[result["file"]]] = result
        return out


def oracle_flags(oracle):
    text = subprocess.run([oracle, "-h"], capture_output=True, text=True, check=False).stderr
    return {key for key, flag in FLAG_NAMES.items() if flag + " " in text or flag + "\n" in text}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--oracle", required=True, help="the oracle binary built for this release")
    parser.add_argument("--release", required=True, help="fixture directory name, e.g. 1.18.3")
    parser.add_argument("--out", default=os.path.join(corpus_mod.ROOT, "tests", "fixtures", "cilium"))
    args = parser.parse_args()

    version = subprocess.run([args.oracle, "-version"], capture_output=True, text=True, check=True).stdout.strip()
    known_flags = oracle_flags(args.oracle)
    cases = corpus_mod.corpus()
    groups = {}
    for case in cases:
        flags = {k: v for k, v in (case.get("flags") or {}).items() if k in known_flags}
        groups.setdefault(json.dumps(flags, sort_keys=True), []).append(case)
    results = {}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(corpus_mod.ENDPOINTS, handle)
        endpoints_file = handle.name
    try:
        for flags_key, group in groups.items():
            results.update(run_oracle(args.oracle, group, json.loads(flags_key), endpoints_file))
    finally:
        os.unlink(endpoints_file)

    lines = []
    for case in cases:
        res = results[case["id"]]
        entry = {"id": case["id"], "kind": case["kind"], "input": case["input"], "ok": res["ok"]}
        applied = {k: v for k, v in (case.get("flags") or {}).items() if k in known_flags}
        if applied:  # only the agent options this release has
            entry["flags"] = applied
        for key in ("stage", "http_status", "rule_index"):
            if res.get(key) is not None:
                entry[key] = res[key]
        if not res["ok"]:
            entry["message"] = res["error"]
        if case["kind"] == "static" and res["ok"]:
            entry["effective"] = res.get("effective")
        if res["ok"] and (case["kind"] == "static" or case["id"].startswith("published/")):
            entry["selection"] = res.get("selection") or []
        lines.append(json.dumps(entry, sort_keys=True, separators=(",", ":")))
    head = {"release": args.release, "oracle": version, "cases": len(cases),
            "endpoints": corpus_mod.ENDPOINTS,
            "defaults": "agent defaults of this release unless a case names flags"}
    target = os.path.join(args.out, args.release)
    os.makedirs(target, exist_ok=True)
    with open(os.path.join(target, "cases.json"), "w", encoding="utf-8") as handle:
        handle.write('{"head":%s,\n"cases":[\n' % json.dumps(head, sort_keys=True, separators=(",", ":")))
        handle.write(",\n".join(lines))
        handle.write("\n]}\n")
    refused = sum(1 for line in lines if '"ok":false' in line)
    print("%s: %d cases (%d refused) -> %s" % (version, len(cases), refused, target))


if __name__ == "__main__":
    main()
