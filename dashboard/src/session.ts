/**
 * The signed-in session every view reads: the API clients, the signed-in organization, names of
 * other organizations, and the page's stream of changes. The app provides it; views only read it.
 */
import { createContext } from "preact";
import { useContext, useEffect, useState } from "preact/hooks";

import type { Api } from "./api.js";
import type { Organization } from "./gen/connections/v1/resources_pb.js";
import type { LiveFeed } from "./live.js";

/** What every view needs: the clients, the signed-in organization, and names of others. */
export interface Session {
  api: Api;
  me: Organization;
  /** The display name of organization `id`, looked up once per page load. */
  nameOf(id: string): Promise<string>;
  /** The page's one stream of changes, shared by the views; closed on sign-out. */
  live: LiveFeed;
}

export const SessionContext = createContext<Session | null>(null);

export function useSession(): Session {
  const value = useContext(SessionContext);
  if (!value) throw new Error("no session");
  return value;
}

/** The display name of organization `id`, once known; none for no ID (the service acted). */
export function useOrganizationName(id: string): string | undefined {
  const { nameOf } = useSession();
  const [name, setName] = useState<string>();
  useEffect(() => {
    let live = true;
    setName(undefined);
    // An empty ID would name the caller's own organization.
    if (!id) return;
    nameOf(id).then(
      (found) => live && setName(found),
      () => live && setName(undefined),
    );
    return () => {
      live = false;
    };
  }, [id, nameOf]);
  return name;
}
