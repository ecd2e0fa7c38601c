/**
 * The signed-in organization's ID, labelled "Organization ID", with a "Copy" button. With
 * `labelled={false}` the caller places the label (for="organization-id") itself.
 */
import { useState } from "preact/hooks";

export function CopyId({ id, labelled = true }: { id: string; labelled?: boolean }) {
  const [copied, setCopied] = useState("");
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(id);
      setCopied("Copied.");
    } catch {
      setCopied("Select the ID to copy it.");
    }
  };
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
