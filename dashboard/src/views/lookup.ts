/**
 * An organization looked up by the ID a person types, so that a page shows whom it is about to
 * act on before it does (a new connection's destination, a trusted partner).
 */
import { useEffect, useState } from "preact/hooks";

import { ErrorReason, isId, problem, type Problem } from "../api.js";
import { useSession } from "../session.js";

/** The organization as looked up: its name, or why there is none. */
export type Lookup = { id: string; name: string } | { id: string; refusal: Problem } | null;

/**
 * The ID in `entered` (canonical, or "" while it is not one) and its lookup. The signed-in
 * organization's own ID is refused without a call, with `own` as the sentence and `ownReason` as
 * the reason.
 */
export function useOrganizationLookup(
  entered: string,
  own: string,
  ownReason: ErrorReason,
): { id: string; lookup: Lookup } {
  const { api, me } = useSession();
  const [lookup, setLookup] = useState<Lookup>(null);
  const id = isId(entered) ? entered.trim().toLowerCase() : "";

  useEffect(() => {
    if (!id) {
      setLookup(null);
      return;
    }
    if (id === me.id) {
      setLookup({
        id,
        refusal: { sentence: own, reason: ownReason, retryable: false, metadata: {} },
      });
      return;
    }
    let live = true;
    api.organizations.getOrganization({ organizationId: id }).then(
      ({ organization }) => live && setLookup({ id, name: organization?.displayName ?? id }),
      (err) => live && setLookup({ id, refusal: problem(err) }),
    );
    return () => {
      live = false;
    };
  }, [api, id, me.id, own, ownReason]);

  return { id, lookup };
}
