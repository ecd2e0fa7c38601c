/**
 * One connection: a summary line and what happens next (with, while it is Pending, when the
 * invitation expires), the message of the latest invitation, the actions the caller may take now
 * beside its state, the fields that have a value, and its history, newest first. Each action is
 * sent with the etag of the connection as shown, so a change made meanwhile by the other party is
 * never overwritten: the page says so and shows the current state. An event of this connection
 * arriving on the page's stream (see ../live.ts) loads the connection again and joins the history;
 * a reason being typed for a deactivation or a decline, a message for a reactivation, or data
 * types being chosen, stay, with a notice that the connection changed.
 *
 * Data types: the source changes them in any state (on an Active connection the ones it adds wait
 * for the destination's approval, the ones it removes stop at once); the destination of an Active
 * connection may only remove some, and approves or declines what waits for its approval. An
 * approval is sent with the etag of the connection whose waiting types the page shows, so it never
 * approves types the page did not show.
 */
import { useCallback, useEffect, useRef, useState } from "preact/hooks";

import { ErrorReason, fieldProblem, newRequestId, problem, type Problem } from "../api.js";
import {
  DATA_TYPES,
  dataTypeList,
  dataTypeWords,
  EVENT_WORDS,
  iso,
  ROLE_WORDS,
  STATE_WORDS,
  when,
} from "../format.js";
import {
  type Connection,
  type ConnectionEvent,
  ConnectionEventType,
  ConnectionRole,
  ConnectionState,
  type DataType,
} from "../gen/connections/v1/resources_pb.js";
import { useOrganizationName, useSession } from "../session.js";
import { useCoalesced, useLive, useReloadWhenLive } from "./live.js";
import { MessageField } from "./message.js";
import { ProblemNote } from "./problem.js";
import { Ago, Expires } from "./time.js";

type Action = "Activate" | "Deactivate" | "Reactivate" | "ChangeTypes" | "Approve" | "Decline";

/** The actions asked about before they are sent, with what was typed or chosen for them. */
type Confirmed = Exclude<Action, "Activate" | "Approve">;

/** What the user reads when the other party changed the connection after the page showed it. */
const CHANGED_SINCE_OPENED = "This connection changed since you opened it. Here is its current state.";

/** Reasons after which the page shows the connection as it is now. */
const CHANGED_MEANWHILE = [
  ErrorReason.ETAG_MISMATCH,
  ErrorReason.CONCURRENT_MODIFICATION,
  ErrorReason.INVALID_STATE_TRANSITION,
  ErrorReason.NO_PENDING_DATA_TYPES,
];

/** What the history says of an activation the service made because the destination trusts the source. */
const ACTIVATED_BY_POLICY = "activated it automatically (trusted partner)";

/** The longest reason the API accepts. */
const REASON_MAX = 500;

/** The caller's role in `connection`. */
function roleOf(connection: Connection, me: string): ConnectionRole {
  return connection.sourceOrganizationId === me
    ? ConnectionRole.SOURCE
    : connection.destinationOrganizationId === me
      ? ConnectionRole.DESTINATION
      : ConnectionRole.UNSPECIFIED;
}

/** The actions the caller may take on `connection` now. */
function allowedActions(connection: Connection, role: ConnectionRole): Action[] {
  const allowed: Action[] = [];
  const active = connection.state === ConnectionState.ACTIVE;
  const destination = role === ConnectionRole.DESTINATION;
  if (destination && connection.state === ConnectionState.PENDING) allowed.push("Activate");
  if (connection.state === ConnectionState.PENDING || active) allowed.push("Deactivate");
  if (role === ConnectionRole.SOURCE && connection.state === ConnectionState.INACTIVE) allowed.push("Reactivate");
  // The source, in any state; the destination of an Active connection, to remove some of its types
  // (it keeps at least one, so there is nothing to remove from one).
  if (role === ConnectionRole.SOURCE || (destination && active && connection.dataTypes.length > 1)) {
    allowed.push("ChangeTypes");
  }
  if (destination && active && connection.pendingDataTypes.length > 0) allowed.push("Approve", "Decline");
  return allowed;
}

/** The data types the form starts with: what the caller shares or receives now, and what waits. */
function typesNow(connection: Connection, role: ConnectionRole): DataType[] {
  return role === ConnectionRole.SOURCE
    ? union(connection.dataTypes, connection.pendingDataTypes)
    : [...connection.dataTypes];
}

/** The types of `a` and `b`, each once, in the enum's order. */
function union(a: DataType[], b: DataType[]): DataType[] {
  return sorted([...a, ...b.filter((t) => !a.includes(t))]);
}

function sorted(types: DataType[]): DataType[] {
  return [...types].sort((x, y) => x - y);
}

function sameTypes(a: DataType[], b: DataType[]): boolean {
  return sorted(a).join(",") === sorted(b).join(",");
}

export function ConnectionDetail({ id }: { id: string }) {
  const { api, me } = useSession();
  const [connection, setConnection] = useState<Connection | null>(null);
  const [refusal, setRefusal] = useState<Problem | null>(null);
  const [actionRefusal, setActionRefusal] = useState<Problem | null>(null);
  // The action being confirmed, with the etag of the connection when its form was opened; null
  // while none is.
  const [confirming, setConfirming] = useState<{ action: Confirmed; openedAt: string } | null>(null);
  const [reason, setReason] = useState("");
  const [message, setMessage] = useState("");
  const [declineReason, setDeclineReason] = useState("");
  // The data types chosen in "Change data types".
  const [types, setTypes] = useState<DataType[]>([]);
  const [busy, setBusy] = useState(false);
  const [historyVersion, setHistoryVersion] = useState(0);
  // One request_id per intent (action, connection version, reason or message): a retry sends the
  // same one.
  const intent = useRef<{ key: string; requestId: string; run: () => Promise<void> } | null>(null);

  // Only the newest answer is shown: one to an earlier request may be older.
  const latest = useRef(0);

  /** Loads the connection as it is now; returns it. */
  const load = useCallback(async (): Promise<Connection | null> => {
    const mine = ++latest.current;
    try {
      const response = await api.connections.getConnection({ connectionId: id });
      if (mine === latest.current) {
        setConnection(response.connection ?? null);
        setRefusal(null);
      }
      return response.connection ?? null;
    } catch (err) {
      if (mine === latest.current) setRefusal(problem(err));
      return null;
    }
  }, [api, id]);

  /** Loads the connection and its history again. */
  const refresh = useCallback(async () => {
    setHistoryVersion((v) => v + 1);
    await load();
  }, [load]);

  // Before the first load, so that an event delivered while it is on its way is not missed.
  const reload = useCoalesced(load);
  useLive({
    onEvent: (event) => {
      if (event.connectionId === id) reload();
    },
    onResync: reload,
  });
  useEffect(() => {
    setConnection(null);
    setActionRefusal(null);
    setConfirming(null);
    setReason("");
    setMessage("");
    setDeclineReason("");
    void load();
  }, [load]);
  // Failed while the server was away: load again as soon as it is back.
  useReloadWhenLive(refusal !== null && refusal.retryable, () => void refresh());

  if (!connection) {
    return (
      // The same heading element as when loaded, so the focus stays on it.
      <section aria-labelledby="detail-heading">
        <p>
          <a href="#/">Back to the list</a>
        </p>
        <h2 id="detail-heading" tabIndex={-1}>
          Connection
        </h2>
        {refusal ? <ProblemNote problem={refusal} onRetry={() => void refresh()} /> : <p role="status">Loading…</p>}
      </section>
    );
  }

  const role = roleOf(connection, me.id);
  const allowed = allowedActions(connection, role);

  const act = async (action: Action) => {
    const shown = connection;
    const dataTypes = sorted(types);
    const text =
      action === "Deactivate"
        ? reason.trim()
        : action === "Reactivate"
          ? message.trim()
          : action === "Decline"
            ? declineReason.trim()
            : action === "ChangeTypes"
              ? dataTypes.join(",")
              : "";
    const key = `${action}|${shown.id}|${shown.etag}|${text}`;
    if (intent.current?.key !== key) {
      const requestId = newRequestId();
      const request = { connectionId: shown.id, etag: shown.etag, requestId };
      const run = async () => {
        const response =
          action === "Activate"
            ? await api.connections.activateConnection(request)
            : action === "Deactivate"
              ? await api.connections.deactivateConnection({ ...request, reason: text })
              : action === "Reactivate"
                ? await api.connections.reactivateConnection({ ...request, message: text })
                : action === "ChangeTypes"
                  ? await api.connections.updateConnectionDataTypes({ ...request, dataTypes })
                  : action === "Approve"
                    ? await api.connections.approveDataTypes(request)
                    : await api.connections.declineDataTypes({ ...request, reason: text });
        if (response.connection) {
          // Newer than any load still on its way.
          latest.current += 1;
          setConnection(response.connection);
        }
      };
      intent.current = { key, requestId, run };
    }
    setBusy(true);
    setActionRefusal(null);
    try {
      await intent.current.run();
      if (action === "Deactivate") setReason("");
      if (action === "Reactivate") setMessage("");
      if (action === "Decline") setDeclineReason("");
      if (action !== "Activate" && action !== "Approve") setConfirming(null);
      setHistoryVersion((v) => v + 1);
    } catch (err) {
      const refused = problem(err);
      setActionRefusal(refused);
      if (CHANGED_MEANWHILE.includes(refused.reason)) {
        // A reason, a message or data types being chosen stay: the form says the connection changed.
        if (action === "Activate" || action === "Approve") setConfirming(null);
        setHistoryVersion((v) => v + 1);
        const now = await load();
        if (now && now.etag !== shown.etag) {
          setActionRefusal({ ...refused, sentence: CHANGED_SINCE_OPENED });
        }
      }
    } finally {
      setBusy(false);
    }
  };

  const retry = () => {
    if (intent.current) {
      const [action] = intent.current.key.split("|") as [Action];
      void act(action);
    }
  };

  const other =
    role === ConnectionRole.SOURCE ? connection.destinationOrganizationId : connection.sourceOrganizationId;
  const stateWord = STATE_WORDS[connection.state];
  const confirm = (action: Confirmed) => {
    if (action === "ChangeTypes") setTypes(typesNow(connection, role));
    if (action === "ChangeTypes" || action === "Decline") setActionRefusal(null);
    setConfirming({ action, openedAt: connection.etag });
  };

  return (
    <section aria-labelledby="detail-heading">
      <p>
        <a href="#/">Back to the list</a>
      </p>
      <h2 id="detail-heading" tabIndex={-1}>
        Connection
        <HeadingName role={role} other={other} />
      </h2>
      <div class="state-row">
        <span class={`state state-${stateWord.toLowerCase()}`}>{stateWord}</span>
        <div class="actions" aria-label="Actions" role="group">
          {allowed.includes("Activate") ? (
            <button type="button" class="primary" disabled={busy} onClick={() => void act("Activate")}>
              Activate
            </button>
          ) : null}
          {allowed.includes("Deactivate") && confirming === null ? (
            <button type="button" disabled={busy} onClick={() => confirm("Deactivate")}>
              Deactivate
            </button>
          ) : null}
          {allowed.includes("Reactivate") && confirming === null ? (
            <button type="button" class="primary" disabled={busy} onClick={() => confirm("Reactivate")}>
              Reactivate
            </button>
          ) : null}
          {allowed.includes("ChangeTypes") && confirming === null ? (
            <button type="button" disabled={busy} onClick={() => confirm("ChangeTypes")}>
              Change data types
            </button>
          ) : null}
        </div>
      </div>
      <Summary connection={connection} role={role} other={other} />
      {allowed.includes("Approve") ? (
        <ApprovalRequest
          connection={connection}
          other={other}
          busy={busy}
          open={confirming === null}
          onApprove={() => void act("Approve")}
          onDecline={() => confirm("Decline")}
        />
      ) : null}
      <Invitation message={connection.invitationMessage} role={role} other={other} />
      <ProblemNote problem={refusal} onRetry={() => void refresh()} />
      {confirming?.action === "Deactivate" ? (
        <ConfirmDeactivate
          connection={connection}
          role={role}
          other={other}
          openedAt={confirming.openedAt}
          canDeactivate={allowed.includes("Deactivate")}
          reason={reason}
          setReason={setReason}
          busy={busy}
          onConfirm={() => void act("Deactivate")}
          onCancel={() => setConfirming(null)}
        />
      ) : confirming?.action === "Reactivate" ? (
        <ConfirmReactivate
          connection={connection}
          other={other}
          openedAt={confirming.openedAt}
          canReactivate={allowed.includes("Reactivate")}
          message={message}
          setMessage={(value) => {
            setMessage(value);
            setActionRefusal(null);
          }}
          refusal={actionRefusal}
          busy={busy}
          onConfirm={() => void act("Reactivate")}
          onCancel={() => setConfirming(null)}
        />
      ) : confirming?.action === "Decline" ? (
        <ConfirmDecline
          connection={connection}
          other={other}
          openedAt={confirming.openedAt}
          canDecline={allowed.includes("Decline")}
          reason={declineReason}
          setReason={setDeclineReason}
          busy={busy}
          onConfirm={() => void act("Decline")}
          onCancel={() => setConfirming(null)}
        />
      ) : confirming?.action === "ChangeTypes" ? (
        <ChangeDataTypes
          connection={connection}
          role={role}
          other={other}
          openedAt={confirming.openedAt}
          canChange={allowed.includes("ChangeTypes")}
          types={types}
          setTypes={(chosen) => {
            setTypes(chosen);
            setActionRefusal(null);
          }}
          busy={busy}
          onSave={() => void act("ChangeTypes")}
          onCancel={() => setConfirming(null)}
        />
      ) : null}
      {fieldProblem(actionRefusal, "message") ? null : <ProblemNote problem={actionRefusal} onRetry={retry} />}

      <dl class="fields card">
        <dt>Source</dt>
        <dd>
          <Party id={connection.sourceOrganizationId} you={role === ConnectionRole.SOURCE} />
        </dd>
        <dt>Destination</dt>
        <dd>
          <Party id={connection.destinationOrganizationId} you={role === ConnectionRole.DESTINATION} />
        </dd>
        <dt>Data shared</dt>
        <dd>{dataTypeWords(connection.dataTypes)}</dd>
        {connection.pendingDataTypes.length > 0 ? (
          <>
            <dt>Waiting for approval</dt>
            <dd>{dataTypeWords(connection.pendingDataTypes)}</dd>
          </>
        ) : null}
        <dt>Created</dt>
        <dd>
          <Exact time={connection.createTime} />
        </dd>
        <dt>Last changed</dt>
        <dd>
          <Exact time={connection.updateTime} />
        </dd>
        {connection.activateTime ? (
          <>
            <dt>Last activated</dt>
            <dd>
              <Exact time={connection.activateTime} />
            </dd>
          </>
        ) : null}
        {connection.deactivateTime ? (
          <>
            <dt>Last deactivated</dt>
            <dd>
              <Exact time={connection.deactivateTime} />
              {connection.deactivatedBy !== ConnectionRole.UNSPECIFIED
                ? ` by ${ROLE_WORDS[connection.deactivatedBy]}`
                : " (expired)"}
            </dd>
          </>
        ) : null}
        {connection.state === ConnectionState.INACTIVE && connection.deactivationReason ? (
          <>
            <dt>Deactivation reason</dt>
            <dd class="reason-field">{connection.deactivationReason}</dd>
          </>
        ) : null}
        <dt>Connection ID</dt>
        <dd class="id">{connection.id}</dd>
      </dl>

      <History key={connection.id} id={connection.id} version={historyVersion} onRefresh={() => void refresh()} />
    </section>
  );
}

/** An exact time, to the second. */
function Exact({ time }: { time: Connection["createTime"] }) {
  return <time dateTime={iso(time)}>{when(time)}</time>;
}

/** " to Orbit Credit Union" or " from …", once the name is known. */
function HeadingName({ role, other }: { role: ConnectionRole; other: string }) {
  const name = useOrganizationName(other);
  return <>{name ? (role === ConnectionRole.SOURCE ? ` to ${name}` : ` from ${name}`) : ""}</>;
}

/**
 * The connection in a sentence ("Active since 3 minutes ago; sharing Inquiries and Accounts with
 * Orbit Credit Union"), then what happens next ("Waiting for Orbit Credit Union to activate.
 * Expires in 30 days.").
 */
function Summary({ connection, role, other }: { connection: Connection; role: ConnectionRole; other: string }) {
  const name = useOrganizationName(other) ?? "the other organization";
  const types = dataTypeList(connection.dataTypes);
  const source = role === ConnectionRole.SOURCE;
  let what: string;
  let next: string;
  let needsAction = false;
  switch (connection.state) {
    case ConnectionState.ACTIVE:
      what = source ? `sharing ${types} with ${name}` : `receiving ${types} from ${name}`;
      next =
        source && connection.pendingDataTypes.length > 0
          ? `Waiting for ${name} to approve ${dataTypeList(connection.pendingDataTypes)}: not shared until then.`
          : "Either organization can deactivate it; sharing then stops at once.";
      break;
    case ConnectionState.PENDING:
      what = source ? `to share ${types} with ${name}` : `${name} asks to share ${types} with you`;
      if (source) {
        next = `Waiting for ${name} to activate.`;
      } else {
        needsAction = true;
        next = `Activate it to start receiving ${types}, or deactivate it to decline.`;
      }
      break;
    case ConnectionState.INACTIVE: {
      // No organization deactivated it: the service did, when the invitation expired.
      const expired = connection.deactivatedBy === ConnectionRole.UNSPECIFIED;
      const by = connection.deactivatedBy === role ? " by your organization" : ` by ${name}`;
      what = expired
        ? `expired before ${source ? name : "you"} activated it; nothing is shared`
        : `deactivated${by}; nothing is shared`;
      next = source
        ? `Reactivate it to ask ${name} to activate it again.`
        : `Only ${name} can reactivate it; you would then activate it again.`;
      break;
    }
    default:
      what = "";
      next = "";
  }
  return (
    <>
      <p class="summary">
        {STATE_WORDS[connection.state]} since <Ago time={connection.updateTime} />
        {what ? `; ${what}` : ""}
      </p>
      <p class={needsAction ? "next-step needs" : "next-step"}>
        {needsAction ? <strong>Needs your action: </strong> : null}
        {next}
        {connection.state === ConnectionState.PENDING && connection.expireTime ? (
          <>
            {" "}
            <Expires time={connection.expireTime} />.
          </>
        ) : null}
      </p>
    </>
  );
}

/**
 * The message of the latest invitation (the creation, or the latest reactivation), as it was
 * written: text, never markup, with its line breaks.
 */
function Invitation({ message, role, other }: { message: string; role: ConnectionRole; other: string }) {
  const name = useOrganizationName(other);
  if (!message) return null;
  return (
    <figure class="invitation card">
      <figcaption>
        {role === ConnectionRole.SOURCE
          ? `Your message to ${name ?? "the destination"}`
          : `Message from ${name ?? "the source"}`}
      </figcaption>
      <blockquote>{message}</blockquote>
    </figure>
  );
}

/**
 * What waits for the destination's approval: "<Source> asks to also share Accounts", with Approve
 * and Decline (hidden while a form is open).
 */
function ApprovalRequest({
  connection,
  other,
  busy,
  open,
  onApprove,
  onDecline,
}: {
  connection: Connection;
  other: string;
  busy: boolean;
  open: boolean;
  onApprove: () => void;
  onDecline: () => void;
}) {
  const name = useOrganizationName(other) ?? "The source";
  return (
    <section class="card approval" aria-labelledby="approval-question">
      <p id="approval-question" class="question">
        <strong class="needs">Needs your action: </strong>
        {name} asks to also share {dataTypeList(connection.pendingDataTypes)}.
      </p>
      <p class="hint">
        Not shared until you approve; {dataTypeList(connection.dataTypes)} stay shared either way.
      </p>
      {open ? (
        <div class="actions">
          <button type="button" class="primary" disabled={busy} onClick={onApprove}>
            Approve
          </button>
          <button type="button" disabled={busy} onClick={onDecline}>
            Decline
          </button>
        </div>
      ) : null}
    </section>
  );
}

/**
 * "Decline …'s request to also share …?", with the Reason box. When the connection changes while
 * it is open, it stays open with what was typed, and says so.
 */
function ConfirmDecline({
  connection,
  other,
  openedAt,
  canDecline,
  reason,
  setReason,
  busy,
  onConfirm,
  onCancel,
}: {
  connection: Connection;
  other: string;
  openedAt: string;
  canDecline: boolean;
  reason: string;
  setReason: (reason: string) => void;
  busy: boolean;
  onConfirm: () => void;
  onCancel: () => void;
}) {
  const name = useOrganizationName(other) ?? "the source";
  const changed = connection.etag !== openedAt;
  const waiting = connection.pendingDataTypes;
  return (
    <form
      class="card confirm"
      aria-labelledby="confirm-question"
      onSubmit={(event) => {
        event.preventDefault();
        if (!busy && canDecline) onConfirm();
      }}
    >
      <p id="confirm-question" class="question">
        {waiting.length > 0
          ? `Decline the request of ${name} to also share ${dataTypeList(waiting)}? `
          : `Decline the request of ${name}? `}
        {`${dataTypeList(connection.dataTypes)} stay shared.`}
      </p>
      {changed ? (
        <p class="notice" role="status">
          {`This connection changed while this was open: it is now ${STATE_WORDS[connection.state]}. `}
          {canDecline
            ? `Confirm to decline what waits for approval now: ${dataTypeList(waiting)}.`
            : "Nothing waits for approval any more; what you typed stays here until you cancel."}
        </p>
      ) : null}
      <ReasonAndConfirm
        id="decline-reason"
        reason={reason}
        setReason={setReason}
        disabled={busy || !canDecline}
        onCancel={onCancel}
      />
    </form>
  );
}

/**
 * "Change data types": the four types for the source (checked: what it shares and what waits for
 * approval), the types it receives for the destination, which may only uncheck some. Says what a
 * change does in the connection's state. When the connection changes while it is open, the choice
 * stays, with a notice.
 */
function ChangeDataTypes({
  connection,
  role,
  other,
  openedAt,
  canChange,
  types,
  setTypes,
  busy,
  onSave,
  onCancel,
}: {
  connection: Connection;
  role: ConnectionRole;
  other: string;
  openedAt: string;
  canChange: boolean;
  types: DataType[];
  setTypes: (types: DataType[]) => void;
  busy: boolean;
  onSave: () => void;
  onCancel: () => void;
}) {
  const source = role === ConnectionRole.SOURCE;
  const name = useOrganizationName(other) ?? (source ? "the destination" : "the source");
  const active = connection.state === ConnectionState.ACTIVE;
  const changed = connection.etag !== openedAt;
  const choices = source ? DATA_TYPES : DATA_TYPES.filter(([value]) => connection.dataTypes.includes(value));
  const none = types.length === 0;
  const unchanged = sameTypes(types, typesNow(connection, role));
  const waiting = connection.pendingDataTypes;
  return (
    <form
      class="card confirm"
      aria-labelledby="types-question"
      onSubmit={(event) => {
        event.preventDefault();
        if (!busy && canChange && !none && !unchanged) onSave();
      }}
    >
      <p id="types-question" class="question">
        {source ? `Change the data types you share with ${name}` : `Change the data types you receive from ${name}`}
      </p>
      <p id="types-hint" class="hint">
        {source
          ? active
            ? `Types you add wait for ${name}'s approval and are not shared until then; types you remove stop being shared at once.`
            : `The new types replace the current ones; ${name} agrees to them when it activates the connection.`
          : `Types you uncheck stop being shared at once. Only ${name} can add types, with your approval.`}
        {source && waiting.length > 0 ? " Uncheck a type waiting for approval to withdraw the request." : ""}
      </p>
      {changed ? (
        <p class="notice" role="status">
          {`This connection changed while this was open: it is now ${STATE_WORDS[connection.state]}, sharing ${dataTypeList(connection.dataTypes)}`}
          {waiting.length > 0 ? `; waiting for approval: ${dataTypeList(waiting)}` : ""}
          {". "}
          {canChange
            ? "Check your choice before saving."
            : "Its data types cannot be changed now; your choice stays here until you cancel."}
        </p>
      ) : null}
      <fieldset aria-describedby="types-hint">
        <legend>{source ? "Data to share" : "Data to receive"}</legend>
        {choices.map(([value, label]) => (
          <label class="check">
            <input
              type="checkbox"
              checked={types.includes(value)}
              onChange={(event) =>
                setTypes(event.currentTarget.checked ? union(types, [value]) : types.filter((t) => t !== value))
              }
            />
            {label}
            {waiting.includes(value) ? <span class="muted"> (waiting for approval)</span> : null}
          </label>
        ))}
        {none ? (
          <p class="problem" role="alert">
            {active
              ? "Keep at least one type. To stop sharing altogether, deactivate the connection."
              : "Choose at least one type of data to share."}
          </p>
        ) : null}
      </fieldset>
      <div class="actions">
        <button type="submit" class="primary" disabled={busy || !canChange || none || unchanged}>
          Save
        </button>
        <button type="button" onClick={onCancel}>
          Cancel
        </button>
      </div>
    </form>
  );
}

/**
 * "Reactivate the connection to …?", with the message for the destination. When the connection
 * changes while it is open, it stays open with what was typed, and says so; the server's refusal
 * of the message is told next to it.
 */
function ConfirmReactivate({
  connection,
  other,
  openedAt,
  canReactivate,
  message,
  setMessage,
  refusal,
  busy,
  onConfirm,
  onCancel,
}: {
  connection: Connection;
  other: string;
  openedAt: string;
  canReactivate: boolean;
  message: string;
  setMessage: (message: string) => void;
  refusal: Problem | null;
  busy: boolean;
  onConfirm: () => void;
  onCancel: () => void;
}) {
  const name = useOrganizationName(other) ?? "the other organization";
  const changed = connection.etag !== openedAt;
  return (
    <form
      class="card confirm"
      aria-labelledby="confirm-question"
      onSubmit={(event) => {
        event.preventDefault();
        if (!busy && canReactivate) onConfirm();
      }}
    >
      <p id="confirm-question" class="question">
        Reactivate the connection to {name}? {name} is asked to activate it again.
      </p>
      {changed ? (
        <p class="notice" role="status">
          {`This connection changed while this was open: it is now ${STATE_WORDS[connection.state]}. `}
          {canReactivate
            ? "Confirm to reactivate it as it is now."
            : "There is nothing left to reactivate; what you typed stays here until you cancel."}
        </p>
      ) : null}
      <MessageField id="reactivate-message" value={message} setValue={setMessage} refusal={refusal} />
      <div class="actions">
        <button type="submit" class="primary" disabled={busy || !canReactivate}>
          Confirm
        </button>
        <button type="button" onClick={onCancel}>
          Cancel
        </button>
      </div>
    </form>
  );
}

/**
 * "Deactivate the connection to …? Sharing stops at once.", with the Reason box. When the
 * connection changes while it is open (the other party acted), it stays open with what was typed,
 * and says so.
 */
function ConfirmDeactivate({
  connection,
  role,
  other,
  openedAt,
  canDeactivate,
  reason,
  setReason,
  busy,
  onConfirm,
  onCancel,
}: {
  connection: Connection;
  role: ConnectionRole;
  other: string;
  openedAt: string;
  canDeactivate: boolean;
  reason: string;
  setReason: (reason: string) => void;
  busy: boolean;
  onConfirm: () => void;
  onCancel: () => void;
}) {
  const name = useOrganizationName(other) ?? "the other organization";
  const changed = connection.etag !== openedAt;
  return (
    <form
      class="card confirm"
      aria-labelledby="confirm-question"
      onSubmit={(event) => {
        event.preventDefault();
        if (!busy && canDeactivate) onConfirm();
      }}
    >
      <p id="confirm-question" class="question">
        Deactivate the connection {role === ConnectionRole.SOURCE ? "to" : "from"} {name}? Sharing stops at once.
      </p>
      {changed ? (
        <p class="notice" role="status">
          {`This connection changed while this was open: it is now ${STATE_WORDS[connection.state]}. `}
          {canDeactivate
            ? "Confirm to deactivate it as it is now."
            : "There is nothing left to deactivate; what you typed stays here until you cancel."}
        </p>
      ) : null}
      <ReasonAndConfirm
        id="reason"
        reason={reason}
        setReason={setReason}
        disabled={busy || !canDeactivate}
        onCancel={onCancel}
      />
    </form>
  );
}

function Party({ id, you }: { id: string; you: boolean }) {
  const name = useOrganizationName(id);
  return (
    <>
      {name ?? "…"}
      {you ? " (your organization)" : ""}
      <br />
      <span class="id">{id}</span>
    </>
  );
}

/** Events per page of the history. */
const HISTORY_PAGE = 50;

/** What the history shows: events in sequence order, and the token of the page after them. */
interface Shown {
  events: ConnectionEvent[];
  next: string;
  loaded: boolean;
}

/**
 * The history, newest first; read from the API (oldest first) 50 events at a time. An event of this connection arriving on the
 * page's stream is appended when it is the next one after those shown (and every page is shown);
 * one that arrives while a page is on its way is kept and appended when it arrives, unless the page
 * has it already. `version` changes when the connection is refreshed or changed by this page.
 */
function History({ id, version, onRefresh }: { id: string; version: number; onRefresh: () => void }) {
  const { api } = useSession();
  const [shown, setShown] = useState<Shown>({ events: [], next: "", loaded: false });
  const [refusal, setRefusal] = useState<Problem | null>(null);
  // What is shown, for the stream's callbacks, and the request on its way with the events that
  // arrived meanwhile.
  const current = useRef(shown);
  const request = useRef<{ pending: ConnectionEvent[] } | null>(null);

  const show = (next: Shown) => {
    current.current = next;
    setShown(next);
  };

  /** Loads the first page (`more`: the page after those shown). */
  const fetch = useCallback(
    async (more: boolean) => {
      const mine = { pending: [] as ConnectionEvent[] };
      request.current = mine;
      try {
        const response = await api.connections.listConnectionEvents({
          connectionId: id,
          pageSize: HISTORY_PAGE,
          pageToken: more ? current.current.next : "",
        });
        if (request.current !== mine) return;
        request.current = null;
        const events = more ? [...current.current.events] : [];
        for (const event of response.events) {
          if (events.length === 0 || event.sequence > events[events.length - 1]!.sequence) events.push(event);
        }
        let gap = false;
        if (!response.nextPageToken) {
          // Every page is shown: add what the stream delivered meanwhile and the page lacks.
          for (const event of mine.pending) gap = !append(events, event) || gap;
        }
        show({ events, next: response.nextPageToken, loaded: true });
        setRefusal(null);
        if (gap) void fetch(false);
      } catch (err) {
        if (request.current !== mine) return;
        request.current = null;
        setRefusal(problem(err));
      }
    },
    [api, id],
  );

  useLive({
    onEvent: (event) => {
      if (event.connectionId !== id) return;
      if (request.current) {
        request.current.pending.push(event);
        return;
      }
      const now = current.current;
      // Not loaded (the load failed): load now. More pages to come: the last one will have it.
      if (!now.loaded) void fetch(false);
      if (!now.loaded || now.next) return;
      const events = [...now.events];
      if (append(events, event)) show({ ...now, events });
      else void fetch(false);
    },
    onResync: () => void fetch(false),
  });

  useEffect(() => {
    void fetch(false);
  }, [fetch, version]);
  // Failed while the server was away: load again as soon as it is back.
  useReloadWhenLive(refusal !== null && refusal.retryable, () => void fetch(false));

  return (
    <section aria-labelledby="history-heading">
      <div class="heading-row">
        <h3 id="history-heading">History</h3>
        <button type="button" onClick={onRefresh}>
          Refresh
        </button>
      </div>
      <ProblemNote problem={refusal} onRetry={() => void fetch(false)} />
      {shown.next ? (
        <button type="button" onClick={() => void fetch(true)}>
          Later events
        </button>
      ) : null}
      <ol class="history" reversed>
        {[...shown.events].reverse().map((event) => (
          <HistoryEntry key={event.id} event={event} />
        ))}
      </ol>
    </section>
  );
}

/**
 * Adds `event` to `events` (in sequence order) if it is the next one; true if it is there now
 * (added, or shown already), false if events between are missing.
 */
function append(events: ConnectionEvent[], event: ConnectionEvent): boolean {
  const last = events.length > 0 ? events[events.length - 1]!.sequence : 0n;
  if (event.sequence <= last) return true;
  if (event.sequence !== last + 1n) return false;
  events.push(event);
  return true;
}

/**
 * One event: when, which organization in which role, with which of its API keys (events recorded
 * before keys were name none), what it did; or, for an event no organization made (an expiry),
 * what the service did. Then the reason of a deactivation, or the message of an invitation.
 */
function HistoryEntry({ event }: { event: ConnectionEvent }) {
  // The service expired it: no organization acted.
  const byService = event.type === ConnectionEventType.EXPIRED;
  const actor = useOrganizationName(event.actorOrganizationId);
  const key = event.actorApiKeyDisplayName;
  return (
    <li>
      <time dateTime={iso(event.createTime)}>{when(event.createTime)}</time>:{" "}
      {byService ? (
        EVENT_WORDS[event.type]
      ) : (
        <>
          <strong>{actor ?? "An organization"}</strong> ({ROLE_WORDS[event.actorRole]}
          {key ? <span class="key">, by key '{key}'</span> : null}){" "}
          {event.type === ConnectionEventType.ACTIVATED && event.byPolicy ? ACTIVATED_BY_POLICY : EVENT_WORDS[event.type]}
        </>
      )}
      {event.toState !== ConnectionState.UNSPECIFIED ? ` (now ${STATE_WORDS[event.toState]})` : ""}.
      {event.dataTypes.length > 0 ? (
        <span class="types">
          Shared now: {dataTypeList(event.dataTypes)}
          {event.pendingDataTypes.length > 0
            ? `; waiting for approval: ${dataTypeList(event.pendingDataTypes)}`
            : ""}
          {event.type === ConnectionEventType.DATA_TYPES_DECLINED
            ? `; declined: ${dataTypeList(event.previousPendingDataTypes)}`
            : ""}
        </span>
      ) : null}
      {event.reason ? <span class="reason">Reason: {event.reason}</span> : null}
      {event.message ? <span class="message">Message: {event.message}</span> : null}
    </li>
  );
}

/**
 * The end of a form that asks before it acts: an optional reason both organizations see in the
 * history, then "Confirm" (the form's submit) and "Cancel".
 */
function ReasonAndConfirm({
  id,
  reason,
  setReason,
  disabled,
  onCancel,
}: {
  id: string;
  reason: string;
  setReason: (reason: string) => void;
  disabled: boolean;
  onCancel: () => void;
}) {
  return (
    <>
      <label for={id}>Reason</label>
      <input
        id={id}
        value={reason}
        maxLength={REASON_MAX}
        autocomplete="off"
        aria-describedby={`${id}-hint`}
        onInput={(event) => setReason(event.currentTarget.value)}
      />
      <p id={`${id}-hint`} class="hint">
        Optional. Both organizations see it in the history.
      </p>
      <div class="actions">
        <button type="submit" class="danger" disabled={disabled}>
          Confirm
        </button>
        <button type="button" onClick={onCancel}>
          Cancel
        </button>
      </div>
    </>
  );
}
