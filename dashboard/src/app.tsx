/**
 * The "Connect > Connections" page: sign-in, the organization's information, and the views
 * (list, new connection, detail) chosen by the URL's fragment.
 */
import { createContext } from "preact";
import { useCallback, useContext, useEffect, useRef, useState } from "preact/hooks";

import { createApi, ErrorReason, problem, session, type Api, type Problem } from "./api.js";
import type { Organization } from "./gen/connections/v1/resources_pb.js";
import { LiveFeed } from "./live.js";
import { ConnectionDetail } from "./views/detail.js";
import { ConnectionsList } from "./views/list.js";
import { LiveStatus } from "./views/live.js";
import { NewConnection } from "./views/new.js";
import { ProblemNote } from "./views/problem.js";

/** What every view needs: the clients, the signed-in organization, and names of others. */
export interface Session {
  api: Api;
  me: Organization;
  /** The display name of organization `id`, looked up once per page load. */
  nameOf(id: string): Promise<string>;
  /** The page's one stream of changes, shared by the views; closed on sign-out. */
  live: LiveFeed;
}

const SessionContext = createContext<Session | null>(null);

export function useSession(): Session {
  const value = useContext(SessionContext);
  if (!value) throw new Error("no session");
  return value;
}

/** The display name of organization `id`, once known. */
export function useOrganizationName(id: string): string | undefined {
  const { nameOf } = useSession();
  const [name, setName] = useState<string>();
  useEffect(() => {
    let live = true;
    setName(undefined);
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

/** The view the fragment names: `#/`, `#/new` or `#/connections/<id>`. */
type Route = { view: "list" } | { view: "new" } | { view: "detail"; id: string };

function route(): Route {
  const hash = window.location.hash.replace(/^#/, "");
  if (hash === "/new") return { view: "new" };
  const detail = /^\/connections\/([0-9a-fA-F-]{36})$/.exec(hash);
  if (detail) return { view: "detail", id: detail[1].toLowerCase() };
  return { view: "list" };
}

/** Shows another view. */
export function go(path: string): void {
  window.location.hash = path;
}

function useRoute(): Route {
  const [current, setCurrent] = useState(route);
  useEffect(() => {
    const changed = () => setCurrent(route());
    window.addEventListener("hashchange", changed);
    return () => window.removeEventListener("hashchange", changed);
  }, []);
  return current;
}

export function App() {
  const [signedIn, setSignedIn] = useState<Session | null>(null);
  const [checking, setChecking] = useState(() => session.load() !== null);
  const [refusal, setRefusal] = useState<Problem | null>(null);

  const signIn = useCallback(async (apiKey: string) => {
    const api = createApi(apiKey);
    try {
      const { organization } = await api.organizations.getOrganization({ organizationId: "" });
      if (!organization) throw new Error("no organization in the response");
      session.save(apiKey);
      const names = new Map<string, Promise<string>>([[organization.id, Promise.resolve(organization.displayName)]]);
      const nameOf = (id: string) => {
        let name = names.get(id);
        if (!name) {
          name = api.organizations
            .getOrganization({ organizationId: id })
            .then(({ organization: found }) => found?.displayName ?? id);
          name.catch(() => names.delete(id));
          names.set(id, name);
        }
        return name;
      };
      setRefusal(null);
      setSignedIn({ api, me: organization, nameOf, live: new LiveFeed(api) });
    } catch (err) {
      session.forget();
      const refused = problem(err);
      setRefusal(
        refused.reason === ErrorReason.API_KEY_INVALID || refused.reason === ErrorReason.API_KEY_MISSING
          ? { ...refused, sentence: "This API key was not accepted. Check it, or ask your administrator for a new one." }
          : refused,
      );
    } finally {
      setChecking(false);
    }
  }, []);

  useEffect(() => {
    const stored = session.load();
    if (stored) void signIn(stored);
  }, [signIn]);

  const signOut = () => {
    session.forget();
    signedIn?.live.close();
    setSignedIn(null);
    go("/");
  };

  if (!signedIn) {
    return (
      <main class="page">
        <h1>Connect › Connections</h1>
        {checking ? <p role="status">Signing in…</p> : <SignIn onSubmit={signIn} refusal={refusal} />}
      </main>
    );
  }
  return (
    <SessionContext.Provider value={signedIn}>
      <header class="top">
        <p class="brand">Connect › Connections</p>
        <button type="button" onClick={signOut}>
          Sign out
        </button>
      </header>
      <main class="page">
        <OrganizationInformation organization={signedIn.me} />
        <Views />
      </main>
    </SessionContext.Provider>
  );
}

function SignIn({ onSubmit, refusal }: { onSubmit: (key: string) => Promise<void>; refusal: Problem | null }) {
  const [key, setKey] = useState("");
  const [busy, setBusy] = useState(false);
  return (
    <form
      class="card"
      onSubmit={async (event) => {
        event.preventDefault();
        if (!key.trim()) return;
        setBusy(true);
        await onSubmit(key.trim());
        setBusy(false);
      }}
    >
      <h2>Sign in</h2>
      <p>Sign in with an API key of your organization. It is kept in this tab only, until you sign out or close it.</p>
      <label for="api-key">API key</label>
      <input
        id="api-key"
        type="password"
        autocomplete="off"
        spellcheck={false}
        value={key}
        onInput={(event) => setKey(event.currentTarget.value)}
        required
      />
      <button type="submit" disabled={busy}>
        Sign in
      </button>
      <ProblemNote problem={refusal} />
    </form>
  );
}

function OrganizationInformation({ organization }: { organization: Organization }) {
  const [copied, setCopied] = useState("");
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(organization.id);
      setCopied("Copied.");
    } catch {
      setCopied("Select the ID to copy it.");
    }
  };
  return (
    <section class="card" aria-labelledby="organization-heading">
      <h2 id="organization-heading">{organization.displayName}</h2>
      <div class="id-row">
        <label for="organization-id">Organization ID</label>
        <input id="organization-id" class="id" readOnly value={organization.id} />
        <button type="button" onClick={copy}>
          Copy
        </button>
        <span role="status">{copied}</span>
      </div>
      <p class="hint">Give this ID to an organization that wants to share data with yours.</p>
    </section>
  );
}

function Views() {
  const current = useRoute();
  const heading = useRef<HTMLDivElement>(null);
  // Move focus to the view that was opened, for keyboard and screen reader users.
  useEffect(() => {
    heading.current?.querySelector<HTMLElement>("h2")?.focus();
  }, [current.view, current.view === "detail" ? current.id : ""]);
  return (
    <div ref={heading}>
      <LiveStatus />
      {current.view === "new" ? (
        <NewConnection />
      ) : current.view === "detail" ? (
        <ConnectionDetail id={current.id} />
      ) : (
        <ConnectionsList />
      )}
    </div>
  );
}
