/**
 * The message a source sends the destination with an invitation: a new connection, or a
 * reactivation. The server trims it and refuses control characters other than line breaks and
 * tabs; its refusal is told next to the field.
 */
import { fieldProblem, type Problem } from "../api.js";

/** The longest message the API accepts, once trimmed. */
const MESSAGE_MAX = 1000;

/** "Message to the destination (optional)", with the server's refusal of it, if any. */
export function MessageField({
  id,
  value,
  setValue,
  refusal,
}: {
  id: string;
  value: string;
  setValue: (value: string) => void;
  refusal: Problem | null;
}) {
  const wrong = fieldProblem(refusal, "message");
  return (
    <>
      <label for={id}>Message to the destination (optional)</label>
      <textarea
        id={id}
        class="message-field"
        value={value}
        rows={4}
        maxLength={MESSAGE_MAX}
        aria-invalid={wrong !== null}
        aria-describedby={`${id}-note`}
        onInput={(event) => setValue(event.currentTarget.value)}
      />
      {wrong ? (
        <p id={`${id}-note`} class="problem" role="alert">
          The message {wrong}.
        </p>
      ) : (
        <p id={`${id}-note`} class="hint">
          Both organizations see it with the connection and in its history. At most 1,000 characters.
        </p>
      )}
    </>
  );
}
