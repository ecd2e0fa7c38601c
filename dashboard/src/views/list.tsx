/**
 * The caller's connections: Outbound, Inbound or All, filtered, newest first, a page at a time.
 * The page shown is loaded again when an event of the organization's connections arrives (see
 * ../live.ts), never on a timer.
 */
import { useCallback, useEffect, useRef, useState } from "preact/hooks";

import { isId, problem, type Problem } from "../api.js";
import { go, useOrganizationName, useSession } from "../app.js";
import { dataTypeWords, iso, STATE_WORDS, when } from "../format.js";
import {
  type Connection,
  type ConnectionEvent,
  ConnectionRole,
  ConnectionState,
} from "../gen/connections/v1/resources_pb.js";
import { useCoalesced, useLive } from "./live.js";
import { ProblemNote } from "./problem.js";

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
          <div>
            <label for="counterparty-filter">Other organization's ID</label>
            <input
              id="counterparty-filter"
              class="id"
              value={counterparty}
              aria-invalid={counterpartyInvalid}
              aria-describedby="counterparty-hint"
              onInput={(event) => refilter(() => setCounterparty(event.currentTarget.value))}
            />
            <span id="counterparty-hint" class="hint">
              {counterpartyInvalid ? "An organization ID has 36 characters, like the one above." : "Optional."}
            </span>
          </div>
          <button type="button" onClick={() => void load()}>
            Refresh
          </button>
        </div>
        <ProblemNote problem={refusal} onRetry={() => void load()} />
        {items === null ? (
          <p role="status">Loading…</p>
        ) : items.length === 0 ? (
          <p>No connections here yet.</p>
        ) : (
          <ul class="connections" aria-label="Connections">
            {items.map((connection) => (
              <ConnectionRow key={connection.id} connection={connection} me={me.id} />
            ))}
          </ul>
        )}
        <nav class="pager" aria-label="Pages">
          <button type="button" disabled={page === 0} onClick={() => setPage(page - 1)}>
            Previous
          </button>
          <span>Page {page + 1}</span>
          <button
            type="button"
            disabled={!next}
            onClick={() => {
              setTokens([...tokens.slice(0, page + 1), next]);
              setPage(page + 1);
            }}
          >
            Next
          </button>
        </nav>
      </div>
    </section>
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

function ConnectionRow({ connection, me }: { connection: Connection; me: string }) {
  const outbound = connection.sourceOrganizationId === me;
  const other = outbound ? connection.destinationOrganizationId : connection.sourceOrganizationId;
  const name = useOrganizationName(other);
  return (
    <li class="connection">
      <a href={`#/connections/${connection.id}`}>
        {outbound ? "To " : "From "}
        {name ?? "an organization"}
      </a>
      <span class={`state state-${STATE_WORDS[connection.state].toLowerCase()}`}>{STATE_WORDS[connection.state]}</span>
      <span class="id">{other}</span>
      <span>{dataTypeWords(connection.dataTypes)}</span>
      <span class="times">
        Created <time dateTime={iso(connection.createTime)}>{when(connection.createTime)}</time>, changed{" "}
        <time dateTime={iso(connection.updateTime)}>{when(connection.updateTime)}</time>
      </span>
    </li>
  );
}
