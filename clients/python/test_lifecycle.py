"""End to end: the generated Python stubs against the real `connections` binary.

The binary is not built here: CONNECTIONS_BIN, or ../../target/debug/connections (cargo build).
Everything runs on 127.0.0.1, in a temporary directory, with every wait bounded.
"""

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from connections.v1 import access_service_pb2 as acc
from connections.v1 import access_service_pb2_grpc as acc_grpc
from connections.v1 import connection_service_pb2 as cs
from connections.v1 import connection_service_pb2_grpc as cs_grpc
from connections.v1 import organization_service_pb2 as org_pb
from connections.v1 import organization_service_pb2_grpc as org_grpc
from connections.v1 import resources_pb2 as res
from resumable_watch import ResumableWatch

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.abspath(
    os.environ.get("CONNECTIONS_BIN") or os.path.join(HERE, "..", "..", "target", "debug", "connections")
)
TIMEOUT = 10  # seconds, for every RPC and CLI call
# Operator credentials of the shared server (CheckAccess for any pair).
ADMIN_TOKEN = f"admin-{uuid.uuid4().hex}"
ACCESS_CHECK_TOKEN = f"access-check-{uuid.uuid4().hex}"


@dataclass
class Org:
    id: str
    key: str

    @property
    def auth(self):
        return (("authorization", f"Bearer {self.key}"),)


@dataclass
class Server:
    target: str
    env: dict
    log_path: str
    orgs: list = field(default_factory=list)
    args: tuple = ()
    process: subprocess.Popen = None

    def cli(self, *args):
        """Runs `connections admin ...` on the server's database; returns its first JSON line."""
        done = subprocess.run([BIN, *args], env=self.env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, f"{args} exited {done.returncode}: {done.stderr}"
        return json.loads(done.stdout.splitlines()[0])

    def new_org(self, name):
        org = self.cli("admin", "create-org", "--name", name)
        key = self.cli("admin", "create-key", "--org", org["id"], "--name", "python tests")
        return Org(org["id"], key["secret"])

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]

    def start(self):
        """Starts `connections serve` (again, after stop(): same database and port) and waits,
        bounded, until it answers."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([BIN, "serve", "--listen", self.target, *self.args],
                                            env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)
        wait_until_serving(self.process, self.target, self.orgs[0], self)

    def stop(self):
        """SIGTERM, then waits (bounded) for the exit; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            pytest.fail(f"server did not stop within 30s of SIGTERM:\n{self.log()}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(process, target, org, server, attempts=150, delay=0.2):
    """Bounded: up to attempts * delay seconds for a real RPC to succeed."""
    with grpc.insecure_channel(target) as channel:
        stub = org_grpc.OrganizationServiceStub(channel)
        for _ in range(attempts):
            if process.poll() is not None:
                pytest.fail(f"server exited {process.returncode} at start:\n{server.log()}")
            try:
                stub.GetOrganization(org_pb.GetOrganizationRequest(), metadata=org.auth, timeout=1)
                return
            except grpc.RpcError as err:
                if err.code() not in (grpc.StatusCode.UNAVAILABLE,
                                      grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
            time.sleep(delay)
    pytest.fail(f"server did not answer on {target} within {attempts * delay:.0f}s:\n{server.log()}")


def new_server(tmp, *args, env=None):
    """A server over a new database in tmp, with two organizations; not started yet."""
    if not os.access(BIN, os.X_OK):
        pytest.fail(f"no connections binary at {BIN}: run `cargo build --bin connections` "
                    "in the repository root, or set CONNECTIONS_BIN")
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTIONS_")}
    base["CONNECTIONS_DATABASE_URL"] = f"sqlite://{tmp}/c.db?mode=rwc"
    # Webhook endpoints on http://127.0.0.1 (test_webhooks.py's receiver) are accepted.
    base["CONNECTIONS_WEBHOOK_ALLOW_PRIVATE_ADDRESSES"] = "true"
    base.update(env or {})
    srv = Server(target=f"127.0.0.1:{free_port()}", env=base, log_path=str(tmp / "server.log"),
                 args=args)
    srv.orgs = [srv.new_org("Acme Bank"), srv.new_org("Beta Lending")]
    return srv


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = new_server(tmp_path_factory.mktemp("connections"),
                     env={"CONNECTIONS_ADMIN_TOKEN": ADMIN_TOKEN,
                          "CONNECTIONS_ACCESS_CHECK_TOKEN": ACCESS_CHECK_TOKEN})
    try:
        srv.start()
        yield srv
    finally:
        code = srv.stop() if srv.process else None
    assert code == 0, f"server exited {code} after SIGTERM:\n{srv.log()}"


@pytest.fixture
def channel(server):
    with grpc.insecure_channel(server.target) as channel:
        yield channel


@pytest.fixture
def stub(channel):
    return cs_grpc.ConnectionServiceStub(channel)


@pytest.fixture
def access(channel):
    return acc_grpc.AccessServiceStub(channel)


def unpacked(status, message_class):
    """The details of a google.rpc.Status that are message_class messages, decoded."""
    found = []
    for detail in status.details:
        if detail.Is(message_class.DESCRIPTOR):
            message = message_class()
            detail.Unpack(message)
            found.append(message)
    return found


def error_info(status):
    """The one google.rpc.ErrorInfo of a google.rpc.Status, with the service's domain."""
    infos = unpacked(status, error_details_pb2.ErrorInfo)
    assert len(infos) == 1, f"expected one ErrorInfo, got {status.details}"
    assert infos[0].domain == "connections.v1"
    return infos[0]


def refused_status(call):
    """Runs call(), which must fail; returns (status code, its google.rpc.Status)."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    err = caught.value
    status = rpc_status.from_call(err)
    assert status is not None, f"no status details on {err.code()}: {err.details()}"
    return err.code(), status


def refusal(call):
    """Runs call(), which must fail; returns (status code, google.rpc.ErrorInfo)."""
    code, status = refused_status(call)
    return code, error_info(status)


def test_lifecycle(server, stub):
    source, destination = server.orgs
    S, D = source.auth, destination.auth
    name = res.ConnectionState.Name

    # The source creates; a retry with the same request_id returns the identical response.
    create = cs.CreateConnectionRequest(
        destination_organization_id=destination.id,
        data_types=[res.DATA_TYPE_TRANSACTION, res.DATA_TYPE_INQUIRY, res.DATA_TYPE_INQUIRY],
        request_id=str(uuid.uuid4()),
    )
    first = stub.CreateConnection(create, metadata=S, timeout=TIMEOUT)
    conn = first.connection
    assert conn.state == res.CONNECTION_STATE_PENDING
    assert conn.source_organization_id == source.id
    assert conn.destination_organization_id == destination.id
    assert list(conn.data_types) == [res.DATA_TYPE_INQUIRY, res.DATA_TYPE_TRANSACTION]
    again = stub.CreateConnection(create, metadata=S, timeout=TIMEOUT)
    assert again.SerializeToString() == first.SerializeToString()

    # The same request_id with other parameters is refused.
    reused = cs.CreateConnectionRequest(destination_organization_id=destination.id,
                                        data_types=[res.DATA_TYPE_ACCOUNT],
                                        request_id=create.request_id)
    code, info = refusal(lambda: stub.CreateConnection(reused, metadata=S, timeout=TIMEOUT))
    assert (code, info.reason) == (grpc.StatusCode.INVALID_ARGUMENT,
                                   "ERROR_REASON_REQUEST_ID_REUSED")

    # A second connection for the same pair is refused, naming the existing one.
    fresh = cs.CreateConnectionRequest(destination_organization_id=destination.id,
                                       data_types=[res.DATA_TYPE_ACCOUNT])
    code, info = refusal(lambda: stub.CreateConnection(fresh, metadata=S, timeout=TIMEOUT))
    assert (code, info.reason) == (grpc.StatusCode.ALREADY_EXISTS,
                                   "ERROR_REASON_CONNECTION_ALREADY_EXISTS")
    assert info.metadata["connection_id"] == conn.id

    # Sources cannot activate.
    activate = cs.ActivateConnectionRequest(connection_id=conn.id)
    code, info = refusal(lambda: stub.ActivateConnection(activate, metadata=S, timeout=TIMEOUT))
    assert (code, info.reason) == (grpc.StatusCode.PERMISSION_DENIED,
                                   "ERROR_REASON_CALLER_NOT_DESTINATION")

    # A call without credentials is refused before anything else.
    code, info = refusal(lambda: stub.ActivateConnection(activate, timeout=TIMEOUT))
    assert (code, info.reason) == (grpc.StatusCode.UNAUTHENTICATED,
                                   "ERROR_REASON_API_KEY_MISSING")

    # The destination activates (conditional on the etag it read).
    first_activate = cs.ActivateConnectionRequest(connection_id=conn.id, etag=conn.etag,
                                                  request_id=str(uuid.uuid4()))
    activated = stub.ActivateConnection(first_activate, metadata=D, timeout=TIMEOUT)
    assert activated.connection.state == res.CONNECTION_STATE_ACTIVE
    assert activated.connection.etag != conn.etag
    assert activated.connection.HasField("activate_time")

    # ACTIVE -> PENDING is not a transition.
    reactivate = cs.ReactivateConnectionRequest(connection_id=conn.id)
    code, info = refusal(lambda: stub.ReactivateConnection(reactivate, metadata=S, timeout=TIMEOUT))
    assert (code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION,
                                   "ERROR_REASON_INVALID_STATE_TRANSITION")
    assert info.metadata["current_state"] == "CONNECTION_STATE_ACTIVE"

    # The source deactivates, with a reason.
    conn = stub.DeactivateConnection(
        cs.DeactivateConnectionRequest(connection_id=conn.id, reason="contract renewal",
                                       request_id=str(uuid.uuid4())),
        metadata=S, timeout=TIMEOUT).connection
    assert name(conn.state) == "CONNECTION_STATE_INACTIVE"
    assert conn.deactivated_by == res.CONNECTION_ROLE_SOURCE
    assert conn.deactivation_reason == "contract renewal"

    # The source reactivates (back to PENDING); the destination activates again.
    conn = stub.ReactivateConnection(reactivate, metadata=S, timeout=TIMEOUT).connection
    assert name(conn.state) == "CONNECTION_STATE_PENDING"
    conn = stub.ActivateConnection(
        cs.ActivateConnectionRequest(connection_id=conn.id, request_id=str(uuid.uuid4())),
        metadata=D, timeout=TIMEOUT).connection
    assert name(conn.state) == "CONNECTION_STATE_ACTIVE"

    # Replaying the first activation returns its original response and changes nothing.
    replay = stub.ActivateConnection(first_activate, metadata=D, timeout=TIMEOUT)
    assert replay.SerializeToString() == activated.SerializeToString()
    now = stub.GetConnection(cs.GetConnectionRequest(connection_id=conn.id),
                             metadata=S, timeout=TIMEOUT).connection
    assert now.etag == conn.etag

    # Each party lists it under its own role, and not under the other.
    def listed(org, role):
        page = stub.ListConnections(cs.ListConnectionsRequest(role=role), metadata=org,
                                    timeout=TIMEOUT)
        return [c.id for c in page.connections]

    assert listed(S, res.CONNECTION_ROLE_SOURCE) == [conn.id]
    assert listed(D, res.CONNECTION_ROLE_DESTINATION) == [conn.id]
    assert listed(S, res.CONNECTION_ROLE_DESTINATION) == []
    assert listed(D, res.CONNECTION_ROLE_SOURCE) == []

    # The history, oldest first, as both parties see it.
    request = cs.ListConnectionEventsRequest(connection_id=conn.id)
    events = stub.ListConnectionEvents(request, metadata=D, timeout=TIMEOUT).events
    assert stub.ListConnectionEvents(request, metadata=S, timeout=TIMEOUT).events == events
    P, A, I, U = (res.CONNECTION_STATE_PENDING, res.CONNECTION_STATE_ACTIVE,
                  res.CONNECTION_STATE_INACTIVE, res.CONNECTION_STATE_UNSPECIFIED)
    SRC, DST = res.CONNECTION_ROLE_SOURCE, res.CONNECTION_ROLE_DESTINATION
    assert [(e.sequence, e.type, e.from_state, e.to_state, e.actor_role, e.reason)
            for e in events] == [
        (1, res.CONNECTION_EVENT_TYPE_CREATED, U, P, SRC, ""),
        (2, res.CONNECTION_EVENT_TYPE_ACTIVATED, P, A, DST, ""),
        (3, res.CONNECTION_EVENT_TYPE_DEACTIVATED, A, I, SRC, "contract renewal"),
        (4, res.CONNECTION_EVENT_TYPE_REACTIVATED, I, P, SRC, ""),
        (5, res.CONNECTION_EVENT_TYPE_ACTIVATED, P, A, DST, ""),
    ]
    assert all(e.connection_id == conn.id for e in events)
    assert [e.actor_organization_id for e in events] == [
        source.id, destination.id, source.id, source.id, destination.id]
    # Each event names the API key that made it (each organization here has one).
    assert {e.actor_api_key_display_name for e in events} == {"python tests"}
    assert len({e.actor_api_key_id for e in events}) == 2 and all(e.actor_api_key_id for e in events)
    assert events[-1].to_state == now.state


def test_example_program(server):
    # A pair of its own, so that the example creates a connection that does not exist yet.
    source, destination = server.new_org("Example Source"), server.new_org("Example Destination")
    done = subprocess.run(
        [sys.executable, os.path.join(HERE, "example.py"), "--target", server.target,
         "--source-key", source.key, "--destination-key", destination.key,
         "--destination-id", destination.id],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, f"example.py exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    out = done.stdout
    assert "retried with the same request_id: same response: True" in out
    assert ("invitation: 'Hello from the example: please activate to receive our inquiries.', "
            "expires ") in out
    assert "PERMISSION_DENIED ERROR_REASON_CALLER_NOT_DESTINATION (connections.v1)" in out
    assert "activated by the destination: CONNECTION_STATE_ACTIVE" in out
    assert "#2 CONNECTION_EVENT_TYPE_ACTIVATED" in out
    assert "check access DATA_TYPE_INQUIRY: allowed True (CONNECTION_STATE_ACTIVE)" in out
    assert "check access DATA_TYPE_TRANSACTION: allowed False (CONNECTION_STATE_ACTIVE)" in out
    assert "check access DATA_TYPE_INQUIRY: allowed False (CONNECTION_STATE_INACTIVE)" in out
    # The watch after the create's token starts with the activation; the resumed one brings
    # exactly the deactivation made while nobody watched.
    watched = [line.rsplit(" of ", 1)[0] for line in out.splitlines() if line.startswith("watched ")]
    assert watched == ["watched #2 CONNECTION_EVENT_TYPE_ACTIVATED",
                       "watched #3 CONNECTION_EVENT_TYPE_DEACTIVATED"], out


# --- WatchConnectionEvents with ResumableWatch, and CheckAccess -------------------------------

CREATED, ACTIVATED, DEACTIVATED, REACTIVATED = (
    res.CONNECTION_EVENT_TYPE_CREATED, res.CONNECTION_EVENT_TYPE_ACTIVATED,
    res.CONNECTION_EVENT_TYPE_DEACTIVATED, res.CONNECTION_EVENT_TYPE_REACTIVATED)


class Pump:
    """Iterates a watch on a thread, one message per pull(), so that every wait is bounded."""

    def __init__(self, watch):
        self.watch = watch
        self._asks, self._got = queue.Queue(), queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        messages = iter(self.watch)
        while self._asks.get():
            try:
                self._got.put(("message", next(messages)))
            except StopIteration:
                self._got.put(("end", None))
                return
            except Exception as err:  # handed to the test's thread
                self._got.put(("error", err))
                return

    def _next(self, timeout):
        self._asks.put(True)
        try:
            return self._got.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no message from the watch within {timeout}s")

    def pull(self, timeout=TIMEOUT):
        kind, value = self._next(timeout)
        if kind == "error":
            raise value
        assert kind == "message", "the watch ended"
        return value

    def events(self, n, timeout=TIMEOUT):
        """The next n messages with an event (heartbeats, if yielded, are skipped)."""
        got = []
        while len(got) < n:
            message = self.pull(timeout)
            if message.HasField("event"):
                got.append(message)
        return got

    def assert_ends(self, timeout=TIMEOUT):
        kind, value = self._next(timeout)
        assert kind == "end", f"expected the watch to end, got {kind}: {value}"

    def stop(self):
        self.watch.close()
        self._asks.put(False)
        self._thread.join(timeout=TIMEOUT)
        assert not self._thread.is_alive(), "the watch did not stop after close()"


def summary(messages):
    return [(m.event.sequence, m.event.type) for m in messages]


def lifecycle_writes(stub, conn_id, S, D, **call):
    """Deactivate (by the source), reactivate, activate: events 3, 4 and 5 after create and
    activate. Returns their responses' change tokens."""
    call.setdefault("timeout", TIMEOUT)
    return [
        stub.DeactivateConnection(cs.DeactivateConnectionRequest(connection_id=conn_id,
                                                                 reason="paused"),
                                  metadata=S, **call).change_token,
        stub.ReactivateConnection(cs.ReactivateConnectionRequest(connection_id=conn_id),
                                  metadata=S, **call).change_token,
        stub.ActivateConnection(cs.ActivateConnectionRequest(connection_id=conn_id),
                                metadata=D, **call).change_token,
    ]


def create_and_activate(stub, source, destination, data_types=(res.DATA_TYPE_INQUIRY,), **call):
    call.setdefault("timeout", TIMEOUT)
    created = stub.CreateConnection(
        cs.CreateConnectionRequest(destination_organization_id=destination.id,
                                   data_types=list(data_types)),
        metadata=source.auth, **call)
    activated = stub.ActivateConnection(
        cs.ActivateConnectionRequest(connection_id=created.connection.id),
        metadata=destination.auth, **call)
    assert created.change_token and activated.change_token
    assert created.change_token != activated.change_token
    return created, activated


def altered(token):
    """The token with one character in the middle changed."""
    i = len(token) // 2
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]


def test_watch_from_beginning_sees_the_lifecycle_as_the_history_does(server, stub):
    source, destination = server.new_org("Watch Source"), server.new_org("Watch Destination")
    S, D = source.auth, destination.auth
    created, activated = create_and_activate(stub, source, destination)
    conn_id = created.connection.id

    # Both parties watch from the beginning: the two events so far come from the database...
    pumps = [Pump(ResumableWatch(stub, org, from_beginning=True, idle_timeout=30))
             for org in (D, S)]
    try:
        got = [p.events(2) for p in pumps]
        # ...and the next three live, as they are committed.
        tokens = [created.change_token, activated.change_token,
                  *lifecycle_writes(stub, conn_id, S, D)]
        for g, p in zip(got, pumps):
            g += p.events(3)

        history = stub.ListConnectionEvents(cs.ListConnectionEventsRequest(connection_id=conn_id),
                                            metadata=D, timeout=TIMEOUT).events
        assert summary(got[0]) == [(1, CREATED), (2, ACTIVATED), (3, DEACTIVATED),
                                   (4, REACTIVATED), (5, ACTIVATED)]
        for g in got:
            # The same events ListConnectionEvents returns, field for field, in the same order.
            assert [m.event for m in g] == list(history)
            # Each message's token names the place just after its event: the token its write returned.
            assert [m.change_token for m in g] == tokens
        assert got[0][2].event.reason == "paused"
        assert [p.watch.last_change_token for p in pumps] == [tokens[-1]] * 2
        assert [p.watch.resumes for p in pumps] == [0, 0]

        # close() ends the iteration, without an error.
        pumps[0].watch.close()
        pumps[0].assert_ends()
    finally:
        for p in pumps:
            p.stop()


def test_watch_role_filter(server, stub):
    source, destination = server.new_org("Role Source"), server.new_org("Role Destination")
    created, _ = create_and_activate(stub, source, destination)
    # A connection where `source` is the destination.
    inbound, _ = create_and_activate(stub, server.new_org("Role Other"), source)

    as_destination = Pump(ResumableWatch(stub, source.auth, from_beginning=True,
                                         role=res.CONNECTION_ROLE_DESTINATION, idle_timeout=30))
    as_source = Pump(ResumableWatch(stub, source.auth, from_beginning=True,
                                    role=res.CONNECTION_ROLE_SOURCE, idle_timeout=30))
    try:
        assert [m.event.connection_id for m in as_destination.events(2)] == [inbound.connection.id] * 2
        assert [m.event.connection_id for m in as_source.events(2)] == [created.connection.id] * 2
    finally:
        as_destination.stop()
        as_source.stop()


def test_watch_resumes_from_the_last_token_without_duplicates_or_gaps(server, stub):
    source, destination = server.new_org("Resume Source"), server.new_org("Resume Destination")
    S, D = source.auth, destination.auth
    created, activated = create_and_activate(stub, source, destination)
    conn_id = created.connection.id

    # A first watch reads the two events, then stops.
    first = Pump(ResumableWatch(stub, D, from_beginning=True, idle_timeout=30))
    try:
        seen = first.events(2)
        checkpoint = first.watch.last_change_token
    finally:
        first.stop()
    assert summary(seen) == [(1, CREATED), (2, ACTIVATED)]
    assert checkpoint == activated.change_token

    # Three changes while nobody watches.
    tokens = lifecycle_writes(stub, conn_id, S, D)

    # Resumed from the checkpoint: exactly those three, then what comes next, live.
    second = Pump(ResumableWatch(stub, D, after_change_token=checkpoint, idle_timeout=30))
    try:
        resumed = second.events(3)
        assert summary(resumed) == [(3, DEACTIVATED), (4, REACTIVATED), (5, ACTIVATED)]
        assert [m.change_token for m in resumed] == tokens
        last = stub.DeactivateConnection(cs.DeactivateConnectionRequest(connection_id=conn_id),
                                         metadata=D, timeout=TIMEOUT)
        following = second.pull()
        assert summary([following]) == [(6, DEACTIVATED)]
        assert following.change_token == last.change_token
    finally:
        second.stop()

    history = stub.ListConnectionEvents(cs.ListConnectionEventsRequest(connection_id=conn_id),
                                        metadata=S, timeout=TIMEOUT).events
    assert [m.event for m in seen + resumed + [following]] == list(history)

    # A write's token works as well: after the reactivation (event 4) comes event 5.
    third = Pump(ResumableWatch(stub, S, after_change_token=tokens[1], idle_timeout=30))
    try:
        assert summary(third.events(2)) == [(5, ACTIVATED), (6, DEACTIVATED)]
    finally:
        third.stop()

    # An altered token is refused, and the watch raises rather than retrying.
    bad = ResumableWatch(stub, D, after_change_token=altered(checkpoint), idle_timeout=30)
    code, info = refusal(lambda: next(iter(bad)))
    assert (code, info.reason) == (grpc.StatusCode.INVALID_ARGUMENT,
                                   "ERROR_REASON_INVALID_CHANGE_TOKEN")
    assert bad.resumes == 0


def test_watch_resumes_across_a_server_restart(tmp_path):
    srv = new_server(tmp_path, "--watch-heartbeat-interval", "1s")
    source, destination = srv.orgs
    S, D = source.auth, destination.auth
    ended = []  # what ended each stream the watch resumed after
    try:
        srv.start()
        with grpc.insecure_channel(srv.target) as channel:
            stub = cs_grpc.ConnectionServiceStub(channel)
            created, _ = create_and_activate(stub, source, destination)
            conn_id = created.connection.id
            watch = ResumableWatch(
                stub, D, from_beginning=True, heartbeats=True, idle_timeout=10,
                initial_backoff=0.1, max_backoff=1.0,
                on_resume=lambda err, delay: ended.append(err.code() if err else None))
            pump = Pump(watch)
            try:
                before = pump.events(2)
                assert summary(before) == [(1, CREATED), (2, ACTIVATED)]
                # Heartbeats (no event) arrive when nothing happens, each with a token.
                heartbeat = pump.pull(timeout=5)
                assert not heartbeat.HasField("event")
                assert heartbeat.change_token
                assert watch.last_change_token == heartbeat.change_token

                assert srv.stop() == 0, f"server exited non-zero after SIGTERM:\n{srv.log()}"
                srv.start()
                # Three changes while the watch is cut off (it is not being read).
                tokens = lifecycle_writes(stub, conn_id, S, D, wait_for_ready=True)

                after = pump.events(3, timeout=30)
                assert summary(after) == [(3, DEACTIVATED), (4, REACTIVATED), (5, ACTIVATED)]
                assert [m.change_token for m in after] == tokens
                assert watch.resumes >= 1
                # Nothing else is pending: the next event is the next write.
                last = stub.DeactivateConnection(
                    cs.DeactivateConnectionRequest(connection_id=conn_id), metadata=S,
                    timeout=TIMEOUT)
                following = pump.events(1)
                assert summary(following) == [(6, DEACTIVATED)]
                assert following[0].change_token == last.change_token
            finally:
                pump.stop()

            history = stub.ListConnectionEvents(
                cs.ListConnectionEventsRequest(connection_id=conn_id), metadata=D,
                timeout=TIMEOUT).events
            assert [m.event for m in before + after + following] == list(history)

            # A heartbeat's token resumes after it: the events before it are not sent again.
            again = Pump(ResumableWatch(stub, D, after_change_token=heartbeat.change_token,
                                        idle_timeout=10))
            try:
                assert summary(again.events(4)) == [
                    (3, DEACTIVATED), (4, REACTIVATED), (5, ACTIVATED), (6, DEACTIVATED)]
            finally:
                again.stop()
            # The server ends open streams with UNAVAILABLE when it stops.
            assert ended[0] == grpc.StatusCode.UNAVAILABLE, ended
    finally:
        code = srv.stop() if srv.process else None
    assert code == 0, f"server exited {code} after SIGTERM:\n{srv.log()}"


def test_check_access(server, stub, access):
    source, destination = server.new_org("Access Source"), server.new_org("Access Destination")
    third = server.new_org("Access Outsider")
    operator, admin = (("authorization", f"Bearer {ACCESS_CHECK_TOKEN}"),), \
        (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    U, P, A, I = (res.CONNECTION_STATE_UNSPECIFIED, res.CONNECTION_STATE_PENDING,
                  res.CONNECTION_STATE_ACTIVE, res.CONNECTION_STATE_INACTIVE)

    def check(caller, data_type, token="", src=source.id, dst=destination.id):
        answer = access.CheckAccess(
            acc.CheckAccessRequest(source_organization_id=src, destination_organization_id=dst,
                                   data_type=data_type, at_least_change_token=token),
            metadata=caller, timeout=TIMEOUT)
        assert answer.change_token
        return answer.allowed, answer.connection_id, answer.state

    # No connection yet.
    assert check(source.auth, res.DATA_TYPE_INQUIRY) == (False, "", U)
    assert check(destination.auth, res.DATA_TYPE_INQUIRY) == (False, "", U)

    created = stub.CreateConnection(
        cs.CreateConnectionRequest(destination_organization_id=destination.id,
                                   data_types=[res.DATA_TYPE_INQUIRY, res.DATA_TYPE_ACCOUNT]),
        metadata=source.auth, timeout=TIMEOUT)
    conn_id = created.connection.id
    for caller in (source.auth, destination.auth, operator, admin):
        assert check(caller, res.DATA_TYPE_INQUIRY, created.change_token) == (False, conn_id, P)

    activated = stub.ActivateConnection(cs.ActivateConnectionRequest(connection_id=conn_id),
                                        metadata=destination.auth, timeout=TIMEOUT)
    token = activated.change_token
    for caller in (source.auth, destination.auth, operator, admin):
        assert check(caller, res.DATA_TYPE_INQUIRY, token) == (True, conn_id, A)
        assert check(caller, res.DATA_TYPE_ACCOUNT, token) == (True, conn_id, A)
        # Data types the connection does not include.
        assert check(caller, res.DATA_TYPE_TRANSACTION, token) == (False, conn_id, A)
        assert check(caller, res.DATA_TYPE_VERIFICATION, token) == (False, conn_id, A)
    # Direction matters: nothing flows from the destination to the source.
    assert check(source.auth, res.DATA_TYPE_INQUIRY, token, src=destination.id,
                 dst=source.id) == (False, "", U)

    # Only the parties named in the request (or an operator) may ask.
    request = acc.CheckAccessRequest(source_organization_id=source.id,
                                     destination_organization_id=destination.id,
                                     data_type=res.DATA_TYPE_INQUIRY)
    code, info = refusal(lambda: access.CheckAccess(request, metadata=third.auth, timeout=TIMEOUT))
    assert (code, info.reason) == (grpc.StatusCode.PERMISSION_DENIED,
                                   "ERROR_REASON_CALLER_NOT_PARTY")
    code, info = refusal(lambda: access.CheckAccess(request, timeout=TIMEOUT))
    assert (code, info.reason) == (grpc.StatusCode.UNAUTHENTICATED, "ERROR_REASON_API_KEY_MISSING")
    # The access-check token can call CheckAccess and nothing else.
    code, info = refusal(lambda: stub.ListConnections(cs.ListConnectionsRequest(),
                                                      metadata=operator, timeout=TIMEOUT))
    assert code == grpc.StatusCode.UNAUTHENTICATED

    # Malformed requests.
    for bad, reason in [
        (acc.CheckAccessRequest(source_organization_id=source.id,
                                destination_organization_id=destination.id,
                                data_type=res.DATA_TYPE_INQUIRY,
                                at_least_change_token=altered(token)),
         "ERROR_REASON_INVALID_CHANGE_TOKEN"),
        (acc.CheckAccessRequest(source_organization_id=source.id,
                                destination_organization_id=destination.id),
         "ERROR_REASON_INVALID_ARGUMENT"),
    ]:
        code, info = refusal(lambda: access.CheckAccess(bad, metadata=source.auth, timeout=TIMEOUT))
        assert (code, info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)

    deactivated = stub.DeactivateConnection(
        cs.DeactivateConnectionRequest(connection_id=conn_id), metadata=source.auth,
        timeout=TIMEOUT)
    for caller in (source.auth, destination.auth, operator):
        assert check(caller, res.DATA_TYPE_INQUIRY, deactivated.change_token) == (False, conn_id, I)

    # Never stale: right after each transition, a check with its token sees it.
    callers = [source.auth, destination.auth, operator]
    for round_ in range(10):
        caller = callers[round_ % 3]
        t = stub.ReactivateConnection(cs.ReactivateConnectionRequest(connection_id=conn_id),
                                      metadata=source.auth, timeout=TIMEOUT).change_token
        assert check(caller, res.DATA_TYPE_INQUIRY, t) == (False, conn_id, P), round_
        t = stub.ActivateConnection(cs.ActivateConnectionRequest(connection_id=conn_id),
                                    metadata=destination.auth, timeout=TIMEOUT).change_token
        assert check(caller, res.DATA_TYPE_ACCOUNT, t) == (True, conn_id, A), round_
        t = stub.DeactivateConnection(cs.DeactivateConnectionRequest(connection_id=conn_id),
                                      metadata=destination.auth, timeout=TIMEOUT).change_token
        assert check(caller, res.DATA_TYPE_ACCOUNT, t) == (False, conn_id, I), round_


# --- Invitations: messages and expiry ---------------------------------------------------------

EXPIRED = res.CONNECTION_EVENT_TYPE_EXPIRED
DEFAULT_PENDING_LIFETIME_NS = 30 * 24 * 3600 * 10**9  # the server's default --pending-expiry


def violations(status):
    """The fields named by the google.rpc.BadRequest details of a google.rpc.Status."""
    return [v.field for bad in unpacked(status, error_details_pb2.BadRequest)
            for v in bad.field_violations]


def refused_message(call):
    """Runs call(), which must be refused for its invitation message: INVALID_ARGUMENT with a
    BadRequest violation on `message` and nothing else."""
    code, status = refused_status(call)
    assert (code, error_info(status).reason) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                 "ERROR_REASON_INVALID_ARGUMENT")
    assert violations(status) == ["message"], status


def lifetime_ns(conn, since):
    """How long after `since` (a Timestamp) the connection's expire_time is, in nanoseconds."""
    assert conn.HasField("expire_time"), f"no expire_time on {conn}"
    return conn.expire_time.ToNanoseconds() - since.ToNanoseconds()


def test_invitation_message(server, stub):
    source = server.new_org("Invitation Source")
    destination = server.new_org("Invitation Destination")
    S, D = source.auth, destination.auth
    P, A = res.CONNECTION_STATE_PENDING, res.CONNECTION_STATE_ACTIVE

    def create(message):
        return stub.CreateConnection(
            cs.CreateConnectionRequest(destination_organization_id=destination.id,
                                       data_types=[res.DATA_TYPE_ACCOUNT], message=message),
            metadata=S, timeout=TIMEOUT)

    # Control characters other than line breaks and tabs are refused, and so is a message longer
    # than 1,000 characters; nothing is created.
    for bad in ("Please activate\x07", "Hello\x00there", "Report \x1b[2J ready", "x" * 1001):
        refused_message(lambda: create(bad))
    assert stub.ListConnections(cs.ListConnectionsRequest(), metadata=S,
                                timeout=TIMEOUT).connections == []

    # The message is kept trimmed of the white space around it; line breaks and tabs inside stay.
    text = "Hello from Acme Bank,\n\tplease activate our account feed.\r\nThanks!"
    created = create(f"  {text}\n\n ")
    conn = created.connection
    assert (conn.state, conn.invitation_message) == (P, text)
    # A pending connection waits for its destination for the default lifetime, 30 days.
    assert lifetime_ns(conn, conn.create_time) == DEFAULT_PENDING_LIFETIME_NS

    # The destination sees it on the connection and on the CREATED event.
    seen = stub.GetConnection(cs.GetConnectionRequest(connection_id=conn.id), metadata=D,
                              timeout=TIMEOUT).connection
    assert seen == conn
    inbound = stub.ListConnections(cs.ListConnectionsRequest(role=res.CONNECTION_ROLE_DESTINATION),
                                   metadata=D, timeout=TIMEOUT).connections
    assert [(c.id, c.invitation_message) for c in inbound] == [(conn.id, text)]
    events = stub.ListConnectionEvents(cs.ListConnectionEventsRequest(connection_id=conn.id),
                                       metadata=D, timeout=TIMEOUT).events
    assert [(e.type, e.message, e.actor_organization_id) for e in events] == [
        (CREATED, text, source.id)]

    # Once active, it no longer expires; the message stays the latest invitation's.
    activated = stub.ActivateConnection(cs.ActivateConnectionRequest(connection_id=conn.id),
                                        metadata=D, timeout=TIMEOUT).connection
    assert (activated.state, activated.invitation_message) == (A, text)
    assert not activated.HasField("expire_time")

    # A reactivation is a new invitation, with a message of its own (checked as on create)...
    stub.DeactivateConnection(cs.DeactivateConnectionRequest(connection_id=conn.id),
                              metadata=S, timeout=TIMEOUT)
    reactivate = cs.ReactivateConnectionRequest(connection_id=conn.id, message="Again\x1b[0m")
    refused_message(lambda: stub.ReactivateConnection(reactivate, metadata=S, timeout=TIMEOUT))
    longest = "y" * 1000
    reactivate.message = f"\n{longest}\t "
    again = stub.ReactivateConnection(reactivate, metadata=S, timeout=TIMEOUT).connection
    assert (again.state, again.invitation_message) == (P, longest)
    assert lifetime_ns(again, again.update_time) == DEFAULT_PENDING_LIFETIME_NS
    seen = stub.GetConnection(cs.GetConnectionRequest(connection_id=conn.id), metadata=D,
                              timeout=TIMEOUT).connection
    assert seen.invitation_message == longest

    # ...and a reactivation without one leaves the connection without a message.
    stub.DeactivateConnection(cs.DeactivateConnectionRequest(connection_id=conn.id),
                              metadata=D, timeout=TIMEOUT)
    silent = stub.ReactivateConnection(cs.ReactivateConnectionRequest(connection_id=conn.id),
                                       metadata=S, timeout=TIMEOUT).connection
    assert (silent.state, silent.invitation_message) == (P, "")

    # The history keeps each invitation's message, on CREATED and REACTIVATED events only.
    request = cs.ListConnectionEventsRequest(connection_id=conn.id)
    history = stub.ListConnectionEvents(request, metadata=D, timeout=TIMEOUT).events
    assert stub.ListConnectionEvents(request, metadata=S, timeout=TIMEOUT).events == history
    assert [(e.type, e.message) for e in history] == [
        (CREATED, text), (ACTIVATED, ""), (DEACTIVATED, ""), (REACTIVATED, longest),
        (DEACTIVATED, ""), (REACTIVATED, "")]


def test_pending_connections_expire(tmp_path):
    # A server of its own, on which a pending connection waits two seconds for its destination.
    srv = new_server(tmp_path, "--pending-expiry", "2s")
    source, destination = srv.orgs
    other = srv.new_org("Expiry Other Source")
    S, D = source.auth, destination.auth
    P, A, I = (res.CONNECTION_STATE_PENDING, res.CONNECTION_STATE_ACTIVE,
               res.CONNECTION_STATE_INACTIVE)
    try:
        srv.start()
        with grpc.insecure_channel(srv.target) as channel:
            stub = cs_grpc.ConnectionServiceStub(channel)

            def create(org, message=""):
                return stub.CreateConnection(
                    cs.CreateConnectionRequest(destination_organization_id=destination.id,
                                               data_types=[res.DATA_TYPE_INQUIRY],
                                               message=message),
                    metadata=org.auth, timeout=TIMEOUT).connection

            def get(conn_id):
                return stub.GetConnection(cs.GetConnectionRequest(connection_id=conn_id),
                                          metadata=D, timeout=TIMEOUT).connection

            def activate(conn_id):
                return stub.ActivateConnection(cs.ActivateConnectionRequest(connection_id=conn_id),
                                               metadata=D, timeout=TIMEOUT)

            # The destination watches; the expiry comes to it like any other change.
            pump = Pump(ResumableWatch(stub, D, from_beginning=True, idle_timeout=30))
            try:
                first = create(source, "Valid for two seconds")
                assert lifetime_ns(first, first.create_time) == 2 * 10**9

                # The service expires it at its first sweep after expire_time (sweeps run every
                # 10 s): an EXPIRED event that no organization made.
                created, expired = pump.events(2, timeout=30)
                assert summary([created, expired]) == [(1, CREATED), (2, EXPIRED)]
                e = expired.event
                assert (e.connection_id, e.from_state, e.to_state) == (first.id, P, I)
                assert (e.actor_organization_id, e.actor_role) == (
                    "", res.CONNECTION_ROLE_UNSPECIFIED)
                assert (e.actor_api_key_id, e.actor_api_key_display_name) == ("", "")
                assert (e.reason, e.message) == ("", "")
                assert e.create_time.ToNanoseconds() >= first.expire_time.ToNanoseconds()
                history = stub.ListConnectionEvents(
                    cs.ListConnectionEventsRequest(connection_id=first.id), metadata=S,
                    timeout=TIMEOUT).events
                assert list(history) == [created.event, expired.event]
                expired_conn = get(first.id)
                assert expired_conn.state == I
                assert not expired_conn.HasField("expire_time")
                # No longer PENDING: there is nothing to activate.
                code, info = refusal(lambda: activate(first.id))
                assert (code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION,
                                               "ERROR_REASON_INVALID_STATE_TRANSITION")

                # A sweep has just run (it wrote that event) and the next is about 10 s away. A
                # connection created now is past its expire_time 2 s later but still PENDING: the
                # destination's activation is refused for the expiry and changes nothing.
                second = create(other)
                time.sleep(max(0.0, second.expire_time.ToNanoseconds() / 1e9 - time.time()) + 0.3)
                code, info = refusal(lambda: activate(second.id))
                assert (code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION,
                                               "ERROR_REASON_CONNECTION_EXPIRED")
                assert get(second.id).etag == second.etag
                # The next sweep expires it.
                got = pump.events(2, timeout=30)
                assert [(m.event.connection_id, m.event.sequence, m.event.type) for m in got] == [
                    (second.id, 1, CREATED), (second.id, 2, EXPIRED)]

                # The source invites again, with a new lifetime; an activation in time succeeds.
                again = stub.ReactivateConnection(
                    cs.ReactivateConnectionRequest(connection_id=first.id, message="Second try"),
                    metadata=S, timeout=TIMEOUT).connection
                assert (again.state, again.invitation_message) == (P, "Second try")
                assert lifetime_ns(again, again.update_time) == 2 * 10**9
                activated = activate(first.id).connection
                assert activated.state == A
                assert not activated.HasField("expire_time")
                got = pump.events(2)
                assert summary(got) == [(3, REACTIVATED), (4, ACTIVATED)]
                assert got[0].event.message == "Second try"
            finally:
                pump.stop()
    finally:
        code = srv.stop() if srv.process else None
    assert code == 0, f"server exited {code} after SIGTERM:\n{srv.log()}"


# --- BatchCheckAccess, and the list's data_type filter ------------------------------------------

def grpc_code(number):
    """The grpc.StatusCode of a google.rpc.Status code."""
    return next(c for c in grpc.StatusCode if c.value[0] == number)


def test_batch_check_access(server, stub, access):
    dst = server.new_org("Batch Destination")
    s_both, s_account, s_pending, s_inactive = (
        server.new_org(f"Batch Source {n}") for n in ("Both", "Account", "Pending", "Inactive"))
    x, y = server.new_org("Batch Other Source"), server.new_org("Batch Other Destination")
    operator = (("authorization", f"Bearer {ACCESS_CHECK_TOKEN}"),)
    INQ, ACC, TXN = res.DATA_TYPE_INQUIRY, res.DATA_TYPE_ACCOUNT, res.DATA_TYPE_TRANSACTION
    U, P, A, I = (res.CONNECTION_STATE_UNSPECIFIED, res.CONNECTION_STATE_PENDING,
                  res.CONNECTION_STATE_ACTIVE, res.CONNECTION_STATE_INACTIVE)

    both = create_and_activate(stub, s_both, dst, (INQ, ACC))[0].connection.id
    account = create_and_activate(stub, s_account, dst, (ACC,))[0].connection.id
    pending = stub.CreateConnection(
        cs.CreateConnectionRequest(destination_organization_id=dst.id, data_types=[INQ]),
        metadata=s_pending.auth, timeout=TIMEOUT).connection.id
    inactive = create_and_activate(stub, s_inactive, dst, (INQ,))[0].connection.id
    stub.DeactivateConnection(cs.DeactivateConnectionRequest(connection_id=inactive),
                              metadata=dst.auth, timeout=TIMEOUT)
    # A pair the destination is no party to; its activation is the last change made.
    others = create_and_activate(stub, x, y, (INQ,))
    token = others[1].change_token

    def question(src, dst_id, data_type):
        return acc.CheckAccessRequest(source_organization_id=src.id,
                                      destination_organization_id=dst_id, data_type=data_type)

    checks = [
        question(s_both, dst.id, INQ),
        question(s_account, dst.id, INQ),       # a type the connection does not include
        question(x, y.id, INQ),                 # not the caller's pair: refused, alone
        question(s_account, dst.id, ACC),
        question(s_pending, dst.id, INQ),
        question(s_inactive, dst.id, INQ),
        question(dst, s_both.id, INQ),          # the other direction: no connection
        question(s_both, dst.id, res.DATA_TYPE_UNSPECIFIED),  # malformed: refused, alone
        question(s_both, dst.id, ACC),
        question(s_both, dst.id, INQ),          # asked twice, answered twice
    ]

    def batch(caller, items, at_least=token):
        return access.BatchCheckAccess(
            acc.BatchCheckAccessRequest(checks=items, at_least_change_token=at_least),
            metadata=caller, timeout=TIMEOUT)

    answer = batch(dst.auth, checks)
    assert answer.change_token
    assert len(answer.results) == len(checks)
    outcome = [r.WhichOneof("result") for r in answer.results]
    assert outcome == ["response"] * 2 + ["error"] + ["response"] * 4 + ["error"] + ["response"] * 2
    # Every answer reflects the one state the batch's change token names.
    assert {r.response.change_token for r in answer.results if r.HasField("response")} == {
        answer.change_token}
    assert [(r.response.allowed, r.response.connection_id, r.response.state)
            for r in answer.results if r.HasField("response")] == [
        (True, both, A), (False, account, A), (True, account, A), (False, pending, P),
        (False, inactive, I), (False, "", U), (True, both, A), (True, both, A)]

    # The item about another pair is refused in its own status, as CheckAccess refuses it.
    denied = answer.results[2].error
    assert grpc_code(denied.code) == grpc.StatusCode.PERMISSION_DENIED
    assert error_info(denied).reason == "ERROR_REASON_CALLER_NOT_PARTY"
    malformed = answer.results[7].error
    assert grpc_code(malformed.code) == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(malformed).reason == "ERROR_REASON_INVALID_ARGUMENT"
    assert violations(malformed) == ["data_type"]

    # Each result is what CheckAccess answers alone, item by item, in the request's order.
    for i, (item, result) in enumerate(zip(checks, answer.results)):
        single = acc.CheckAccessRequest()
        single.CopyFrom(item)
        single.at_least_change_token = answer.change_token
        if result.HasField("response"):
            alone = access.CheckAccess(single, metadata=dst.auth, timeout=TIMEOUT)
            assert (alone.allowed, alone.connection_id, alone.state) == (
                result.response.allowed, result.response.connection_id, result.response.state), i
        else:
            code, status = refused_status(
                lambda: access.CheckAccess(single, metadata=dst.auth, timeout=TIMEOUT))
            assert (code, status.message) == (grpc_code(result.error.code), result.error.message), i
            assert error_info(status) == error_info(result.error), i
            assert violations(status) == violations(result.error), i

    # The operator's access-check token may ask about any pair.
    by_operator = batch(operator, checks)
    assert [r.WhichOneof("result") for r in by_operator.results] == (
        outcome[:2] + ["response"] + outcome[3:])
    other_pair = by_operator.results[2].response
    assert (other_pair.allowed, other_pair.connection_id, other_pair.state) == (
        True, others[0].connection.id, A)
    for mine, theirs in zip(answer.results, by_operator.results):
        if mine.HasField("response"):
            assert (mine.response.allowed, mine.response.connection_id, mine.response.state) == (
                theirs.response.allowed, theirs.response.connection_id, theirs.response.state)

    # An item may not carry its own token (the batch has one): that item alone is refused.
    own_token = acc.CheckAccessRequest()
    own_token.CopyFrom(checks[0])
    own_token.at_least_change_token = token
    mixed = batch(dst.auth, [checks[0], own_token])
    assert mixed.results[0].response.allowed
    assert grpc_code(mixed.results[1].error.code) == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(mixed.results[1].error) == ["at_least_change_token"]

    # 1 to 1,000 checks; what concerns the whole call fails the whole call.
    assert len(batch(operator, [checks[0]] * 1000).results) == 1000
    for items in ([], [checks[0]] * 1001):
        code, status = refused_status(lambda: batch(operator, items))
        assert (code, error_info(status).reason) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                     "ERROR_REASON_INVALID_ARGUMENT")
        assert violations(status) == ["checks"]
    code, info = refusal(lambda: batch(dst.auth, checks, at_least=altered(token)))
    assert (code, info.reason) == (grpc.StatusCode.INVALID_ARGUMENT,
                                   "ERROR_REASON_INVALID_CHANGE_TOKEN")
    code, info = refusal(lambda: batch((), checks))
    assert (code, info.reason) == (grpc.StatusCode.UNAUTHENTICATED, "ERROR_REASON_API_KEY_MISSING")

    # ListConnections' data_type filter: with state ACTIVE and role DESTINATION, the connections
    # over which the destination may receive the type now, newest first; without a state, every
    # connection that includes it.
    def listed(org, **filters):
        return [c.id for c in stub.ListConnections(cs.ListConnectionsRequest(**filters),
                                                   metadata=org.auth, timeout=TIMEOUT).connections]

    DST, SRC = res.CONNECTION_ROLE_DESTINATION, res.CONNECTION_ROLE_SOURCE
    assert listed(dst, role=DST, state=A, data_type=INQ) == [both]
    assert listed(dst, role=DST, state=A, data_type=ACC) == [account, both]
    assert listed(dst, role=DST, state=A, data_type=TXN) == []
    assert listed(dst, role=DST, data_type=INQ) == [inactive, pending, both]
    assert listed(dst, role=DST) == [inactive, pending, account, both]
    assert listed(s_both, role=SRC, state=A, data_type=ACC) == [both]
    assert listed(s_account, role=SRC, state=A, data_type=INQ) == []
    # A data mover's two views agree: the list names exactly the sources the batch allows.
    sources = [s_both, s_account, s_pending, s_inactive, x]
    for data_type in (INQ, ACC, TXN):
        answers = batch(dst.auth, [question(s, dst.id, data_type) for s in sources]).results
        allowed = {s.id for s, r in zip(sources, answers) if r.response.allowed}
        page = stub.ListConnections(
            cs.ListConnectionsRequest(role=DST, state=A, data_type=data_type),
            metadata=dst.auth, timeout=TIMEOUT).connections
        assert {c.source_organization_id for c in page} == allowed, res.DataType.Name(data_type)


# --- Data types that change, and trusted partners -----------------------------------------------

CHANGED, PROPOSED, APPROVED, DECLINED = (
    res.CONNECTION_EVENT_TYPE_DATA_TYPES_CHANGED, res.CONNECTION_EVENT_TYPE_DATA_TYPES_PROPOSED,
    res.CONNECTION_EVENT_TYPE_DATA_TYPES_APPROVED, res.CONNECTION_EVENT_TYPE_DATA_TYPES_DECLINED)
INQ, VER, ACC, TXN = (res.DATA_TYPE_INQUIRY, res.DATA_TYPE_VERIFICATION, res.DATA_TYPE_ACCOUNT,
                      res.DATA_TYPE_TRANSACTION)


def sets(event):
    """A DATA_TYPES_* event's four sets: allowed and pending, before and after."""
    return (list(event.previous_data_types), list(event.previous_pending_data_types),
            list(event.data_types), list(event.pending_data_types))


def types_of(conn):
    """A connection's state, allowed data types and pending data types."""
    return conn.state, list(conn.data_types), list(conn.pending_data_types)


class Pair:
    """A connection's two parties and the calls the data types tests make on it."""

    def __init__(self, stub, access, source, destination):
        self.stub, self.access = stub, access
        self.source, self.destination = source, destination
        self.S, self.D = source.auth, destination.auth
        self.conn_id = ""

    def update(self, org, data_types, **fields):
        return self.stub.UpdateConnectionDataTypes(
            cs.UpdateConnectionDataTypesRequest(connection_id=self.conn_id,
                                                data_types=list(data_types), **fields),
            metadata=org, timeout=TIMEOUT)

    def approve(self, org, **fields):
        return self.stub.ApproveDataTypes(
            cs.ApproveDataTypesRequest(connection_id=self.conn_id, **fields),
            metadata=org, timeout=TIMEOUT)

    def decline(self, org, **fields):
        return self.stub.DeclineDataTypes(
            cs.DeclineDataTypesRequest(connection_id=self.conn_id, **fields),
            metadata=org, timeout=TIMEOUT)

    def get(self):
        return self.stub.GetConnection(cs.GetConnectionRequest(connection_id=self.conn_id),
                                       metadata=self.D, timeout=TIMEOUT).connection

    def history(self):
        request = cs.ListConnectionEventsRequest(connection_id=self.conn_id)
        events = self.stub.ListConnectionEvents(request, metadata=self.D, timeout=TIMEOUT).events
        assert self.stub.ListConnectionEvents(request, metadata=self.S, timeout=TIMEOUT).events == events
        return list(events)

    def allowed(self, data_type, token):
        """CheckAccess (by the destination) with a write's token; the connection must be ACTIVE."""
        answer = self.access.CheckAccess(
            acc.CheckAccessRequest(source_organization_id=self.source.id,
                                   destination_organization_id=self.destination.id,
                                   data_type=data_type, at_least_change_token=token),
            metadata=self.D, timeout=TIMEOUT)
        assert answer.connection_id == self.conn_id
        return answer.allowed


def test_data_types_proposed_approved_declined_and_withdrawn(server, stub, access):
    pair = Pair(stub, access, server.new_org("Types Source"), server.new_org("Types Destination"))
    S, D = pair.S, pair.D
    A = res.CONNECTION_STATE_ACTIVE
    SRC, DST = res.CONNECTION_ROLE_SOURCE, res.CONNECTION_ROLE_DESTINATION
    created, activated = create_and_activate(stub, pair.source, pair.destination, (INQ, ACC))
    pair.conn_id = created.connection.id

    # The destination watches from the activation on: every change of the data types comes to it.
    pump = Pump(ResumableWatch(stub, D, after_change_token=activated.change_token, idle_timeout=30))
    try:
        # The source proposes adding TRANSACTION (the full new set, conditional on the etag it
        # read): the connection stays ACTIVE, TRANSACTION waits for the destination and is not
        # allowed yet. A retry with the same request_id returns the same response.
        propose = cs.UpdateConnectionDataTypesRequest(
            connection_id=pair.conn_id, data_types=[TXN, INQ, ACC, TXN],
            etag=activated.connection.etag, request_id=str(uuid.uuid4()))
        proposed = stub.UpdateConnectionDataTypes(propose, metadata=S, timeout=TIMEOUT)
        assert types_of(proposed.connection) == (A, [INQ, ACC], [TXN])
        assert proposed.connection.etag != activated.connection.etag
        again = stub.UpdateConnectionDataTypes(propose, metadata=S, timeout=TIMEOUT)
        assert again.SerializeToString() == proposed.SerializeToString()
        assert [pair.allowed(t, proposed.change_token) for t in (INQ, ACC, TXN)] == [
            True, True, False]
        # Nor does the list name it among the connections that carry TRANSACTION.
        inbound = stub.ListConnections(
            cs.ListConnectionsRequest(role=DST, state=A, data_type=TXN), metadata=D,
            timeout=TIMEOUT).connections
        assert list(inbound) == []

        # The destination reads what waits; only it may approve.
        seen = pair.get()
        assert types_of(seen) == (A, [INQ, ACC], [TXN])
        code, info = refusal(lambda: pair.approve(S))
        assert (code, info.reason) == (grpc.StatusCode.PERMISSION_DENIED,
                                       "ERROR_REASON_CALLER_NOT_DESTINATION")
        # It approves with the etag it read: TRANSACTION is allowed from the approval's token on.
        approved = pair.approve(D, etag=seen.etag, request_id=str(uuid.uuid4()))
        assert types_of(approved.connection) == (A, [INQ, ACC, TXN], [])
        assert pair.allowed(TXN, approved.change_token)

        # Nothing waits any more: another approval, or a decline, is refused with a reason.
        for call in (lambda: pair.approve(D), lambda: pair.decline(D, reason="late")):
            code, info = refusal(call)
            assert (code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION,
                                           "ERROR_REASON_NO_PENDING_DATA_TYPES")

        # The destination narrows at once (removing needs no consent): DATA_TYPES_CHANGED.
        narrowed = pair.update(D, [INQ, ACC])
        assert types_of(narrowed.connection) == (A, [INQ, ACC], [])
        assert not pair.allowed(TXN, narrowed.change_token)

        # The source proposes VERIFICATION in place of ACCOUNT: ACCOUNT stops at once,
        # VERIFICATION waits; the destination declines it, with a reason.
        swapped = pair.update(S, [INQ, VER])
        assert types_of(swapped.connection) == (A, [INQ], [VER])
        assert [pair.allowed(t, swapped.change_token) for t in (INQ, VER, ACC)] == [
            True, False, False]
        declined = pair.decline(D, etag=swapped.connection.etag, reason="not in our contract")
        assert types_of(declined.connection) == (A, [INQ], [])
        assert not pair.allowed(VER, declined.change_token)

        # A proposal withdrawn by proposing the current set again: DATA_TYPES_CHANGED.
        readded = pair.update(S, [INQ, ACC])
        assert types_of(readded.connection) == (A, [INQ], [ACC])
        withdrawn = pair.update(S, [INQ])
        assert types_of(withdrawn.connection) == (A, [INQ], [])

        # The watch saw each change once, in order, with the sets before and after and the token
        # its write returned; exactly what the history holds.
        writes = [proposed, approved, narrowed, swapped, declined, readded, withdrawn]
        got = pump.events(len(writes))
        assert summary(got) == [(3, PROPOSED), (4, APPROVED), (5, CHANGED), (6, PROPOSED),
                                (7, DECLINED), (8, PROPOSED), (9, CHANGED)]
        assert [m.change_token for m in got] == [w.change_token for w in writes]
        assert [sets(m.event) for m in got] == [
            ([INQ, ACC], [], [INQ, ACC], [TXN]),
            ([INQ, ACC], [TXN], [INQ, ACC, TXN], []),
            ([INQ, ACC, TXN], [], [INQ, ACC], []),
            ([INQ, ACC], [], [INQ], [VER]),
            ([INQ], [VER], [INQ], []),  # DECLINED: previous_pending holds the declined types
            ([INQ], [], [INQ], [ACC]),
            ([INQ], [ACC], [INQ], []),
        ]
        assert [(m.event.actor_role, m.event.from_state, m.event.to_state, m.event.reason)
                for m in got] == [
            (SRC, A, A, ""), (DST, A, A, ""), (DST, A, A, ""), (SRC, A, A, ""),
            (DST, A, A, "not in our contract"), (SRC, A, A, ""), (SRC, A, A, "")]
        history = pair.history()
        assert [m.event for m in got] == history[2:]
        # The lifecycle events carry no sets.
        assert [sets(e) for e in history[:2]] == [([], [], [], [])] * 2
        assert types_of(pair.get()) == (A, [INQ], [])
    finally:
        pump.stop()


def test_data_types_refusals_and_inactive_connections(server, stub, access):
    pair = Pair(stub, access, server.new_org("Types Refusal Source"),
                server.new_org("Types Refusal Destination"))
    S, D = pair.S, pair.D
    outsider = server.new_org("Types Outsider")
    P, A, I = (res.CONNECTION_STATE_PENDING, res.CONNECTION_STATE_ACTIVE,
               res.CONNECTION_STATE_INACTIVE)
    pair.conn_id = stub.CreateConnection(
        cs.CreateConnectionRequest(destination_organization_id=pair.destination.id,
                                   data_types=[INQ]),
        metadata=S, timeout=TIMEOUT).connection.id

    # Nothing can be approved on a PENDING connection.
    code, info = refusal(lambda: pair.approve(D))
    assert (code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION,
                                   "ERROR_REASON_INVALID_STATE_TRANSITION")
    assert info.metadata["current_state"] == "CONNECTION_STATE_PENDING"
    # Malformed sets, and an outsider.
    for bad in ([], [res.DATA_TYPE_UNSPECIFIED]):
        code, status = refused_status(lambda: pair.update(S, bad))
        assert (code, error_info(status).reason) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                     "ERROR_REASON_INVALID_ARGUMENT")
        assert violations(status) == ["data_types"]
    code, info = refusal(lambda: pair.update(outsider.auth, [INQ, ACC]))
    assert (code, info.reason) == (grpc.StatusCode.NOT_FOUND, "ERROR_REASON_CONNECTION_NOT_FOUND")

    # The source replaces the set of a PENDING connection (nothing waits); the activation
    # consents to it.
    changed = pair.update(S, [ACC, INQ])
    assert types_of(changed.connection) == (P, [INQ, ACC], [])
    activated = stub.ActivateConnection(cs.ActivateConnectionRequest(connection_id=pair.conn_id),
                                        metadata=D, timeout=TIMEOUT)
    assert pair.allowed(ACC, activated.change_token)
    etag = activated.connection.etag

    # What changes nothing, and what would leave nothing allowed, is refused and changes nothing.
    code, info = refusal(lambda: pair.update(S, [ACC, INQ]))
    assert (code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION,
                                   "ERROR_REASON_DATA_TYPES_UNCHANGED")
    code, info = refusal(lambda: pair.update(S, [TXN, VER]))
    assert (code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION,
                                   "ERROR_REASON_NO_DATA_TYPES_LEFT")
    # The destination may only remove types.
    code, info = refusal(lambda: pair.update(D, [INQ, ACC, TXN]))
    assert (code, info.reason) == (grpc.StatusCode.PERMISSION_DENIED,
                                   "ERROR_REASON_CALLER_NOT_SOURCE")
    assert pair.get().etag == etag

    # The destination read a proposal; the source replaced it meanwhile. The approval with the
    # etag read is refused, so the destination never approves types it did not see.
    pair.update(S, [INQ, ACC, TXN])
    read = pair.get()
    assert types_of(read) == (A, [INQ, ACC], [TXN])
    replaced = pair.update(S, [INQ, ACC, VER])
    assert types_of(replaced.connection) == (A, [INQ, ACC], [VER])
    code, info = refusal(lambda: pair.approve(D, etag=read.etag))
    assert (code, info.reason) == (grpc.StatusCode.ABORTED, "ERROR_REASON_ETAG_MISMATCH")
    assert types_of(pair.get()) == (A, [INQ, ACC], [VER])
    assert not pair.allowed(TXN, replaced.change_token)

    # A deactivation drops what waits; on the INACTIVE connection the source replaces the set (a
    # set without any current type is fine there), and the next activation consents to it.
    deactivated = stub.DeactivateConnection(
        cs.DeactivateConnectionRequest(connection_id=pair.conn_id), metadata=D, timeout=TIMEOUT)
    assert types_of(deactivated.connection) == (I, [INQ, ACC], [])
    code, info = refusal(lambda: pair.decline(D))
    assert (code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION,
                                   "ERROR_REASON_INVALID_STATE_TRANSITION")
    assert info.metadata["current_state"] == "CONNECTION_STATE_INACTIVE"
    assert types_of(pair.update(S, [TXN]).connection) == (I, [TXN], [])
    stub.ReactivateConnection(cs.ReactivateConnectionRequest(connection_id=pair.conn_id),
                              metadata=S, timeout=TIMEOUT)
    token = stub.ActivateConnection(cs.ActivateConnectionRequest(connection_id=pair.conn_id),
                                    metadata=D, timeout=TIMEOUT).change_token
    assert [pair.allowed(t, token) for t in (TXN, INQ)] == [True, False]

    history = pair.history()
    assert [(e.type, e.from_state, e.to_state) for e in history] == [
        (CREATED, res.CONNECTION_STATE_UNSPECIFIED, P), (CHANGED, P, P), (ACTIVATED, P, A),
        (PROPOSED, A, A), (PROPOSED, A, A), (DEACTIVATED, A, I), (CHANGED, I, I),
        (REACTIVATED, I, P), (ACTIVATED, P, A)]
    assert [sets(e) for e in history if e.type in (CHANGED, PROPOSED)] == [
        ([INQ], [], [INQ, ACC], []),
        ([INQ, ACC], [], [INQ, ACC], [TXN]),
        ([INQ, ACC], [TXN], [INQ, ACC], [VER]),  # a new proposal replaces the one waiting
        ([INQ, ACC], [], [TXN], []),
    ]


def test_trusted_partner_connection_is_active_at_once(server, stub, access, channel):
    orgs = org_grpc.OrganizationServiceStub(channel)
    destination = server.new_org("Policy Destination")
    trusted, also_trusted = server.new_org("Trusted Source"), server.new_org("Also Trusted")
    untrusted = server.new_org("Untrusted Source")
    D = destination.auth
    P, A = res.CONNECTION_STATE_PENDING, res.CONNECTION_STATE_ACTIVE
    DST = res.CONNECTION_ROLE_DESTINATION

    def policy():
        return list(orgs.GetOrganizationPolicy(org_pb.GetOrganizationPolicyRequest(), metadata=D,
                                               timeout=TIMEOUT).policy.auto_activate_source_ids)

    def trust(*ids):
        request = org_pb.UpdateOrganizationPolicyRequest(
            policy=res.OrganizationPolicy(auto_activate_source_ids=list(ids)))
        return list(orgs.UpdateOrganizationPolicy(request, metadata=D,
                                                  timeout=TIMEOUT).policy.auto_activate_source_ids)

    # No one is trusted at first. Itself, a malformed ID or an unknown organization is refused,
    # and a refusal keeps nothing.
    assert policy() == []
    for ids, expected in [
        ((destination.id,), (grpc.StatusCode.INVALID_ARGUMENT, "ERROR_REASON_INVALID_ARGUMENT")),
        (("not-a-uuid",), (grpc.StatusCode.INVALID_ARGUMENT, "ERROR_REASON_INVALID_ARGUMENT")),
        ((trusted.id, str(uuid.uuid4())),
         (grpc.StatusCode.NOT_FOUND, "ERROR_REASON_ORGANIZATION_NOT_FOUND")),
    ]:
        code, status = refused_status(lambda: trust(*ids))
        assert (code, error_info(status).reason) == expected, ids
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert violations(status) == ["policy.auto_activate_source_ids"]
    assert policy() == []
    # Duplicates collapse; the list comes back sorted.
    expected = sorted([trusted.id, also_trusted.id])
    assert trust(also_trusted.id, trusted.id, also_trusted.id) == expected
    assert policy() == expected

    pump = Pump(ResumableWatch(stub, D, from_beginning=True, idle_timeout=30))
    try:
        # A trusted source's connection is ACTIVE at once; the call's token holds the activation,
        # and a retry with the same request_id returns the activated connection.
        create = cs.CreateConnectionRequest(destination_organization_id=destination.id,
                                            data_types=[INQ], request_id=str(uuid.uuid4()))
        created = stub.CreateConnection(create, metadata=trusted.auth, timeout=TIMEOUT)
        conn = created.connection
        assert conn.state == A
        assert conn.HasField("activate_time") and not conn.HasField("expire_time")
        assert stub.CreateConnection(create, metadata=trusted.auth,
                                     timeout=TIMEOUT).SerializeToString() == created.SerializeToString()
        answer = access.CheckAccess(
            acc.CheckAccessRequest(source_organization_id=trusted.id,
                                   destination_organization_id=destination.id, data_type=INQ,
                                   at_least_change_token=created.change_token),
            metadata=trusted.auth, timeout=TIMEOUT)
        assert (answer.allowed, answer.connection_id, answer.state) == (True, conn.id, A)

        # CREATED by the source, then ACTIVATED by the destination's policy: the destination's
        # role, no API key; its token is the one the create returned.
        first = pump.events(2)
        assert summary(first) == [(1, CREATED), (2, ACTIVATED)]
        made, activation = first[0].event, first[1].event
        assert (made.actor_organization_id, made.by_policy) == (trusted.id, False)
        assert (activation.connection_id, activation.from_state, activation.to_state) == (conn.id, P, A)
        assert (activation.by_policy, activation.actor_organization_id, activation.actor_role,
                activation.actor_api_key_id, activation.actor_api_key_display_name) == (
            True, destination.id, DST, "", "")
        assert first[1].change_token == created.change_token
        events = stub.ListConnectionEvents(cs.ListConnectionEventsRequest(connection_id=conn.id),
                                           metadata=trusted.auth, timeout=TIMEOUT).events
        assert list(events) == [made, activation]

        # A source the destination does not trust waits for it as before.
        waiting = stub.CreateConnection(
            cs.CreateConnectionRequest(destination_organization_id=destination.id,
                                       data_types=[INQ]),
            metadata=untrusted.auth, timeout=TIMEOUT).connection
        assert waiting.state == P
        stub.ActivateConnection(cs.ActivateConnectionRequest(connection_id=waiting.id),
                                metadata=D, timeout=TIMEOUT)
        by_hand = pump.events(2)
        assert [(m.event.connection_id, m.event.type, m.event.by_policy) for m in by_hand] == [
            (waiting.id, CREATED, False), (waiting.id, ACTIVATED, False)]
        assert by_hand[1].event.actor_api_key_display_name == "python tests"

        # A trusted source's reactivation is activated by the policy too.
        stub.DeactivateConnection(cs.DeactivateConnectionRequest(connection_id=conn.id),
                                  metadata=trusted.auth, timeout=TIMEOUT)
        reactivated = stub.ReactivateConnection(
            cs.ReactivateConnectionRequest(connection_id=conn.id, message="Back again"),
            metadata=trusted.auth, timeout=TIMEOUT)
        assert reactivated.connection.state == A
        back = pump.events(3)
        assert summary(back) == [(3, DEACTIVATED), (4, REACTIVATED), (5, ACTIVATED)]
        assert back[2].event.by_policy and back[2].change_token == reactivated.change_token

        # Removing the source changes no existing connection; its next invitation waits.
        assert trust(also_trusted.id) == [also_trusted.id]
        assert stub.GetConnection(cs.GetConnectionRequest(connection_id=conn.id), metadata=D,
                                  timeout=TIMEOUT).connection.state == A
        stub.DeactivateConnection(cs.DeactivateConnectionRequest(connection_id=conn.id),
                                  metadata=D, timeout=TIMEOUT)
        invited = stub.ReactivateConnection(cs.ReactivateConnectionRequest(connection_id=conn.id),
                                            metadata=trusted.auth, timeout=TIMEOUT).connection
        assert invited.state == P
        assert summary(pump.events(2)) == [(6, DEACTIVATED), (7, REACTIVATED)]
    finally:
        pump.stop()
