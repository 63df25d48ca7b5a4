"""netreap.cilium.consul_key against a small local server answering Consul blocking queries."""

import asyncio
import base64
import json
import logging
import time
from urllib.parse import parse_qs, urlsplit

from tests.support.eda import QuietHandler, cancel, load_plugin, serve

TOKEN = "b0b-consul-token-never-shown"


class KvServer:
    """Answers each GET with the next (index, value-or-None) of ``answers``, then blocks."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests = []
        server = self

        class Handler(QuietHandler):
            def do_GET(self):
                parts = urlsplit(self.path)
                server.requests.append({"path": parts.path, "query": parse_qs(parts.query),
                                        "token": self.headers.get("X-Consul-Token")})
                if not server.answers:
                    time.sleep(30)
                    return
                index, value = server.answers.pop(0)
                if value is None:
                    status, body = 404, b""
                else:
                    status = 200
                    body = json.dumps([{"Key": parts.path[len("/v1/kv/"):], "Flags": 0,
                                        "Value": base64.b64encode(value).decode(),
                                        "ModifyIndex": index}]).encode()
                self.send_response(status)
                self.send_header("X-Consul-Index", str(index))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd, self.address = serve(Handler)


def run_source(server, args=None, settle=1.5):
    plugin = load_plugin("consul_key")
    events = []

    class Queue:
        async def put(self, event):
            events.append(event)

    options = {"consul_address": server.address, "consul_token": TOKEN, "backoff": 0.05}
    options.update(args or {})

    async def go():
        task = asyncio.ensure_future(plugin.main(Queue(), options))
        await asyncio.sleep(settle)
        await cancel(task)

    asyncio.run(go())
    server.httpd.shutdown()
    return events


def test_value_changes_emit_index_only_changes_do_not():
    server = KvServer([(5, b"rules-1"), (6, b"rules-1"), (9, b"rules-2"), (12, None)])
    events = run_source(server)
    assert [(e["consul_key"]["value"], e["consul_key"]["exists"]) for e in events] == [
        ("rules-2", True), (None, False)]
    assert events[0]["consul_key"]["key"] == "netreap.io/policy"
    # Blocking queries carry the index of the previous answer.
    assert [r["query"]["index"] for r in server.requests[:4]] == [["0"], ["5"], ["6"], ["9"]]
    assert server.requests[0]["path"] == "/v1/kv/netreap.io/policy"
    assert server.requests[0]["query"]["wait"] == ["5m"]


def test_index_going_backwards_resets_to_zero_and_emits_the_new_value():
    server = KvServer([(50, b"a"), (3, b"b")])
    events = run_source(server, {"key": "custom/key", "emit_initial": True})
    assert [e["consul_key"]["value"] for e in events] == ["a", "b"]
    assert [r["query"]["index"] for r in server.requests[:3]] == [["0"], ["50"], ["0"]]


def test_token_from_environment_sent_and_never_logged(monkeypatch, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", TOKEN)
    server = KvServer([(5, b"x"), (6, b"y")])
    events = run_source(server, {"consul_token": None})
    assert server.requests[0]["token"] == TOKEN
    assert [e["consul_key"]["value"] for e in events] == ["y"]
    out = capsys.readouterr()
    for text in (caplog.text, out.out, out.err, json.dumps(events)):
        assert TOKEN not in text
