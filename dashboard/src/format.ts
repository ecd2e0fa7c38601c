/** Words and formats the page shows for the API's values. */
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";

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

export const ROLE_WORDS: Record<ConnectionRole, string> = {
  [ConnectionRole.UNSPECIFIED]: "",
  [ConnectionRole.SOURCE]: "the source",
  [ConnectionRole.DESTINATION]: "the destination",
};

export const EVENT_WORDS: Record<ConnectionEventType, string> = {
  [ConnectionEventType.UNSPECIFIED]: "changed",
  [ConnectionEventType.CREATED]: "created the connection",
  [ConnectionEventType.ACTIVATED]: "activated it",
  [ConnectionEventType.DEACTIVATED]: "deactivated it",
  [ConnectionEventType.REACTIVATED]: "reactivated it",
};

const DATE = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

/** A timestamp for people, or "—" when there is none. */
export function when(time: Timestamp | undefined): string {
  return time ? DATE.format(timestampDate(time)) : "—";
}

/** The same timestamp in ISO 8601, for <time datetime>. */
export function iso(time: Timestamp | undefined): string | undefined {
  return time ? timestampDate(time).toISOString() : undefined;
}
