/**
 * The dashboard: sign-in, the navigation (Connect › Connections and Webhooks, Organization ›
 * Information and Trusted partners), a one-line reminder of the signed-in organization, and the
 * view the URL's fragment names. The session (./session.ts) and the navigation (./nav.ts) live in
 * modules of their own, so that the views import them and this module imports the views, never the
 * other way round.
 */
import { useCallback, useEffect, useRef, useState } from "preact/hooks";

import { createApi, ErrorReason, problem, session } from "./api.js";
import type { Problem } from "./api.js";
import type { Organization } from "./gen/connections/v1/resources_pb.js";
import { LiveFeed } from "./live.js";
import { go, type Route, useRoute } from "./nav.js";
import { type Session, SessionContext } from "./session.js";
import { CopyId } from "./views/copy.js";
import { ConnectionDetail } from "./views/detail.js";
import { OrganizationInformation } from "./views/information.js";
import { ConnectionsList } from "./views/list.js";
import { LiveStatus } from "./views/live.js";
import { NewConnection } from "./views/new.js";
import { ProblemNote } from "./views/problem.js";
import { TrustedPartners } from "./views/trusted.js";
import { Webhooks } from "./views/webhooks.js";

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
      <SignedIn me={signedIn.me} onSignOut={signOut} />
    </SessionContext.Provider>
  );
}

/** The title of the browser tab for each view. */
const TITLES: Record<Route["view"], string> = {
  list: "Connect › Connections",
  new: "New connection · Connect › Connections",
  detail: "Connection · Connect › Connections",
  webhooks: "Connect › Webhooks",
  information: "Organization › Information",
  trusted: "Organization › Trusted partners",
};

function SignedIn({ me, onSignOut }: { me: Organization; onSignOut: () => void }) {
  const current = useRoute();
  useEffect(() => {
    document.title = TITLES[current.view];
  }, [current.view]);
  const onInformation = current.view === "information";
  const onWebhooks = current.view === "webhooks";
  const onTrusted = current.view === "trusted";
  return (
    <>
      <header class="top">
        <nav aria-label="Main" class="main-nav">
          <span class="nav-item">
            <span class="nav-section">Connect ›</span>{" "}
            <a href="#/" aria-current={onInformation || onWebhooks || onTrusted ? undefined : "page"}>
              Connections
            </a>{" "}
            <a href="#/webhooks" aria-current={onWebhooks ? "page" : undefined}>
              Webhooks
            </a>
          </span>
          <span class="nav-item">
            <span class="nav-section">Organization ›</span>{" "}
            <a href="#/organization" aria-current={onInformation ? "page" : undefined}>
              Information
            </a>{" "}
            <a href="#/organization/trusted-partners" aria-current={onTrusted ? "page" : undefined}>
              Trusted partners
            </a>
          </span>
        </nav>
        <button type="button" onClick={onSignOut}>
          Sign out
        </button>
      </header>
      <main class="page">
        {onInformation ? null : <OrganizationLine organization={me} />}
        <Views current={current} />
      </main>
    </>
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

/**
 * The signed-in organization in one line, on every page but Information (which shows it in full):
 * its name, and the Organization ID a partner needs, with "Copy".
 */
function OrganizationLine({ organization }: { organization: Organization }) {
  return (
    <section class="org-line" aria-label="Your organization">
      <strong class="org-name">{organization.displayName}</strong>
      <CopyId id={organization.id} />
    </section>
  );
}

function Views({ current }: { current: Route }) {
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
      ) : current.view === "information" ? (
        <OrganizationInformation />
      ) : current.view === "webhooks" ? (
        <Webhooks />
      ) : current.view === "trusted" ? (
        <TrustedPartners />
      ) : (
        <ConnectionsList />
      )}
    </div>
  );
}
