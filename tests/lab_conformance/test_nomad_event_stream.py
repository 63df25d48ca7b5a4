"""Conformance of the lab's Nomad event stream (``GET /v1/event/stream``, tests/lab/nomad.py),
read with python-nomad's event stream client and, for the wire format, a raw socket.

Each test runs against the lab's Nomad and, with ``NOMAD_BIN`` set, against a real Nomad 1.6.5
dev agent (raw_exec jobs); where the two disagree the lab is wrong. What is pinned comes from
docs/upstream.md#nomad-event-stream and #nomad-event-stream-wire.
"""

import contextlib
import itertools
import json
import queue
import socket
import time
import urllib.error

import nomad
import pytest
import requests

from tests.lab import httpd
from tests.lab.nomad import NomadSim
from tests.support.eda import (
    HTTP,
    NOMAD_BIN,
    NOMAD_SKIP_REASON,
    SLEEP_JOB,
    nomad_api,
    nomad_dev_agent,
)

# A small event buffer on both sides, so that an index older than the buffer is easy to reach.
BUFFER = 10
ALLOC_TYPES = {"PlanResult", "AllocationUpdated", "AllocationUpdateDesiredStatus"}
JOB_IDS = ("eda-conformance-%d" % n for n in itertools.count(1))


class LabNomad:
    """The lab's Nomad servers: allocations placed, run and stopped the way Nomad reports them."""

    heartbeat = 1.0

    def __init__(self):
        self.sim = NomadSim(event_buffer_size=BUFFER, event_heartbeat=self.heartbeat)
        self.node = self.sim.add_node("node-1")
        self.endpoint = httpd.serve_tcp(self.sim)
        self.address = self.endpoint.url
        self.allocs = {}

    def start_job(self):
        job_id = next(JOB_IDS)
        alloc = self.sim.add_allocation(self.node["ID"], job_id, task_group="probe",
                                        client_status="pending")
        self.sim.update_allocation(alloc["ID"], client_status="running")
        self.allocs[job_id] = alloc["ID"]
        return job_id

    def stop_job(self, job_id):
        self.sim.update_allocation(self.allocs[job_id], desired_status="stop")
        self.sim.update_allocation(self.allocs[job_id], client_status="complete")

    def churn(self, count):
        """Publish at least ``count`` events (allocations placed and running)."""
        for unused in range(count):
            self.start_job()

    def close(self):
        self.endpoint.stop()


class RealNomad:
    """A Nomad 1.6.5 dev agent with raw_exec."""

    heartbeat = 30.0

    def __init__(self, workdir):
        self._stack = contextlib.ExitStack()
        agent = self._stack.enter_context(nomad_dev_agent(workdir, event_buffer_size=BUFFER))
        self.address, self.node = agent

    def start_job(self):
        job_id = next(JOB_IDS)
        job = json.loads(json.dumps(SLEEP_JOB))
        job["Job"]["ID"] = job["Job"]["Name"] = job_id
        nomad_api(self.address, "POST", "/v1/jobs", job)
        return job_id

    def stop_job(self, job_id):
        nomad_api(self.address, "DELETE", "/v1/job/" + job_id)

    def churn(self, count):
        """Publish at least ``count`` events: registering a job of no allocations publishes a
        Job and an Evaluation event at least."""
        for unused in range(count):
            job = json.loads(json.dumps(SLEEP_JOB))
            job["Job"]["ID"] = job["Job"]["Name"] = next(JOB_IDS)
            job["Job"]["TaskGroups"][0]["Count"] = 0
            nomad_api(self.address, "POST", "/v1/jobs", job)

    def close(self):
        self._stack.close()


@pytest.fixture(scope="module", params=["lab", "real"])
def target(request, tmp_path_factory):
    if request.param == "real":
        if not NOMAD_BIN:
            pytest.skip(NOMAD_SKIP_REASON)
        server = RealNomad(tmp_path_factory.mktemp("nomad"))
    else:
        server = LabNomad()
    yield server
    server.close()


def open_stream(target, **kwargs):
    """python-nomad's event stream client; returns (stop event, queue of non-heartbeat frames)."""
    client = nomad.Nomad(address=target.address, timeout=5)
    thread, stop, frames = client.event.stream.get_stream(timeout=target.heartbeat + 30, **kwargs)
    read = thread.run

    def read_until_stopped():
        # The reader looks at its stop event only when a frame arrives: a stream it still reads
        # when the server goes away ends in an error that says nothing once it was stopped.
        try:
            read()
        except requests.exceptions.RequestException:
            if not stop.is_set():
                raise

    thread.run = read_until_stopped
    thread.daemon = True
    thread.start()
    return stop, frames


def read_until(frames, done, timeout=60):
    """Frames from the queue until ``done(frame)`` is true; AssertionError after ``timeout``."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            frame = frames.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append(frame)
        if done(frame):
            return seen
    raise AssertionError("stream ended or stalled; frames so far: %s" % json.dumps(seen)[:3000])


def read_for(frames, seconds):
    """Every frame that arrives within ``seconds``."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            seen.append(frames.get(timeout=0.1))
        except queue.Empty:
            pass
    return seen


def allocs_of(frames, job_id):
    return [(frame, event) for frame in frames for event in frame["Events"]
            if event["Payload"]["Allocation"]["JobID"] == job_id]


def has_status(job_id, status):
    return lambda frame: any(e["Payload"]["Allocation"]["ClientStatus"] == status
                             for unused, e in allocs_of([frame], job_id))


def test_allocation_events_carry_the_allocation_without_its_job(target):
    stop, frames = open_stream(target, topic={"Allocation": "*"}, namespace="*")
    try:
        job_id = target.start_job()
        running = read_until(frames, has_status(job_id, "running"))
        target.stop_job(job_id)
        complete = read_until(frames, has_status(job_id, "complete"))
    finally:
        stop.set()
    ours = allocs_of(running + complete, job_id)
    for frame, event in ours:
        alloc = event["Payload"]["Allocation"]
        assert event["Topic"] == "Allocation" and event["Index"] == frame["Index"]
        assert event["Type"] in ALLOC_TYPES
        assert event["Key"] == alloc["ID"] and event["Namespace"] == alloc["Namespace"] == "default"
        assert event["FilterKeys"][0] == job_id and len(event["FilterKeys"]) == 2
        assert "Job" not in alloc  # no job, so no meta: the source must read it from Nomad
        assert alloc["NodeName"] == target.node["Name"] and alloc["NodeID"] == target.node["ID"]
        assert set(event["Payload"]) == {"Allocation"}
    first = ours[0][1]
    assert (first["Type"], first["Payload"]["Allocation"]["ClientStatus"]) == ("PlanResult", "pending")
    statuses = [e["Payload"]["Allocation"]["ClientStatus"] for unused, e in ours]
    assert statuses.index("running") < statuses.index("complete")
    indexes = [frame["Index"] for frame, unused in ours]
    assert indexes == sorted(indexes)


def test_index_starts_at_the_first_item_at_or_after_it(target):
    stop, frames = open_stream(target, topic={"Allocation": "*"}, namespace="*")
    try:
        job_id = target.start_job()
        running = read_until(frames, has_status(job_id, "running"))
    finally:
        stop.set()
    index = running[-1]["Index"]
    stop, frames = open_stream(target, index=index, topic={"Allocation": "*"}, namespace="*")
    try:
        again = read_until(frames, lambda frame: True)
    finally:
        stop.set()
    assert again[0]["Index"] == index
    assert again[0]["Events"] == running[-1]["Events"]


def test_index_past_the_newest_replays_the_newest_item(target):
    stop, frames = open_stream(target)  # every topic
    try:
        newest = read_for(frames, 2.0)[-1]["Index"]
    finally:
        stop.set()
    stop, frames = open_stream(target, index=newest + 100000)
    try:
        first = read_until(frames, lambda frame: True)[0]
    finally:
        stop.set()
    assert first["Index"] == newest


def test_index_older_than_the_buffer_silently_starts_at_the_oldest_item(target):
    target.churn(BUFFER + 2)
    time.sleep(1)  # let the agent settle what the registrations started
    oldest = []
    for index in (0, 1):
        stop, frames = open_stream(target, index=index)
        try:
            oldest.append(read_until(frames, lambda frame: True)[0]["Index"])
        finally:
            stop.set()
    assert oldest[0] == oldest[1]
    assert oldest[1] > target.node["CreateIndex"]  # the node's registration left the buffer


def test_namespace_absent_is_default_and_unknown_yields_only_heartbeats(target):
    stop, frames = open_stream(target, topic={"Allocation": "*"}, namespace="nonexistent")
    try:
        job_id = target.start_job()
        assert read_for(frames, 3.0) == []
    finally:
        stop.set()
    stop, frames = open_stream(target, topic={"Allocation": "*"})
    try:
        seen = read_until(frames, has_status(job_id, "running"), timeout=30)
    finally:
        stop.set()
    assert {e["Namespace"] for frame in seen for e in frame["Events"]} == {"default"}


def raw_stream(address, query, seconds):
    """The raw bytes (head and chunked body) of ``seconds`` of a stream."""
    host, port = address.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /v1/event/stream?%s HTTP/1.1\r\nHost: nomad\r\n\r\n" % query.encode())
        data = b""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                part = sock.recv(65536)
            except socket.timeout:
                break
            if not part:
                break
            data += part
    return data


def test_wire_format_one_chunk_per_object_and_heartbeats(target):
    data = raw_stream(target.address, "topic=Node:nothing-matches", min(target.heartbeat * 2.5, 3))
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in lines[1:]}
    assert lines[0] == "HTTP/1.1 200 OK"
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-cache"
    assert headers["transfer-encoding"] == "chunked"
    assert not [name for name in headers if name.startswith("x-nomad")]
    # `{}` and its newline are two chunks; the heartbeat comes at once on connect.
    assert body.startswith(b"2\r\n{}\r\n1\r\n\n\r\n")
    if target.heartbeat < 2:  # the lab's configurable interval; Nomad's is 30 s
        assert body.count(b"2\r\n{}\r\n1\r\n\n\r\n") >= 2


@pytest.mark.parametrize("query, text", [
    ("index=abc", 'Unable to parse index: strconv.Atoi: parsing "abc": invalid syntax'),
    ("topic=Allocation:a:b", "Invalid topic query: error parsing topics: Invalid key value pair "
                             "for topic, topic: Allocation:a:b"),
])
def test_bad_index_or_topic_is_a_400_in_text(target, query, text):
    with pytest.raises(urllib.error.HTTPError) as err:
        HTTP.open(target.address + "/v1/event/stream?" + query, timeout=5)
    assert err.value.code == 400
    assert err.value.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert err.value.read().decode() == text
