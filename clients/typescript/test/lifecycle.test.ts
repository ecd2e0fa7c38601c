/**
 * End to end: the generated TypeScript code and Connect for Node.js against the real `connections`
 * binary (CONNECTIONS_BIN, or ../../target/debug/connections; it is not built here).
 *
 * One server for the file; the same full lifecycle runs over gRPC (HTTP/2), gRPC-Web over HTTP/1.1
 * and gRPC-Web over HTTP/2, each with a (source, destination) pair of its own, since a pair can
 * hold only one connection; so do the watch (ResumableWatch), CheckAccess, invitation message,
 * BatchCheckAccess, data types (UpdateConnectionDataTypes, ApproveDataTypes, DeclineDataTypes) and
 * trusted partner (OrganizationPolicy) tests, and, on a server of their own, the tests of a watch
 * resuming across a restart (which restart it) and of pending connections expiring (a 2 s pending
 * lifetime).
 * Everything runs on 127.0.0.1, in temporary directories, bounded in time.
 *
 *   node --import tsx --test test/lifecycle.test.ts      (run_tests.sh does this)
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { equals, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { anyUnpack, type Timestamp } from "@bufbuild/protobuf/wkt";

import {
  Code,
  ConnectError,
  connect,
  enumName,
  errorReason,
  ErrorReason,
  ResumableWatch,
  type ConnectionsClient,
  type ConnectOptions,
  type WatchOptions,
} from "../src/client.js";
import { type CheckAccessRequestSchema, type CheckAccessResponse } from "../src/gen/connections/v1/access_service_pb.js";
import {
  ActivateConnectionResponseSchema,
  CreateConnectionResponseSchema,
  GetConnectionResponseSchema,
  UpdateConnectionDataTypesResponseSchema,
  type WatchConnectionEventsResponse,
} from "../src/gen/connections/v1/connection_service_pb.js";
import {
  type Connection,
  type ConnectionEvent,
  ConnectionEventSchema,
  ConnectionEventType,
  ConnectionRole,
  ConnectionState,
  ConnectionSchema,
  ConnectionStateSchema,
  DataType,
  DataTypeSchema,
} from "../src/gen/connections/v1/resources_pb.js";
import { BadRequestSchema, type ErrorInfo, ErrorInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { type Status } from "../src/gen/google/rpc/status_pb.js";
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

// Operator credentials of the shared server (CheckAccess for any pair).
const ADMIN_TOKEN = `admin-${randomUUID()}`;
const ACCESS_CHECK_TOKEN = `access-check-${randomUUID()}`;

let server: Server;
const pairs = new Map<string, { source: Org; destination: Org }>();
let outsider: Org;
let examplePair: { source: Org; destination: Org };
const clients: ConnectionsClient[] = [];

before(
  async () => {
    server = await Server.prepare({
      CONNECTIONS_ADMIN_TOKEN: ADMIN_TOKEN,
      CONNECTIONS_ACCESS_CHECK_TOKEN: ACCESS_CHECK_TOKEN,
    });
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
      // Each event names the API key that made it (each organization here has one).
      assert.ok(events.every((e) => e.actorApiKeyId !== "" && e.actorApiKeyDisplayName === "typescript tests"));
      assert.equal(new Set(events.map((e) => e.actorApiKeyId)).size, 2);
      assert.equal(events.at(-1)?.toState, now.connection?.state);
    });
  });
}

describe("example program", () => {
  it("walks a new pair through create, activate, CheckAccess, list, history and a resumed watch", { timeout: TEST_TIMEOUT_MS }, async () => {
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
        // CheckAccess as a data-moving service: with the operator's access-check token.
        "--access-check-token",
        ACCESS_CHECK_TOKEN,
      ],
      { cwd: PACKAGE_DIR, timeout: TEST_TIMEOUT_MS - 5_000, encoding: "utf8" },
    );
    assert.match(stdout, /retried with the same request_id: same response: true/);
    assert.match(stdout, /invitation: "Hello from the example: please activate to receive our inquiries\.", expires \d{4}-/);
    assert.match(stdout, /source may not activate: PermissionDenied ERROR_REASON_CALLER_NOT_DESTINATION \(connections\.v1\)/);
    assert.match(stdout, /activated by the destination: CONNECTION_STATE_ACTIVE/);
    assert.match(stdout, /#2 CONNECTION_EVENT_TYPE_ACTIVATED: CONNECTION_STATE_PENDING -> CONNECTION_STATE_ACTIVE by CONNECTION_ROLE_DESTINATION/);
    assert.match(stdout, /check access DATA_TYPE_INQUIRY: allowed true \(CONNECTION_STATE_ACTIVE\)/);
    assert.match(stdout, /check access DATA_TYPE_TRANSACTION: allowed false \(CONNECTION_STATE_ACTIVE\)/);
    assert.match(stdout, /check access DATA_TYPE_INQUIRY: allowed false \(CONNECTION_STATE_INACTIVE\)/);
    // The watch after the create's token starts with the activation; the resumed one brings
    // exactly the deactivation made while nobody watched.
    const watched = stdout
      .split("\n")
      .filter((line) => line.startsWith("watched "))
      .map((line) => line.replace(/ of .*$/, ""));
    assert.deepEqual(watched, ["watched #2 CONNECTION_EVENT_TYPE_ACTIVATED", "watched #3 CONNECTION_EVENT_TYPE_DEACTIVATED"], stdout);
  });
});

// --- WatchConnectionEvents with ResumableWatch, and CheckAccess ---------------------------------

type Connections = ConnectionsClient["connections"];
const T = ConnectionEventType;

/** Reads a watch one message at a time, each wait bounded. */
class Puller {
  private readonly messages: AsyncIterator<WatchConnectionEventsResponse>;

  constructor(readonly watch: ResumableWatch) {
    this.messages = watch[Symbol.asyncIterator]();
  }

  async next(timeoutMs = 10_000): Promise<IteratorResult<WatchConnectionEventsResponse>> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no message from the watch within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      return await Promise.race([this.messages.next(), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  async pull(timeoutMs?: number): Promise<WatchConnectionEventsResponse> {
    const result = await this.next(timeoutMs);
    assert.ok(!result.done, "the watch ended");
    return result.value;
  }

  /** The next n messages with an event (heartbeats, if yielded, are skipped). */
  async events(n: number, timeoutMs?: number): Promise<WatchConnectionEventsResponse[]> {
    const got: WatchConnectionEventsResponse[] = [];
    while (got.length < n) {
      const message = await this.pull(timeoutMs);
      if (message.event) got.push(message);
    }
    return got;
  }
}

const watching = (connections: Connections, options: WatchOptions) =>
  new Puller(new ResumableWatch(connections, { idleTimeoutMs: 30_000, ...options }));

const summary = (messages: WatchConnectionEventsResponse[]) =>
  messages.map((m) => [Number(m.event!.sequence), m.event!.type]);

/** Deactivate (by the source), reactivate, activate: events 3, 4, 5. Their change tokens. */
async function lifecycleWrites(S: Connections, D: Connections, connectionId: string): Promise<string[]> {
  return [
    (await S.deactivateConnection({ connectionId, reason: "paused" })).changeToken,
    (await S.reactivateConnection({ connectionId })).changeToken,
    (await D.activateConnection({ connectionId })).changeToken,
  ];
}

async function createAndActivate(S: Connections, D: Connections, destinationId: string, dataTypes = [DataType.INQUIRY]) {
  const created = await S.createConnection({ destinationOrganizationId: destinationId, dataTypes });
  const activated = await D.activateConnection({ connectionId: created.connection!.id });
  assert.ok(created.changeToken && activated.changeToken, "writes return change tokens");
  assert.notEqual(created.changeToken, activated.changeToken);
  return { created, activated, connectionId: created.connection!.id };
}

/** The token with one character in the middle changed. */
function altered(token: string): string {
  const i = Math.floor(token.length / 2);
  return token.slice(0, i) + (token[i] === "A" ? "B" : "A") + token.slice(i + 1);
}

for (const variant of VARIANTS) {
  describe(`watch and CheckAccess over ${variant.name}`, () => {
    const client = (apiKey?: string) => {
      const c = connect({ baseUrl: server.baseUrl, apiKey, protocol: variant.protocol, httpVersion: variant.httpVersion });
      clients.push(c);
      return c;
    };
    const party = (name: string) => {
      const org = server.newOrg(`${name} over ${variant.name}`);
      return { org, c: client(org.key) };
    };

    it("a watch from the beginning sees the lifecycle in order, as ListConnectionEvents does", { timeout: TEST_TIMEOUT_MS }, async () => {
      const source = party("Watch Source");
      const destination = party("Watch Destination");
      const S = source.c.connections, D = destination.c.connections;
      const { created, activated, connectionId } = await createAndActivate(S, D, destination.org.id);

      // Both parties watch from the beginning: the two events so far come from the database...
      const pullers = [watching(D, { fromBeginning: true }), watching(S, { fromBeginning: true })];
      try {
        const got = await Promise.all(pullers.map((p) => p.events(2)));
        // ...and the next three live, as they are committed.
        const tokens = [created.changeToken, activated.changeToken, ...(await lifecycleWrites(S, D, connectionId))];
        for (const [i, p] of pullers.entries()) got[i]!.push(...(await p.events(3)));

        const history = (await D.listConnectionEvents({ connectionId })).events;
        assert.deepEqual(summary(got[0]!), [
          [1, T.CREATED],
          [2, T.ACTIVATED],
          [3, T.DEACTIVATED],
          [4, T.REACTIVATED],
          [5, T.ACTIVATED],
        ]);
        for (const g of got) {
          // The same events ListConnectionEvents returns, field for field, in the same order.
          assert.equal(g.length, history.length);
          g.forEach((m, i) => assert.ok(equals(ConnectionEventSchema, m.event!, history[i]!), `event ${i + 1}`));
          // Each message's token names the place just after its event: the token its write returned.
          assert.deepEqual(g.map((m) => m.changeToken), tokens);
        }
        assert.equal(got[0]![2]!.event!.reason, "paused");
        assert.deepEqual(pullers.map((p) => p.watch.lastChangeToken), [tokens.at(-1), tokens.at(-1)]);
        assert.deepEqual(pullers.map((p) => p.watch.resumes), [0, 0]);

        // close() ends the iteration, without an error.
        pullers[0]!.watch.close();
        assert.equal((await pullers[0]!.next()).done, true);
      } finally {
        for (const p of pullers) p.watch.close();
      }
    });

    it("the role filter keeps the connections where the caller has that role", { timeout: TEST_TIMEOUT_MS }, async () => {
      const source = party("Role Source");
      const destination = party("Role Destination");
      const other = party("Role Other");
      const outbound = await createAndActivate(source.c.connections, destination.c.connections, destination.org.id);
      const inbound = await createAndActivate(other.c.connections, source.c.connections, source.org.id);
      const asDestination = watching(source.c.connections, { fromBeginning: true, role: ConnectionRole.DESTINATION });
      const asSource = watching(source.c.connections, { fromBeginning: true, role: ConnectionRole.SOURCE });
      try {
        assert.deepEqual((await asDestination.events(2)).map((m) => m.event!.connectionId), [inbound.connectionId, inbound.connectionId]);
        assert.deepEqual((await asSource.events(2)).map((m) => m.event!.connectionId), [outbound.connectionId, outbound.connectionId]);
      } finally {
        asDestination.watch.close();
        asSource.watch.close();
      }
    });

    it("a watch resumed from the last token repeats nothing and misses nothing", { timeout: TEST_TIMEOUT_MS }, async () => {
      const source = party("Resume Source");
      const destination = party("Resume Destination");
      const S = source.c.connections, D = destination.c.connections;
      const { activated, connectionId } = await createAndActivate(S, D, destination.org.id);

      // A first watch reads the two events, then stops.
      const first = watching(D, { fromBeginning: true });
      let seen: WatchConnectionEventsResponse[];
      try {
        seen = await first.events(2);
      } finally {
        first.watch.close();
      }
      const checkpoint = first.watch.lastChangeToken;
      assert.deepEqual(summary(seen), [[1, T.CREATED], [2, T.ACTIVATED]]);
      assert.equal(checkpoint, activated.changeToken);

      // Three changes while nobody watches.
      const tokens = await lifecycleWrites(S, D, connectionId);

      // Resumed from the checkpoint: exactly those three, then what comes next, live.
      const second = watching(D, { afterChangeToken: checkpoint });
      let resumed: WatchConnectionEventsResponse[], following: WatchConnectionEventsResponse;
      try {
        resumed = await second.events(3);
        assert.deepEqual(summary(resumed), [[3, T.DEACTIVATED], [4, T.REACTIVATED], [5, T.ACTIVATED]]);
        assert.deepEqual(resumed.map((m) => m.changeToken), tokens);
        const last = await D.deactivateConnection({ connectionId });
        following = await second.pull();
        assert.deepEqual(summary([following]), [[6, T.DEACTIVATED]]);
        assert.equal(following.changeToken, last.changeToken);
      } finally {
        second.watch.close();
      }

      const history = (await S.listConnectionEvents({ connectionId })).events;
      const all = [...seen, ...resumed, following];
      assert.equal(all.length, history.length);
      all.forEach((m, i) => assert.ok(equals(ConnectionEventSchema, m.event!, history[i]!), `event ${i + 1}`));

      // A write's token works as well: after the reactivation (event 4) comes event 5.
      const third = watching(S, { afterChangeToken: tokens[1] });
      try {
        assert.deepEqual(summary(await third.events(2)), [[5, T.ACTIVATED], [6, T.DEACTIVATED]]);
      } finally {
        third.watch.close();
      }

      // An altered token is refused, and the watch throws rather than retrying.
      const bad = new ResumableWatch(D, { afterChangeToken: altered(checkpoint) });
      const r = await refusal(bad[Symbol.asyncIterator]().next());
      assert.deepEqual([r.code, r.info.reason], [Code.InvalidArgument, "ERROR_REASON_INVALID_CHANGE_TOKEN"]);
      assert.equal(bad.resumes, 0);
    });

    it("CheckAccess follows the transitions, never stale with at_least_change_token; outsiders are refused", { timeout: TEST_TIMEOUT_MS }, async () => {
      const source = party("Access Source");
      const destination = party("Access Destination");
      const outsider = party("Access Outsider");
      const operator = client(ACCESS_CHECK_TOKEN);
      const admin = client(ADMIN_TOKEN);
      const S = source.c.connections, D = destination.c.connections;
      const { UNSPECIFIED: U, PENDING: P, ACTIVE: A, INACTIVE: I } = ConnectionState;
      const check = async (
        caller: ConnectionsClient,
        dataType: DataType,
        atLeastChangeToken = "",
        [src, dst] = [source.org.id, destination.org.id],
      ) => {
        const answer = await caller.access.checkAccess({
          sourceOrganizationId: src,
          destinationOrganizationId: dst,
          dataType,
          atLeastChangeToken,
        });
        assert.ok(answer.changeToken, "the answer names the change it reflects");
        return [answer.allowed, answer.connectionId, answer.state];
      };

      // No connection yet.
      assert.deepEqual(await check(source.c, DataType.INQUIRY), [false, "", U]);
      assert.deepEqual(await check(destination.c, DataType.INQUIRY), [false, "", U]);

      const created = await S.createConnection({
        destinationOrganizationId: destination.org.id,
        dataTypes: [DataType.INQUIRY, DataType.ACCOUNT],
      });
      const id = created.connection!.id;
      for (const caller of [source.c, destination.c, operator, admin]) {
        assert.deepEqual(await check(caller, DataType.INQUIRY, created.changeToken), [false, id, P]);
      }

      const token = (await D.activateConnection({ connectionId: id })).changeToken;
      for (const caller of [source.c, destination.c, operator, admin]) {
        assert.deepEqual(await check(caller, DataType.INQUIRY, token), [true, id, A]);
        assert.deepEqual(await check(caller, DataType.ACCOUNT, token), [true, id, A]);
        // Data types the connection does not include.
        assert.deepEqual(await check(caller, DataType.TRANSACTION, token), [false, id, A]);
        assert.deepEqual(await check(caller, DataType.VERIFICATION, token), [false, id, A]);
      }
      // Direction matters: nothing flows from the destination to the source.
      assert.deepEqual(await check(source.c, DataType.INQUIRY, token, [destination.org.id, source.org.id]), [false, "", U]);

      // Only the parties named in the request (or an operator) may ask.
      const request = { sourceOrganizationId: source.org.id, destinationOrganizationId: destination.org.id, dataType: DataType.INQUIRY };
      let r = await refusal(outsider.c.access.checkAccess(request));
      assert.deepEqual([r.code, r.info.reason], [Code.PermissionDenied, "ERROR_REASON_CALLER_NOT_PARTY"]);
      assert.equal(errorReason(r.err), ErrorReason.CALLER_NOT_PARTY);
      r = await refusal(client().access.checkAccess(request));
      assert.deepEqual([r.code, r.info.reason], [Code.Unauthenticated, "ERROR_REASON_API_KEY_MISSING"]);
      // The access-check token can call CheckAccess and nothing else.
      r = await refusal(operator.connections.listConnections({}));
      assert.equal(r.code, Code.Unauthenticated);

      // Malformed requests.
      r = await refusal(source.c.access.checkAccess({ ...request, atLeastChangeToken: altered(token) }));
      assert.deepEqual([r.code, r.info.reason], [Code.InvalidArgument, "ERROR_REASON_INVALID_CHANGE_TOKEN"]);
      r = await refusal(source.c.access.checkAccess({ ...request, dataType: DataType.UNSPECIFIED }));
      assert.deepEqual([r.code, r.info.reason], [Code.InvalidArgument, "ERROR_REASON_INVALID_ARGUMENT"]);

      const deactivated = await S.deactivateConnection({ connectionId: id });
      for (const caller of [source.c, destination.c, operator]) {
        assert.deepEqual(await check(caller, DataType.INQUIRY, deactivated.changeToken), [false, id, I]);
      }

      // Never stale: right after each transition, a check with its token sees it.
      const callers = [source.c, destination.c, operator];
      for (let round = 0; round < 10; round++) {
        const caller = callers[round % 3]!;
        let t = (await S.reactivateConnection({ connectionId: id })).changeToken;
        assert.deepEqual(await check(caller, DataType.INQUIRY, t), [false, id, P], `round ${round}`);
        t = (await D.activateConnection({ connectionId: id })).changeToken;
        assert.deepEqual(await check(caller, DataType.ACCOUNT, t), [true, id, A], `round ${round}`);
        t = (await D.deactivateConnection({ connectionId: id })).changeToken;
        assert.deepEqual(await check(caller, DataType.ACCOUNT, t), [false, id, I], `round ${round}`);
      }
    });
  });

  describe(`watch across a server restart over ${variant.name}`, () => {
    // A server of its own, since it is restarted, with a heartbeat every second.
    let own: Server;
    let source: Org, destination: Org;
    before(
      async () => {
        own = await Server.prepare({ CONNECTIONS_WATCH_HEARTBEAT_INTERVAL: "1s" });
        source = own.newOrg("Restart Source");
        destination = own.newOrg("Restart Destination");
        await own.start(source);
      },
      { timeout: 120_000 },
    );
    after(
      async () => {
        if (!own) return;
        try {
          if (!own.started) return;
          const { code, signal } = await own.stop();
          assert.equal(signal, null, `server was killed by ${signal}:\n${own.log()}`);
          assert.equal(code, 0, `server exited ${code} after SIGTERM:\n${own.log()}`);
        } finally {
          own.cleanup();
        }
      },
      { timeout: 60_000 },
    );

    it("resumes after the last token: every event once, in order, heartbeats included", { timeout: TEST_TIMEOUT_MS }, async () => {
      const options = { baseUrl: own.baseUrl, protocol: variant.protocol, httpVersion: variant.httpVersion };
      const sc = connect({ ...options, apiKey: source.key });
      const dc = connect({ ...options, apiKey: destination.key });
      clients.push(sc, dc);
      const S = sc.connections, D = dc.connections;
      const { connectionId } = await createAndActivate(S, D, destination.id);
      const ended: (Code | undefined)[] = []; // what ended each stream the watch resumed after
      const puller = watching(D, {
        fromBeginning: true,
        heartbeats: true,
        idleTimeoutMs: 10_000,
        initialBackoffMs: 100,
        maxBackoffMs: 1_000,
        onResume: (err) => ended.push(err?.code),
      });
      let beforeStop: WatchConnectionEventsResponse[], afterRestart: WatchConnectionEventsResponse[], following: WatchConnectionEventsResponse[];
      let heartbeat: WatchConnectionEventsResponse;
      try {
        beforeStop = await puller.events(2);
        assert.deepEqual(summary(beforeStop), [[1, T.CREATED], [2, T.ACTIVATED]]);
        // Heartbeats (no event) arrive when nothing happens, each with a token.
        heartbeat = await puller.pull(5_000);
        assert.equal(heartbeat.event, undefined);
        assert.ok(heartbeat.changeToken);
        assert.equal(puller.watch.lastChangeToken, heartbeat.changeToken);

        const stopped = await own.stop();
        assert.deepEqual(stopped, { code: 0, signal: null }, own.log());
        await own.start(source);
        // Three changes while the watch is cut off (it is not being read).
        const tokens = await lifecycleWrites(S, D, connectionId);

        afterRestart = await puller.events(3, 30_000);
        assert.deepEqual(summary(afterRestart), [[3, T.DEACTIVATED], [4, T.REACTIVATED], [5, T.ACTIVATED]]);
        assert.deepEqual(afterRestart.map((m) => m.changeToken), tokens);
        assert.ok(puller.watch.resumes >= 1);
        // Nothing else is pending: the next event is the next write.
        const last = await S.deactivateConnection({ connectionId });
        following = await puller.events(1);
        assert.deepEqual(summary(following), [[6, T.DEACTIVATED]]);
        assert.equal(following[0]!.changeToken, last.changeToken);
      } finally {
        puller.watch.close();
      }

      const history = (await D.listConnectionEvents({ connectionId })).events;
      const all = [...beforeStop, ...afterRestart, ...following];
      assert.equal(all.length, history.length);
      all.forEach((m, i) => assert.ok(equals(ConnectionEventSchema, m.event!, history[i]!), `event ${i + 1}`));

      // A heartbeat's token resumes after it: the events before it are not sent again.
      const again = watching(D, { afterChangeToken: heartbeat.changeToken, idleTimeoutMs: 10_000 });
      try {
        assert.deepEqual(summary(await again.events(4)), [
          [3, T.DEACTIVATED],
          [4, T.REACTIVATED],
          [5, T.ACTIVATED],
          [6, T.DEACTIVATED],
        ]);
      } finally {
        again.watch.close();
      }

      // The server ends open streams with UNAVAILABLE when it stops (gRPC-Web included: its status
      // travels in a trailer frame at the end of the body).
      assert.equal(ended[0], Code.Unavailable, `what ended the stream at the stop: ${ended.map((c) => (c === undefined ? "no error" : Code[c]))}`);
    });
  });
}

// --- Invitations: messages and expiry; BatchCheckAccess and the list's data_type filter -------

/** The server's default --pending-expiry: 30 days, in nanoseconds. */
const DEFAULT_PENDING_LIFETIME_NS = 30n * 24n * 3600n * 1_000_000_000n;

const nanos = (t: Timestamp | undefined): bigint => {
  assert.ok(t, "the timestamp is set");
  return t.seconds * 1_000_000_000n + BigInt(t.nanos);
};

/** How long after `since` the connection's expire_time is, in nanoseconds. */
function lifetimeNs(conn: Connection, since: Timestamp | undefined): bigint {
  assert.ok(conn.expireTime, `no expire_time on connection ${conn.id}`);
  return nanos(conn.expireTime) - nanos(since);
}

/** The fields named by the google.rpc.BadRequest details of a refused call. */
const violations = (err: ConnectError): string[] =>
  err.findDetails(BadRequestSchema).flatMap((bad) => bad.fieldViolations.map((v) => v.field));

/** Awaits a call that must be refused for its invitation message: INVALID_ARGUMENT, a violation on `message`. */
async function refusedMessage(call: Promise<unknown>): Promise<void> {
  const r = await refusal(call);
  assert.deepEqual([r.code, r.info.reason], [Code.InvalidArgument, "ERROR_REASON_INVALID_ARGUMENT"]);
  assert.deepEqual(violations(r.err), ["message"]);
}

/** A google.rpc.Status (a BatchCheckAccess item's error): its one ErrorInfo and its BadRequest fields. */
function statusDetails(status: Status): { info: ErrorInfo; fields: string[] } {
  const infos = status.details.flatMap((d) => anyUnpack(d, ErrorInfoSchema) ?? []);
  assert.equal(infos.length, 1, `expected one ErrorInfo on ${Code[status.code]} "${status.message}", got ${infos.length}`);
  assert.equal(infos[0]!.domain, "connections.v1");
  const fields = status.details.flatMap((d) => anyUnpack(d, BadRequestSchema)?.fieldViolations.map((v) => v.field) ?? []);
  return { info: infos[0]!, fields };
}

/** What a CheckAccess answer says, without its change token. */
const said = (answer: CheckAccessResponse) => [answer.allowed, answer.connectionId, answer.state];

for (const variant of VARIANTS) {
  describe(`invitations and BatchCheckAccess over ${variant.name}`, () => {
    const client = (apiKey?: string) => {
      const c = connect({ baseUrl: server.baseUrl, apiKey, protocol: variant.protocol, httpVersion: variant.httpVersion });
      clients.push(c);
      return c;
    };
    const party = (name: string) => {
      const org = server.newOrg(`${name} over ${variant.name}`);
      return { org, c: client(org.key) };
    };

    it("an invitation's message reaches the destination; control characters are refused", { timeout: TEST_TIMEOUT_MS }, async () => {
      const source = party("Invitation Source");
      const destination = party("Invitation Destination");
      const S = source.c.connections, D = destination.c.connections;
      const { PENDING: P, ACTIVE: A } = ConnectionState;
      const create = (message: string) =>
        S.createConnection({ destinationOrganizationId: destination.org.id, dataTypes: [DataType.ACCOUNT], message });

      // Control characters other than line breaks and tabs are refused, and so is a message longer
      // than 1,000 characters; nothing is created.
      for (const bad of ["Please activate\u0007", "Hello\u0000there", "Report \u001b[2J ready", "x".repeat(1001)]) {
        await refusedMessage(create(bad));
      }
      assert.deepEqual((await S.listConnections({})).connections, []);

      // The message is kept trimmed of the white space around it; line breaks and tabs inside stay.
      const text = "Hello from Acme Bank,\n\tplease activate our account feed.\r\nThanks!";
      const conn = (await create(`  ${text}\n\n `)).connection!;
      assert.deepEqual([conn.state, conn.invitationMessage], [P, text]);
      // A pending connection waits for its destination for the default lifetime, 30 days.
      assert.equal(lifetimeNs(conn, conn.createTime), DEFAULT_PENDING_LIFETIME_NS);

      // The destination sees it on the connection and on the CREATED event.
      const seen = (await D.getConnection({ connectionId: conn.id })).connection!;
      assert.ok(equals(ConnectionSchema, seen, conn));
      const inbound = (await D.listConnections({ role: ConnectionRole.DESTINATION })).connections;
      assert.deepEqual(inbound.map((c) => [c.id, c.invitationMessage]), [[conn.id, text]]);
      const events = (await D.listConnectionEvents({ connectionId: conn.id })).events;
      assert.deepEqual(events.map((e) => [e.type, e.message, e.actorOrganizationId]), [[T.CREATED, text, source.org.id]]);

      // Once active, it no longer expires; the message stays the latest invitation's.
      const activated = (await D.activateConnection({ connectionId: conn.id })).connection!;
      assert.deepEqual([activated.state, activated.invitationMessage], [A, text]);
      assert.equal(activated.expireTime, undefined);

      // A reactivation is a new invitation, with a message of its own (checked as on create)...
      await S.deactivateConnection({ connectionId: conn.id });
      await refusedMessage(S.reactivateConnection({ connectionId: conn.id, message: "Again\u001b[0m" }));
      const longest = "y".repeat(1000);
      const again = (await S.reactivateConnection({ connectionId: conn.id, message: `\n${longest}\t ` })).connection!;
      assert.deepEqual([again.state, again.invitationMessage], [P, longest]);
      assert.equal(lifetimeNs(again, again.updateTime), DEFAULT_PENDING_LIFETIME_NS);
      assert.equal((await D.getConnection({ connectionId: conn.id })).connection?.invitationMessage, longest);

      // ...and a reactivation without one leaves the connection without a message.
      await D.deactivateConnection({ connectionId: conn.id });
      const silent = (await S.reactivateConnection({ connectionId: conn.id })).connection!;
      assert.deepEqual([silent.state, silent.invitationMessage], [P, ""]);

      // The history keeps each invitation's message, on CREATED and REACTIVATED events only.
      const history = (await D.listConnectionEvents({ connectionId: conn.id })).events;
      const historyForSource = (await S.listConnectionEvents({ connectionId: conn.id })).events;
      assert.equal(historyForSource.length, history.length);
      history.forEach((e, i) => assert.ok(equals(ConnectionEventSchema, e, historyForSource[i]!)));
      assert.deepEqual(
        history.map((e) => [e.type, e.message]),
        [
          [T.CREATED, text],
          [T.ACTIVATED, ""],
          [T.DEACTIVATED, ""],
          [T.REACTIVATED, longest],
          [T.DEACTIVATED, ""],
          [T.REACTIVATED, ""],
        ],
      );
    });

    it("BatchCheckAccess answers items as CheckAccess would, one change token, refusals per item; the data_type list filter", { timeout: TEST_TIMEOUT_MS }, async () => {
      const dst = party("Batch Destination");
      const [both, account, pending, inactive] = ["Both", "Account", "Pending", "Inactive"].map((n) => party(`Batch Source ${n}`));
      const x = party("Batch Other Source"), y = party("Batch Other Destination");
      const operator = client(ACCESS_CHECK_TOKEN);
      const D = dst.c.connections;
      const { UNSPECIFIED: U, PENDING: P, ACTIVE: A, INACTIVE: I } = ConnectionState;
      const { INQUIRY: INQ, ACCOUNT: ACC, TRANSACTION: TXN } = DataType;

      const bothId = (await createAndActivate(both!.c.connections, D, dst.org.id, [INQ, ACC])).connectionId;
      const accountId = (await createAndActivate(account!.c.connections, D, dst.org.id, [ACC])).connectionId;
      const pendingId = (await pending!.c.connections.createConnection({ destinationOrganizationId: dst.org.id, dataTypes: [INQ] })).connection!.id;
      const inactiveId = (await createAndActivate(inactive!.c.connections, D, dst.org.id, [INQ])).connectionId;
      await D.deactivateConnection({ connectionId: inactiveId });
      // A pair the destination is no party to; its activation is the last change made.
      const others = await createAndActivate(x.c.connections, y.c.connections, y.org.id, [INQ]);
      const token = others.activated.changeToken;

      type Question = MessageInitShape<typeof CheckAccessRequestSchema>;
      const question = (src: string, dstId: string, dataType: DataType): Question => ({
        sourceOrganizationId: src,
        destinationOrganizationId: dstId,
        dataType,
      });
      const checks = [
        question(both!.org.id, dst.org.id, INQ),
        question(account!.org.id, dst.org.id, INQ), // a type the connection does not include
        question(x.org.id, y.org.id, INQ), // not the caller's pair: refused, alone
        question(account!.org.id, dst.org.id, ACC),
        question(pending!.org.id, dst.org.id, INQ),
        question(inactive!.org.id, dst.org.id, INQ),
        question(dst.org.id, both!.org.id, INQ), // the other direction: no connection
        question(both!.org.id, dst.org.id, DataType.UNSPECIFIED), // malformed: refused, alone
        question(both!.org.id, dst.org.id, ACC),
        question(both!.org.id, dst.org.id, INQ), // asked twice, answered twice
      ];
      const batch = (caller: ConnectionsClient, items: Question[], atLeastChangeToken = token) =>
        caller.access.batchCheckAccess({ checks: items, atLeastChangeToken });

      const answer = await batch(dst.c, checks);
      assert.ok(answer.changeToken, "the batch names the change it reflects");
      const outcome = answer.results.map((r) => r.result.case);
      assert.deepEqual(outcome, ["response", "response", "error", "response", "response", "response", "response", "error", "response", "response"]);
      const responses = answer.results.flatMap((r) => (r.result.case === "response" ? [r.result.value] : []));
      // Every answer reflects the one state the batch's change token names.
      assert.deepEqual(new Set(responses.map((r) => r.changeToken)), new Set([answer.changeToken]));
      assert.deepEqual(responses.map(said), [
        [true, bothId, A],
        [false, accountId, A],
        [true, accountId, A],
        [false, pendingId, P],
        [false, inactiveId, I],
        [false, "", U],
        [true, bothId, A],
        [true, bothId, A],
      ]);

      // The item about another pair is refused in its own status, as CheckAccess refuses it.
      const errorOf = (i: number) => {
        const result = answer.results[i]!.result;
        assert.equal(result.case, "error", `item ${i}`);
        return result.value as Status;
      };
      const denied = errorOf(2);
      assert.equal(denied.code, Code.PermissionDenied);
      assert.equal(statusDetails(denied).info.reason, "ERROR_REASON_CALLER_NOT_PARTY");
      const malformed = errorOf(7);
      assert.equal(malformed.code, Code.InvalidArgument);
      assert.equal(statusDetails(malformed).info.reason, "ERROR_REASON_INVALID_ARGUMENT");
      assert.deepEqual(statusDetails(malformed).fields, ["data_type"]);

      // Each result is what CheckAccess answers alone, item by item, in the request's order.
      for (const [i, item] of checks.entries()) {
        const single = dst.c.access.checkAccess({ ...item, atLeastChangeToken: answer.changeToken });
        const result = answer.results[i]!.result;
        if (result.case === "response") {
          assert.deepEqual(said(await single), said(result.value), `item ${i}`);
        } else {
          const r = await refusal(single);
          const expected = statusDetails(result.value!);
          assert.deepEqual([r.code, r.err.rawMessage], [result.value!.code, result.value!.message], `item ${i}`);
          assert.ok(equals(ErrorInfoSchema, r.info, expected.info), `item ${i}`);
          assert.deepEqual(violations(r.err), expected.fields, `item ${i}`);
        }
      }

      // The operator's access-check token may ask about any pair.
      const byOperator = await batch(operator, checks);
      assert.deepEqual(byOperator.results.map((r) => r.result.case), outcome.map((c, i) => (i === 2 ? "response" : c)));
      byOperator.results.forEach((r, i) => {
        const mine = answer.results[i]!.result;
        if (r.result.case === "response" && mine.case === "response") assert.deepEqual(said(r.result.value), said(mine.value), `item ${i}`);
      });
      const theirs = byOperator.results[2]!.result;
      assert.equal(theirs.case, "response");
      assert.deepEqual(said(theirs.value as CheckAccessResponse), [true, others.connectionId, A]);

      // An item may not carry its own token (the batch has one): that item alone is refused.
      const mixed = await batch(dst.c, [checks[0]!, { ...checks[0]!, atLeastChangeToken: token }]);
      assert.deepEqual(mixed.results.map((r) => r.result.case), ["response", "error"]);
      const ownToken = mixed.results[1]!.result.value as Status;
      assert.equal(ownToken.code, Code.InvalidArgument);
      assert.deepEqual(statusDetails(ownToken).fields, ["at_least_change_token"]);

      // 1 to 1,000 checks; what concerns the whole call fails the whole call.
      const copies = (n: number) => Array.from({ length: n }, () => checks[0]!);
      assert.equal((await batch(operator, copies(1000))).results.length, 1000);
      for (const items of [[], copies(1001)]) {
        const r = await refusal(batch(operator, items));
        assert.deepEqual([r.code, r.info.reason], [Code.InvalidArgument, "ERROR_REASON_INVALID_ARGUMENT"]);
        assert.deepEqual(violations(r.err), ["checks"]);
      }
      let r = await refusal(batch(dst.c, checks, altered(token)));
      assert.deepEqual([r.code, r.info.reason], [Code.InvalidArgument, "ERROR_REASON_INVALID_CHANGE_TOKEN"]);
      r = await refusal(batch(client(), checks));
      assert.deepEqual([r.code, r.info.reason], [Code.Unauthenticated, "ERROR_REASON_API_KEY_MISSING"]);

      // ListConnections' data_type filter: with state ACTIVE and role DESTINATION, the connections
      // over which the destination may receive the type now, newest first; without a state, every
      // connection that includes it.
      const listed = async (c: ConnectionsClient, filters: Parameters<Connections["listConnections"]>[0]) =>
        (await c.connections.listConnections(filters)).connections.map((conn) => conn.id);
      const { DESTINATION: DST, SOURCE: SRC } = ConnectionRole;
      assert.deepEqual(await listed(dst.c, { role: DST, state: A, dataType: INQ }), [bothId]);
      assert.deepEqual(await listed(dst.c, { role: DST, state: A, dataType: ACC }), [accountId, bothId]);
      assert.deepEqual(await listed(dst.c, { role: DST, state: A, dataType: TXN }), []);
      assert.deepEqual(await listed(dst.c, { role: DST, dataType: INQ }), [inactiveId, pendingId, bothId]);
      assert.deepEqual(await listed(dst.c, { role: DST }), [inactiveId, pendingId, accountId, bothId]);
      assert.deepEqual(await listed(both!.c, { role: SRC, state: A, dataType: ACC }), [bothId]);
      assert.deepEqual(await listed(account!.c, { role: SRC, state: A, dataType: INQ }), []);
      // A data mover's two views agree: the list names exactly the sources the batch allows.
      const sources = [both!, account!, pending!, inactive!, x].map((p) => p.org.id);
      for (const dataType of [INQ, ACC, TXN]) {
        const results = (await batch(dst.c, sources.map((s) => question(s, dst.org.id, dataType)))).results;
        const allowed = sources.filter((_, i) => {
          const res = results[i]!.result;
          return res.case === "response" && res.value.allowed;
        });
        const page = (await D.listConnections({ role: DST, state: A, dataType })).connections;
        assert.deepEqual(new Set(page.map((c) => c.sourceOrganizationId)), new Set(allowed), enumName(DataTypeSchema, dataType));
      }
    });
  });

  describe(`pending expiry over ${variant.name}`, () => {
    // A server of its own, on which a pending connection waits two seconds for its destination.
    let own: Server;
    let source: Org, destination: Org, other: Org;
    before(
      async () => {
        own = await Server.prepare({ CONNECTIONS_PENDING_EXPIRY: "2s" });
        source = own.newOrg("Expiry Source");
        destination = own.newOrg("Expiry Destination");
        other = own.newOrg("Expiry Other Source");
        await own.start(source);
      },
      { timeout: 120_000 },
    );
    after(
      async () => {
        if (!own) return;
        try {
          if (!own.started) return;
          const { code, signal } = await own.stop();
          assert.equal(signal, null, `server was killed by ${signal}:\n${own.log()}`);
          assert.equal(code, 0, `server exited ${code} after SIGTERM:\n${own.log()}`);
        } finally {
          own.cleanup();
        }
      },
      { timeout: 60_000 },
    );

    it("a pending connection expires (EXPIRED, no actor); activating it after expire_time is CONNECTION_EXPIRED", { timeout: TEST_TIMEOUT_MS }, async () => {
      const options = { baseUrl: own.baseUrl, protocol: variant.protocol, httpVersion: variant.httpVersion };
      const [sc, dc, oc] = [source, destination, other].map((org) => connect({ ...options, apiKey: org.key }));
      clients.push(sc!, dc!, oc!);
      const S = sc!.connections, D = dc!.connections;
      const { UNSPECIFIED: U, PENDING: P, ACTIVE: A, INACTIVE: I } = ConnectionState;
      const create = async (c: Connections, message = "") =>
        (await c.createConnection({ destinationOrganizationId: destination.id, dataTypes: [DataType.INQUIRY], message })).connection!;
      const get = async (connectionId: string) => (await D.getConnection({ connectionId })).connection!;

      // The destination watches; the expiry comes to it like any other change.
      const puller = watching(D, { fromBeginning: true });
      try {
        const first = await create(S, "Valid for two seconds");
        assert.equal(lifetimeNs(first, first.createTime), 2_000_000_000n);

        // The service expires it at its first sweep after expire_time (sweeps run every 10 s): an
        // EXPIRED event that no organization made.
        const [created, expired] = await puller.events(2, 30_000);
        assert.deepEqual(summary([created!, expired!]), [[1, T.CREATED], [2, T.EXPIRED]]);
        const e = expired!.event!;
        assert.deepEqual([e.connectionId, e.fromState, e.toState], [first.id, P, I]);
        assert.deepEqual([e.actorOrganizationId, e.actorRole, e.actorApiKeyId, e.actorApiKeyDisplayName], ["", U, "", ""]);
        assert.deepEqual([e.reason, e.message], ["", ""]);
        assert.ok(nanos(e.createTime) >= nanos(first.expireTime), "expired at or after its expire_time");
        const history = (await S.listConnectionEvents({ connectionId: first.id })).events;
        assert.equal(history.length, 2);
        [created!, expired!].forEach((m, i) => assert.ok(equals(ConnectionEventSchema, m.event!, history[i]!), `event ${i + 1}`));
        const expiredConn = await get(first.id);
        assert.equal(expiredConn.state, I);
        assert.equal(expiredConn.expireTime, undefined);
        // No longer PENDING: there is nothing to activate.
        let r = await refusal(D.activateConnection({ connectionId: first.id }));
        assert.deepEqual([r.code, r.info.reason], [Code.FailedPrecondition, "ERROR_REASON_INVALID_STATE_TRANSITION"]);

        // A sweep has just run (it wrote that event) and the next is about 10 s away. A connection
        // created now is past its expire_time 2 s later but still PENDING: the destination's
        // activation is refused for the expiry and changes nothing.
        const second = await create(oc!.connections);
        await sleep(Math.max(0, Number(nanos(second.expireTime) / 1_000_000n) - Date.now()) + 300);
        r = await refusal(D.activateConnection({ connectionId: second.id }));
        assert.deepEqual([r.code, r.info.reason], [Code.FailedPrecondition, "ERROR_REASON_CONNECTION_EXPIRED"]);
        assert.equal(errorReason(r.err), ErrorReason.CONNECTION_EXPIRED);
        assert.equal((await get(second.id)).etag, second.etag);
        // The next sweep expires it.
        const next = await puller.events(2, 30_000);
        assert.deepEqual(
          next.map((m) => [m.event!.connectionId, Number(m.event!.sequence), m.event!.type]),
          [
            [second.id, 1, T.CREATED],
            [second.id, 2, T.EXPIRED],
          ],
        );

        // The source invites again, with a new lifetime; an activation in time succeeds.
        const again = (await S.reactivateConnection({ connectionId: first.id, message: "Second try" })).connection!;
        assert.deepEqual([again.state, again.invitationMessage], [P, "Second try"]);
        assert.equal(lifetimeNs(again, again.updateTime), 2_000_000_000n);
        const activated = (await D.activateConnection({ connectionId: first.id })).connection!;
        assert.equal(activated.state, A);
        assert.equal(activated.expireTime, undefined);
        const later = await puller.events(2);
        assert.deepEqual(summary(later), [[3, T.REACTIVATED], [4, T.ACTIVATED]]);
        assert.equal(later[0]!.event!.message, "Second try");
      } finally {
        puller.watch.close();
      }
    });
  });
}

// --- Data types that change, and trusted partners -----------------------------------------------

/** A DATA_TYPES_* event's four sets: allowed and pending, before and after. */
const sets = (e: ConnectionEvent) => [e.previousDataTypes, e.previousPendingDataTypes, e.dataTypes, e.pendingDataTypes];

/** A connection's state, allowed data types and pending data types. */
const typesOf = (c: Connection | undefined) => {
  assert.ok(c, "the response holds the connection");
  return [c.state, c.dataTypes, c.pendingDataTypes];
};

for (const variant of VARIANTS) {
  describe(`data types and trusted partners over ${variant.name}`, () => {
    const client = (apiKey?: string) => {
      const c = connect({ baseUrl: server.baseUrl, apiKey, protocol: variant.protocol, httpVersion: variant.httpVersion });
      clients.push(c);
      return c;
    };
    const party = (name: string) => {
      const org = server.newOrg(`${name} over ${variant.name}`);
      return { org, c: client(org.key) };
    };
    const { INQUIRY: INQ, VERIFICATION: VER, ACCOUNT: ACC, TRANSACTION: TXN } = DataType;
    const { UNSPECIFIED: U, PENDING: P, ACTIVE: A, INACTIVE: I } = ConnectionState;
    const { SOURCE: SRC, DESTINATION: DST } = ConnectionRole;

    /** The calls the data types tests make on one connection, by its source S and destination D. */
    function onConnection(source: ReturnType<typeof party>, destination: ReturnType<typeof party>) {
      const S = source.c.connections, D = destination.c.connections;
      const pair = {
        S,
        D,
        connectionId: "",
        update: (c: Connections, dataTypes: DataType[], fields: { etag?: string; requestId?: string } = {}) =>
          c.updateConnectionDataTypes({ connectionId: pair.connectionId, dataTypes, ...fields }),
        approve: (c: Connections, fields: { etag?: string; requestId?: string } = {}) =>
          c.approveDataTypes({ connectionId: pair.connectionId, ...fields }),
        decline: (c: Connections, fields: { etag?: string; reason?: string } = {}) =>
          c.declineDataTypes({ connectionId: pair.connectionId, ...fields }),
        get: async () => (await D.getConnection({ connectionId: pair.connectionId })).connection!,
        history: async () => {
          const events = (await D.listConnectionEvents({ connectionId: pair.connectionId })).events;
          const forSource = (await S.listConnectionEvents({ connectionId: pair.connectionId })).events;
          assert.equal(forSource.length, events.length);
          events.forEach((e, i) => assert.ok(equals(ConnectionEventSchema, e, forSource[i]!), `event ${i + 1}`));
          return events;
        },
        /** CheckAccess (by the destination) with a write's token. */
        allowed: async (dataType: DataType, atLeastChangeToken: string) => {
          const answer = await destination.c.access.checkAccess({
            sourceOrganizationId: source.org.id,
            destinationOrganizationId: destination.org.id,
            dataType,
            atLeastChangeToken,
          });
          assert.equal(answer.connectionId, pair.connectionId);
          return answer.allowed;
        },
      };
      return pair;
    }

    it("the source proposes, the destination approves with the etag it read or declines; a watch sees the sets", { timeout: TEST_TIMEOUT_MS }, async () => {
      const source = party("Types Source");
      const destination = party("Types Destination");
      const pair = onConnection(source, destination);
      const { S, D } = pair;
      const { created, activated, connectionId } = await createAndActivate(S, D, destination.org.id, [INQ, ACC]);
      pair.connectionId = connectionId;
      assert.deepEqual(typesOf(created.connection), [P, [INQ, ACC], []]);

      // The destination watches from the activation on: every change of the data types comes to it.
      const puller = watching(D, { afterChangeToken: activated.changeToken });
      try {
        // The source proposes adding TRANSACTION (the full new set, conditional on the etag it
        // read): the connection stays ACTIVE, TRANSACTION waits for the destination and is not
        // allowed yet. A retry with the same request_id returns the same response, byte for byte.
        const propose = { connectionId, dataTypes: [TXN, INQ, ACC, TXN], etag: activated.connection!.etag, requestId: randomUUID() };
        const proposed = await S.updateConnectionDataTypes(propose);
        assert.deepEqual(typesOf(proposed.connection), [A, [INQ, ACC], [TXN]]);
        assert.notEqual(proposed.connection!.etag, activated.connection!.etag);
        const again = await S.updateConnectionDataTypes(propose);
        assert.deepEqual(toBinary(UpdateConnectionDataTypesResponseSchema, again), toBinary(UpdateConnectionDataTypesResponseSchema, proposed));
        assert.deepEqual(await Promise.all([INQ, ACC, TXN].map((t) => pair.allowed(t, proposed.changeToken))), [true, true, false]);
        // Nor does the list name it among the connections that carry TRANSACTION.
        assert.deepEqual((await D.listConnections({ role: DST, state: A, dataType: TXN })).connections, []);

        // The destination reads what waits; only it may approve.
        const seen = await pair.get();
        assert.deepEqual(typesOf(seen), [A, [INQ, ACC], [TXN]]);
        let r = await refusal(pair.approve(S));
        assert.deepEqual([r.code, r.info.reason], [Code.PermissionDenied, "ERROR_REASON_CALLER_NOT_DESTINATION"]);
        // It approves with the etag it read: TRANSACTION is allowed from the approval's token on.
        const approved = await pair.approve(D, { etag: seen.etag, requestId: randomUUID() });
        assert.deepEqual(typesOf(approved.connection), [A, [INQ, ACC, TXN], []]);
        assert.equal(await pair.allowed(TXN, approved.changeToken), true);

        // Nothing waits any more: another approval, or a decline, is refused with a reason.
        for (const call of [() => pair.approve(D), () => pair.decline(D, { reason: "late" })]) {
          r = await refusal(call());
          assert.deepEqual([r.code, r.info.reason], [Code.FailedPrecondition, "ERROR_REASON_NO_PENDING_DATA_TYPES"]);
          assert.equal(errorReason(r.err), ErrorReason.NO_PENDING_DATA_TYPES);
        }

        // The destination narrows at once (removing needs no consent): DATA_TYPES_CHANGED.
        const narrowed = await pair.update(D, [INQ, ACC]);
        assert.deepEqual(typesOf(narrowed.connection), [A, [INQ, ACC], []]);
        assert.equal(await pair.allowed(TXN, narrowed.changeToken), false);

        // The source proposes VERIFICATION in place of ACCOUNT: ACCOUNT stops at once, VERIFICATION
        // waits; the destination declines it, with a reason.
        const swapped = await pair.update(S, [INQ, VER]);
        assert.deepEqual(typesOf(swapped.connection), [A, [INQ], [VER]]);
        assert.deepEqual(await Promise.all([INQ, VER, ACC].map((t) => pair.allowed(t, swapped.changeToken))), [true, false, false]);
        const declined = await pair.decline(D, { etag: swapped.connection!.etag, reason: "not in our contract" });
        assert.deepEqual(typesOf(declined.connection), [A, [INQ], []]);
        assert.equal(await pair.allowed(VER, declined.changeToken), false);

        // A proposal withdrawn by proposing the current set again: DATA_TYPES_CHANGED.
        const readded = await pair.update(S, [INQ, ACC]);
        assert.deepEqual(typesOf(readded.connection), [A, [INQ], [ACC]]);
        const withdrawn = await pair.update(S, [INQ]);
        assert.deepEqual(typesOf(withdrawn.connection), [A, [INQ], []]);

        // The watch saw each change once, in order, with the sets before and after and the token its
        // write returned; exactly what the history holds.
        const writes = [proposed, approved, narrowed, swapped, declined, readded, withdrawn];
        const got = await puller.events(writes.length);
        assert.deepEqual(summary(got), [
          [3, T.DATA_TYPES_PROPOSED],
          [4, T.DATA_TYPES_APPROVED],
          [5, T.DATA_TYPES_CHANGED],
          [6, T.DATA_TYPES_PROPOSED],
          [7, T.DATA_TYPES_DECLINED],
          [8, T.DATA_TYPES_PROPOSED],
          [9, T.DATA_TYPES_CHANGED],
        ]);
        assert.deepEqual(got.map((m) => m.changeToken), writes.map((w) => w.changeToken));
        assert.deepEqual(got.map((m) => sets(m.event!)), [
          [[INQ, ACC], [], [INQ, ACC], [TXN]],
          [[INQ, ACC], [TXN], [INQ, ACC, TXN], []],
          [[INQ, ACC, TXN], [], [INQ, ACC], []],
          [[INQ, ACC], [], [INQ], [VER]],
          [[INQ], [VER], [INQ], []], // DECLINED: previous_pending holds the declined types
          [[INQ], [], [INQ], [ACC]],
          [[INQ], [ACC], [INQ], []],
        ]);
        assert.deepEqual(
          got.map(({ event: e }) => [e!.actorRole, e!.fromState, e!.toState, e!.reason]),
          [
            [SRC, A, A, ""],
            [DST, A, A, ""],
            [DST, A, A, ""],
            [SRC, A, A, ""],
            [DST, A, A, "not in our contract"],
            [SRC, A, A, ""],
            [SRC, A, A, ""],
          ],
        );
        const history = await pair.history();
        assert.equal(history.length, 2 + got.length);
        got.forEach((m, i) => assert.ok(equals(ConnectionEventSchema, m.event!, history[i + 2]!), `event ${i + 3}`));
        // The lifecycle events carry no sets.
        assert.deepEqual(history.slice(0, 2).map(sets), [[[], [], [], []], [[], [], [], []]]);
        assert.deepEqual(typesOf(await pair.get()), [A, [INQ], []]);
      } finally {
        puller.watch.close();
      }
    });

    it("data types refusals with their reasons; the approval race; changes of pending and inactive connections", { timeout: TEST_TIMEOUT_MS }, async () => {
      const source = party("Types Refusal Source");
      const destination = party("Types Refusal Destination");
      const outsider = party("Types Outsider");
      const pair = onConnection(source, destination);
      const { S, D } = pair;
      pair.connectionId = (await S.createConnection({ destinationOrganizationId: destination.org.id, dataTypes: [INQ] })).connection!.id;

      // Nothing can be approved on a PENDING connection.
      let r = await refusal(pair.approve(D));
      assert.deepEqual([r.code, r.info.reason], [Code.FailedPrecondition, "ERROR_REASON_INVALID_STATE_TRANSITION"]);
      assert.equal(r.info.metadata.current_state, "CONNECTION_STATE_PENDING");
      // Malformed sets, and an outsider.
      for (const bad of [[], [DataType.UNSPECIFIED]]) {
        r = await refusal(pair.update(S, bad));
        assert.deepEqual([r.code, r.info.reason], [Code.InvalidArgument, "ERROR_REASON_INVALID_ARGUMENT"]);
        assert.deepEqual(violations(r.err), ["data_types"]);
      }
      r = await refusal(pair.update(outsider.c.connections, [INQ, ACC]));
      assert.deepEqual([r.code, r.info.reason], [Code.NotFound, "ERROR_REASON_CONNECTION_NOT_FOUND"]);

      // The source replaces the set of a PENDING connection (nothing waits); the activation consents to it.
      const changed = await pair.update(S, [ACC, INQ]);
      assert.deepEqual(typesOf(changed.connection), [P, [INQ, ACC], []]);
      const activated = await D.activateConnection({ connectionId: pair.connectionId });
      assert.equal(await pair.allowed(ACC, activated.changeToken), true);
      const etag = activated.connection!.etag;

      // What changes nothing, and what would leave nothing allowed, is refused and changes nothing.
      r = await refusal(pair.update(S, [ACC, INQ]));
      assert.deepEqual([r.code, r.info.reason], [Code.FailedPrecondition, "ERROR_REASON_DATA_TYPES_UNCHANGED"]);
      assert.equal(errorReason(r.err), ErrorReason.DATA_TYPES_UNCHANGED);
      r = await refusal(pair.update(S, [TXN, VER]));
      assert.deepEqual([r.code, r.info.reason], [Code.FailedPrecondition, "ERROR_REASON_NO_DATA_TYPES_LEFT"]);
      assert.equal(errorReason(r.err), ErrorReason.NO_DATA_TYPES_LEFT);
      // The destination may only remove types.
      r = await refusal(pair.update(D, [INQ, ACC, TXN]));
      assert.deepEqual([r.code, r.info.reason], [Code.PermissionDenied, "ERROR_REASON_CALLER_NOT_SOURCE"]);
      assert.equal((await pair.get()).etag, etag);

      // The destination read a proposal; the source replaced it meanwhile. The approval with the
      // etag read is refused, so the destination never approves types it did not see.
      await pair.update(S, [INQ, ACC, TXN]);
      const read = await pair.get();
      assert.deepEqual(typesOf(read), [A, [INQ, ACC], [TXN]]);
      const replaced = await pair.update(S, [INQ, ACC, VER]);
      assert.deepEqual(typesOf(replaced.connection), [A, [INQ, ACC], [VER]]);
      r = await refusal(pair.approve(D, { etag: read.etag }));
      assert.deepEqual([r.code, r.info.reason], [Code.Aborted, "ERROR_REASON_ETAG_MISMATCH"]);
      assert.deepEqual(typesOf(await pair.get()), [A, [INQ, ACC], [VER]]);
      assert.equal(await pair.allowed(TXN, replaced.changeToken), false);

      // A deactivation drops what waits; on the INACTIVE connection the source replaces the set (a
      // set without any current type is fine there), and the next activation consents to it.
      const deactivated = await D.deactivateConnection({ connectionId: pair.connectionId });
      assert.deepEqual(typesOf(deactivated.connection), [I, [INQ, ACC], []]);
      r = await refusal(pair.decline(D));
      assert.deepEqual([r.code, r.info.reason], [Code.FailedPrecondition, "ERROR_REASON_INVALID_STATE_TRANSITION"]);
      assert.equal(r.info.metadata.current_state, "CONNECTION_STATE_INACTIVE");
      assert.deepEqual(typesOf((await pair.update(S, [TXN])).connection), [I, [TXN], []]);
      await S.reactivateConnection({ connectionId: pair.connectionId });
      const token = (await D.activateConnection({ connectionId: pair.connectionId })).changeToken;
      assert.deepEqual([await pair.allowed(TXN, token), await pair.allowed(INQ, token)], [true, false]);

      const history = await pair.history();
      assert.deepEqual(
        history.map((e) => [e.type, e.fromState, e.toState]),
        [
          [T.CREATED, U, P],
          [T.DATA_TYPES_CHANGED, P, P],
          [T.ACTIVATED, P, A],
          [T.DATA_TYPES_PROPOSED, A, A],
          [T.DATA_TYPES_PROPOSED, A, A],
          [T.DEACTIVATED, A, I],
          [T.DATA_TYPES_CHANGED, I, I],
          [T.REACTIVATED, I, P],
          [T.ACTIVATED, P, A],
        ],
      );
      assert.deepEqual(
        history.filter((e) => e.type === T.DATA_TYPES_CHANGED || e.type === T.DATA_TYPES_PROPOSED).map(sets),
        [
          [[INQ], [], [INQ, ACC], []],
          [[INQ, ACC], [], [INQ, ACC], [TXN]],
          [[INQ, ACC], [TXN], [INQ, ACC], [VER]], // a new proposal replaces the one waiting
          [[INQ, ACC], [], [TXN], []],
        ],
      );
    });

    it("a trusted partner's connection is ACTIVE at once, activated by the destination's policy", { timeout: TEST_TIMEOUT_MS }, async () => {
      const destination = party("Policy Destination");
      const trusted = party("Trusted Source");
      const alsoTrusted = party("Also Trusted");
      const untrusted = party("Untrusted Source");
      const orgs = destination.c.organizations;
      const D = destination.c.connections, S = trusted.c.connections;
      const policy = async () => (await orgs.getOrganizationPolicy({})).policy!.autoActivateSourceIds;
      const trust = async (...ids: string[]) =>
        (await orgs.updateOrganizationPolicy({ policy: { autoActivateSourceIds: ids } })).policy!.autoActivateSourceIds;

      // No one is trusted at first. Itself, a malformed ID or an unknown organization is refused,
      // and a refusal keeps nothing.
      assert.deepEqual(await policy(), []);
      const refusals: [string[], Code, string][] = [
        [[destination.org.id], Code.InvalidArgument, "ERROR_REASON_INVALID_ARGUMENT"],
        [["not-a-uuid"], Code.InvalidArgument, "ERROR_REASON_INVALID_ARGUMENT"],
        [[trusted.org.id, randomUUID()], Code.NotFound, "ERROR_REASON_ORGANIZATION_NOT_FOUND"],
      ];
      for (const [ids, code, reason] of refusals) {
        const r = await refusal(trust(...ids));
        assert.deepEqual([r.code, r.info.reason], [code, reason], ids.join(","));
        if (code === Code.InvalidArgument) assert.deepEqual(violations(r.err), ["policy.auto_activate_source_ids"]);
      }
      assert.deepEqual(await policy(), []);
      // Duplicates collapse; the list comes back sorted.
      const expected = [trusted.org.id, alsoTrusted.org.id].sort();
      assert.deepEqual(await trust(alsoTrusted.org.id, trusted.org.id, alsoTrusted.org.id), expected);
      assert.deepEqual(await policy(), expected);

      const puller = watching(D, { fromBeginning: true });
      try {
        // A trusted source's connection is ACTIVE at once; the call's token holds the activation,
        // and a retry with the same request_id returns the activated connection.
        const create = { destinationOrganizationId: destination.org.id, dataTypes: [INQ], requestId: randomUUID() };
        const created = await S.createConnection(create);
        const conn = created.connection!;
        assert.equal(conn.state, A);
        assert.ok(conn.activateTime, "activate_time is set");
        assert.equal(conn.expireTime, undefined);
        assert.deepEqual(toBinary(CreateConnectionResponseSchema, await S.createConnection(create)), toBinary(CreateConnectionResponseSchema, created));
        const answer = await trusted.c.access.checkAccess({
          sourceOrganizationId: trusted.org.id,
          destinationOrganizationId: destination.org.id,
          dataType: INQ,
          atLeastChangeToken: created.changeToken,
        });
        assert.deepEqual(said(answer), [true, conn.id, A]);

        // CREATED by the source, then ACTIVATED by the destination's policy: the destination's role,
        // no API key; its token is the one the create returned.
        const first = await puller.events(2);
        assert.deepEqual(summary(first), [[1, T.CREATED], [2, T.ACTIVATED]]);
        const made = first[0]!.event!, activation = first[1]!.event!;
        assert.deepEqual([made.actorOrganizationId, made.byPolicy], [trusted.org.id, false]);
        assert.deepEqual([activation.connectionId, activation.fromState, activation.toState], [conn.id, P, A]);
        assert.deepEqual(
          [activation.byPolicy, activation.actorOrganizationId, activation.actorRole, activation.actorApiKeyId, activation.actorApiKeyDisplayName],
          [true, destination.org.id, DST, "", ""],
        );
        assert.equal(first[1]!.changeToken, created.changeToken);
        const events = (await S.listConnectionEvents({ connectionId: conn.id })).events;
        assert.equal(events.length, 2);
        first.forEach((m, i) => assert.ok(equals(ConnectionEventSchema, m.event!, events[i]!), `event ${i + 1}`));

        // A source the destination does not trust waits for it as before.
        const waiting = (await untrusted.c.connections.createConnection({ destinationOrganizationId: destination.org.id, dataTypes: [INQ] })).connection!;
        assert.equal(waiting.state, P);
        await D.activateConnection({ connectionId: waiting.id });
        const byHand = await puller.events(2);
        assert.deepEqual(
          byHand.map(({ event: e }) => [e!.connectionId, e!.type, e!.byPolicy]),
          [
            [waiting.id, T.CREATED, false],
            [waiting.id, T.ACTIVATED, false],
          ],
        );
        assert.equal(byHand[1]!.event!.actorApiKeyDisplayName, "typescript tests");

        // A trusted source's reactivation is activated by the policy too.
        await S.deactivateConnection({ connectionId: conn.id });
        const reactivated = await S.reactivateConnection({ connectionId: conn.id, message: "Back again" });
        assert.equal(reactivated.connection!.state, A);
        const back = await puller.events(3);
        assert.deepEqual(summary(back), [[3, T.DEACTIVATED], [4, T.REACTIVATED], [5, T.ACTIVATED]]);
        assert.equal(back[2]!.event!.byPolicy, true);
        assert.equal(back[2]!.changeToken, reactivated.changeToken);

        // Removing the source changes no existing connection; its next invitation waits.
        assert.deepEqual(await trust(alsoTrusted.org.id), [alsoTrusted.org.id]);
        assert.equal((await D.getConnection({ connectionId: conn.id })).connection!.state, A);
        await D.deactivateConnection({ connectionId: conn.id });
        const invited = (await S.reactivateConnection({ connectionId: conn.id })).connection!;
        assert.equal(invited.state, P);
        assert.deepEqual(summary(await puller.events(2)), [[6, T.DEACTIVATED], [7, T.REACTIVATED]]);
      } finally {
        puller.watch.close();
      }
    });
  });
}
