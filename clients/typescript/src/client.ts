/**
 * Small helpers around the generated connections.v1 code (src/gen, written by `npx buf generate`)
 * and Connect for Node.js: a transport that speaks gRPC (HTTP/2) or gRPC-Web (HTTP/1.1 or HTTP/2)
 * and carries an API key on every call, typed clients for ConnectionService and
 * OrganizationService, and the google.rpc.ErrorInfo of a refused call.
 */
import * as http from "node:http";
import { type DescEnum } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, createGrpcWebTransport, Http2SessionManager } from "@connectrpc/connect-node";

import { ConnectionService } from "./gen/connections/v1/connection_service_pb.js";
import { ErrorReason, ErrorReasonSchema } from "./gen/connections/v1/errors_pb.js";
import { OrganizationService } from "./gen/connections/v1/organization_service_pb.js";
import { type ErrorInfo, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";

export { Code, ConnectError, ErrorReason };
export type { ErrorInfo };

/** "grpc": gRPC over HTTP/2. "grpc-web": gRPC-Web, over HTTP/1.1 (default) or HTTP/2. */
export type Protocol = "grpc" | "grpc-web";

export interface ConnectOptions {
  /** Where the server listens, e.g. "http://127.0.0.1:50051". */
  baseUrl: string;
  /** The organization's API key, sent as "authorization: Bearer <key>" on every call (none if absent). */
  apiKey?: string;
  /** Default "grpc". */
  protocol?: Protocol;
  /** gRPC-Web only: "1.1" (default, what browsers use) or "2". gRPC is always HTTP/2. */
  httpVersion?: "1.1" | "2";
  /** Deadline of each call unless the call sets its own `timeoutMs`. Default 10 s. */
  timeoutMs?: number;
}

/** A client of both services over one connection; close() it when done. */
export interface ConnectionsClient {
  connections: Client<typeof ConnectionService>;
  organizations: Client<typeof OrganizationService>;
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

/** Clients of ConnectionService and OrganizationService acting for the API key's organization. */
export function connect(options: ConnectOptions): ConnectionsClient {
  const { transport, close } = createConnectionsTransport(options);
  return {
    connections: createClient(ConnectionService, transport),
    organizations: createClient(OrganizationService, transport),
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
