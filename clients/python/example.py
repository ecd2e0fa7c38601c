"""A partner's walk through a connection's lifecycle with the Python stubs.

Generate the stubs first (./generate.sh), then:

    python example.py --target 127.0.0.1:50051 --source-key "$SRC_KEY" \
        --destination-key "$DST_KEY" --destination-id "$DST"
"""

import argparse
import os
import sys
import uuid

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))
from connections.v1 import connection_service_pb2 as cs  # noqa: E402
from connections.v1 import connection_service_pb2_grpc as cs_grpc  # noqa: E402
from connections.v1 import resources_pb2 as res  # noqa: E402


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
    args = parser.parse_args()

    with grpc.insecure_channel(args.target) as channel:
        stub = cs_grpc.ConnectionServiceStub(channel)
        src, dst = auth(args.source_key), auth(args.destination_key)

        # The source creates the connection. A request_id makes the call safe to retry:
        # a retry with the same request_id returns the first response and changes nothing.
        create = cs.CreateConnectionRequest(
            destination_organization_id=args.destination_id,
            data_types=[res.DATA_TYPE_INQUIRY, res.DATA_TYPE_ACCOUNT],
            request_id=str(uuid.uuid4()),
        )
        conn = stub.CreateConnection(create, metadata=src, timeout=10).connection
        print(f"created {conn.id}: {res.ConnectionState.Name(conn.state)}")
        retried = stub.CreateConnection(create, metadata=src, timeout=10).connection
        print(f"retried with the same request_id: same response: {retried == conn}")

        # Only the destination may activate: the source is refused, with a machine-readable reason.
        try:
            stub.ActivateConnection(cs.ActivateConnectionRequest(connection_id=conn.id),
                                    metadata=src, timeout=10)
        except grpc.RpcError as err:
            info = error_info(err)
            print(f"source may not activate: {err.code().name} {info.reason} ({info.domain})")

        conn = stub.ActivateConnection(
            cs.ActivateConnectionRequest(connection_id=conn.id, etag=conn.etag,
                                         request_id=str(uuid.uuid4())),
            metadata=dst, timeout=10).connection
        print(f"activated by the destination: {res.ConnectionState.Name(conn.state)}")

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


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as err:
        info = error_info(err)
        print(f"failed: {err.code().name} {info.reason if info else ''}: {err.details()}",
              file=sys.stderr)
        sys.exit(1)
