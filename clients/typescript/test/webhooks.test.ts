/**
 * End to end: webhook deliveries of the real `connections` binary, received by a node:http server
 * on 127.0.0.1 and verified with the official Standard Webhooks library (`standardwebhooks`).
 *
 * A server of its own for the file (the harness allows http://127.0.0.1 endpoints; here failed
 * deliveries are also retried after 1 s instead of 5 s, 5 min, ...), called over gRPC (HTTP/2);
 * each test has a (source, destination) pair of its own and an endpoint path of its own on the
 * receiver. Every wait is bounded.
 *
 *   node --import tsx --test test/webhooks.test.ts      (run_tests.sh does this)
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server as HttpServer } from "node:http";
import { type AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { type DescMessage, equals, fromJson, type JsonObject, toJson } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Webhook, WebhookVerificationError } from "standardwebhooks";

import { connect, enumName, type ConnectionsClient } from "../src/client.js";
import {
  type ConnectionEvent,
  ConnectionEventSchema,
  ConnectionEventType,
  ConnectionEventTypeSchema,
  ConnectionSchema,
  ConnectionState,
  DataType,
} from "../src/gen/connections/v1/resources_pb.js";
import { type WebhookDelivery, WebhookDeliveryOutcome } from "../src/gen/connections/v1/webhook_service_pb.js";
import { type Org, Server } from "./harness.js";

const TEST_TIMEOUT_MS = 60_000;
/** How long to wait for a delivery (they usually take about a second). */
const DELIVERY_TIMEOUT_MS = 20_000;
/** The deliverer re-reads its endpoints (and their secrets) about once a second. */
const ENDPOINT_REFRESH_MS = 1_200;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One request the receiver got, and what it answered. */
interface Delivery {
  method: string;
  path: string;
  /** Lower-case names, as node:http gives them. */
  headers: Record<string, string>;
  /** Exactly as received: what the signature covers. */
  body: Buffer;
  status: number;
}

const webhookId = (d: Delivery) => d.headers["webhook-id"]!;
const signatures = (d: Delivery) => d.headers["webhook-signature"]!.split(" ");
const parse = (d: Delivery) => JSON.parse(d.body.toString("utf8")) as Payload;

/** The body of a delivery, as the proto's comment describes it. */
interface Payload {
  type: string;
  timestamp: string;
  data: { event: JsonObject; connection: JsonObject; change_token: string };
}

/**
 * A node:http server on 127.0.0.1 that records every request. Each endpoint gets a path of its
 * own; a path answers 204 unless statuses were queued for it with failNext().
 */
class Receiver {
  private readonly deliveries: Delivery[] = [];
  private readonly answers = new Map<string, number[]>();
  private readonly waiters = new Set<() => void>();

  private constructor(private readonly http: HttpServer) {}

  static async start(): Promise<Receiver> {
    let receiver: Receiver | undefined;
    const http = createServer((req, res) => {
      void receiver!.handle(req).then((status) => res.writeHead(status, { "content-length": "0" }).end());
    });
    receiver = new Receiver(http);
    await new Promise<void>((resolve, reject) => {
      http.once("error", reject);
      http.listen(0, "127.0.0.1", resolve);
    });
    return receiver;
  }

  private async handle(req: IncomingMessage): Promise<number> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const path = req.url ?? "";
    const status = this.answers.get(path)?.shift() ?? 204;
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(req.headers)) {
      if (typeof value === "string") headers[name] = value;
    }
    this.deliveries.push({ method: req.method ?? "", path, headers, body: Buffer.concat(chunks), status });
    for (const wake of this.waiters) wake();
    return status;
  }

  newPath(): string {
    return `/hooks/${randomUUID()}`;
  }

  url(path: string): string {
    return `http://127.0.0.1:${(this.http.address() as AddressInfo).port}${path}`;
  }

  /** The next requests to `path` are answered with these statuses, then 204 again. */
  failNext(path: string, ...statuses: number[]): void {
    this.answers.set(path, [...(this.answers.get(path) ?? []), ...statuses]);
  }

  /** The requests to `path` received so far. */
  received(path: string): Delivery[] {
    return this.deliveries.filter((d) => d.path === path);
  }

  /** The first `count` requests to `path`, once they have arrived (bounded). */
  async waitFor(path: string, count: number, timeoutMs = DELIVERY_TIMEOUT_MS): Promise<Delivery[]> {
    const got = () => this.deliveries.filter((d) => d.path === path);
    let wake!: () => void;
    let timer: NodeJS.Timeout | undefined;
    const deadline = Date.now() + timeoutMs;
    try {
      while (got().length < count) {
        const left = deadline - Date.now();
        if (left <= 0) {
          const summary = got().map((d) => [webhookId(d), parse(d).type, d.status]);
          assert.fail(`${got().length} of ${count} deliveries to ${path} within ${timeoutMs} ms: ${JSON.stringify(summary)}`);
        }
        await new Promise<void>((resolve) => {
          wake = resolve;
          this.waiters.add(wake);
          timer = setTimeout(resolve, left);
        });
        clearTimeout(timer);
        this.waiters.delete(wake);
      }
      return got().slice(0, count);
    } finally {
      clearTimeout(timer);
      this.waiters.delete(wake);
    }
  }

  close(): Promise<void> {
    this.http.closeAllConnections();
    return new Promise((resolve) => this.http.close(() => resolve()));
  }
}

/** "connection." and the event type's name in lower case: ACTIVATED -> "connection.activated". */
function eventType(event: ConnectionEvent): string {
  return `connection.${enumName(ConnectionEventTypeSchema, event.type).replace("CONNECTION_EVENT_TYPE_", "").toLowerCase()}`;
}

/**
 * `value` is a message of `schema` in the proto3 JSON mapping, with the lowerCamelCase names
 * printers use; returns it parsed (strictly: an unknown field name throws).
 */
function assertProto3Json<Desc extends DescMessage>(value: JsonObject, schema: Desc) {
  const names = new Set(schema.fields.map((f) => f.jsonName));
  const foreign = Object.keys(value).filter((k) => !names.has(k));
  assert.deepEqual(foreign, [], `not lowerCamelCase proto3 JSON names in ${schema.typeName}`);
  return fromJson(schema, value);
}

/** Verifying `body` and `headers` with `secret` must fail. */
function refused(secret: string, body: Buffer | string, headers: Record<string, string>): void {
  assert.throws(() => new Webhook(secret).verify(body, headers), WebhookVerificationError);
}

let server: Server;
let receiver: Receiver;
const clients: ConnectionsClient[] = [];

before(
  async () => {
    server = await Server.prepare({ CONNECTIONS_WEBHOOK_RETRY_SCHEDULE: "1s,1s,1s" });
    const probe = server.newOrg("Probe");
    await server.start(probe);
    receiver = await Receiver.start();
  },
  { timeout: 120_000 },
);

after(
  async () => {
    for (const c of clients) c.close();
    await receiver?.close();
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

describe("webhooks over gRPC (HTTP/2)", () => {
  const client = (org: Org) => {
    const c = connect({ baseUrl: server.baseUrl, apiKey: org.key, protocol: "grpc" });
    clients.push(c);
    return c;
  };

  /** A pair of its own (a pair holds one connection) and a client for each. */
  function newPair() {
    const tag = randomUUID().slice(0, 8);
    const source = server.newOrg(`Source ${tag}`);
    const destination = server.newOrg(`Destination ${tag}`);
    return { source, destination, S: client(source), D: client(destination) };
  }

  async function createEndpoint(c: ConnectionsClient, org: Org, description = "", eventTypes: ConnectionEventType[] = []) {
    const path = receiver.newPath();
    const { endpoint, secret } = await c.webhooks.createWebhookEndpoint({ url: receiver.url(path), description, eventTypes });
    assert.equal(endpoint?.url, receiver.url(path));
    assert.equal(endpoint?.organizationId, org.id);
    assert.match(secret, /^whsec_[A-Za-z0-9+/]{43}=$/);
    assert.equal(Buffer.from(secret.slice("whsec_".length), "base64").length, 32);
    return { endpoint: endpoint!, secret, path };
  }

  async function createAndActivate(S: ConnectionsClient, D: ConnectionsClient, destination: Org) {
    const created = await S.connections.createConnection({
      destinationOrganizationId: destination.id,
      dataTypes: [DataType.INQUIRY],
      requestId: randomUUID(),
    });
    const activated = await D.connections.activateConnection({ connectionId: created.connection!.id });
    return { created, activated };
  }

  /** ListWebhookDeliveries, oldest first, once it holds `count` attempts (recorded just after the answer). */
  async function recordedAttempts(c: ConnectionsClient, endpointId: string, count: number): Promise<WebhookDelivery[]> {
    const deadline = Date.now() + DELIVERY_TIMEOUT_MS;
    for (;;) {
      const { deliveries } = await c.webhooks.listWebhookDeliveries({ endpointId });
      if (deliveries.length >= count || Date.now() > deadline) return deliveries.reverse();
      await sleep(100);
    }
  }

  it("deliveries are signed, in order, with the event IDs and proto3 JSON", { timeout: TEST_TIMEOUT_MS }, async () => {
    const { source, destination, S, D } = newPair();
    const { endpoint, secret, path } = await createEndpoint(S, source, "tests");
    // The destination has an endpoint too: both parties receive the connection's events.
    const theirs = await createEndpoint(D, destination);

    const before = Math.floor(Date.now() / 1000);
    const { created, activated } = await createAndActivate(S, D, destination);
    const deliveries = await receiver.waitFor(path, 2);
    const { events } = await S.connections.listConnectionEvents({ connectionId: created.connection!.id });
    assert.equal(events.length, 2);

    // Each is verified by the official library with the endpoint's secret; the webhook-id of each
    // is the ID of the event, in the connection's order.
    const verifier = new Webhook(secret);
    const bodies = deliveries.map((d) => verifier.verify(d.body, d.headers) as Payload);
    assert.deepEqual(deliveries.map(webhookId), events.map((e) => e.id));
    assert.deepEqual(bodies.map((b) => b.type), ["connection.created", "connection.activated"]);
    assert.deepEqual(bodies.map((b) => b.type), events.map(eventType));

    const writes = [created, activated];
    deliveries.forEach((d, i) => {
      const body = bodies[i]!, event = events[i]!, write = writes[i]!;
      assert.equal(d.method, "POST");
      assert.equal(d.headers["content-type"], "application/json");
      const timestamp = Number(d.headers["webhook-timestamp"]);
      assert.ok(timestamp >= before - 5 && timestamp <= Date.now() / 1000 + 5, `webhook-timestamp ${timestamp}`);
      assert.equal(signatures(d).length, 1);
      assert.match(signatures(d)[0]!, /^v1,/);
      assert.deepEqual(Object.keys(body).sort(), ["data", "timestamp", "type"]);
      assert.deepEqual(Object.keys(body.data).sort(), ["change_token", "connection", "event"]);
      // The event as ListConnectionEvents returns it, and the connection as the write left it, in
      // the proto3 JSON mapping (exactly what Protobuf-ES's toJson prints).
      assert.ok(equals(ConnectionEventSchema, assertProto3Json(body.data.event, ConnectionEventSchema), event));
      assert.deepEqual(body.data.event, toJson(ConnectionEventSchema, event));
      assert.ok(equals(ConnectionSchema, assertProto3Json(body.data.connection, ConnectionSchema), write.connection!));
      assert.deepEqual(body.data.connection, toJson(ConnectionSchema, write.connection!));
      assert.equal(body.timestamp, body.data.event.createTime);
      assert.equal(body.data.change_token, write.changeToken);
    });
    assert.deepEqual(bodies.map((b) => b.data.event.sequence), ["1", "2"]); // int64: a string

    // The destination's endpoint gets the same events, same IDs and bodies, signed with its own
    // secret (which is not the source's).
    const other = await receiver.waitFor(theirs.path, 2);
    assert.deepEqual(other.map(webhookId), events.map((e) => e.id));
    assert.deepEqual(other.map((d) => d.body), deliveries.map((d) => d.body));
    for (const d of other) {
      new Webhook(theirs.secret).verify(d.body, d.headers);
      refused(secret, d.body, d.headers);
    }

    // The server recorded both attempts as delivered, with our status.
    const attempts = await recordedAttempts(S, endpoint.id, 2);
    assert.deepEqual(
      attempts.map((a) => [a.eventId, a.attempt, a.httpStatus, a.outcome, a.changeToken]),
      events.map((e, i) => [e.id, 1, 204, WebhookDeliveryOutcome.SUCCEEDED, writes[i]!.changeToken]),
    );
  });

  it("a tampered delivery fails verification", { timeout: TEST_TIMEOUT_MS }, async () => {
    const { source, destination, S, D } = newPair();
    const { secret, path } = await createEndpoint(S, source);
    await createAndActivate(S, D, destination);
    const [first, second] = await receiver.waitFor(path, 2);
    const body = first!.body.toString("utf8");
    const headers = first!.headers;
    new Webhook(secret).verify(first!.body, headers);

    // A changed body: another type, a changed state, a byte added, or the same JSON re-serialized
    // (the signature covers the bytes as sent: verify the raw body before parsing it).
    refused(secret, body.replace('"connection.created"', '"connection.deleted"'), headers);
    refused(secret, body.replace("CONNECTION_STATE_PENDING", "CONNECTION_STATE_ACTIVE"), headers);
    refused(secret, `${body}\n`, headers);
    refused(secret, JSON.stringify(JSON.parse(body), null, 1), headers);
    // Another delivery's body or ID under this signature.
    refused(secret, second!.body, headers);
    refused(secret, body, { ...headers, "webhook-id": webhookId(second!) });
    // Another timestamp (one second later, well within the tolerance).
    refused(secret, body, { ...headers, "webhook-timestamp": String(Number(headers["webhook-timestamp"]) + 1) });
    // A missing or foreign signature.
    refused(secret, body, { ...headers, "webhook-signature": "" });
    refused(secret, body, { ...headers, "webhook-signature": second!.headers["webhook-signature"]! });
    // Another secret.
    refused(`whsec_${Buffer.alloc(32, 1).toString("base64")}`, body, headers);
    // The untouched delivery still verifies.
    assert.deepEqual(new Webhook(secret).verify(body, headers), JSON.parse(body));
  });

  it("after RotateWebhookSecret, deliveries verify with the new and the previous secret", { timeout: TEST_TIMEOUT_MS }, async () => {
    const { source, destination, S, D } = newPair();
    const { endpoint, secret: oldSecret, path } = await createEndpoint(S, source);
    const { created } = await createAndActivate(S, D, destination);
    for (const d of await receiver.waitFor(path, 2)) {
      assert.equal(signatures(d).length, 1);
      new Webhook(oldSecret).verify(d.body, d.headers);
    }

    const rotated = await S.webhooks.rotateWebhookSecret({ endpointId: endpoint.id });
    const newSecret = rotated.secret;
    assert.match(newSecret, /^whsec_/);
    assert.notEqual(newSecret, oldSecret);
    // The previous secret signs for 24 h (the default overlap).
    const left = (timestampDate(rotated.previousSecretExpireTime!).getTime() - Date.now()) / 1000;
    assert.ok(left > 23 * 3600 && left <= 24 * 3600 + 60, `previous secret expires in ${left} s`);

    // Once the deliverer has re-read the endpoint, the next delivery carries both signatures.
    await sleep(ENDPOINT_REFRESH_MS);
    const deactivated = await S.connections.deactivateConnection({ connectionId: created.connection!.id, reason: "rotation" });
    const delivery = (await receiver.waitFor(path, 3))[2]!;
    const body = parse(delivery);
    assert.equal(body.type, "connection.deactivated");
    assert.equal(body.data.event.reason, "rotation");
    assert.equal(body.data.change_token, deactivated.changeToken);
    assert.deepEqual(new Webhook(newSecret).verify(delivery.body, delivery.headers), body);
    assert.deepEqual(new Webhook(oldSecret).verify(delivery.body, delivery.headers), body);

    // Two signatures, one per secret: each alone verifies with its own secret only.
    const sigs = signatures(delivery);
    assert.equal(sigs.length, 2);
    for (const secret of [newSecret, oldSecret]) {
      const matching = sigs.filter((sig) => {
        try {
          new Webhook(secret).verify(delivery.body, { ...delivery.headers, "webhook-signature": sig });
          return true;
        } catch (err) {
          assert.ok(err instanceof WebhookVerificationError);
          return false;
        }
      });
      assert.equal(matching.length, 1, `${secret}: ${sigs.join(" ")}`);
    }
  });

  it("a failed delivery is repeated with the same webhook-id and body", { timeout: TEST_TIMEOUT_MS }, async () => {
    const { source, destination, S, D } = newPair();
    const { endpoint, secret, path } = await createEndpoint(S, source);
    // The first attempt of the first event is answered 500, the second 503: the event is sent a
    // third time, and the connection's next event only after it.
    receiver.failNext(path, 500, 503);
    const { created } = await createAndActivate(S, D, destination);
    const deliveries = await receiver.waitFor(path, 4);
    const { events } = await S.connections.listConnectionEvents({ connectionId: created.connection!.id });

    assert.deepEqual(deliveries.map((d) => d.status), [500, 503, 204, 204]);
    assert.deepEqual(deliveries.map(webhookId), [events[0]!.id, events[0]!.id, events[0]!.id, events[1]!.id]);
    assert.equal(new Set(deliveries.slice(0, 3).map((d) => d.body.toString("base64"))).size, 1, "a repeat carries the same body");
    const verifier = new Webhook(secret);
    for (const d of deliveries) verifier.verify(d.body, d.headers); // each attempt signed with its own timestamp
    assert.equal(parse(deliveries[3]!).type, "connection.activated");

    // A receiver deduplicating by webhook-id handles each event once.
    const seen = new Set<string>();
    const handled: string[] = [];
    for (const d of deliveries) {
      if (d.status >= 200 && d.status < 300 && !seen.has(webhookId(d))) {
        seen.add(webhookId(d));
        handled.push(parse(d).type);
      }
    }
    assert.deepEqual(handled, ["connection.created", "connection.activated"]);

    const attempts = await recordedAttempts(S, endpoint.id, 4);
    assert.deepEqual(
      attempts.map((a) => [a.eventId, a.attempt, a.httpStatus, a.outcome]),
      [
        [events[0]!.id, 1, 500, WebhookDeliveryOutcome.WILL_RETRY],
        [events[0]!.id, 2, 503, WebhookDeliveryOutcome.WILL_RETRY],
        [events[0]!.id, 3, 204, WebhookDeliveryOutcome.SUCCEEDED],
        [events[1]!.id, 1, 204, WebhookDeliveryOutcome.SUCCEEDED],
      ],
    );
    for (const a of attempts.filter((a) => a.eventId === events[0]!.id)) assert.equal(a.changeToken, created.changeToken);
  });

  it("changes of the data types are delivered as connection.data_types_*, with their sets", { timeout: TEST_TIMEOUT_MS }, async () => {
    const { destination, S, D } = newPair();
    // The destination receives every event, and also, on an endpoint of its own, only the changes
    // of the data types.
    const { secret, path } = await createEndpoint(D, destination);
    const T = ConnectionEventType;
    const dataTypesOnly = [T.DATA_TYPES_CHANGED, T.DATA_TYPES_PROPOSED, T.DATA_TYPES_APPROVED, T.DATA_TYPES_DECLINED];
    const filtered = await createEndpoint(D, destination, "data types", dataTypesOnly);
    assert.deepEqual(filtered.endpoint.eventTypes, dataTypesOnly);
    const { created } = await createAndActivate(S, D, destination);
    const connectionId = created.connection!.id;

    // The source proposes adding ACCOUNT: connection.data_types_proposed, with the sets.
    const proposed = await S.connections.updateConnectionDataTypes({ connectionId, dataTypes: [DataType.INQUIRY, DataType.ACCOUNT] });
    let delivery = (await receiver.waitFor(path, 3))[2]!;
    let body = new Webhook(secret).verify(delivery.body, delivery.headers) as Payload;
    let { events } = await D.connections.listConnectionEvents({ connectionId });
    assert.equal(body.type, "connection.data_types_proposed");
    assert.equal(body.type, eventType(events[2]!));
    assert.equal(webhookId(delivery), events[2]!.id);
    assert.ok(equals(ConnectionEventSchema, assertProto3Json(body.data.event, ConnectionEventSchema), events[2]!));
    assert.deepEqual(body.data.event, toJson(ConnectionEventSchema, events[2]!));
    // Empty sets are left out, as proto3 JSON leaves out empty repeated fields.
    const event = body.data.event;
    assert.deepEqual(
      [event.previousDataTypes, event.previousPendingDataTypes, event.dataTypes, event.pendingDataTypes],
      [["DATA_TYPE_INQUIRY"], undefined, ["DATA_TYPE_INQUIRY"], ["DATA_TYPE_ACCOUNT"]],
    );
    assert.deepEqual(body.data.connection, toJson(ConnectionSchema, proposed.connection!));
    assert.deepEqual(body.data.connection.pendingDataTypes, ["DATA_TYPE_ACCOUNT"]);
    assert.equal(body.data.change_token, proposed.changeToken);

    // The destination approves with the etag the delivery carried.
    const approved = await D.connections.approveDataTypes({ connectionId, etag: body.data.connection.etag as string });
    delivery = (await receiver.waitFor(path, 4))[3]!;
    body = new Webhook(secret).verify(delivery.body, delivery.headers) as Payload;
    assert.equal(body.type, "connection.data_types_approved");
    assert.deepEqual(body.data.event.dataTypes, ["DATA_TYPE_INQUIRY", "DATA_TYPE_ACCOUNT"]);
    assert.deepEqual(body.data.event.previousPendingDataTypes, ["DATA_TYPE_ACCOUNT"]);
    assert.deepEqual(body.data.connection, toJson(ConnectionSchema, approved.connection!));
    assert.equal(body.data.change_token, approved.changeToken);

    // The filtered endpoint got those two events only, under its own secret.
    const only = await receiver.waitFor(filtered.path, 2);
    ({ events } = await D.connections.listConnectionEvents({ connectionId }));
    assert.deepEqual(only.map(webhookId), events.slice(2, 4).map((e) => e.id));
    assert.deepEqual(
      only.map((d) => (new Webhook(filtered.secret).verify(d.body, d.headers) as Payload).type),
      ["connection.data_types_proposed", "connection.data_types_approved"],
    );
    // Nothing else arrives for it: the next lifecycle event goes to the other endpoint only.
    await S.connections.deactivateConnection({ connectionId });
    assert.equal(parse((await receiver.waitFor(path, 5))[4]!).type, "connection.deactivated");
    assert.equal(receiver.received(filtered.path).length, 2);
  });

  it("a trusted partner's connection is delivered as created, then activated with byPolicy", { timeout: TEST_TIMEOUT_MS }, async () => {
    const { source, destination, S, D } = newPair();
    await D.organizations.updateOrganizationPolicy({ policy: { autoActivateSourceIds: [source.id] } });
    const { secret, path } = await createEndpoint(D, destination);

    // The trusted source's create returns the ACTIVE connection: CREATED, then ACTIVATED by the
    // destination's policy, each with the connection as that event left it.
    const created = await S.connections.createConnection({ destinationOrganizationId: destination.id, dataTypes: [DataType.INQUIRY] });
    assert.equal(created.connection!.state, ConnectionState.ACTIVE);
    const deliveries = await receiver.waitFor(path, 2);
    const bodies = deliveries.map((d) => new Webhook(secret).verify(d.body, d.headers) as Payload);
    const { events } = await D.connections.listConnectionEvents({ connectionId: created.connection!.id });
    assert.deepEqual(deliveries.map(webhookId), events.map((e) => e.id));
    assert.deepEqual(bodies.map((b) => b.type), ["connection.created", "connection.activated"]);
    assert.deepEqual(bodies.map((b) => b.data.event), events.map((e) => toJson(ConnectionEventSchema, e)));
    assert.equal(bodies[0]!.data.event.byPolicy, undefined);
    const activation = bodies[1]!.data.event;
    assert.deepEqual(
      [activation.byPolicy, activation.actorRole, activation.actorOrganizationId, activation.actorApiKeyId],
      [true, "CONNECTION_ROLE_DESTINATION", destination.id, undefined],
    );
    assert.equal(bodies[0]!.data.connection.state, "CONNECTION_STATE_PENDING");
    assert.deepEqual(bodies[1]!.data.connection, toJson(ConnectionSchema, created.connection!));
    // The create's token is the activation's.
    assert.equal(bodies[1]!.data.change_token, created.changeToken);
  });
});
