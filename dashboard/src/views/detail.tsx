/**
 * One connection: every field, its history, and the actions the caller may take now. Each action
 * is sent with the etag of the connection as shown, so a change made meanwhile by the other party
 * is never overwritten: the page says so and shows the current state. An event of this connection
 * arriving on the page's stream (see ../live.ts) loads the connection again and joins the history.
 */
import { useCallback, useEffect, useRef, useState } from "preact/hooks";

import { ErrorReason, newRequestId, problem, type Problem } from "../api.js";
import { useOrganizationName, useSession } from "../app.js";
import { dataTypeWords, EVENT_WORDS, iso, ROLE_WORDS, STATE_WORDS, when } from "../format.js";
import {
  type Connection,
  type ConnectionEvent,
  ConnectionRole,
  ConnectionState,
} from "../gen/connections/v1/resources_pb.js";
import { useCoalesced, useLive } from "./live.js";
import { ProblemNote } from "./problem.js";

type Action = "Activate" | "Deactivate" | "Reactivate";

/** What the user reads when the other party changed the connection after the page showed it. */
const CHANGED_SINCE_OPENED = "This connection changed since you opened it. Here is its current state.";

/** Reasons after which the page shows the connection as it is now. */
const CHANGED_MEANWHILE = [
  ErrorReason.ETAG_MISMATCH,
  ErrorReason.CONCURRENT_MODIFICATION,
  ErrorReason.INVALID_STATE_TRANSITION,
];

export function ConnectionDetail({ id }: { id: string }) {
  const { api, me } = useSession();
  const [connection, setConnection] = useState<Connection | null>(null);
  const [refusal, setRefusal] = useState<Problem | null>(null);
  const [actionRefusal, setActionRefusal] = useState<Problem | null>(null);
  const [confirming, setConfirming] = useState(false);
  const [reason, setReason] = useState("");
  const [busy, setBusy] = useState(false);
  const [historyVersion, setHistoryVersion] = useState(0);
  // One request_id per intent (action, connection version, reason): a retry sends the same one.
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
    setConfirming(false);
    void load();
  }, [load]);

  if (!connection) {
    return (
      // The same heading element as when loaded, so the focus stays on it.
      <section aria-labelledby="detail-heading">
        <p>
          <a href="#/">Back to connections</a>
        </p>
        <div class="heading-row">
          <h2 id="detail-heading" tabIndex={-1}>
            Connection
          </h2>
        </div>
        {refusal ? <ProblemNote problem={refusal} onRetry={() => void refresh()} /> : <p role="status">Loading…</p>}
      </section>
    );
  }

  const role =
    connection.sourceOrganizationId === me.id
      ? ConnectionRole.SOURCE
      : connection.destinationOrganizationId === me.id
        ? ConnectionRole.DESTINATION
        : ConnectionRole.UNSPECIFIED;
  const allowed: Action[] = [];
  if (role === ConnectionRole.DESTINATION && connection.state === ConnectionState.PENDING) allowed.push("Activate");
  if (connection.state === ConnectionState.PENDING || connection.state === ConnectionState.ACTIVE) {
    allowed.push("Deactivate");
  }
  if (role === ConnectionRole.SOURCE && connection.state === ConnectionState.INACTIVE) allowed.push("Reactivate");

  const act = async (action: Action) => {
    const shown = connection;
    const text = action === "Deactivate" ? reason.trim() : "";
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
              : await api.connections.reactivateConnection(request);
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
      setConfirming(false);
      setReason("");
      setHistoryVersion((v) => v + 1);
    } catch (err) {
      const refused = problem(err);
      setActionRefusal(refused);
      if (CHANGED_MEANWHILE.includes(refused.reason)) {
        setConfirming(false);
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

  return (
    <section aria-labelledby="detail-heading">
      <p>
        <a href="#/">Back to connections</a>
      </p>
      <div class="heading-row">
        <h2 id="detail-heading" tabIndex={-1}>
          Connection
        </h2>
        <button type="button" onClick={() => void refresh()}>
          Refresh
        </button>
      </div>
      <ProblemNote problem={refusal} onRetry={() => void refresh()} />
      <dl class="fields card">
        <dt>State</dt>
        <dd>
          <span class={`state state-${STATE_WORDS[connection.state].toLowerCase()}`}>{STATE_WORDS[connection.state]}</span>
        </dd>
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
        <dt>Created</dt>
        <dd>
          <time dateTime={iso(connection.createTime)}>{when(connection.createTime)}</time>
        </dd>
        <dt>Last changed</dt>
        <dd>
          <time dateTime={iso(connection.updateTime)}>{when(connection.updateTime)}</time>
        </dd>
        <dt>Last activated</dt>
        <dd>{when(connection.activateTime)}</dd>
        <dt>Last deactivated</dt>
        <dd>
          {when(connection.deactivateTime)}
          {connection.deactivatedBy !== ConnectionRole.UNSPECIFIED ? ` by ${ROLE_WORDS[connection.deactivatedBy]}` : ""}
        </dd>
        <dt>Deactivation reason</dt>
        <dd>{connection.deactivationReason || "—"}</dd>
        <dt>Connection ID</dt>
        <dd class="id">{connection.id}</dd>
        <dt>Version</dt>
        <dd class="id">{connection.etag}</dd>
      </dl>

      <div class="actions" aria-label="Actions" role="group">
        {allowed.includes("Activate") ? (
          <button type="button" class="primary" disabled={busy} onClick={() => void act("Activate")}>
            Activate
          </button>
        ) : null}
        {allowed.includes("Deactivate") && !confirming ? (
          <button type="button" disabled={busy} onClick={() => setConfirming(true)}>
            Deactivate
          </button>
        ) : null}
        {allowed.includes("Reactivate") ? (
          <button type="button" class="primary" disabled={busy} onClick={() => void act("Reactivate")}>
            Reactivate
          </button>
        ) : null}
        {allowed.length === 0 ? <p class="hint">There is nothing for your organization to do here now.</p> : null}
      </div>
      {confirming && allowed.includes("Deactivate") ? (
        <form
          class="card"
          onSubmit={(event) => {
            event.preventDefault();
            if (!busy) void act("Deactivate");
          }}
        >
          <label for="reason">Reason</label>
          <input
            id="reason"
            value={reason}
            maxLength={1000}
            aria-describedby="reason-hint"
            onInput={(event) => setReason(event.currentTarget.value)}
          />
          <p id="reason-hint" class="hint">
            Optional. Both organizations see it in the history.
          </p>
          <div class="actions">
            <button type="submit" class="danger" disabled={busy}>
              Confirm
            </button>
            <button type="button" onClick={() => setConfirming(false)}>
              Cancel
            </button>
          </div>
        </form>
      ) : null}
      <ProblemNote problem={actionRefusal} onRetry={retry} />

      <History key={connection.id} id={connection.id} version={historyVersion} />
    </section>
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
 * The history, oldest first, 50 events at a time. An event of this connection arriving on the
 * page's stream is appended when it is the next one after those shown (and every page is shown);
 * one that arrives while a page is on its way is kept and appended when it arrives, unless the page
 * has it already. `version` changes when the connection is refreshed or changed by this page.
 */
function History({ id, version }: { id: string; version: number }) {
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

  return (
    <section aria-labelledby="history-heading">
      <h3 id="history-heading">History</h3>
      <ProblemNote problem={refusal} />
      <ol class="history">
        {shown.events.map((event) => (
          <HistoryEntry key={event.id} event={event} />
        ))}
      </ol>
      {shown.next ? (
        <button type="button" onClick={() => void fetch(true)}>
          Later events
        </button>
      ) : null}
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
 * before keys were name none), what it did.
 */
function HistoryEntry({ event }: { event: ConnectionEvent }) {
  const actor = useOrganizationName(event.actorOrganizationId);
  const key = event.actorApiKeyDisplayName;
  return (
    <li>
      <time dateTime={iso(event.createTime)}>{when(event.createTime)}</time>:{" "}
      <strong>{actor ?? "An organization"}</strong> ({ROLE_WORDS[event.actorRole]}
      {key ? <span class="key">, by key '{key}'</span> : null}) {EVENT_WORDS[event.type]}
      {event.toState !== ConnectionState.UNSPECIFIED ? ` (now ${STATE_WORDS[event.toState]})` : ""}.
      {event.reason ? <span class="reason"> Reason: {event.reason}</span> : null}
    </li>
  );
}
