/**
 * End to end: the generated TypeScript code and Connect for Node.js against the real `connections`
 * binary (CONNECTIONS_BIN, or ../../target/debug/connections; it is not built here).
 *
 * One server for the file; the same full lifecycle runs over gRPC (HTTP/2), gRPC-Web over HTTP/1.1
 * and gRPC-Web over HTTP/2, each with a (source, destination) pair of its own, since a pair can
 * hold only one connection. Everything runs on 127.0.0.1, in a temporary directory, bounded in time.
 *
 *   node --import tsx --test test/lifecycle.test.ts      (run_tests.sh does this)
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { equals, toBinary } from "@bufbuild/protobuf";

import {
  Code,
  ConnectError,
  connect,
  enumName,
  errorReason,
  ErrorReason,
  type ConnectionsClient,
  type ConnectOptions,
} from "../src/client.js";
import {
  ActivateConnectionResponseSchema,
  CreateConnectionResponseSchema,
  GetConnectionResponseSchema,
} from "../src/gen/connections/v1/connection_service_pb.js";
import {
  ConnectionEventSchema,
  ConnectionEventType,
  ConnectionRole,
  ConnectionState,
  ConnectionStateSchema,
  DataType,
} from "../src/gen/connections/v1/resources_pb.js";
import { type ErrorInfo, ErrorInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { type Org, PACKAGE_DIR, Server } from "./harness.js";

interface Variant {
  name: string;
  protocol: NonNullable<ConnectOptions["protocol"]>;
  httpVersion: "1.1" | "2";
}

const VARIANTS: Variant[] = [
  { name: "gRPC (HTTP/2)", protocol: "grpc", httpVersion: "2" },
  { name: "gRPC-Web (HTTP/1.1)", protocol: "grpc-web", httpVersion: "1.1" },
  { name: "gRPC-Web (HTTP/2)", protocol: "grpc-web", httpVersion: "2" },
];

const TEST_TIMEOUT_MS = 60_000;

/** Awaits a call that must fail; returns its code and its one google.rpc.ErrorInfo. */
async function refusal(call: Promise<unknown>): Promise<{ code: Code; info: ErrorInfo; err: ConnectError }> {
  try {
    await call;
  } catch (e) {
    assert.ok(e instanceof ConnectError, `expected a ConnectError, got ${String(e)}`);
    const infos = e.findDetails(ErrorInfoSchema);
    assert.equal(infos.length, 1, `expected one ErrorInfo on ${Code[e.code]} "${e.rawMessage}", got ${infos.length}`);
    assert.equal(infos[0]!.domain, "connections.v1");
    return { code: e.code, info: infos[0]!, err: e };
  }
  assert.fail("expected the call to be refused, but it succeeded");
}

let server: Server;
const pairs = new Map<string, { source: Org; destination: Org }>();
let outsider: Org;
let examplePair: { source: Org; destination: Org };
const clients: ConnectionsClient[] = [];

before(
  async () => {
    server = await Server.prepare();
    // Bootstrapped with the CLI directly on the database, before the server starts.
    for (const v of VARIANTS) {
      pairs.set(v.name, {
        source: server.newOrg(`Source over ${v.name}`),
        destination: server.newOrg(`Destination over ${v.name}`),
      });
    }
    outsider = server.newOrg("Outsider");
    examplePair = { source: server.newOrg("Example Source"), destination: server.newOrg("Example Destination") };
    await server.start(outsider);
  },
  { timeout: 120_000 },
);

after(
  async () => {
    for (const c of clients) c.close();
    if (!server) return;
    try {
      if (!server.started) return; // before failed first: its error is the one reported
      const { code, signal } = await server.stop();
      assert.equal(signal, null, `server was killed by ${signal}:\n${server.log()}`);
      assert.equal(code, 0, `server exited ${code} after SIGTERM:\n${server.log()}`);
    } finally {
      server.cleanup();
    }
  },
  { timeout: 60_000 },
);

for (const variant of VARIANTS) {
  describe(`lifecycle over ${variant.name}`, () => {
    let source: Org, destination: Org;
    let S: ConnectionsClient["connections"], D: ConnectionsClient["connections"];
    const client = (apiKey?: string) => {
      const c = connect({ baseUrl: server.baseUrl, apiKey, protocol: variant.protocol, httpVersion: variant.httpVersion });
      clients.push(c);
      return c;
    };

    before(() => {
      ({ source, destination } = pairs.get(variant.name)!);
      S = client(source.key).connections;
      D = client(destination.key).connections;
    });

    it("each organization reads itself and its counterparty", { timeout: TEST_TIMEOUT_MS }, async () => {
      const orgs = client(destination.key).organizations;
      const own = await orgs.getOrganization({});
      assert.equal(own.organization?.id, destination.id);
      assert.equal(own.organization?.displayName, destination.name);
      const other = await orgs.getOrganization({ organizationId: source.id });
      assert.equal(other.organization?.displayName, source.name);
    });

    it("create, activate, deactivate, reactivate, activate; lists and history", { timeout: TEST_TIMEOUT_MS }, async () => {
      // The source creates; a retry with the same request_id returns the identical response.
      const create = {
        destinationOrganizationId: destination.id,
        dataTypes: [DataType.TRANSACTION, DataType.INQUIRY, DataType.INQUIRY],
        requestId: randomUUID(),
      };
      const first = await S.createConnection(create);
      let conn = first.connection!;
      assert.equal(conn.state, ConnectionState.PENDING);
      assert.equal(conn.sourceOrganizationId, source.id);
      assert.equal(conn.destinationOrganizationId, destination.id);
      assert.deepEqual(conn.dataTypes, [DataType.INQUIRY, DataType.TRANSACTION]);
      assert.ok(conn.createTime && conn.etag, "create_time and etag are set");
      assert.equal(conn.activateTime, undefined);
      const again = await S.createConnection(create);
      assert.deepEqual(toBinary(CreateConnectionResponseSchema, again), toBinary(CreateConnectionResponseSchema, first));
      assert.ok(equals(CreateConnectionResponseSchema, again, first));

      // The same request_id with other parameters is refused.
      let r = await refusal(S.createConnection({ ...create, dataTypes: [DataType.ACCOUNT] }));
      assert.deepEqual([r.code, r.info.reason], [Code.InvalidArgument, "ERROR_REASON_REQUEST_ID_REUSED"]);

      // A second connection for the same pair is refused, naming the existing one.
      r = await refusal(S.createConnection({ destinationOrganizationId: destination.id, dataTypes: [DataType.ACCOUNT] }));
      assert.deepEqual([r.code, r.info.reason], [Code.AlreadyExists, "ERROR_REASON_CONNECTION_ALREADY_EXISTS"]);
      assert.equal(r.info.metadata.connection_id, conn.id);

      // Sources cannot activate: PERMISSION_DENIED with the reason in google.rpc.ErrorInfo.
      r = await refusal(S.activateConnection({ connectionId: conn.id }));
      assert.equal(r.code, Code.PermissionDenied);
      assert.equal(r.info.reason, "ERROR_REASON_CALLER_NOT_DESTINATION");
      assert.equal(errorReason(r.err), ErrorReason.CALLER_NOT_DESTINATION);

      // No credentials, or unknown ones, are refused before anything else.
      r = await refusal(client().connections.activateConnection({ connectionId: conn.id }));
      assert.deepEqual([r.code, r.info.reason], [Code.Unauthenticated, "ERROR_REASON_API_KEY_MISSING"]);
      r = await refusal(client(`${source.key}x`).connections.getConnection({ connectionId: conn.id }));
      assert.deepEqual([r.code, r.info.reason], [Code.Unauthenticated, "ERROR_REASON_API_KEY_INVALID"]);

      // An outsider cannot tell the connection exists.
      r = await refusal(client(outsider.key).connections.getConnection({ connectionId: conn.id }));
      assert.deepEqual([r.code, r.info.reason], [Code.NotFound, "ERROR_REASON_CONNECTION_NOT_FOUND"]);

      // The destination activates, conditional on the etag it read.
      const firstActivate = { connectionId: conn.id, etag: conn.etag, requestId: randomUUID() };
      const activated = await D.activateConnection(firstActivate);
      assert.equal(activated.connection?.state, ConnectionState.ACTIVE);
      assert.notEqual(activated.connection?.etag, conn.etag);
      assert.ok(activated.connection?.activateTime, "activate_time is set");
      const staleEtag = conn.etag;
      conn = activated.connection!;

      // ACTIVE -> PENDING is not a transition.
      r = await refusal(S.reactivateConnection({ connectionId: conn.id }));
      assert.deepEqual([r.code, r.info.reason], [Code.FailedPrecondition, "ERROR_REASON_INVALID_STATE_TRANSITION"]);
      assert.equal(r.info.metadata.current_state, "CONNECTION_STATE_ACTIVE");

      // A stale etag changes nothing.
      r = await refusal(S.deactivateConnection({ connectionId: conn.id, etag: staleEtag }));
      assert.deepEqual([r.code, r.info.reason], [Code.Aborted, "ERROR_REASON_ETAG_MISMATCH"]);

      // The source deactivates, with a reason.
      conn = (await S.deactivateConnection({ connectionId: conn.id, etag: conn.etag, reason: "contract renewal", requestId: randomUUID() })).connection!;
      assert.equal(enumName(ConnectionStateSchema, conn.state), "CONNECTION_STATE_INACTIVE");
      assert.equal(conn.deactivatedBy, ConnectionRole.SOURCE);
      assert.equal(conn.deactivationReason, "contract renewal");
      assert.ok(conn.deactivateTime, "deactivate_time is set");

      // Only the source reactivates (back to PENDING); the destination activates again.
      r = await refusal(D.reactivateConnection({ connectionId: conn.id }));
      assert.deepEqual([r.code, r.info.reason], [Code.PermissionDenied, "ERROR_REASON_CALLER_NOT_SOURCE"]);
      conn = (await S.reactivateConnection({ connectionId: conn.id, requestId: randomUUID() })).connection!;
      assert.equal(conn.state, ConnectionState.PENDING);
      conn = (await D.activateConnection({ connectionId: conn.id, requestId: randomUUID() })).connection!;
      assert.equal(conn.state, ConnectionState.ACTIVE);

      // Replaying the first activation returns its original response, byte for byte, and changes nothing.
      const replay = await D.activateConnection(firstActivate);
      assert.deepEqual(toBinary(ActivateConnectionResponseSchema, replay), toBinary(ActivateConnectionResponseSchema, activated));
      const now = await S.getConnection({ connectionId: conn.id });
      assert.equal(now.connection?.etag, conn.etag);
      assert.equal(now.connection?.state, ConnectionState.ACTIVE);
      // Both parties read the same connection.
      const seenByDestination = await D.getConnection({ connectionId: conn.id });
      assert.ok(equals(GetConnectionResponseSchema, seenByDestination, now));

      // Each party lists it under its own role, not under the other, and under "either role".
      const listed = async (c: typeof S, role: ConnectionRole) =>
        (await c.listConnections({ role })).connections.map((x) => x.id);
      assert.deepEqual(await listed(S, ConnectionRole.SOURCE), [conn.id]);
      assert.deepEqual(await listed(D, ConnectionRole.DESTINATION), [conn.id]);
      assert.deepEqual(await listed(S, ConnectionRole.DESTINATION), []);
      assert.deepEqual(await listed(D, ConnectionRole.SOURCE), []);
      assert.deepEqual(await listed(S, ConnectionRole.UNSPECIFIED), [conn.id]);
      const inbound = await D.listConnections({ role: ConnectionRole.DESTINATION, state: ConnectionState.ACTIVE });
      assert.equal(inbound.connections[0]?.sourceOrganizationId, source.id);
      assert.equal(inbound.nextPageToken, "");

      // The history, oldest first, the same for both parties.
      const events = (await D.listConnectionEvents({ connectionId: conn.id })).events;
      const eventsForSource = (await S.listConnectionEvents({ connectionId: conn.id })).events;
      assert.equal(eventsForSource.length, events.length);
      events.forEach((e, i) => assert.ok(equals(ConnectionEventSchema, e, eventsForSource[i]!)));
      const { UNSPECIFIED: U, PENDING: P, ACTIVE: A, INACTIVE: I } = ConnectionState;
      const { SOURCE: SRC, DESTINATION: DST } = ConnectionRole;
      const T = ConnectionEventType;
      assert.deepEqual(
        events.map((e) => [e.sequence, e.type, e.fromState, e.toState, e.actorRole, e.reason]),
        [
          [1n, T.CREATED, U, P, SRC, ""],
          [2n, T.ACTIVATED, P, A, DST, ""],
          [3n, T.DEACTIVATED, A, I, SRC, "contract renewal"],
          [4n, T.REACTIVATED, I, P, SRC, ""],
          [5n, T.ACTIVATED, P, A, DST, ""],
        ],
      );
      assert.ok(events.every((e) => e.connectionId === conn.id && e.createTime));
      assert.deepEqual(
        events.map((e) => e.actorOrganizationId),
        [source.id, destination.id, source.id, source.id, destination.id],
      );
      assert.equal(events.at(-1)?.toState, now.connection?.state);
    });
  });
}

describe("example program", () => {
  it("walks a new pair through create, activate, list and history", { timeout: TEST_TIMEOUT_MS }, async () => {
    const { source, destination } = examplePair;
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [
        "--import",
        "tsx",
        join(PACKAGE_DIR, "src", "example.ts"),
        "--target",
        server.baseUrl,
        "--source-key",
        source.key,
        "--destination-key",
        destination.key,
        "--destination-id",
        destination.id,
        "--protocol",
        "grpc-web",
      ],
      { cwd: PACKAGE_DIR, timeout: TEST_TIMEOUT_MS - 5_000, encoding: "utf8" },
    );
    assert.match(stdout, /retried with the same request_id: same response: true/);
    assert.match(stdout, /source may not activate: PermissionDenied ERROR_REASON_CALLER_NOT_DESTINATION \(connections\.v1\)/);
    assert.match(stdout, /activated by the destination: CONNECTION_STATE_ACTIVE/);
    assert.match(stdout, /#2 CONNECTION_EVENT_TYPE_ACTIVATED: CONNECTION_STATE_PENDING -> CONNECTION_STATE_ACTIVE by CONNECTION_ROLE_DESTINATION/);
  });
});
