/**
 * A new connection from the caller to a destination given by its Organization ID, with an optional
 * message for the destination. The page looks the destination up and shows its name before
 * anything is created.
 */
import { useRef, useState } from "preact/hooks";

import { ErrorReason, fieldProblem, newRequestId, problem, type Problem } from "../api.js";
import { go } from "../nav.js";
import { useSession } from "../session.js";
import { DATA_TYPES } from "../format.js";
import { DataType } from "../gen/connections/v1/resources_pb.js";
import { MessageField } from "./message.js";
import { useOrganizationLookup } from "./lookup.js";
import { ProblemNote } from "./problem.js";

export function NewConnection() {
  const { api } = useSession();
  const [destination, setDestination] = useState("");
  const [types, setTypes] = useState<DataType[]>([]);
  const [message, setMessage] = useState("");
  const [busy, setBusy] = useState(false);
  const [refusal, setRefusal] = useState<Problem | null>(null);
  const [typesMissing, setTypesMissing] = useState(false);
  // One request_id per intent (destination, data types and message): a double click or a retry
  // sends the same one, so the server creates one connection.
  const intent = useRef<{ key: string; requestId: string } | null>(null);

  const { id, lookup } = useOrganizationLookup(
    destination,
    "That is your own organization's ID. Enter the ID of the organization you want to share with.",
    ErrorReason.SELF_CONNECTION,
  );

  const create = async () => {
    setRefusal(null);
    if (types.length === 0) {
      setTypesMissing(true);
      return;
    }
    const dataTypes = [...types].sort();
    const text = message.trim();
    const key = `${id}|${dataTypes.join(",")}|${text}`;
    if (intent.current?.key !== key) intent.current = { key, requestId: newRequestId() };
    setBusy(true);
    try {
      const { connection } = await api.connections.createConnection({
        destinationOrganizationId: id,
        dataTypes,
        message: text,
        requestId: intent.current.requestId,
      });
      if (connection) go(`/connections/${connection.id}`);
    } catch (err) {
      setRefusal(problem(err));
    } finally {
      setBusy(false);
    }
  };

  const ready = lookup !== null && "name" in lookup && lookup.id === id;
  const wrongMessage = fieldProblem(refusal, "message") !== null;
  const existing = refusal?.reason === ErrorReason.CONNECTION_ALREADY_EXISTS ? refusal.metadata.connection_id : undefined;

  return (
    <section aria-labelledby="new-heading">
      <h2 id="new-heading" tabIndex={-1}>
        New connection
      </h2>
      <form
        class="card"
        onSubmit={(event) => {
          event.preventDefault();
          if (ready && !busy) void create();
        }}
      >
        <label for="destination">Destination organization ID</label>
        <input
          id="destination"
          class="id"
          value={destination}
          autocomplete="off"
          spellcheck={false}
          aria-describedby="destination-found"
          onInput={(event) => {
            setDestination(event.currentTarget.value);
            setRefusal(null);
          }}
        />
        <div id="destination-found" aria-live="polite">
          {lookup === null || lookup.id !== id ? (
            <p class="hint">
              {destination.trim() && !id
                ? "An organization ID has 36 characters; the other organization finds it under Organization › Information."
                : "Paste the ID the other organization gave you."}
            </p>
          ) : "name" in lookup ? (
            <p class="found">
              You are connecting to <strong>{lookup.name}</strong>.
            </p>
          ) : (
            <ProblemNote problem={lookup.refusal} />
          )}
        </div>
        <fieldset aria-describedby={typesMissing ? "types-missing" : undefined}>
          <legend>Data to share</legend>
          {DATA_TYPES.map(([value, label]) => (
            <label class="check">
              <input
                type="checkbox"
                checked={types.includes(value)}
                onChange={(event) => {
                  setTypesMissing(false);
                  setTypes(event.currentTarget.checked ? [...types, value] : types.filter((t) => t !== value));
                }}
              />
              {label}
            </label>
          ))}
          {typesMissing ? (
            <p id="types-missing" class="problem" role="alert">
              Choose at least one type of data to share.
            </p>
          ) : null}
        </fieldset>
        <MessageField
          id="message"
          value={message}
          setValue={(value) => {
            setMessage(value);
            setRefusal(null);
          }}
          refusal={refusal}
        />
        <div class="actions">
          <button type="submit" class="primary" disabled={!ready || busy}>
            Create connection
          </button>
          <button type="button" onClick={() => go("/")}>
            Cancel
          </button>
        </div>
        {wrongMessage ? null : (
          <ProblemNote problem={refusal} onRetry={() => void create()}>
            {existing ? <a href={`#/connections/${existing}`}>Open the existing connection</a> : null}
          </ProblemNote>
        )}
      </form>
    </section>
  );
}
