/**
 * The caller's connections: Outbound, Inbound or All, filtered, newest first, a page at a time, as
 * a table (stacked rows on a narrow screen). A row opens its connection; an inbound Pending one
 * that waits on the caller says so and can be activated from the row; so does an inbound Active
 * one whose new data types wait for the caller's approval (approved or declined on its page, where
 * they are shown in full); a Pending one says when its invitation expires. The page shown is
 * loaded again when an event of the organization's connections arrives (see ../live.ts), never on
 * a timer.
 */
import { useCallback, useEffect, useRef, useState } from "preact/hooks";

import { isId, newRequestId, problem, type Problem } from "../api.js";
import { dataTypeList, dataTypeWords, shortId, STATE_WORDS } from "../format.js";
import { go } from "../nav.js";
import { useOrganizationName, useSession } from "../session.js";
import {
  type Connection,
  type ConnectionEvent,
  ConnectionRole,
  ConnectionState,
} from "../gen/connections/v1/resources_pb.js";
import { useCoalesced, useLive, useReloadWhenLive } from "./live.js";
import { ProblemNote } from "./problem.js";
import { Ago, Expires } from "./time.js";

/** Connections per page. */
const PAGE_SIZE = 20;

const TABS: ReadonlyArray<[string, ConnectionRole]> = [
  ["Outbound", ConnectionRole.SOURCE],
  ["Inbound", ConnectionRole.DESTINATION],
  ["All", ConnectionRole.UNSPECIFIED],
];

export function ConnectionsList() {
  const { api, me } = useSession();
  const [role, setRole] = useState(ConnectionRole.SOURCE);
  const [state, setState] = useState(ConnectionState.UNSPECIFIED);
  const [counterparty, setCounterparty] = useState("");
  // Tokens of the pages opened so far: tokens[i] opens page i ("" the first).
  const [tokens, setTokens] = useState<string[]>([""]);
  const [page, setPage] = useState(0);
  const [items, setItems] = useState<Connection[] | null>(null);
  const [next, setNext] = useState("");
  const [refusal, setRefusal] = useState<Problem | null>(null);
  const tabs = useRef<HTMLDivElement>(null);

  const filterId = isId(counterparty) ? counterparty.trim().toLowerCase() : "";
  const counterpartyInvalid = counterparty.trim() !== "" && !filterId;

  // Only the answer to the latest request is shown: an earlier one may be older, or for other filters.
  const latest = useRef(0);
  const load = useCallback(async () => {
    if (counterpartyInvalid) return;
    const mine = ++latest.current;
    try {
      const response = await api.connections.listConnections({
        role,
        state,
        counterpartyOrganizationId: filterId,
        pageSize: PAGE_SIZE,
        pageToken: tokens[page],
      });
      if (mine !== latest.current) return;
      setItems(response.connections);
      setNext(response.nextPageToken);
      setRefusal(null);
    } catch (err) {
      if (mine === latest.current) setRefusal(problem(err));
    }
  }, [api, role, state, filterId, counterpartyInvalid, tokens, page]);

  // Before the first load, so that an event delivered while it is on its way is not missed.
  const reload = useCoalesced(load);
  useLive({
    onEvent: (event) => {
      if (concerns(event, me.id, role)) reload();
    },
    onResync: reload,
  });
  useEffect(() => {
    void load();
  }, [load]);
  // Failed while the server was away: load again as soon as it is back.
  useReloadWhenLive(refusal !== null && refusal.retryable, reload);

  // A new filter starts again from the first page.
  const refilter = (change: () => void) => {
    change();
    setTokens([""]);
    setPage(0);
    setItems(null);
  };

  const selectTab = (index: number) => {
    refilter(() => setRole(TABS[index][1]));
    tabs.current?.querySelectorAll<HTMLElement>("[role=tab]")[index]?.focus();
  };

  return (
    <section aria-labelledby="connections-heading">
      <div class="heading-row">
        <h2 id="connections-heading" tabIndex={-1}>
          Connections
        </h2>
        <button type="button" class="primary" onClick={() => go("/new")}>
          New connection
        </button>
      </div>
      <div
        role="tablist"
        aria-label="Direction"
        ref={tabs}
        onKeyDown={(event) => {
          const current = TABS.findIndex(([, value]) => value === role);
          if (event.key === "ArrowRight") selectTab((current + 1) % TABS.length);
          if (event.key === "ArrowLeft") selectTab((current + TABS.length - 1) % TABS.length);
        }}
      >
        {TABS.map(([label, value], index) => (
          <button
            type="button"
            role="tab"
            id={`tab-${label.toLowerCase()}`}
            aria-selected={role === value}
            aria-controls="connections-panel"
            tabIndex={role === value ? 0 : -1}
            onClick={() => selectTab(index)}
          >
            {label}
          </button>
        ))}
      </div>
      <div
        role="tabpanel"
        id="connections-panel"
        aria-labelledby={`tab-${TABS.find(([, value]) => value === role)![0].toLowerCase()}`}
      >
        <div class="filters">
          <div>
            <label for="state-filter">State</label>
            <select
              id="state-filter"
              value={state}
              onChange={(event) => refilter(() => setState(Number(event.currentTarget.value)))}
            >
              <option value={ConnectionState.UNSPECIFIED}>Any state</option>
              <option value={ConnectionState.PENDING}>Pending</option>
              <option value={ConnectionState.ACTIVE}>Active</option>
              <option value={ConnectionState.INACTIVE}>Inactive</option>
            </select>
          </div>
          <div class="grow">
            <label for="counterparty-filter">Other organization's ID (optional)</label>
            <input
              id="counterparty-filter"
              class="id"
              value={counterparty}
              autocomplete="off"
              spellcheck={false}
              aria-invalid={counterpartyInvalid}
              aria-describedby={counterpartyInvalid ? "counterparty-hint" : undefined}
              onInput={(event) => refilter(() => setCounterparty(event.currentTarget.value))}
            />
          </div>
          <button type="button" onClick={() => void load()}>
            Refresh
          </button>
        </div>
        {counterpartyInvalid ? (
          <p id="counterparty-hint" class="hint">
            An organization ID has 36 characters, like yours above.
          </p>
        ) : null}
        <ProblemNote problem={refusal} onRetry={() => void load()} />
        {items === null ? (
          refusal ? null : (
            <p role="status">Loading…</p>
          )
        ) : items.length === 0 ? (
          <Empty role={role} filtered={state !== ConnectionState.UNSPECIFIED || filterId !== "" || page > 0} />
        ) : (
          <table class="connections">
            <caption class="visually-hidden">
              {TABS.find(([, value]) => value === role)![0]} connections, newest first
            </caption>
            <thead>
              <tr>
                <th scope="col">Other organization</th>
                <th scope="col">Direction</th>
                <th scope="col">State</th>
                <th scope="col">Data types</th>
                <th scope="col">Last change</th>
              </tr>
            </thead>
            <tbody>
              {items.map((connection) => (
                <ConnectionRow key={connection.id} connection={connection} me={me.id} onActivated={reload} />
              ))}
            </tbody>
          </table>
        )}
        {page > 0 || next ? (
          <nav class="pager" aria-label="Pages">
            {page > 0 ? (
              <button type="button" onClick={() => setPage(page - 1)}>
                Previous
              </button>
            ) : null}
            <span>Page {page + 1}</span>
            {next ? (
              <button
                type="button"
                onClick={() => {
                  setTokens([...tokens.slice(0, page + 1), next]);
                  setPage(page + 1);
                }}
              >
                Next
              </button>
            ) : null}
          </nav>
        ) : null}
      </div>
    </section>
  );
}

/** What to do when there is nothing to show. */
function Empty({ role, filtered }: { role: ConnectionRole; filtered: boolean }) {
  if (filtered) {
    return (
      <div class="empty">
        <p>No connections here yet.</p>
        <p class="hint">None match these filters. Choose "Any state" or clear the other organization's ID.</p>
      </div>
    );
  }
  return (
    <div class="empty">
      <p>No connections here yet.</p>
      {role !== ConnectionRole.SOURCE ? (
        <p>
          To receive data, copy your Organization ID (above) and give it to your partner: they create the
          connection, and you activate it here.
        </p>
      ) : null}
      {role !== ConnectionRole.DESTINATION ? (
        <p>
          To share data, choose <strong>New connection</strong> and paste the Organization ID your partner gave you.
        </p>
      ) : null}
    </div>
  );
}

/** Whether `event` may change the list of connections where `me` has `role` (UNSPECIFIED: any). */
function concerns(event: ConnectionEvent, me: string, role: ConnectionRole): boolean {
  if (role === ConnectionRole.UNSPECIFIED) return true;
  // The actor is either the organization itself, in its role, or the other party, in the other.
  const mine =
    event.actorOrganizationId === me
      ? event.actorRole
      : event.actorRole === ConnectionRole.SOURCE
        ? ConnectionRole.DESTINATION
        : event.actorRole === ConnectionRole.DESTINATION
          ? ConnectionRole.SOURCE
          : ConnectionRole.UNSPECIFIED;
  return mine === role || mine === ConnectionRole.UNSPECIFIED;
}

/**
 * One connection as a table row. The other organization's name is a link (for the keyboard and
 * screen readers); a click anywhere else on the row opens the connection too.
 */
function ConnectionRow({
  connection,
  me,
  onActivated,
}: {
  connection: Connection;
  me: string;
  onActivated: () => void;
}) {
  const { api } = useSession();
  const outbound = connection.sourceOrganizationId === me;
  const other = outbound ? connection.destinationOrganizationId : connection.sourceOrganizationId;
  const name = useOrganizationName(other);
  const pending = connection.state === ConnectionState.PENDING;
  // New data types wait for the destination's approval.
  const approval = connection.state === ConnectionState.ACTIVE && connection.pendingDataTypes.length > 0;
  const stateWord = STATE_WORDS[connection.state];
  const href = `#/connections/${connection.id}`;
  const [busy, setBusy] = useState(false);
  const [refusal, setRefusal] = useState<Problem | null>(null);
  // One request_id per version of the connection shown: a retry sends the same one.
  const intent = useRef<{ etag: string; requestId: string } | null>(null);

  const activate = async () => {
    if (intent.current?.etag !== connection.etag) intent.current = { etag: connection.etag, requestId: newRequestId() };
    setBusy(true);
    setRefusal(null);
    try {
      await api.connections.activateConnection({
        connectionId: connection.id,
        etag: connection.etag,
        requestId: intent.current.requestId,
      });
      onActivated();
    } catch (err) {
      setRefusal(problem(err));
      onActivated();
    } finally {
      setBusy(false);
    }
  };

  return (
    <tr
      class="connection"
      onClick={(event) => {
        // Links, buttons and selected text keep their own meaning.
        if ((event.target as HTMLElement).closest("a, button")) return;
        if (window.getSelection()?.toString()) return;
        go(href.slice(1));
      }}
    >
      <td data-label="Other organization" class="party">
        <div>
          {/* The name read out says the direction too: "To Orbit Credit Union". */}
          <a href={href} aria-label={`${outbound ? "To" : "From"} ${name ?? "an organization"}`}>
            {name ?? "An organization"}
          </a>
          <span class="id muted" title={other}>
            {shortId(other)}
          </span>
        </div>
      </td>
      <td data-label="Direction">{outbound ? "Outbound" : "Inbound"}</td>
      <td data-label="State" class="state-cell">
        <div>
          <span class={`state state-${stateWord.toLowerCase()}`}>{stateWord}</span>
          {pending && !outbound ? (
            <span class="next">
              <strong class="needs">Needs your action</strong>
              <button type="button" class="primary small" disabled={busy} onClick={() => void activate()}>
                Activate
              </button>
            </span>
          ) : pending ? (
            <span class="next muted">Waiting for {name ?? "the other organization"}</span>
          ) : approval && !outbound ? (
            <span class="next">
              <strong class="needs">Needs your action</strong>
              <span>Approve or decline {dataTypeList(connection.pendingDataTypes)}</span>
            </span>
          ) : approval ? (
            <span class="next muted">
              Waiting for {name ?? "the other organization"} to approve {dataTypeList(connection.pendingDataTypes)}
            </span>
          ) : null}
          {pending && connection.expireTime ? (
            <span class="expires muted">
              <Expires time={connection.expireTime} />
            </span>
          ) : null}
          <ProblemNote problem={refusal} onRetry={() => void activate()} />
        </div>
      </td>
      <td data-label="Data types">{dataTypeWords(connection.dataTypes)}</td>
      <td data-label="Last change">
        <Ago time={connection.updateTime} />
      </td>
    </tr>
  );
}
