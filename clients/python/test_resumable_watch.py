"""ResumableWatch against scripted streams: the interruptions a real server is hard to produce on
demand (ABORTED for a consumer too slow, a stream that just ends, a dropped connection, a silent
stream). The end-to-end tests in test_lifecycle.py cover the real server, including a restart."""

import threading
import time

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from connections.v1 import connection_service_pb2 as cs
from connections.v1 import resources_pb2 as res
from resumable_watch import ResumableWatch

C = grpc.StatusCode


class FakeError(grpc.RpcError):
    """A failed call as grpcio raises it; with `reason`, it carries a google.rpc.ErrorInfo."""

    def __init__(self, code, reason=None):
        super().__init__(code.name)
        self._code, self._reason = code, reason

    def code(self):
        return self._code

    def details(self):
        return f"scripted {self._code.name}"

    def trailing_metadata(self):
        if self._reason is None:
            return ()
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=self._reason, domain="connections.v1"))
        status = status_pb2.Status(code=self._code.value[0], message=self.details(),
                                   details=[detail])
        return (("grpc-status-details-bin", status.SerializeToString()),)


class FakeCall:
    """A server stream that yields its script's messages and raises its errors; with
    block=True, waits after the script until cancelled, like a silent stream."""

    def __init__(self, script, block=False):
        self._script = list(script)
        self._block = block
        self.cancelled = threading.Event()

    def __iter__(self):
        return self

    def __next__(self):
        if self._script:
            item = self._script.pop(0)
            if isinstance(item, Exception):
                raise item
            return item
        if self._block:
            assert self.cancelled.wait(10), "a silent fake stream was never cancelled"
            raise FakeError(C.CANCELLED)
        raise StopIteration

    def cancel(self):
        self.cancelled.set()


class FakeStub:
    def __init__(self, *calls):
        self.calls = list(calls)
        self.opened = []
        self.requests = []

    def WatchConnectionEvents(self, request, metadata=None):
        assert self.calls, f"unexpected stream #{len(self.requests) + 1}: {request}"
        assert metadata == (("authorization", "Bearer k"),)
        self.requests.append(request)
        call = self.calls.pop(0)
        self.opened.append(call)
        return call


def event(sequence, token):
    return cs.WatchConnectionEventsResponse(
        event=res.ConnectionEvent(connection_id="c", sequence=sequence), change_token=token)


def heartbeat(token):
    return cs.WatchConnectionEventsResponse(change_token=token)


AUTH = (("authorization", "Bearer k"),)
FAST = dict(initial_backoff=0.001, max_backoff=0.01, idle_timeout=5)


def test_resumes_from_the_last_token_after_each_interruption_and_raises_the_others():
    stub = FakeStub(
        FakeCall([event(1, "t1"), heartbeat("t2"), FakeError(C.ABORTED,
                                                             "ERROR_REASON_WATCH_CONSUMER_TOO_SLOW")]),
        FakeCall([event(2, "t3")]),  # ends without a status
        FakeCall([FakeError(C.INTERNAL)]),  # dropped connection: no ErrorInfo
        FakeCall([FakeError(C.UNAVAILABLE, "ERROR_REASON_DATABASE_UNAVAILABLE")]),
        FakeCall([event(3, "t4"), FakeError(C.UNAUTHENTICATED, "ERROR_REASON_API_KEY_INVALID")]),
    )
    ended = []
    watch = ResumableWatch(stub, AUTH, from_beginning=True, role=res.CONNECTION_ROLE_SOURCE,
                           on_resume=lambda err, delay: ended.append(err and err.code()), **FAST)
    got = []
    with pytest.raises(FakeError) as caught:
        for message in watch:
            got.append((message.event.sequence, message.change_token))
    assert caught.value.code() == C.UNAUTHENTICATED
    # Each event once, in order; the heartbeat is not yielded but its token is kept.
    assert got == [(1, "t1"), (2, "t3"), (3, "t4")]
    assert [(r.after_change_token, r.from_beginning, r.role) for r in stub.requests] == [
        ("", True, res.CONNECTION_ROLE_SOURCE),
        ("t2", False, res.CONNECTION_ROLE_SOURCE),
        ("t3", False, res.CONNECTION_ROLE_SOURCE),
        ("t3", False, res.CONNECTION_ROLE_SOURCE),
        ("t3", False, res.CONNECTION_ROLE_SOURCE),
    ]
    assert ended == [C.ABORTED, None, C.INTERNAL, C.UNAVAILABLE]
    assert watch.resumes == 4
    assert watch.last_change_token == "t4"
    assert all(call.cancelled.is_set() for call in stub.opened)


def test_an_error_the_server_sent_is_not_mistaken_for_a_dropped_connection():
    stub = FakeStub(FakeCall([FakeError(C.INTERNAL, "ERROR_REASON_INTERNAL")]))
    with pytest.raises(FakeError):
        list(ResumableWatch(stub, AUTH, after_change_token="t0", **FAST))
    assert [r.after_change_token for r in stub.requests] == ["t0"]


def test_heartbeats_are_yielded_on_request_and_attempts_are_bounded():
    stub = FakeStub(
        FakeCall([heartbeat("h1"), FakeError(C.UNAVAILABLE)]),
        FakeCall([FakeError(C.UNAVAILABLE)]),
        FakeCall([heartbeat("h2"), FakeError(C.UNAVAILABLE)]),  # a message resets the count
        FakeCall([FakeError(C.UNAVAILABLE)]),
        FakeCall([FakeError(C.UNAVAILABLE)]),
    )
    watch = ResumableWatch(stub, AUTH, heartbeats=True, max_attempts=3, **FAST)
    got = []
    with pytest.raises(FakeError) as caught:
        for message in watch:
            got.append((message.HasField("event"), message.change_token))
    assert caught.value.code() == C.UNAVAILABLE
    assert got == [(False, "h1"), (False, "h2")]
    assert [r.after_change_token for r in stub.requests] == ["", "h1", "h1", "h2", "h2"]
    assert not stub.calls


def test_a_silent_stream_is_reopened_after_the_idle_timeout():
    stub = FakeStub(FakeCall([event(1, "t1")], block=True), FakeCall([event(2, "t2")], block=True))
    watch = ResumableWatch(stub, AUTH, initial_backoff=0.001, max_backoff=0.01, idle_timeout=0.3)
    messages = iter(watch)
    assert next(messages).change_token == "t1"
    started = time.monotonic()
    assert next(messages).change_token == "t2"
    assert 0.25 < time.monotonic() - started < 5
    assert stub.opened[0].cancelled.is_set()
    assert stub.requests[1].after_change_token == "t1"
    assert watch.resumes == 1
    watch.close()
    assert list(messages) == []


def test_close_from_another_thread_ends_the_iteration():
    stub = FakeStub(FakeCall([event(1, "t1")], block=True))
    watch = ResumableWatch(stub, AUTH, idle_timeout=None)
    got = []
    thread = threading.Thread(target=lambda: got.extend(watch), daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    watch.close()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert [m.change_token for m in got] == ["t1"]
    assert stub.opened[0].cancelled.is_set()
    assert watch.resumes == 0
