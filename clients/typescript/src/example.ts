/**
 * A partner's walk through a connection's lifecycle with the TypeScript client.
 *
 * Generate the code first (`npx buf generate`), then:
 *
 *   npx tsx src/example.ts --target http://127.0.0.1:50051 --source-key "$SRC_KEY" \
 *       --destination-key "$DST_KEY" --destination-id "$DST" [--protocol grpc|grpc-web]
 */
import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";
import { equals } from "@bufbuild/protobuf";

import { Code, ConnectError, connect, enumName, errorInfo, type Protocol } from "./client.js";
import { CreateConnectionResponseSchema } from "./gen/connections/v1/connection_service_pb.js";
import {
  ConnectionEventTypeSchema,
  ConnectionRole,
  ConnectionRoleSchema,
  ConnectionStateSchema,
  DataType,
} from "./gen/connections/v1/resources_pb.js";

const { values: args } = parseArgs({
  options: {
    target: { type: "string", default: "http://127.0.0.1:50051" },
    "source-key": { type: "string" },
    "destination-key": { type: "string" },
    "destination-id": { type: "string" },
    protocol: { type: "string", default: "grpc" },
  },
});
const { target, protocol } = args;
const sourceKey = args["source-key"];
const destinationKey = args["destination-key"];
const destinationId = args["destination-id"];
if (!sourceKey || !destinationKey || !destinationId || (protocol !== "grpc" && protocol !== "grpc-web")) {
  console.error(
    "usage: example.ts --target URL --source-key KEY --destination-key KEY --destination-id ID [--protocol grpc|grpc-web]",
  );
  process.exit(2);
}

const state = (s: number) => enumName(ConnectionStateSchema, s);

// One client per organization: each carries its own API key on every call.
const source = connect({ baseUrl: target, apiKey: sourceKey, protocol: protocol as Protocol });
const destination = connect({ baseUrl: target, apiKey: destinationKey, protocol: protocol as Protocol });

try {
  // The source creates the connection. A request_id makes the call safe to retry:
  // a retry with the same request_id returns the first response and changes nothing.
  const create = {
    destinationOrganizationId: destinationId,
    dataTypes: [DataType.INQUIRY, DataType.ACCOUNT],
    requestId: randomUUID(),
  };
  const created = await source.connections.createConnection(create);
  let conn = created.connection!;
  console.log(`created ${conn.id}: ${state(conn.state)}`);
  const retried = await source.connections.createConnection(create);
  console.log(`retried with the same request_id: same response: ${equals(CreateConnectionResponseSchema, created, retried)}`);

  // Only the destination may activate: the source is refused, with a machine-readable reason.
  try {
    await source.connections.activateConnection({ connectionId: conn.id });
  } catch (err) {
    const info = errorInfo(err);
    console.log(`source may not activate: ${Code[ConnectError.from(err).code]} ${info?.reason} (${info?.domain})`);
  }

  conn = (
    await destination.connections.activateConnection({ connectionId: conn.id, etag: conn.etag, requestId: randomUUID() })
  ).connection!;
  console.log(`activated by the destination: ${state(conn.state)}`);

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
} catch (err) {
  const e = ConnectError.from(err);
  console.error(`failed: ${Code[e.code]} ${errorInfo(e)?.reason ?? ""}: ${e.rawMessage}`);
  process.exitCode = 1;
} finally {
  source.close();
  destination.close();
}
