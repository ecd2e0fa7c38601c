/** Words and formats the page shows for the API's values. */
import { type Duration, timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";

import {
  ConnectionEventType,
  ConnectionRole,
  ConnectionState,
  DataType,
} from "./gen/connections/v1/resources_pb.js";

export const STATE_WORDS: Record<ConnectionState, string> = {
  [ConnectionState.UNSPECIFIED]: "Unknown",
  [ConnectionState.PENDING]: "Pending",
  [ConnectionState.ACTIVE]: "Active",
  [ConnectionState.INACTIVE]: "Inactive",
};

/** The data types a source may share, with the checkbox label of each. */
export const DATA_TYPES: ReadonlyArray<[DataType, string]> = [
  [DataType.INQUIRY, "Inquiries"],
  [DataType.VERIFICATION, "Verifications"],
  [DataType.ACCOUNT, "Accounts"],
  [DataType.TRANSACTION, "Transactions"],
];

export function dataTypeWords(types: DataType[]): string {
  return types.map((t) => DATA_TYPES.find(([value]) => value === t)?.[1] ?? "Unknown").join(", ");
}

/** The event types a webhook endpoint may receive, with the checkbox label of each. */
export const EVENT_TYPES: ReadonlyArray<[ConnectionEventType, string]> = [
  [ConnectionEventType.CREATED, "Created"],
  [ConnectionEventType.ACTIVATED, "Activated"],
  [ConnectionEventType.DEACTIVATED, "Deactivated"],
  [ConnectionEventType.REACTIVATED, "Reactivated"],
  [ConnectionEventType.EXPIRED, "Expired"],
  [ConnectionEventType.DATA_TYPES_CHANGED, "Data types changed"],
  [ConnectionEventType.DATA_TYPES_PROPOSED, "Data types proposed"],
  [ConnectionEventType.DATA_TYPES_APPROVED, "Data types approved"],
  [ConnectionEventType.DATA_TYPES_DECLINED, "Data types declined"],
];

/** An endpoint's event types in words: "Created and Activated", or "All events" for none. */
export function eventTypeList(types: ConnectionEventType[]): string {
  if (types.length === 0) return "All events";
  return listWords(types.map((t) => EVENT_TYPES.find(([value]) => value === t)?.[1] ?? "Unknown"));
}

export const ROLE_WORDS: Record<ConnectionRole, string> = {
  [ConnectionRole.UNSPECIFIED]: "",
  [ConnectionRole.SOURCE]: "the source",
  [ConnectionRole.DESTINATION]: "the destination",
};

/**
 * What happened, in the history: an organization's act, after its name ("Acme Bank (the source)
 * activated it"), or the service's own (EXPIRED; no organization acted), a sentence by itself.
 */
export const EVENT_WORDS: Record<ConnectionEventType, string> = {
  [ConnectionEventType.UNSPECIFIED]: "changed",
  [ConnectionEventType.CREATED]: "created the connection",
  [ConnectionEventType.ACTIVATED]: "activated it",
  [ConnectionEventType.DEACTIVATED]: "deactivated it",
  [ConnectionEventType.REACTIVATED]: "reactivated it",
  [ConnectionEventType.EXPIRED]: "Expired: the destination did not activate it in time",
  [ConnectionEventType.DATA_TYPES_CHANGED]: "changed the data types",
  [ConnectionEventType.DATA_TYPES_PROPOSED]: "proposed data types",
  [ConnectionEventType.DATA_TYPES_APPROVED]: "approved the data types waiting for approval",
  [ConnectionEventType.DATA_TYPES_DECLINED]: "declined the data types waiting for approval",
};

const DATE = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

/** A timestamp for people, to the second, or "—" when there is none. */
export function when(time: Timestamp | undefined): string {
  return time ? DATE.format(timestampDate(time)) : "—";
}

const TIME_OF_DAY = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });

/** A timestamp for people, to the second: the time of day alone when it is today. */
export function whenToday(time: Timestamp | undefined): string {
  if (!time) return "—";
  const date = timestampDate(time);
  return date.toDateString() === new Date().toDateString() ? TIME_OF_DAY.format(date) : DATE.format(date);
}

const RELATIVE = new Intl.RelativeTimeFormat("en", { numeric: "auto" });
const UNITS: ReadonlyArray<[Intl.RelativeTimeFormatUnit, number]> = [
  ["year", 365 * 24 * 3600],
  ["month", 30 * 24 * 3600],
  ["week", 7 * 24 * 3600],
  ["day", 24 * 3600],
  ["hour", 3600],
  ["minute", 60],
];

/** How long ago `time` was, from `now` (ms): "just now", "3 minutes ago", "yesterday". */
export function ago(time: Timestamp | undefined, now: number): string {
  if (!time) return "—";
  const seconds = Math.round((timestampDate(time).getTime() - now) / 1000);
  if (Math.abs(seconds) < 60) return "just now";
  for (const [unit, size] of UNITS) {
    if (Math.abs(seconds) >= size) return RELATIVE.format(Math.trunc(seconds / size), unit);
  }
  return "just now";
}

const DAY = 24 * 3600;
const HOUR = 3600;

/**
 * When a pending invitation expires, from `now` (ms), in words: "Expires in 30 days" (in days
 * from two days on), "Expires in 36 hours", "Expires in 20 minutes", "Expired" once past.
 */
export function expiresIn(time: Timestamp, now: number): string {
  const seconds = (timestampDate(time).getTime() - now) / 1000;
  if (seconds <= 0) return "Expired";
  if (seconds >= 2 * DAY) return `Expires ${RELATIVE.format(Math.round(seconds / DAY), "day")}`;
  const hours = Math.round(seconds / HOUR);
  if (hours >= 1) return `Expires ${RELATIVE.format(hours, "hour")}`;
  const minutes = Math.round(seconds / 60);
  if (minutes >= 1) return `Expires ${RELATIVE.format(minutes, "minute")}`;
  return "Expires in less than a minute";
}

const LIST = new Intl.ListFormat("en", { style: "long", type: "conjunction" });

/** Words joined as people list them: "Inquiries and Accounts". */
export function listWords(words: string[]): string {
  return LIST.format(words);
}

/** The data types, listed in words: "Inquiries and Accounts". */
export function dataTypeList(types: DataType[]): string {
  return listWords(types.map((t) => DATA_TYPES.find(([value]) => value === t)?.[1] ?? "Unknown"));
}

/** The end of an ID, enough to tell two apart at a glance (the start of a UUIDv7 is a time). */
export function shortId(id: string): string {
  return `…${id.slice(-8)}`;
}

/** A duration as people read it: "38 ms", "2.4 s". */
export function took(duration: Duration | undefined): string {
  if (!duration) return "—";
  const ms = Number(duration.seconds) * 1000 + duration.nanos / 1e6;
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** The same timestamp in ISO 8601, for <time datetime>. */
export function iso(time: Timestamp | undefined): string | undefined {
  return time ? timestampDate(time).toISOString() : undefined;
}
