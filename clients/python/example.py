"""A partner's walk through a connection's lifecycle with the Python stubs.

It also watches the destination's events with resume (ResumableWatch, in resumable_watch.py)
and asks CheckAccess as a data-moving service would. Generate the stubs first (./generate.sh),
then:

    python example.py --target 127.0.0.1:50051 --source-key "$SRC_KEY" \
        --destination-key "$DST_KEY" --destination-id "$DST" \
        [--access-check-token "$ACCESS_CHECK_TOKEN"]
"""

import argparse
import os
import sys
import uuid

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))
from connections.v1 import access_service_pb2 as acc  # noqa: E402
from connections.v1 import access_service_pb2_grpc as acc_grpc  # noqa: E402
from connections.v1 import connection_service_pb2 as cs  # noqa: E402
from connections.v1 import connection_service_pb2_grpc as cs_grpc  # noqa: E402
from connections.v1 import resources_pb2 as res  # noqa: E402
from resumable_watch import ResumableWatch  # noqa: E402


def auth(key):
    """Every call carries the caller's API key as metadata."""
    return (("authorization", f"Bearer {key}"),)


def error_info(err):
    """The google.rpc.ErrorInfo detail of a failed call, or None."""
    status = rpc_status.from_call(err)
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="host:port")
    parser.add_argument("--source-key", required=True)
    parser.add_argument("--destination-key", required=True)
    parser.add_argument("--destination-id", required=True)
    parser.add_argument("--access-check-token",
                        help="the operator's access-check token, for CheckAccess "
                             "(default: the destination's key)")
    args = parser.parse_args()

    with grpc.insecure_channel(args.target) as channel:
        stub = cs_grpc.ConnectionServiceStub(channel)
        src, dst = auth(args.source_key), auth(args.destination_key)

        # The source creates the connection. A request_id makes the call safe to retry:
        # a retry with the same request_id returns the first response and changes nothing.
        # The optional message goes to the destination with the invitation.
        create = cs.CreateConnectionRequest(
            destination_organization_id=args.destination_id,
            data_types=[res.DATA_TYPE_INQUIRY, res.DATA_TYPE_ACCOUNT],
            message="Hello from the example: please activate to receive our inquiries.",
            request_id=str(uuid.uuid4()),
        )
        created = stub.CreateConnection(create, metadata=src, timeout=10)
        conn = created.connection
        print(f"created {conn.id}: {res.ConnectionState.Name(conn.state)}")
        retried = stub.CreateConnection(create, metadata=src, timeout=10).connection
        print(f"retried with the same request_id: same response: {retried == conn}")

        # The destination reads the invitation: its message, and until when it may activate it.
        invitation = stub.GetConnection(cs.GetConnectionRequest(connection_id=conn.id),
                                        metadata=dst, timeout=10).connection
        expires = (invitation.expire_time.ToJsonString() if invitation.HasField("expire_time")
                   else "never")
        print(f"invitation: {invitation.invitation_message!r}, expires {expires}")

        # Only the destination may activate: the source is refused, with a machine-readable reason.
        try:
            stub.ActivateConnection(cs.ActivateConnectionRequest(connection_id=conn.id),
                                    metadata=src, timeout=10)
        except grpc.RpcError as err:
            info = error_info(err)
            print(f"source may not activate: {err.code().name} {info.reason} ({info.domain})")

        activated = stub.ActivateConnection(
            cs.ActivateConnectionRequest(connection_id=conn.id, etag=conn.etag,
                                         request_id=str(uuid.uuid4())),
            metadata=dst, timeout=10)
        conn = activated.connection
        print(f"activated by the destination: {res.ConnectionState.Name(conn.state)}")

        # A data-moving service asks, on every transfer, whether the destination may receive this
        # data type from the source now. Passing the change_token of the transition that granted
        # (or revoked) access makes sure the answer reflects at least that transition.
        # It calls with the operator's access-check token, or with a party's API key.
        access = acc_grpc.AccessServiceStub(channel)
        checker = auth(args.access_check_token) if args.access_check_token else dst

        def check(data_type, change_token):
            answer = access.CheckAccess(acc.CheckAccessRequest(
                source_organization_id=conn.source_organization_id,
                destination_organization_id=conn.destination_organization_id,
                data_type=data_type, at_least_change_token=change_token),
                metadata=checker, timeout=10)
            print(f"check access {res.DataType.Name(data_type)}: allowed {answer.allowed} "
                  f"({res.ConnectionState.Name(answer.state)})")

        check(res.DATA_TYPE_INQUIRY, activated.change_token)
        check(res.DATA_TYPE_TRANSACTION, activated.change_token)  # not shared

        inbound = stub.ListConnections(
            cs.ListConnectionsRequest(role=res.CONNECTION_ROLE_DESTINATION),
            metadata=dst, timeout=10)
        for c in inbound.connections:
            print(f"inbound {c.id} from {c.source_organization_id}: "
                  f"{res.ConnectionState.Name(c.state)}")

        history = stub.ListConnectionEvents(
            cs.ListConnectionEventsRequest(connection_id=conn.id), metadata=src, timeout=10)
        for e in history.events:
            print(f"#{e.sequence} {res.ConnectionEventType.Name(e.type)}: "
                  f"{res.ConnectionState.Name(e.from_state)} -> "
                  f"{res.ConnectionState.Name(e.to_state)} by "
                  f"{res.ConnectionRole.Name(e.actor_role)}")

        # Watch the destination's events with resume, starting after the create's change token:
        # the activation comes first. ResumableWatch reconnects after an interruption from the
        # last token it received, so nothing is missed or repeated.
        def show(message):
            e = message.event
            print(f"watched #{e.sequence} {res.ConnectionEventType.Name(e.type)} of {e.connection_id}")

        with ResumableWatch(stub, dst, after_change_token=created.change_token,
                            idle_timeout=30) as watch:
            for message in watch:
                show(message)
                if message.event.connection_id == conn.id:
                    break
            checkpoint = watch.last_change_token  # a real consumer saves this durably

        # While nobody watches, the source deactivates the connection...
        deactivated = stub.DeactivateConnection(
            cs.DeactivateConnectionRequest(connection_id=conn.id, reason="example over",
                                           request_id=str(uuid.uuid4())),
            metadata=src, timeout=10)
        check(res.DATA_TYPE_INQUIRY, deactivated.change_token)

        # ...and a watch resumed from the checkpoint delivers exactly what happened since.
        with ResumableWatch(stub, dst, after_change_token=checkpoint, idle_timeout=30) as watch:
            for message in watch:
                show(message)
                if message.event.connection_id == conn.id:
                    break


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as err:
        info = error_info(err)
        print(f"failed: {err.code().name} {info.reason if info else ''}: {err.details()}",
              file=sys.stderr)
        sys.exit(1)
