/**
 * A partner's walk through a connection's lifecycle with the TypeScript client. It also watches
 * the destination's events with resume (ResumableWatch) and asks CheckAccess as a data-moving
 * service would.
 *
 * Generate the code first (`npx buf generate`), then:
 *
 *   npx tsx src/example.ts --target http://127.0.0.1:50051 --source-key "$SRC_KEY" \
 *       --destination-key "$DST_KEY" --destination-id "$DST" [--protocol grpc|grpc-web] \
 *       [--access-check-token "$ACCESS_CHECK_TOKEN"]
 */
import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";
import { equals } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";

import { Code, ConnectError, ResumableWatch, connect, enumName, errorInfo, type Protocol } from "./client.js";
import {
  CreateConnectionResponseSchema,
  type WatchConnectionEventsResponse,
} from "./gen/connections/v1/connection_service_pb.js";
import {
  ConnectionEventTypeSchema,
  ConnectionRole,
  ConnectionRoleSchema,
  ConnectionStateSchema,
  DataType,
  DataTypeSchema,
} from "./gen/connections/v1/resources_pb.js";

const { values: args } = parseArgs({
  options: {
    target: { type: "string", default: "http://127.0.0.1:50051" },
    "source-key": { type: "string" },
    "destination-key": { type: "string" },
    "destination-id": { type: "string" },
    protocol: { type: "string", default: "grpc" },
    "access-check-token": { type: "string" },
  },
});
const { target, protocol } = args;
const sourceKey = args["source-key"];
const destinationKey = args["destination-key"];
const destinationId = args["destination-id"];
const accessCheckToken = args["access-check-token"];
if (!sourceKey || !destinationKey || !destinationId || (protocol !== "grpc" && protocol !== "grpc-web")) {
  console.error(
    "usage: example.ts --target URL --source-key KEY --destination-key KEY --destination-id ID " +
      "[--protocol grpc|grpc-web] [--access-check-token TOKEN]",
  );
  process.exit(2);
}

const state = (s: number) => enumName(ConnectionStateSchema, s);

// One client per organization: each carries its own API key on every call.
const source = connect({ baseUrl: target, apiKey: sourceKey, protocol: protocol as Protocol });
const destination = connect({ baseUrl: target, apiKey: destinationKey, protocol: protocol as Protocol });
// A data-moving service calls CheckAccess with the operator's access-check token, or with a party's key.
const checker = accessCheckToken
  ? connect({ baseUrl: target, apiKey: accessCheckToken, protocol: protocol as Protocol })
  : destination;

try {
  // The source creates the connection. A request_id makes the call safe to retry:
  // a retry with the same request_id returns the first response and changes nothing.
  // The optional message goes to the destination with the invitation.
  const create = {
    destinationOrganizationId: destinationId,
    dataTypes: [DataType.INQUIRY, DataType.ACCOUNT],
    message: "Hello from the example: please activate to receive our inquiries.",
    requestId: randomUUID(),
  };
  const created = await source.connections.createConnection(create);
  let conn = created.connection!;
  console.log(`created ${conn.id}: ${state(conn.state)}`);
  const retried = await source.connections.createConnection(create);
  console.log(`retried with the same request_id: same response: ${equals(CreateConnectionResponseSchema, created, retried)}`);

  // The destination reads the invitation: its message, and until when it may activate it.
  const invitation = (await destination.connections.getConnection({ connectionId: conn.id })).connection!;
  const expires = invitation.expireTime ? timestampDate(invitation.expireTime).toISOString() : "never";
  console.log(`invitation: ${JSON.stringify(invitation.invitationMessage)}, expires ${expires}`);

  // Only the destination may activate: the source is refused, with a machine-readable reason.
  try {
    await source.connections.activateConnection({ connectionId: conn.id });
  } catch (err) {
    const info = errorInfo(err);
    console.log(`source may not activate: ${Code[ConnectError.from(err).code]} ${info?.reason} (${info?.domain})`);
  }

  const activated = await destination.connections.activateConnection({
    connectionId: conn.id,
    etag: conn.etag,
    requestId: randomUUID(),
  });
  conn = activated.connection!;
  console.log(`activated by the destination: ${state(conn.state)}`);

  // On every transfer, a data-moving service asks whether the destination may receive this data
  // type from the source now. Passing the change_token of the transition that granted (or revoked)
  // access makes sure the answer reflects at least that transition.
  const check = async (dataType: DataType, atLeastChangeToken: string) => {
    const answer = await checker.access.checkAccess({
      sourceOrganizationId: conn.sourceOrganizationId,
      destinationOrganizationId: conn.destinationOrganizationId,
      dataType,
      atLeastChangeToken,
    });
    console.log(`check access ${enumName(DataTypeSchema, dataType)}: allowed ${answer.allowed} (${state(answer.state)})`);
  };
  await check(DataType.INQUIRY, activated.changeToken);
  await check(DataType.TRANSACTION, activated.changeToken); // not shared

  const inbound = await destination.connections.listConnections({ role: ConnectionRole.DESTINATION });
  for (const c of inbound.connections) {
    console.log(`inbound ${c.id} from ${c.sourceOrganizationId}: ${state(c.state)}`);
  }

  const history = await source.connections.listConnectionEvents({ connectionId: conn.id });
  for (const e of history.events) {
    console.log(
      `#${e.sequence} ${enumName(ConnectionEventTypeSchema, e.type)}: ${state(e.fromState)} -> ` +
        `${state(e.toState)} by ${enumName(ConnectionRoleSchema, e.actorRole)}`,
    );
  }

  // Watch the destination's events with resume, starting after the create's change token: the
  // activation comes first. ResumableWatch reconnects after an interruption from the last token
  // it received, so nothing is missed or repeated.
  const show = ({ event: e }: WatchConnectionEventsResponse) =>
    console.log(`watched #${e!.sequence} ${enumName(ConnectionEventTypeSchema, e!.type)} of ${e!.connectionId}`);
  let watch = new ResumableWatch(destination.connections, { afterChangeToken: created.changeToken, idleTimeoutMs: 30_000 });
  for await (const message of watch) {
    show(message);
    if (message.event!.connectionId === conn.id) break; // ends the stream
  }
  const checkpoint = watch.lastChangeToken; // a real consumer saves this durably

  // While nobody watches, the source deactivates the connection...
  const deactivated = await source.connections.deactivateConnection({
    connectionId: conn.id,
    reason: "example over",
    requestId: randomUUID(),
  });
  await check(DataType.INQUIRY, deactivated.changeToken);

  // ...and a watch resumed from the checkpoint delivers exactly what happened since.
  watch = new ResumableWatch(destination.connections, { afterChangeToken: checkpoint, idleTimeoutMs: 30_000 });
  for await (const message of watch) {
    show(message);
    if (message.event!.connectionId === conn.id) break;
  }
} catch (err) {
  const e = ConnectError.from(err);
  console.error(`failed: ${Code[e.code]} ${errorInfo(e)?.reason ?? ""}: ${e.rawMessage}`);
  process.exitCode = 1;
} finally {
  source.close();
  destination.close();
  if (checker !== destination) checker.close();
}
