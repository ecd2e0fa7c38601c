/**
 * Copying to the clipboard: the signed-in organization's ID, labelled "Organization ID", with a
 * "Copy" button (with `labelled={false}` the caller places the label, for="organization-id",
 * itself), and the hook other values copied with a button use.
 */
import { useState } from "preact/hooks";

/** What the button's status line says, and the function that copies `value`. */
export function useCopy(value: string, otherwise: string): [string, () => Promise<void>] {
  const [copied, setCopied] = useState("");
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(value);
      setCopied("Copied.");
    } catch {
      setCopied(otherwise);
    }
  };
  return [copied, copy];
}

export function CopyId({ id, labelled = true }: { id: string; labelled?: boolean }) {
  const [copied, copy] = useCopy(id, "Select the ID to copy it.");
  return (
    <span class="id-row">
      {labelled ? <label for="organization-id">Organization ID</label> : null}
      <input id="organization-id" class="id" readOnly value={id} size={36} spellcheck={false} />
      <button type="button" onClick={copy}>
        Copy
      </button>
      <span role="status" class="copied">
        {copied}
      </span>
    </span>
  );
}
