/**
 * ResumableWatch against scripted streams: the interruptions a real server is hard to produce on
 * demand (ABORTED for a consumer too slow, a stream that just ends, a dropped connection, a silent
 * stream). test/lifecycle.test.ts covers the real server, including a restart, over each transport.
 *
 *   node --import tsx --test test/resumable-watch.test.ts      (run_tests.sh does this)
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create, type MessageInitShape } from "@bufbuild/protobuf";

import { Code, ConnectError, ResumableWatch, type ConnectionsClient } from "../src/client.js";
import {
  type WatchConnectionEventsRequestSchema,
  type WatchConnectionEventsResponse,
  WatchConnectionEventsResponseSchema,
} from "../src/gen/connections/v1/connection_service_pb.js";
import { ConnectionRole } from "../src/gen/connections/v1/resources_pb.js";
import { ErrorInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";

type Request = MessageInitShape<typeof WatchConnectionEventsRequestSchema>;
type Item = WatchConnectionEventsResponse | ConnectError;
/** One scripted stream: its items, then (with `silent`) no message until it is aborted. */
interface Script {
  items: Item[];
  silent?: boolean;
}

const event = (sequence: number, changeToken: string) =>
  create(WatchConnectionEventsResponseSchema, { event: { connectionId: "c", sequence: BigInt(sequence) }, changeToken });
const heartbeat = (changeToken: string) => create(WatchConnectionEventsResponseSchema, { changeToken });
/** An error as the server sends it: with its google.rpc.ErrorInfo. */
const refused = (code: Code, reason: string) =>
  new ConnectError("scripted", code, undefined, [{ desc: ErrorInfoSchema, value: { reason, domain: "connections.v1" } }]);
/** An error of the transport: no ErrorInfo. */
const dropped = (code: Code) => new ConnectError("scripted", code);

/** A ConnectionService client whose WatchConnectionEvents plays the scripts, one per call. */
function scripted(...scripts: Script[]) {
  const requests: Request[] = [];
  const aborted: boolean[] = [];
  const connections = {
    watchConnectionEvents(request: Request, options: { signal: AbortSignal; timeoutMs?: number }) {
      const script = scripts.shift();
      assert.ok(script, `unexpected stream #${requests.length + 1}`);
      assert.equal(options.timeoutMs, 0, "a watch has no deadline");
      const n = requests.push(request) - 1;
      aborted.push(false);
      options.signal.addEventListener("abort", () => (aborted[n] = true));
      return (async function* () {
        for (const item of script.items) {
          await new Promise((r) => setImmediate(r));
          if (item instanceof ConnectError) throw item;
          yield item;
        }
        if (script.silent) {
          await new Promise((resolve) => {
            if (options.signal.aborted) resolve(undefined);
            options.signal.addEventListener("abort", resolve);
          });
          throw ConnectError.from(options.signal.reason, Code.Canceled);
        }
      })();
    },
  } as unknown as ConnectionsClient["connections"];
  return { connections, requests, aborted, left: scripts };
}

const FAST = { initialBackoffMs: 1, maxBackoffMs: 10, idleTimeoutMs: 5_000 };

describe("ResumableWatch (scripted streams)", () => {
  it("resumes from the last token after each interruption and throws the other errors", { timeout: 10_000 }, async () => {
    const fake = scripted(
      { items: [event(1, "t1"), heartbeat("t2"), refused(Code.Aborted, "ERROR_REASON_WATCH_CONSUMER_TOO_SLOW")] },
      { items: [event(2, "t3")] }, // ends without an error
      { items: [dropped(Code.Internal)] }, // a dropped connection
      { items: [refused(Code.Unavailable, "ERROR_REASON_DATABASE_UNAVAILABLE")] },
      { items: [event(3, "t4"), refused(Code.Unauthenticated, "ERROR_REASON_API_KEY_INVALID")] },
    );
    const ended: (Code | undefined)[] = [];
    const watch = new ResumableWatch(fake.connections, {
      fromBeginning: true,
      role: ConnectionRole.SOURCE,
      onResume: (err) => ended.push(err?.code),
      ...FAST,
    });
    const got: [bigint, string][] = [];
    await assert.rejects(
      (async () => {
        for await (const m of watch) got.push([m.event!.sequence, m.changeToken]);
      })(),
      (err: unknown) => err instanceof ConnectError && err.code === Code.Unauthenticated,
    );
    // Each event once, in order; the heartbeat is not yielded but its token is kept.
    assert.deepEqual(got, [
      [1n, "t1"],
      [2n, "t3"],
      [3n, "t4"],
    ]);
    assert.deepEqual(fake.requests, [
      { fromBeginning: true, role: ConnectionRole.SOURCE },
      { afterChangeToken: "t2", role: ConnectionRole.SOURCE },
      { afterChangeToken: "t3", role: ConnectionRole.SOURCE },
      { afterChangeToken: "t3", role: ConnectionRole.SOURCE },
      { afterChangeToken: "t3", role: ConnectionRole.SOURCE },
    ]);
    assert.deepEqual(ended, [Code.Aborted, undefined, Code.Internal, Code.Unavailable]);
    assert.equal(watch.resumes, 4);
    assert.equal(watch.lastChangeToken, "t4");
    assert.deepEqual(fake.aborted, [true, true, true, true, true], "every stream is ended");
  });

  it("does not mistake an INTERNAL error the server sent for a dropped connection", { timeout: 10_000 }, async () => {
    const fake = scripted({ items: [refused(Code.Internal, "ERROR_REASON_INTERNAL")] });
    const watch = new ResumableWatch(fake.connections, { afterChangeToken: "t0", ...FAST });
    await assert.rejects(watch[Symbol.asyncIterator]().next(), (err: unknown) => ConnectError.from(err).code === Code.Internal);
    assert.equal(fake.requests.length, 1);
  });

  it("yields heartbeats on request, and gives up after maxAttempts failures in a row", { timeout: 10_000 }, async () => {
    const fake = scripted(
      { items: [heartbeat("h1"), dropped(Code.Unavailable)] },
      { items: [dropped(Code.Unavailable)] },
      { items: [heartbeat("h2"), dropped(Code.Unavailable)] }, // a message resets the count
      { items: [dropped(Code.Unavailable)] },
      { items: [dropped(Code.Unavailable)] },
    );
    const watch = new ResumableWatch(fake.connections, { heartbeats: true, maxAttempts: 3, ...FAST });
    const got: [boolean, string][] = [];
    await assert.rejects(
      (async () => {
        for await (const m of watch) got.push([m.event !== undefined, m.changeToken]);
      })(),
      (err: unknown) => ConnectError.from(err).code === Code.Unavailable,
    );
    assert.deepEqual(got, [
      [false, "h1"],
      [false, "h2"],
    ]);
    assert.deepEqual(
      fake.requests.map((r) => r.afterChangeToken ?? ""),
      ["", "h1", "h1", "h2", "h2"],
    );
    assert.equal(fake.left.length, 0);
  });

  it("opens a new stream when one stays silent longer than idleTimeoutMs", { timeout: 10_000 }, async () => {
    const fake = scripted({ items: [event(1, "t1")], silent: true }, { items: [event(2, "t2")], silent: true });
    const watch = new ResumableWatch(fake.connections, { initialBackoffMs: 1, maxBackoffMs: 10, idleTimeoutMs: 300 });
    const messages = watch[Symbol.asyncIterator]();
    assert.equal((await messages.next()).value?.changeToken, "t1");
    const started = Date.now();
    assert.equal((await messages.next()).value?.changeToken, "t2");
    const waited = Date.now() - started;
    assert.ok(waited >= 250 && waited < 5_000, `reopened after ${waited} ms`);
    assert.equal(fake.aborted[0], true);
    assert.equal(fake.requests[1]?.afterChangeToken, "t1");
    assert.equal(watch.resumes, 1);
    watch.close();
    assert.equal((await messages.next()).done, true);
    assert.equal(fake.aborted[1], true);
  });

  it("ends, without an error, when closed while waiting or when its signal aborts", { timeout: 10_000 }, async () => {
    const fake = scripted({ items: [event(1, "t1")], silent: true }, { items: [], silent: true });
    const watch = new ResumableWatch(fake.connections, { idleTimeoutMs: 0 });
    const messages = watch[Symbol.asyncIterator]();
    assert.equal((await messages.next()).value?.changeToken, "t1");
    const pending = messages.next();
    setTimeout(() => watch.close(), 50);
    assert.equal((await pending).done, true);
    assert.equal(fake.aborted[0], true);
    assert.equal(watch.resumes, 0);

    const controller = new AbortController();
    const viaSignal = new ResumableWatch(fake.connections, { signal: controller.signal, idleTimeoutMs: 0 });
    const next = viaSignal[Symbol.asyncIterator]().next();
    setTimeout(() => controller.abort(), 50);
    assert.equal((await next).done, true);
    assert.equal(viaSignal.closed, true);
  });
});
