/**
 * The page's only way to the server: the public API over gRPC-Web, from the page's own origin,
 * with the signed-in organization's API key on every call. Refusals become sentences for people.
 */
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { ConnectionService } from "./gen/connections/v1/connection_service_pb.js";
import { ErrorReason } from "./gen/connections/v1/errors_pb.js";
import { OrganizationService } from "./gen/connections/v1/organization_service_pb.js";
import { WebhookService } from "./gen/connections/v1/webhook_service_pb.js";
import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";

export { Code, ConnectError, ErrorReason };

/** Typed clients of the services an organization may call. */
export interface Api {
  connections: Client<typeof ConnectionService>;
  organizations: Client<typeof OrganizationService>;
  webhooks: Client<typeof WebhookService>;
}

/** Clients that send `apiKey` as "authorization: Bearer <apiKey>". */
export function createApi(apiKey: string): Api {
  const bearer: Interceptor = (next) => async (req) => {
    req.header.set("authorization", `Bearer ${apiKey}`);
    return await next(req);
  };
  const transport = createGrpcWebTransport({
    baseUrl: window.location.origin,
    interceptors: [bearer],
    defaultTimeoutMs: 15_000,
  });
  return {
    connections: createClient(ConnectionService, transport),
    organizations: createClient(OrganizationService, transport),
    webhooks: createClient(WebhookService, transport),
  };
}

/** Where the signed-in key is kept: this tab's session only (never localStorage or a cookie). */
const KEY_ITEM = "connections.apiKey";

export const session = {
  load(): string | null {
    return window.sessionStorage.getItem(KEY_ITEM);
  },
  save(apiKey: string): void {
    window.sessionStorage.setItem(KEY_ITEM, apiKey);
  },
  forget(): void {
    window.sessionStorage.removeItem(KEY_ITEM);
  },
};

/** A refusal, as the page tells it. */
export interface Problem {
  /** What happened, for people. */
  sentence: string;
  /** The ErrorInfo reason (UNSPECIFIED when there is none). */
  reason: ErrorReason;
  /** Whether trying the same thing again may work (the service is unavailable). */
  retryable: boolean;
  /** ErrorInfo metadata, e.g. the existing connection's ID for ALREADY_EXISTS. */
  metadata: Record<string, string>;
  /** The server's own message, without the reason's name at its end. */
  detail?: string;
}

const SENTENCES: Record<ErrorReason, string> = {
  [ErrorReason.UNSPECIFIED]: "Something went wrong. Please try again.",
  [ErrorReason.API_KEY_MISSING]: "Sign in with your organization's API key.",
  [ErrorReason.API_KEY_INVALID]:
    "This API key is not valid. It may have been revoked: ask your administrator for a new one.",
  [ErrorReason.ADMIN_TOKEN_INVALID]: "This page cannot do administrator operations.",
  [ErrorReason.INVALID_ARGUMENT]: "Some of what you entered is not valid.",
  [ErrorReason.SELF_CONNECTION]:
    "That is your own organization's ID. Enter the ID of the organization you want to share with.",
  [ErrorReason.REQUEST_ID_REUSED]: "This request was already sent with other details. Please try again.",
  [ErrorReason.INVALID_PAGE_TOKEN]: "The list changed. It starts again from the first page.",
  [ErrorReason.CONNECTION_NOT_FOUND]:
    "This connection does not exist, or your organization is not part of it.",
  [ErrorReason.ORGANIZATION_NOT_FOUND]: "No organization has this ID. Check the ID with the organization.",
  [ErrorReason.API_KEY_NOT_FOUND]: "This API key does not exist.",
  [ErrorReason.CONNECTION_ALREADY_EXISTS]: "You already have a connection to this organization.",
  [ErrorReason.CALLER_NOT_SOURCE]: "Only the organization that created this connection can do this.",
  [ErrorReason.CALLER_NOT_DESTINATION]: "Only the organization this connection was created for can do this.",
  [ErrorReason.INVALID_STATE_TRANSITION]:
    "This connection's state does not allow that any more. Here is its current state.",
  [ErrorReason.ETAG_MISMATCH]: "This connection changed since you opened it. Here is its current state.",
  [ErrorReason.CONCURRENT_MODIFICATION]:
    "This connection changed at the same moment. Here is its current state; try again if you still want to.",
  [ErrorReason.DATABASE_UNAVAILABLE]: "The service is unavailable right now.",
  [ErrorReason.INTERNAL]: "Something went wrong on our side. Please try again later.",
  [ErrorReason.AUTHENTICATION_THROTTLED]: "The service is busy right now. Please try again in a moment.",
  [ErrorReason.INVALID_CHANGE_TOKEN]: "The page lost its place in the list of changes. It loads what it shows again.",
  [ErrorReason.WATCH_LIMIT_EXCEEDED]: "Too many pages are following changes for your organization. Close some.",
  [ErrorReason.WATCH_CONSUMER_TOO_SLOW]: "The page fell behind the list of changes. It catches up by itself.",
  [ErrorReason.CALLER_NOT_PARTY]: "Your organization is not part of this connection.",
  [ErrorReason.SERVER_STOPPING]: "The server is restarting. Try again in a moment.",
  [ErrorReason.WEBHOOK_ENDPOINT_NOT_FOUND]: "This webhook endpoint does not exist any more.",
  [ErrorReason.WEBHOOK_URL_NOT_ALLOWED]: "Deliveries cannot be sent to this URL.",
  [ErrorReason.WEBHOOK_ENDPOINT_LIMIT_EXCEEDED]:
    "Your organization has as many webhook endpoints as it may. Delete one to add another.",
  [ErrorReason.WEBHOOKS_NOT_CONFIGURED]:
    "Webhooks are not set up on this server yet. Ask its operator to give it a webhook key.",
  [ErrorReason.CONNECTION_EXPIRED]:
    "This invitation expired before it was activated. The source can send it again.",
  [ErrorReason.NO_PENDING_DATA_TYPES]:
    "No data types are waiting for approval any more. Here is the connection as it is now.",
  [ErrorReason.NO_DATA_TYPES_LEFT]:
    "An active connection must keep at least one of its data types. Keep one, or deactivate it.",
  [ErrorReason.DATA_TYPES_UNCHANGED]: "The connection already shares exactly these data types.",
};

/** The sentence and details of a failed call. */
export function problem(err: unknown): Problem {
  const error = ConnectError.from(err);
  const info = error.findDetails(ErrorInfoSchema)[0];
  const reason = info ? reasonOf(info.reason) : ErrorReason.UNSPECIFIED;
  // A request the browser could not send at all (the server is down, the network failed) ends
  // in fetch's TypeError, which Connect reports as UNKNOWN: the service could not be reached.
  const unreachable = error.code === Code.Unknown && (err instanceof TypeError || error.cause instanceof TypeError);
  // A limit of the organization's own (its number of webhook endpoints) is not lifted by waiting.
  const unavailable =
    unreachable ||
    ([Code.Unavailable, Code.DeadlineExceeded, Code.ResourceExhausted].includes(error.code) &&
      reason !== ErrorReason.WEBHOOK_ENDPOINT_LIMIT_EXCEEDED);
  // The server ends its message with the reason's name, for tools; people
  // are given the sentence instead.
  const detail = error.rawMessage.replace(/ \(ERROR_REASON_[A-Z_]+\)$/, "");
  let sentence = SENTENCES[reason];
  if (reason === ErrorReason.UNSPECIFIED && unavailable) {
    sentence = "The service cannot be reached right now.";
  } else if (reason === ErrorReason.INVALID_ARGUMENT && detail) {
    sentence = `${sentence} (${detail})`;
  }
  return {
    sentence,
    reason,
    retryable: unavailable || reason === ErrorReason.DATABASE_UNAVAILABLE,
    metadata: info?.metadata ?? {},
    detail,
  };
}

/**
 * What the server found wrong with the request's `field` when it refused it as INVALID_ARGUMENT
 * ("must not contain control characters"), or null. Its message names each field it refused,
 * "invalid request: message: …; data_types: …".
 */
export function fieldProblem(refused: Problem | null, field: string): string | null {
  if (refused?.reason !== ErrorReason.INVALID_ARGUMENT) return null;
  return new RegExp(`(?:^|[:;] )${field}: ([^;]+)`).exec(refused.detail ?? "")?.[1] ?? null;
}

function reasonOf(name: string): ErrorReason {
  const key = name.replace(/^ERROR_REASON_/, "") as keyof typeof ErrorReason;
  const value = ErrorReason[key];
  return typeof value === "number" ? value : ErrorReason.UNSPECIFIED;
}

/** A well-formed ID: a UUID in its 36-character form. */
export function isId(value: string): boolean {
  return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(value.trim());
}

/** A fresh request_id, for one user intent and its retries. */
export function newRequestId(): string {
  return crypto.randomUUID();
}
