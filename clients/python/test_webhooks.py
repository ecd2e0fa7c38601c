"""End to end: webhook deliveries of the real `connections` binary, received by an HTTP server on
127.0.0.1 and verified with the official Standard Webhooks library (`standardwebhooks`).

The server runs with --webhook-allow-private-addresses (CONNECTIONS_WEBHOOK_ALLOW_PRIVATE_ADDRESSES,
set for every test server by new_server) so that it accepts http://127.0.0.1 endpoints, and with a
1 s retry schedule so that a failed delivery is repeated within the test. Every wait is bounded.
"""

import base64
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from google.protobuf import json_format
from standardwebhooks import Webhook, WebhookVerificationError

from connections.v1 import connection_service_pb2 as cs
from connections.v1 import connection_service_pb2_grpc as cs_grpc
from connections.v1 import organization_service_pb2 as org_pb
from connections.v1 import organization_service_pb2_grpc as org_grpc
from connections.v1 import resources_pb2 as res
from connections.v1 import webhook_service_pb2 as wh
from connections.v1 import webhook_service_pb2_grpc as wh_grpc
from test_lifecycle import TIMEOUT, new_server

DELIVERY_TIMEOUT = 20  # seconds to wait for a delivery (they usually take about one)
# The deliverer re-reads its endpoints (and their secrets) about once a second.
ENDPOINT_REFRESH = 1.2


@dataclass
class Delivery:
    """One request the receiver got, and what it answered."""
    method: str
    path: str
    headers: dict  # lower-case names
    body: bytes  # exactly as received: what the signature covers
    status: int

    @property
    def id(self):
        return self.headers.get("webhook-id")

    def json(self):
        return json.loads(self.body)


class Receiver:
    """An HTTP/1.1 server on 127.0.0.1 that records every request. Each endpoint gets a path of its
    own; a path answers 204 unless statuses were queued for it with fail_next()."""

    def __init__(self):
        self._cond = threading.Condition()
        self._deliveries = []
        self._answers = {}  # path -> statuses to answer next, in order
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with receiver._cond:
                    queued = receiver._answers.get(self.path)
                    status = queued.pop(0) if queued else 204
                    receiver._deliveries.append(Delivery(
                        self.command, self.path,
                        {k.lower(): v for k, v in self.headers.items()}, body, status))
                    receiver._cond.notify_all()
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def new_path(self):
        return f"/hooks/{uuid.uuid4()}"

    def url(self, path):
        return f"http://127.0.0.1:{self._httpd.server_port}{path}"

    def fail_next(self, path, *statuses):
        """The next requests to path are answered with these statuses, then 204 again."""
        with self._cond:
            self._answers.setdefault(path, []).extend(statuses)

    def received(self, path):
        with self._cond:
            return [d for d in self._deliveries if d.path == path]

    def wait_for(self, path, count, timeout=DELIVERY_TIMEOUT):
        """The first `count` requests to path, once they have arrived (bounded)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [d for d in self._deliveries if d.path == path]
                if len(got) >= count:
                    return got[:count]
                left = deadline - time.monotonic()
                if left <= 0:
                    summary = [(d.id, d.json().get("type"), d.status) for d in got]
                    pytest.fail(f"{len(got)} of {count} deliveries to {path} within {timeout}s: "
                                f"{summary}")
                self._cond.wait(left)

    def close(self):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # Failed deliveries are tried again after 1 s (plus up to 20%), not 5 s, 5 min, ...
    srv = new_server(tmp_path_factory.mktemp("webhooks"),
                     env={"CONNECTIONS_WEBHOOK_RETRY_SCHEDULE": "1s,1s,1s"})
    try:
        srv.start()
        yield srv
    finally:
        code = srv.stop() if srv.process else None
    assert code == 0, f"server exited {code} after SIGTERM:\n{srv.log()}"


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.target) as channel:
        yield channel


@pytest.fixture
def webhooks(channel):
    return wh_grpc.WebhookServiceStub(channel)


@pytest.fixture
def stub(channel):
    return cs_grpc.ConnectionServiceStub(channel)


@pytest.fixture
def pair(server):
    """A (source, destination) pair of its own: a pair holds one connection."""
    tag = uuid.uuid4().hex[:8]
    return server.new_org(f"Source {tag}"), server.new_org(f"Destination {tag}")


def create_endpoint(webhooks, org, receiver, **fields):
    path = receiver.new_path()
    created = webhooks.CreateWebhookEndpoint(
        wh.CreateWebhookEndpointRequest(url=receiver.url(path), **fields),
        metadata=org.auth, timeout=TIMEOUT)
    assert created.endpoint.url == receiver.url(path)
    assert created.endpoint.organization_id == org.id
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", created.secret), created.secret
    assert len(base64.b64decode(created.secret[len("whsec_"):])) == 32
    return created.endpoint, created.secret, path


def create_and_activate(stub, source, destination):
    """Creates a connection (source) and activates it (destination); returns both responses."""
    created = stub.CreateConnection(
        cs.CreateConnectionRequest(destination_organization_id=destination.id,
                                   data_types=[res.DATA_TYPE_INQUIRY],
                                   request_id=str(uuid.uuid4())),
        metadata=source.auth, timeout=TIMEOUT)
    activated = stub.ActivateConnection(
        cs.ActivateConnectionRequest(connection_id=created.connection.id),
        metadata=destination.auth, timeout=TIMEOUT)
    return created, activated


def history(stub, org, connection_id):
    return list(stub.ListConnectionEvents(cs.ListConnectionEventsRequest(connection_id=connection_id),
                                          metadata=org.auth, timeout=TIMEOUT).events)


def recorded_attempts(webhooks, org, endpoint_id, count, timeout=DELIVERY_TIMEOUT):
    """ListWebhookDeliveries, oldest first, once it holds `count` attempts: the server records an
    attempt just after the receiver answers it (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        listed = webhooks.ListWebhookDeliveries(
            wh.ListWebhookDeliveriesRequest(endpoint_id=endpoint_id),
            metadata=org.auth, timeout=TIMEOUT).deliveries
        if len(listed) >= count or time.monotonic() > deadline:
            return list(reversed(listed))
        time.sleep(0.1)


def event_type(event):
    """CONNECTION_EVENT_TYPE_ACTIVATED -> "connection.activated"."""
    name = res.ConnectionEventType.Name(event.type)
    return "connection." + name.removeprefix("CONNECTION_EVENT_TYPE_").lower()


def signatures(delivery):
    return delivery.headers["webhook-signature"].split(" ")


def assert_proto3_json(value, message_type):
    """value is `message_type` in the proto3 JSON mapping, with the lowerCamelCase field names
    printers use; returns it parsed (strictly: an unknown field name fails)."""
    names = {f.json_name for f in message_type.DESCRIPTOR.fields}
    assert set(value) <= names, f"not lowerCamelCase proto3 JSON names: {set(value) - names}"
    return json_format.ParseDict(value, message_type())


def test_deliveries_are_signed_and_in_order(webhooks, stub, receiver, pair):
    source, destination = pair
    endpoint, secret, path = create_endpoint(webhooks, source, receiver, description="tests")
    # The destination has an endpoint too: both parties receive the connection's events.
    _, other_secret, other_path = create_endpoint(webhooks, destination, receiver)

    before = int(time.time())
    created, activated = create_and_activate(stub, source, destination)
    connection_id = created.connection.id
    deliveries = receiver.wait_for(path, 2)
    events = history(stub, source, connection_id)
    assert [e.type for e in events] == [res.CONNECTION_EVENT_TYPE_CREATED,
                                        res.CONNECTION_EVENT_TYPE_ACTIVATED]

    # Each is verified by the official library with the endpoint's secret, and the webhook-id
    # of each is the ID of the event, in the connection's order.
    verifier = Webhook(secret)
    bodies = [verifier.verify(d.body, d.headers) for d in deliveries]
    assert [d.id for d in deliveries] == [e.id for e in events]
    assert [b["type"] for b in bodies] == ["connection.created", "connection.activated"]
    assert [b["type"] for b in bodies] == [event_type(e) for e in events]

    writes = [created, activated]
    for d, body, event, write in zip(deliveries, bodies, events, writes):
        assert d.method == "POST"
        assert d.headers["content-type"] == "application/json"
        assert before - 5 <= int(d.headers["webhook-timestamp"]) <= time.time() + 5
        assert len(signatures(d)) == 1 and signatures(d)[0].startswith("v1,")
        assert set(body) == {"type", "timestamp", "data"}
        assert set(body["data"]) == {"event", "connection", "change_token"}
        # The event as ListConnectionEvents returns it, and the connection as the write left it,
        # in the proto3 JSON mapping (exactly what MessageToDict prints).
        assert assert_proto3_json(body["data"]["event"], res.ConnectionEvent) == event
        assert body["data"]["event"] == json_format.MessageToDict(event)
        assert assert_proto3_json(body["data"]["connection"], res.Connection) == write.connection
        assert body["data"]["connection"] == json_format.MessageToDict(write.connection)
        assert body["timestamp"] == body["data"]["event"]["createTime"]
        assert body["data"]["change_token"] == write.change_token
    assert bodies[0]["data"]["event"]["connectionId"] == connection_id
    assert [b["data"]["event"]["sequence"] for b in bodies] == ["1", "2"]  # int64: a string

    # The destination's endpoint gets the same events, with the same IDs and bodies, signed with
    # its own secret (which is not the source's).
    theirs = receiver.wait_for(other_path, 2)
    assert [d.id for d in theirs] == [e.id for e in events]
    assert [d.body for d in theirs] == [d.body for d in deliveries]
    for d in theirs:
        Webhook(other_secret).verify(d.body, d.headers)
        with pytest.raises(WebhookVerificationError):
            verifier.verify(d.body, d.headers)

    # The server recorded both attempts as delivered, with our status.
    listed = recorded_attempts(webhooks, source, endpoint.id, 2)
    assert [(a.event_id, a.attempt, a.http_status, a.outcome) for a in listed] == [
        (e.id, 1, 204, wh.WEBHOOK_DELIVERY_OUTCOME_SUCCEEDED) for e in events]
    assert [a.change_token for a in listed] == [w.change_token for w in writes]


def test_tampered_delivery_fails_verification(webhooks, stub, receiver, pair):
    source, destination = pair
    _, secret, path = create_endpoint(webhooks, source, receiver)
    create_and_activate(stub, source, destination)
    first, second = receiver.wait_for(path, 2)
    verifier = Webhook(secret)
    verifier.verify(first.body, first.headers)

    def refused(body=first.body, **headers):
        with pytest.raises(WebhookVerificationError):
            verifier.verify(body, {**first.headers, **headers})

    # A changed body: another type, a changed byte, or the same JSON re-serialized (the signature
    # covers the bytes as sent: verify the raw body before parsing it).
    refused(first.body.replace(b'"connection.created"', b'"connection.deleted"'))
    refused(first.body.replace(b"CONNECTION_STATE_PENDING", b"CONNECTION_STATE_ACTIVE"))
    refused(first.body + b"\n")
    refused(json.dumps(first.json(), indent=1).encode())
    # Another delivery's body or ID under this signature.
    refused(second.body)
    refused(**{"webhook-id": second.id})
    # Another timestamp (one second later, still within the tolerance).
    refused(**{"webhook-timestamp": str(int(first.headers["webhook-timestamp"]) + 1)})
    # A missing or foreign signature.
    refused(**{"webhook-signature": ""})
    refused(**{"webhook-signature": second.headers["webhook-signature"]})
    # Another secret.
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"\x01" * 32).decode()).verify(first.body, first.headers)
    # The untouched delivery still verifies.
    assert verifier.verify(first.body, first.headers) == first.json()


def test_rotated_secret_signs_beside_the_previous_one(webhooks, stub, receiver, pair):
    source, destination = pair
    endpoint, old_secret, path = create_endpoint(webhooks, source, receiver)
    created, _ = create_and_activate(stub, source, destination)
    for d in receiver.wait_for(path, 2):
        assert len(signatures(d)) == 1
        Webhook(old_secret).verify(d.body, d.headers)

    rotated = webhooks.RotateWebhookSecret(wh.RotateWebhookSecretRequest(endpoint_id=endpoint.id),
                                           metadata=source.auth, timeout=TIMEOUT)
    new_secret = rotated.secret
    assert new_secret.startswith("whsec_") and new_secret != old_secret
    # The previous secret signs for 24 h (the default overlap).
    left = rotated.previous_secret_expire_time.ToSeconds() - time.time()
    assert 23 * 3600 < left <= 24 * 3600 + 60, left

    # Once the deliverer has re-read the endpoint, the next delivery carries both signatures.
    time.sleep(ENDPOINT_REFRESH)
    deactivated = stub.DeactivateConnection(
        cs.DeactivateConnectionRequest(connection_id=created.connection.id, reason="rotation"),
        metadata=source.auth, timeout=TIMEOUT)
    delivery = receiver.wait_for(path, 3)[2]
    body = delivery.json()
    assert body["type"] == "connection.deactivated"
    assert body["data"]["event"]["reason"] == "rotation"
    assert body["data"]["change_token"] == deactivated.change_token
    assert Webhook(new_secret).verify(delivery.body, delivery.headers) == body
    assert Webhook(old_secret).verify(delivery.body, delivery.headers) == body

    # Two signatures, one per secret: each alone verifies with its own secret only.
    sigs = signatures(delivery)
    assert len(sigs) == 2 and all(s.startswith("v1,") for s in sigs)
    for secret in (new_secret, old_secret):
        matching = []
        for sig in sigs:
            try:
                Webhook(secret).verify(delivery.body, {**delivery.headers, "webhook-signature": sig})
                matching.append(sig)
            except WebhookVerificationError:
                pass
        assert len(matching) == 1, (secret, sigs)


def test_failed_delivery_is_repeated_with_the_same_id_and_body(webhooks, stub, receiver, pair):
    source, destination = pair
    endpoint, secret, path = create_endpoint(webhooks, source, receiver)
    # The first attempt of the first event is answered 500, the second 503: the event is sent a
    # third time, and the connection's next event only after it.
    receiver.fail_next(path, 500, 503)
    created, _ = create_and_activate(stub, source, destination)
    deliveries = receiver.wait_for(path, 4)
    events = history(stub, source, created.connection.id)

    assert [d.status for d in deliveries] == [500, 503, 204, 204]
    assert [d.id for d in deliveries] == [events[0].id] * 3 + [events[1].id]
    assert len({d.body for d in deliveries[:3]}) == 1, "a repeat carries the same body"
    verifier = Webhook(secret)
    for d in deliveries:
        verifier.verify(d.body, d.headers)  # each attempt signed with its own timestamp
    assert deliveries[3].json()["type"] == "connection.activated"

    # A receiver deduplicating by webhook-id handles each event once.
    seen, handled = set(), []
    for d in deliveries:
        if d.status // 100 == 2 and d.id not in seen:
            seen.add(d.id)
            handled.append(d.json()["type"])
    assert handled == ["connection.created", "connection.activated"]

    listed = recorded_attempts(webhooks, source, endpoint.id, 4)
    attempts = [(a.event_id, a.attempt, a.http_status, a.outcome) for a in listed]
    assert attempts == [
        (events[0].id, 1, 500, wh.WEBHOOK_DELIVERY_OUTCOME_WILL_RETRY),
        (events[0].id, 2, 503, wh.WEBHOOK_DELIVERY_OUTCOME_WILL_RETRY),
        (events[0].id, 3, 204, wh.WEBHOOK_DELIVERY_OUTCOME_SUCCEEDED),
        (events[1].id, 1, 204, wh.WEBHOOK_DELIVERY_OUTCOME_SUCCEEDED),
    ]
    assert all(a.change_token == created.change_token for a in listed if a.event_id == events[0].id)


def test_data_types_events_are_delivered(webhooks, stub, receiver, pair):
    source, destination = pair
    # The destination receives every event, and also, on an endpoint of its own, only the
    # changes of the data types.
    _, secret, path = create_endpoint(webhooks, destination, receiver)
    data_types_only = [res.CONNECTION_EVENT_TYPE_DATA_TYPES_CHANGED,
                       res.CONNECTION_EVENT_TYPE_DATA_TYPES_PROPOSED,
                       res.CONNECTION_EVENT_TYPE_DATA_TYPES_APPROVED,
                       res.CONNECTION_EVENT_TYPE_DATA_TYPES_DECLINED]
    filtered, only_secret, only_path = create_endpoint(webhooks, destination, receiver,
                                                       event_types=data_types_only)
    assert list(filtered.event_types) == data_types_only
    created, _ = create_and_activate(stub, source, destination)
    connection_id = created.connection.id

    # The source proposes adding ACCOUNT: connection.data_types_proposed, with the sets.
    proposed = stub.UpdateConnectionDataTypes(
        cs.UpdateConnectionDataTypesRequest(connection_id=connection_id,
                                            data_types=[res.DATA_TYPE_INQUIRY,
                                                        res.DATA_TYPE_ACCOUNT]),
        metadata=source.auth, timeout=TIMEOUT)
    delivery = receiver.wait_for(path, 3)[2]
    body = Webhook(secret).verify(delivery.body, delivery.headers)
    events = history(stub, destination, connection_id)
    assert body["type"] == "connection.data_types_proposed" == event_type(events[2])
    assert delivery.id == events[2].id
    assert assert_proto3_json(body["data"]["event"], res.ConnectionEvent) == events[2]
    assert body["data"]["event"] == json_format.MessageToDict(events[2])
    event = body["data"]["event"]
    # Empty sets are left out, as proto3 JSON leaves out empty repeated fields.
    assert (event.get("previousDataTypes"), event.get("previousPendingDataTypes"),
            event.get("dataTypes"), event.get("pendingDataTypes")) == (
        ["DATA_TYPE_INQUIRY"], None, ["DATA_TYPE_INQUIRY"], ["DATA_TYPE_ACCOUNT"])
    assert body["data"]["connection"] == json_format.MessageToDict(proposed.connection)
    assert body["data"]["connection"]["pendingDataTypes"] == ["DATA_TYPE_ACCOUNT"]
    assert body["data"]["change_token"] == proposed.change_token

    # The destination approves with the etag the delivery carried.
    approved = stub.ApproveDataTypes(
        cs.ApproveDataTypesRequest(connection_id=connection_id,
                                   etag=body["data"]["connection"]["etag"]),
        metadata=destination.auth, timeout=TIMEOUT)
    delivery = receiver.wait_for(path, 4)[3]
    body = Webhook(secret).verify(delivery.body, delivery.headers)
    assert body["type"] == "connection.data_types_approved"
    assert body["data"]["event"]["dataTypes"] == ["DATA_TYPE_INQUIRY", "DATA_TYPE_ACCOUNT"]
    assert body["data"]["event"]["previousPendingDataTypes"] == ["DATA_TYPE_ACCOUNT"]
    assert body["data"]["connection"] == json_format.MessageToDict(approved.connection)
    assert body["data"]["change_token"] == approved.change_token

    # The filtered endpoint got those two events only, under its own secret.
    only = receiver.wait_for(only_path, 2)
    events = history(stub, destination, connection_id)
    assert [d.id for d in only] == [e.id for e in events[2:4]]
    assert [Webhook(only_secret).verify(d.body, d.headers)["type"] for d in only] == [
        "connection.data_types_proposed", "connection.data_types_approved"]
    # Nothing else arrives for it: the next lifecycle event goes to the other endpoint only.
    stub.DeactivateConnection(cs.DeactivateConnectionRequest(connection_id=connection_id),
                              metadata=source.auth, timeout=TIMEOUT)
    assert json.loads(receiver.wait_for(path, 5)[4].body)["type"] == "connection.deactivated"
    assert len(receiver.received(only_path)) == 2


def test_by_policy_activation_is_delivered(webhooks, stub, receiver, pair, channel):
    source, destination = pair
    org_grpc.OrganizationServiceStub(channel).UpdateOrganizationPolicy(
        org_pb.UpdateOrganizationPolicyRequest(
            policy=res.OrganizationPolicy(auto_activate_source_ids=[source.id])),
        metadata=destination.auth, timeout=TIMEOUT)
    _, secret, path = create_endpoint(webhooks, destination, receiver)

    # The trusted source's create returns the ACTIVE connection: CREATED, then ACTIVATED by the
    # destination's policy, each with the connection as that event left it.
    created = stub.CreateConnection(
        cs.CreateConnectionRequest(destination_organization_id=destination.id,
                                   data_types=[res.DATA_TYPE_INQUIRY]),
        metadata=source.auth, timeout=TIMEOUT)
    assert created.connection.state == res.CONNECTION_STATE_ACTIVE
    deliveries = receiver.wait_for(path, 2)
    bodies = [Webhook(secret).verify(d.body, d.headers) for d in deliveries]
    events = history(stub, destination, created.connection.id)
    assert [d.id for d in deliveries] == [e.id for e in events]
    assert [b["type"] for b in bodies] == ["connection.created", "connection.activated"]
    assert [b["data"]["event"] for b in bodies] == [json_format.MessageToDict(e) for e in events]
    assert "byPolicy" not in bodies[0]["data"]["event"]
    activation = bodies[1]["data"]["event"]
    assert (activation["byPolicy"], activation["actorRole"], activation["actorOrganizationId"]) == (
        True, "CONNECTION_ROLE_DESTINATION", destination.id)
    assert "actorApiKeyId" not in activation
    assert bodies[0]["data"]["connection"]["state"] == "CONNECTION_STATE_PENDING"
    assert bodies[1]["data"]["connection"] == json_format.MessageToDict(created.connection)
    # The create's token is the activation's.
    assert bodies[1]["data"]["change_token"] == created.change_token
