/**
 * Connect › Webhooks: the URLs to which the events of the organization's connections are POSTed as
 * they happen, signed as Standard Webhooks says. An endpoint is added with its URL, the event types
 * it receives (none: all) and a description; its signing secret is shown once, when it is created
 * and after each rotation. Each endpoint can be disabled and enabled, deleted (after a
 * confirmation), and sent again the events after a change token. Under Deliveries, the attempts
 * to deliver to the chosen endpoint, newest first. They are loaded again a few times shortly after
 * an event of the organization's connections arrives on the page's stream (see ../live.ts) or
 * events are recovered, and when a retry falls due; never on a steady timer.
 */
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";

import { ErrorReason, newRequestId, problem, type Problem } from "../api.js";
import { EVENT_TYPES, eventTypeList, iso, shortId, took, when, whenToday } from "../format.js";
import type { ConnectionEventType } from "../gen/connections/v1/resources_pb.js";
import {
  type WebhookDelivery,
  WebhookDeliveryOutcome,
  type WebhookEndpoint,
} from "../gen/connections/v1/webhook_service_pb.js";
import { useSession } from "../session.js";
import { useCopy } from "./copy.js";
import { useLive, useReloadWhenLive } from "./live.js";
import { ProblemNote } from "./problem.js";
import { Ago } from "./time.js";

/** Delivery attempts per page. */
const PAGE_SIZE = 20;

/**
 * When the deliveries are loaded again after an event or a recovery (ms after it): a receiver that
 * answers at once shows at the first, a slow one (the server waits 15 s) by the last.
 */
const FOLLOW_MS = [1_000, 3_000, 7_000, 16_000];

/** A retry due within this long (ms) is shown once it is made. */
const RETRY_WATCH_MS = 10 * 60_000;

/** The longest description the API accepts. */
const DESCRIPTION_MAX = 500;

/** A signing secret, shown once: the endpoint it signs for, and until when the one it replaced signs too. */
interface Secret {
  endpointId: string;
  value: string;
  previousUntil?: Timestamp;
}

export function Webhooks() {
  const { api } = useSession();
  const [endpoints, setEndpoints] = useState<WebhookEndpoint[] | null>(null);
  const [refusal, setRefusal] = useState<Problem | null>(null);
  const [gone, setGone] = useState<Problem | null>(null);
  const [done, setDone] = useState("");
  const [adding, setAdding] = useState(false);
  const [secret, setSecret] = useState<Secret | null>(null);
  const [selected, setSelected] = useState("");
  const [failedOnly, setFailedOnly] = useState(false);
  // Changes when the deliveries shown are to be loaded again.
  const [version, setVersion] = useState(0);
  // The focus returns to "Add endpoint" when the form is cancelled.
  const addButton = useRef<HTMLButtonElement>(null);
  const cancelled = useRef(false);
  useEffect(() => {
    if (!adding && cancelled.current) addButton.current?.focus();
    cancelled.current = false;
  }, [adding]);

  // Only the answer to the latest request is shown: an earlier one may be older.
  const latest = useRef(0);
  const load = useCallback(async () => {
    const mine = ++latest.current;
    try {
      const all: WebhookEndpoint[] = [];
      let pageToken = "";
      do {
        const response = await api.webhooks.listWebhookEndpoints({ pageSize: 500, pageToken });
        all.push(...response.endpoints);
        pageToken = response.nextPageToken;
      } while (pageToken);
      if (mine !== latest.current) return;
      setEndpoints(all);
      setRefusal(null);
    } catch (err) {
      if (mine === latest.current) setRefusal(problem(err));
    }
  }, [api]);

  const timers = useRef<number[]>([]);
  const follow = useCallback(() => {
    for (const timer of timers.current) window.clearTimeout(timer);
    timers.current = FOLLOW_MS.map((ms) =>
      window.setTimeout(() => {
        setVersion((v) => v + 1);
        // The server may have disabled an endpoint meanwhile (its receiver answered 410).
        void load();
      }, ms),
    );
  }, [load]);
  useEffect(() => () => timers.current.forEach((timer) => window.clearTimeout(timer)), []);

  const shown = endpoints?.find((endpoint) => endpoint.id === selected) ?? endpoints?.[0];

  useLive({
    onEvent: (event) => {
      if (shown && !shown.disabled && (shown.eventTypes.length === 0 || shown.eventTypes.includes(event.type))) {
        follow();
      }
    },
    onResync: () => {
      setVersion((v) => v + 1);
      void load();
    },
  });
  useEffect(() => {
    void load();
  }, [load]);
  // Failed while the server was away: load again as soon as it is back.
  useReloadWhenLive(refusal !== null && refusal.retryable, () => void load());

  /** Shows the endpoints as this page changed them: newer than any load still on its way. */
  const change = (update: (all: WebhookEndpoint[]) => WebhookEndpoint[]) => {
    latest.current += 1;
    setEndpoints((all) => update(all ?? []));
  };

  return (
    <section aria-labelledby="webhooks-heading">
      <div class="heading-row">
        <h2 id="webhooks-heading" tabIndex={-1}>
          Webhooks
        </h2>
        {adding ? null : (
          <button
            ref={addButton}
            type="button"
            class="primary"
            onClick={() => {
              setAdding(true);
              setDone("");
              setGone(null);
            }}
          >
            Add endpoint
          </button>
        )}
      </div>
      <p class="hint">
        Each event of your organization's connections is sent as it happens to the endpoints here: an HTTP POST,
        signed with the endpoint's secret as Standard Webhooks says.
      </p>
      {adding ? (
        <AddEndpoint
          onCancel={() => {
            cancelled.current = true;
            setAdding(false);
          }}
          onCreated={(endpoint, value) => {
            change((all) => [...all.filter((e) => e.id !== endpoint.id), endpoint]);
            setSecret({ endpointId: endpoint.id, value });
            setSelected(endpoint.id);
            setAdding(false);
          }}
        />
      ) : null}
      <p role="status" class="found">
        {done}
      </p>
      <ProblemNote problem={gone} />
      <ProblemNote problem={refusal} onRetry={() => void load()} />
      {endpoints === null ? (
        refusal ? null : (
          <p role="status">Loading…</p>
        )
      ) : endpoints.length === 0 ? (
        <div class="empty">
          <p>No webhook endpoints yet.</p>
          <p>
            Choose <strong>Add endpoint</strong> to have the events of your connections sent to a URL of yours.
          </p>
        </div>
      ) : (
        <ul class="endpoints">
          {endpoints.map((endpoint) => (
            <EndpointItem
              key={endpoint.id}
              endpoint={endpoint}
              secret={secret?.endpointId === endpoint.id ? secret : null}
              onSecret={setSecret}
              onHideSecret={() => setSecret(null)}
              onChanged={(changed) => {
                change((all) => all.map((e) => (e.id === changed.id ? changed : e)));
                if (!changed.disabled) follow();
              }}
              onDeleted={() => {
                change((all) => all.filter((e) => e.id !== endpoint.id));
                if (secret?.endpointId === endpoint.id) setSecret(null);
                setDone(`The endpoint ${endpoint.url} was deleted.`);
                document.getElementById("webhooks-heading")?.focus();
              }}
              onRecovered={follow}
              onGone={(refused) => {
                setGone(refused);
                void load();
              }}
            />
          ))}
        </ul>
      )}
      {endpoints && shown ? (
        <section aria-labelledby="deliveries-heading">
          <h3 id="deliveries-heading">Deliveries</h3>
          <div class="filters">
            <div class="grow">
              <label for="delivery-endpoint">Endpoint</label>
              <select id="delivery-endpoint" value={shown.id} onChange={(event) => setSelected(event.currentTarget.value)}>
                {endpoints.map((endpoint) => (
                  <option value={endpoint.id}>{endpoint.url}</option>
                ))}
              </select>
            </div>
            <label class="check">
              <input
                type="checkbox"
                checked={failedOnly}
                onChange={(event) => setFailedOnly(event.currentTarget.checked)}
              />
              Failed only
            </label>
            <button type="button" onClick={() => setVersion((v) => v + 1)}>
              Refresh
            </button>
          </div>
          <DeliveryList key={`${shown.id}|${failedOnly}`} endpointId={shown.id} failedOnly={failedOnly} version={version} />
        </section>
      ) : null}
    </section>
  );
}

/** What was wrong with the URL, in a sentence, if the refusal was about the URL. */
function urlProblem(refused: Problem | null): string | null {
  const detail = refused?.detail ?? "";
  if (refused?.reason === ErrorReason.WEBHOOK_URL_NOT_ALLOWED) {
    return `Deliveries cannot be sent to this URL: it ${detail.replace(/^url /, "")}.`;
  }
  const invalid = refused?.reason === ErrorReason.INVALID_ARGUMENT ? /\burl: ([^;]+)/.exec(detail) : null;
  return invalid ? `This URL is not valid: it ${invalid[1]}.` : null;
}

/** The form that adds an endpoint. */
function AddEndpoint({
  onCreated,
  onCancel,
}: {
  onCreated: (endpoint: WebhookEndpoint, secret: string) => void;
  onCancel: () => void;
}) {
  const { api } = useSession();
  const [url, setUrl] = useState("");
  const [description, setDescription] = useState("");
  const [types, setTypes] = useState<ConnectionEventType[]>([]);
  const [busy, setBusy] = useState(false);
  const [refusal, setRefusal] = useState<Problem | null>(null);
  // One request_id per intent (URL, types, description): a double click or a retry creates one endpoint.
  const intent = useRef<{ key: string; requestId: string } | null>(null);
  const field = useRef<HTMLInputElement>(null);
  useEffect(() => field.current?.focus(), []);

  const create = async () => {
    const request = { url: url.trim(), description: description.trim(), eventTypes: [...types].sort() };
    const key = JSON.stringify(request);
    if (intent.current?.key !== key) intent.current = { key, requestId: newRequestId() };
    setBusy(true);
    setRefusal(null);
    try {
      const response = await api.webhooks.createWebhookEndpoint({ ...request, requestId: intent.current.requestId });
      if (response.endpoint) onCreated(response.endpoint, response.secret);
    } catch (err) {
      setRefusal(problem(err));
    } finally {
      setBusy(false);
    }
  };

  const wrongUrl = urlProblem(refusal);
  return (
    <form
      class="card"
      aria-labelledby="add-heading"
      noValidate
      onSubmit={(event) => {
        event.preventDefault();
        if (url.trim() && !busy) void create();
      }}
    >
      <h3 id="add-heading">New endpoint</h3>
      <label for="endpoint-url">Endpoint URL</label>
      <input
        id="endpoint-url"
        ref={field}
        type="url"
        class="id"
        value={url}
        autocomplete="off"
        spellcheck={false}
        aria-invalid={wrongUrl !== null}
        aria-describedby="endpoint-url-note"
        onInput={(event) => {
          setUrl(event.currentTarget.value);
          setRefusal(null);
        }}
      />
      {wrongUrl ? (
        <p id="endpoint-url-note" class="problem" role="alert">
          {wrongUrl}
        </p>
      ) : (
        <p id="endpoint-url-note" class="hint">
          An https URL of your service, such as https://example.com/webhooks.
        </p>
      )}
      <fieldset>
        <legend>Events to send</legend>
        {EVENT_TYPES.map(([value, label]) => (
          <label class="check">
            <input
              type="checkbox"
              checked={types.includes(value)}
              onChange={(event) =>
                setTypes(event.currentTarget.checked ? [...types, value] : types.filter((t) => t !== value))
              }
            />
            {label}
          </label>
        ))}
        <p class="hint">None checked: every event, including kinds added later.</p>
      </fieldset>
      <label for="endpoint-description">Description (optional)</label>
      <input
        id="endpoint-description"
        value={description}
        maxLength={DESCRIPTION_MAX}
        autocomplete="off"
        onInput={(event) => setDescription(event.currentTarget.value)}
      />
      <div class="actions">
        <button type="submit" class="primary" disabled={busy || !url.trim()}>
          Create endpoint
        </button>
        <button type="button" onClick={onCancel}>
          Cancel
        </button>
      </div>
      {wrongUrl ? null : <ProblemNote problem={refusal} onRetry={() => void create()} />}
    </form>
  );
}

/** A signing secret, shown once, with "Copy secret". The focus moves to it when it appears. */
function SecretOnce({ secret, onHide }: { secret: Secret; onHide: () => void }) {
  const [copied, copy] = useCopy(secret.value, "Select the secret to copy it.");
  const field = useRef<HTMLInputElement>(null);
  useEffect(() => field.current?.focus(), [secret.value]);
  const id = `secret-${secret.endpointId}`;
  return (
    <div class="secret">
      <p id={`${id}-note`} class="notice">
        <strong>Store this signing secret now: it will not be shown again.</strong> Your receiver checks each
        delivery's webhook-signature header with it.
        {secret.previousUntil ? (
          <>
            {" "}
            The previous secret also signs every delivery until{" "}
            <time dateTime={iso(secret.previousUntil)}>{when(secret.previousUntil)}</time>: switch your receiver to
            this one before then.
          </>
        ) : null}
      </p>
      <div class="id-row">
        <label for={id}>Signing secret</label>
        <input
          id={id}
          ref={field}
          class="id"
          readOnly
          value={secret.value}
          size={52}
          spellcheck={false}
          aria-describedby={`${id}-note`}
        />
        <button type="button" onClick={copy}>
          Copy secret
        </button>
        <span role="status" class="copied">
          {copied}
        </span>
      </div>
      <button type="button" class="small" onClick={onHide}>
        Hide secret
      </button>
    </div>
  );
}

/** One endpoint: its URL, state and event types, its actions, and what they returned. */
function EndpointItem({
  endpoint,
  secret,
  onSecret,
  onHideSecret,
  onChanged,
  onDeleted,
  onRecovered,
  onGone,
}: {
  endpoint: WebhookEndpoint;
  secret: Secret | null;
  onSecret: (secret: Secret) => void;
  onHideSecret: () => void;
  onChanged: (endpoint: WebhookEndpoint) => void;
  onDeleted: () => void;
  onRecovered: () => void;
  onGone: (refused: Problem) => void;
}) {
  const { api } = useSession();
  const [busy, setBusy] = useState(false);
  const [refusal, setRefusal] = useState<Problem | null>(null);
  const [open, setOpen] = useState<"delete" | "recover" | null>(null);
  const [token, setToken] = useState("");
  const [queued, setQueued] = useState<bigint | null>(null);
  const last = useRef<(() => Promise<void>) | null>(null);
  const id = endpoint.id;

  const run = async (action: () => Promise<void>) => {
    last.current = action;
    setBusy(true);
    setRefusal(null);
    setQueued(null);
    try {
      await action();
    } catch (err) {
      const refused = problem(err);
      if (refused.reason === ErrorReason.WEBHOOK_ENDPOINT_NOT_FOUND) {
        onGone(refused);
      } else if (refused.reason === ErrorReason.INVALID_CHANGE_TOKEN) {
        setRefusal({
          ...refused,
          sentence: "This is not a change token of this service. Copy one from a delivery's body: data.change_token.",
        });
      } else {
        setRefusal(refused);
      }
    } finally {
      setBusy(false);
    }
  };

  const rotate = async () => {
    const response = await api.webhooks.rotateWebhookSecret({ endpointId: id });
    onSecret({ endpointId: id, value: response.secret, previousUntil: response.previousSecretExpireTime });
  };
  const toggle = async () => {
    const response = await api.webhooks.updateWebhookEndpoint({
      endpoint: { id, disabled: !endpoint.disabled },
      updateMask: { paths: ["disabled"] },
    });
    if (response.endpoint) onChanged(response.endpoint);
  };
  const remove = async () => {
    await api.webhooks.deleteWebhookEndpoint({ endpointId: id });
    onDeleted();
  };
  const recover = async () => {
    const response = await api.webhooks.recoverWebhookDeliveries({ endpointId: id, afterChangeToken: token.trim() });
    setOpen(null);
    setToken("");
    setQueued(response.eventsQueued);
    onRecovered();
  };
  const toggleForm = (form: "delete" | "recover") => {
    setOpen(open === form ? null : form);
    setRefusal(null);
  };

  const state = endpoint.disabled ? "Disabled" : "Enabled";
  return (
    <li class="card endpoint">
      <div class="endpoint-head">
        <h3 id={`endpoint-${id}`} class="endpoint-url id">
          {endpoint.url}
        </h3>
        <span class={`state ${endpoint.disabled ? "state-inactive" : "state-active"}`}>{state}</span>
      </div>
      {endpoint.disabled ? (
        <p class={endpoint.disabledReason ? "notice" : "hint"}>
          {endpoint.disabledReason ? `Disabled by the service (${endpoint.disabledReason}). ` : ""}
          Its events are kept: enable it to resume deliveries where they stopped.
        </p>
      ) : null}
      <dl class="fields">
        <dt>Events</dt>
        <dd>{eventTypeList(endpoint.eventTypes)}</dd>
        {endpoint.description ? (
          <>
            <dt>Description</dt>
            <dd>{endpoint.description}</dd>
          </>
        ) : null}
        <dt>Created</dt>
        <dd>
          <Ago time={endpoint.createTime} />
        </dd>
        <dt>Endpoint ID</dt>
        <dd class="id">{id}</dd>
      </dl>
      <div class="actions" role="group" aria-labelledby={`endpoint-${id}`}>
        <button type="button" disabled={busy} onClick={() => void run(rotate)}>
          Rotate secret
        </button>
        <button type="button" disabled={busy} onClick={() => void run(toggle)}>
          {endpoint.disabled ? "Enable" : "Disable"}
        </button>
        <button type="button" aria-expanded={open === "recover"} onClick={() => toggleForm("recover")}>
          Recover
        </button>
        <button type="button" aria-expanded={open === "delete"} onClick={() => toggleForm("delete")}>
          Delete
        </button>
      </div>
      {secret ? <SecretOnce secret={secret} onHide={onHideSecret} /> : null}
      {open === "delete" ? (
        <form
          class="card confirm"
          aria-labelledby={`delete-${id}`}
          onSubmit={(event) => {
            event.preventDefault();
            if (!busy) void run(remove);
          }}
        >
          <p id={`delete-${id}`} class="question">
            Delete the endpoint {endpoint.url}? Deliveries to it stop at once, and its undelivered events are dropped.
          </p>
          <div class="actions">
            <button type="submit" class="danger" disabled={busy}>
              Confirm
            </button>
            <button type="button" onClick={() => setOpen(null)}>
              Cancel
            </button>
          </div>
        </form>
      ) : null}
      {open === "recover" ? (
        <form
          class="card"
          aria-labelledby={`recover-${id}`}
          onSubmit={(event) => {
            event.preventDefault();
            if (!busy && token.trim()) void run(recover);
          }}
        >
          <p id={`recover-${id}`} class="question">
            Send this endpoint again every event after a change token
          </p>
          <label for={`token-${id}`}>Change token</label>
          <input
            id={`token-${id}`}
            class="id"
            value={token}
            autocomplete="off"
            spellcheck={false}
            aria-describedby={`token-hint-${id}`}
            onInput={(event) => setToken(event.currentTarget.value)}
          />
          <p id={`token-hint-${id}`} class="hint">
            Every event of your connections committed after it, of the kinds this endpoint receives, is queued again,
            delivered or not. Each delivery's body carries one: data.change_token.
          </p>
          <div class="actions">
            <button type="submit" class="primary" disabled={busy || !token.trim()}>
              Queue events again
            </button>
            <button type="button" onClick={() => setOpen(null)}>
              Cancel
            </button>
          </div>
        </form>
      ) : null}
      {queued !== null ? (
        <p role="status" class="found">
          {queued === 0n
            ? "No events after this change token: nothing was queued."
            : `${queued} ${queued === 1n ? "event" : "events"} queued for delivery.`}
        </p>
      ) : null}
      <ProblemNote problem={refusal} onRetry={() => last.current && void run(last.current)} />
    </li>
  );
}

/** The words and badge of each outcome. */
const OUTCOMES: Record<WebhookDeliveryOutcome, [string, string]> = {
  [WebhookDeliveryOutcome.UNSPECIFIED]: ["Unknown", "state-inactive"],
  [WebhookDeliveryOutcome.SUCCEEDED]: ["Delivered", "state-active"],
  [WebhookDeliveryOutcome.WILL_RETRY]: ["Will retry", "state-pending"],
  [WebhookDeliveryOutcome.GAVE_UP]: ["Gave up", "state-failed"],
};

/** The longest part of a receiver's answer shown in the table (all of it on hover). */
const ANSWER_CHARS = 80;

/** A time to the second, the date too unless it is today (always on hover). */
function Exact({ time }: { time: Timestamp | undefined }) {
  if (!time) return <>—</>;
  return (
    <time dateTime={iso(time)} title={when(time)}>
      {whenToday(time)}
    </time>
  );
}

/** One endpoint's delivery attempts (all, or the failed ones), newest first, a page at a time. */
function DeliveryList({ endpointId, failedOnly, version }: { endpointId: string; failedOnly: boolean; version: number }) {
  const { api } = useSession();
  // Tokens of the pages opened so far: tokens[i] opens page i ("" the first).
  const [tokens, setTokens] = useState<string[]>([""]);
  const [page, setPage] = useState(0);
  const [items, setItems] = useState<WebhookDelivery[] | null>(null);
  const [next, setNext] = useState("");
  const [refusal, setRefusal] = useState<Problem | null>(null);

  const latest = useRef(0);
  const load = useCallback(async () => {
    const mine = ++latest.current;
    try {
      const response = await api.webhooks.listWebhookDeliveries({
        endpointId,
        failedOnly,
        pageSize: PAGE_SIZE,
        pageToken: tokens[page],
      });
      if (mine !== latest.current) return;
      setItems(response.deliveries);
      setNext(response.nextPageToken);
      setRefusal(null);
    } catch (err) {
      if (mine === latest.current) setRefusal(problem(err));
    }
  }, [api, endpointId, failedOnly, tokens, page]);

  useEffect(() => {
    void load();
  }, [load, version]);
  useReloadWhenLive(refusal !== null && refusal.retryable, () => void load());

  // The next retry due soon is shown once it has been made.
  useEffect(() => {
    const now = Date.now();
    const due = (items ?? [])
      .filter((d) => d.outcome === WebhookDeliveryOutcome.WILL_RETRY && d.nextAttemptTime)
      .map((d) => timestampDate(d.nextAttemptTime!).getTime())
      .filter((at) => at > now && at - now < RETRY_WATCH_MS);
    if (due.length === 0) return;
    const timer = window.setTimeout(() => void load(), Math.min(...due) - now + 3_000);
    return () => window.clearTimeout(timer);
  }, [items, load]);

  return (
    <>
      <ProblemNote problem={refusal} onRetry={() => void load()} />
      {items === null ? (
        refusal ? null : (
          <p role="status">Loading…</p>
        )
      ) : items.length === 0 ? (
        <div class="empty">
          <p>{failedOnly ? "No failed attempts." : "No delivery attempts yet."}</p>
          {failedOnly || page > 0 ? null : (
            <p class="hint">Each attempt to send an event of your connections to this endpoint is listed here.</p>
          )}
        </div>
      ) : (
        <table class="deliveries">
          <caption class="visually-hidden">Delivery attempts to this endpoint, newest first</caption>
          <thead>
            <tr>
              <th scope="col">Time</th>
              <th scope="col">Event</th>
              <th scope="col">Attempt</th>
              <th scope="col">Outcome</th>
              <th scope="col">Response</th>
              <th scope="col">Duration</th>
              <th scope="col">Next attempt</th>
            </tr>
          </thead>
          <tbody>
            {items.map((delivery) => {
              const [word, badge] = OUTCOMES[delivery.outcome];
              const answer = delivery.error;
              return (
                <tr key={delivery.id} class="delivery">
                  <td data-label="Time">
                    <Exact time={delivery.attemptTime} />
                  </td>
                  <td data-label="Event">
                    <span class="id" title={delivery.eventId}>
                      {shortId(delivery.eventId)}
                    </span>
                  </td>
                  <td data-label="Attempt">{delivery.attempt}</td>
                  <td data-label="Outcome">
                    <span class={`state ${badge}`}>{word}</span>
                  </td>
                  <td data-label="Response" class="response">
                    <span title={answer.length > ANSWER_CHARS ? answer : undefined}>
                      {[
                        delivery.httpStatus ? `HTTP ${delivery.httpStatus}` : "",
                        answer.length > ANSWER_CHARS ? `${answer.slice(0, ANSWER_CHARS)}…` : answer,
                      ]
                        .filter(Boolean)
                        .join(": ") || "—"}
                    </span>
                  </td>
                  <td data-label="Duration">{took(delivery.duration)}</td>
                  <td data-label="Next attempt">
                    <Exact time={delivery.nextAttemptTime} />
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
      {page > 0 || next ? (
        <nav class="pager" aria-label="Delivery pages">
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
    </>
  );
}
