"""End to end: the generated Python stubs against the real `connections` binary.

The binary is not built here: CONNECTIONS_BIN, or ../../target/debug/connections (cargo build).
Everything runs on 127.0.0.1, in a temporary directory, with every wait bounded.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from connections.v1 import connection_service_pb2 as cs
from connections.v1 import connection_service_pb2_grpc as cs_grpc
from connections.v1 import organization_service_pb2 as org_pb
from connections.v1 import organization_service_pb2_grpc as org_grpc
from connections.v1 import resources_pb2 as res

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.abspath(
    os.environ.get("CONNECTIONS_BIN") or os.path.join(HERE, "..", "..", "target", "debug", "connections")
)
TIMEOUT = 10  # seconds, for every RPC and CLI call


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


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    if not os.access(BIN, os.X_OK):
        pytest.fail(f"no connections binary at {BIN}: run `cargo build --bin connections` "
                    "in the repository root, or set CONNECTIONS_BIN")
    tmp = tmp_path_factory.mktemp("connections")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTIONS_")}
    env["CONNECTIONS_DATABASE_URL"] = f"sqlite://{tmp}/c.db?mode=rwc"
    srv = Server(target=f"127.0.0.1:{free_port()}", env=env, log_path=str(tmp / "server.log"))
    srv.orgs = [srv.new_org("Acme Bank"), srv.new_org("Beta Lending")]

    with open(srv.log_path, "wb") as log:
        process = subprocess.Popen([BIN, "serve", "--listen", srv.target], env=env,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_serving(process, srv.target, srv.orgs[0], srv)
        yield srv
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
            pytest.fail(f"server did not stop within 30s of SIGTERM:\n{srv.log()}")
    assert code == 0, f"server exited {code} after SIGTERM:\n{srv.log()}"


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.target) as channel:
        yield cs_grpc.ConnectionServiceStub(channel)


def refusal(call):
    """Runs call(), which must fail; returns (status code, google.rpc.ErrorInfo)."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    err = caught.value
    status = rpc_status.from_call(err)
    assert status is not None, f"no status details on {err.code()}: {err.details()}"
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    assert len(infos) == 1, f"expected one ErrorInfo, got {status.details}"
    assert infos[0].domain == "connections.v1"
    return err.code(), infos[0]


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
    assert "PERMISSION_DENIED ERROR_REASON_CALLER_NOT_DESTINATION (connections.v1)" in out
    assert "activated by the destination: CONNECTION_STATE_ACTIVE" in out
    assert "#2 CONNECTION_EVENT_TYPE_ACTIVATED" in out
