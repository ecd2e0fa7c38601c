/**
 * Small helpers around the generated connections.v1 code (src/gen, written by `npx buf generate`)
 * and Connect for Node.js: a transport that speaks gRPC (HTTP/2) or gRPC-Web (HTTP/1.1 or HTTP/2)
 * and carries an API key on every call, typed clients for ConnectionService, OrganizationService,
 * AccessService and WebhookService, the google.rpc.ErrorInfo of a refused call, and `ResumableWatch`, which
 * follows WatchConnectionEvents across disconnections without losing or repeating an event.
 */
import * as http from "node:http";
import { type DescEnum, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, createGrpcWebTransport, Http2SessionManager } from "@connectrpc/connect-node";

import { AccessService } from "./gen/connections/v1/access_service_pb.js";
import {
  ConnectionService,
  type WatchConnectionEventsRequestSchema,
  type WatchConnectionEventsResponse,
} from "./gen/connections/v1/connection_service_pb.js";
import { ErrorReason, ErrorReasonSchema } from "./gen/connections/v1/errors_pb.js";
import { OrganizationService } from "./gen/connections/v1/organization_service_pb.js";
import { ConnectionRole } from "./gen/connections/v1/resources_pb.js";
import { WebhookService } from "./gen/connections/v1/webhook_service_pb.js";
import { type ErrorInfo, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";

export { Code, ConnectError, ErrorReason };
export type { ErrorInfo };

/** "grpc": gRPC over HTTP/2. "grpc-web": gRPC-Web, over HTTP/1.1 (default) or HTTP/2. */
export type Protocol = "grpc" | "grpc-web";

export interface ConnectOptions {
  /** Where the server listens, e.g. "http://127.0.0.1:50051". */
  baseUrl: string;
  /**
   * The organization's API key, sent as "authorization: Bearer <key>" on every call (none if
   * absent). For AccessService, the operator's access-check token (or admin token) goes here too.
   */
  apiKey?: string;
  /** Default "grpc". */
  protocol?: Protocol;
  /** gRPC-Web only: "1.1" (default, what browsers use) or "2". gRPC is always HTTP/2. */
  httpVersion?: "1.1" | "2";
  /** Deadline of each call unless the call sets its own `timeoutMs`. Default 10 s. */
  timeoutMs?: number;
}

/** Clients of the services over one connection; close() it when done. */
export interface ConnectionsClient {
  /** The caller's connections: create, transitions, data types (update, approve, decline), history and watch. */
  connections: Client<typeof ConnectionService>;
  /** GetOrganization, and the caller's policy as a destination (GetOrganizationPolicy, UpdateOrganizationPolicy). */
  organizations: Client<typeof OrganizationService>;
  /** CheckAccess and BatchCheckAccess: with a party's API key, or the access-check (or admin) token as `apiKey`. */
  access: Client<typeof AccessService>;
  /** The caller's webhook endpoints, their secrets and delivery attempts. */
  webhooks: Client<typeof WebhookService>;
  transport: Transport;
  /** Closes the underlying HTTP connection(s), so that the process can exit. */
  close(): void;
}

/** An interceptor that adds "authorization: Bearer <apiKey>" to every request. */
export function bearerAuth(apiKey: string): Interceptor {
  return (next) => async (req) => {
    req.header.set("authorization", `Bearer ${apiKey}`);
    return await next(req);
  };
}

/** A transport for the given protocol, with the API key interceptor, and its close(). */
export function createConnectionsTransport(options: ConnectOptions): { transport: Transport; close(): void } {
  const protocol = options.protocol ?? "grpc";
  const common = {
    baseUrl: options.baseUrl,
    interceptors: options.apiKey === undefined ? [] : [bearerAuth(options.apiKey)],
    defaultTimeoutMs: options.timeoutMs ?? 10_000,
  };
  const httpVersion = protocol === "grpc" ? "2" : (options.httpVersion ?? "1.1");
  if (httpVersion === "2") {
    // One HTTP/2 connection per transport, owned here so that close() can end it.
    const sessionManager = new Http2SessionManager(options.baseUrl);
    const transport =
      protocol === "grpc"
        ? createGrpcTransport({ ...common, sessionManager })
        : createGrpcWebTransport({ ...common, httpVersion: "2", sessionManager });
    return { transport, close: () => sessionManager.abort() };
  }
  const agent = new http.Agent({ keepAlive: true });
  const transport = createGrpcWebTransport({ ...common, httpVersion: "1.1", nodeOptions: { agent } });
  return { transport, close: () => agent.destroy() };
}

/** Clients of ConnectionService, OrganizationService, AccessService and WebhookService acting for the API key's holder. */
export function connect(options: ConnectOptions): ConnectionsClient {
  const { transport, close } = createConnectionsTransport(options);
  return {
    connections: createClient(ConnectionService, transport),
    organizations: createClient(OrganizationService, transport),
    access: createClient(AccessService, transport),
    webhooks: createClient(WebhookService, transport),
    transport,
    close,
  };
}

/** The google.rpc.ErrorInfo detail of a failed call, or undefined (e.g. a transport error). */
export function errorInfo(err: unknown): ErrorInfo | undefined {
  return ConnectError.from(err).findDetails(ErrorInfoSchema)[0];
}

/**
 * The ErrorReason of a failed call, from its ErrorInfo ("ERROR_REASON_CALLER_NOT_DESTINATION" ->
 * ErrorReason.CALLER_NOT_DESTINATION), or undefined if it carries none or one this code predates.
 */
export function errorReason(err: unknown): ErrorReason | undefined {
  const reason = errorInfo(err)?.reason;
  return ErrorReasonSchema.values.find((v) => v.name === reason)?.number as ErrorReason | undefined;
}

/** The proto name of an enum value: enumName(ConnectionStateSchema, 2) === "CONNECTION_STATE_ACTIVE". */
export function enumName(schema: DescEnum, value: number): string {
  return schema.value[value]?.name ?? String(value);
}

/** Whether a failed call is worth retrying (with backoff, and the same request_id for mutations). */
export function isRetryable(err: unknown): boolean {
  const code = ConnectError.from(err).code;
  return code === Code.Unavailable || code === Code.DeadlineExceeded || code === Code.Aborted;
}

/** Where a ResumableWatch starts, what it yields, and how it retries. */
export interface WatchOptions {
  /** Start after this change token (from a write's response, or saved from an earlier watch). */
  afterChangeToken?: string;
  /** Without a token: true starts at the first event of the caller's connections; false (default) from now. */
  fromBeginning?: boolean;
  /** Only the connections where the caller has this role; default both. */
  role?: ConnectionRole;
  /** Also yield heartbeats (messages without an event). Default false. */
  heartbeats?: boolean;
  /**
   * How long to wait for the next message before treating the stream as dead and opening another
   * (the server sends a heartbeat at least every 15 s by default). Default 60 s; 0 waits forever.
   */
  idleTimeoutMs?: number;
  /** First delay before a new attempt; it doubles with each failed attempt in a row. Default 200 ms. */
  initialBackoffMs?: number;
  /** Longest delay between attempts. Default 10 s. */
  maxBackoffMs?: number;
  /** Failed attempts in a row before the last error is thrown. Default: retry forever. */
  maxAttempts?: number;
  /** Aborting it closes the watch, like close(). */
  signal?: AbortSignal;
  /** Called before each new attempt, with the error that ended the previous one (undefined if none). */
  onResume?: (error: ConnectError | undefined, delayMs: number) => void;
}

/**
 * Whether a watch that failed with `err` should be resumed from its last token: UNAVAILABLE (e.g.
 * the server stopped), ABORTED (WATCH_CONSUMER_TOO_SLOW: the client read too slowly), or a dropped
 * connection (INTERNAL or UNKNOWN without the google.rpc.ErrorInfo every server status carries).
 */
export function isResumable(err: unknown): boolean {
  const e = ConnectError.from(err);
  if (e.code === Code.Unavailable || e.code === Code.Aborted) return true;
  return (e.code === Code.Internal || e.code === Code.Unknown) && errorInfo(e) === undefined;
}

/**
 * WatchConnectionEvents that survives disconnections. Iterate it with `for await`: it opens the
 * stream, remembers the change token of every message (heartbeats included), and when the stream
 * ends (UNAVAILABLE, ABORTED, a dropped connection, or no message within `idleTimeoutMs`) opens a
 * new one with `afterChangeToken` set to that token, after an exponential backoff with jitter.
 * The server sends every event after a token exactly once, in the change log's order, so the
 * events yielded are each connection's events in order, none twice and none missed. Other errors
 * (UNAUTHENTICATED, INVALID_ARGUMENT for a bad token, RESOURCE_EXHAUSTED for too many streams...)
 * are thrown.
 *
 * Save `lastChangeToken` (or each message's `changeToken`) to resume after a restart of your own
 * process. A watch "from now" has no token until its first message: if that first stream breaks,
 * the next one starts from its own "now". Iterate a watch once; close() ends the iteration.
 */
export class ResumableWatch implements AsyncIterable<WatchConnectionEventsResponse> {
  /** The change token of the last message received: where the next stream starts. */
  lastChangeToken: string;
  /** How many times a stream was opened again after an interruption. */
  resumes = 0;
  private readonly closer = new AbortController();
  private readonly options: WatchOptions;

  constructor(
    private readonly connections: Client<typeof ConnectionService>,
    options: WatchOptions = {},
  ) {
    this.options = options;
    this.lastChangeToken = options.afterChangeToken ?? "";
    if (options.signal?.aborted) this.close();
    options.signal?.addEventListener("abort", () => this.close(), { once: true });
  }

  /** Whether close() was called (or the signal aborted). */
  get closed(): boolean {
    return this.closer.signal.aborted;
  }

  /** Ends the watch: cancels the stream in progress; the iteration ends without an error. */
  close(): void {
    this.closer.abort();
  }

  /** The request the next stream is opened with. */
  request(): MessageInitShape<typeof WatchConnectionEventsRequestSchema> {
    const role = this.options.role ?? ConnectionRole.UNSPECIFIED;
    return this.lastChangeToken
      ? { afterChangeToken: this.lastChangeToken, role }
      : { fromBeginning: this.options.fromBeginning ?? false, role };
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<WatchConnectionEventsResponse, void, undefined> {
    const idleTimeoutMs = this.options.idleTimeoutMs ?? 60_000;
    let failures = 0;
    while (!this.closed) {
      const attempt = new AbortController();
      const onClose = () => attempt.abort();
      this.closer.signal.addEventListener("abort", onClose);
      let idle: NodeJS.Timeout | undefined;
      let idleFired = false;
      const awaitMessage = () => {
        if (idleTimeoutMs > 0) {
          idle = setTimeout(() => {
            idleFired = true;
            attempt.abort(new ConnectError(`no message for ${idleTimeoutMs} ms`, Code.Unavailable));
          }, idleTimeoutMs);
        }
      };
      let error: ConnectError | undefined;
      try {
        // No deadline (timeoutMs: 0): the stream stays open for as long as it is read.
        const stream = this.connections.watchConnectionEvents(this.request(), { signal: attempt.signal, timeoutMs: 0 });
        awaitMessage();
        for await (const message of stream) {
          clearTimeout(idle);
          failures = 0;
          this.lastChangeToken = message.changeToken;
          if (message.event !== undefined || this.options.heartbeats) yield message;
          if (this.closed) return;
          awaitMessage();
        }
        // Ended without a status error: the stream dropped; resume.
      } catch (err) {
        if (this.closed) return;
        error = ConnectError.from(err);
        if (!idleFired && !isResumable(error)) throw error;
      } finally {
        clearTimeout(idle);
        this.closer.signal.removeEventListener("abort", onClose);
        attempt.abort(); // ends the stream if the consumer stopped iterating early
      }
      failures++;
      if (failures >= (this.options.maxAttempts ?? Infinity)) {
        throw error ?? new ConnectError(`WatchConnectionEvents ended ${failures} times in a row`, Code.Unavailable);
      }
      const initial = this.options.initialBackoffMs ?? 200;
      const ceiling = Math.min(this.options.maxBackoffMs ?? 10_000, initial * 2 ** (failures - 1));
      const delayMs = ceiling / 2 + Math.random() * (ceiling / 2);
      this.options.onResume?.(error, delayMs);
      this.resumes++;
      await sleepUnlessAborted(delayMs, this.closer.signal);
    }
  }
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function sleepUnlessAborted(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}
