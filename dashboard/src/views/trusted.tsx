/**
 * Organization › Trusted partners: the source organizations whose connections to the signed-in
 * organization are activated at once, on its behalf, when they create or reactivate them (its
 * OrganizationPolicy). Each is listed by name, with its ID and "Remove"; "Add a trusted partner"
 * takes an Organization ID and shows the organization's name before anything is changed. The API
 * replaces the whole list on each change: the page reads it again just before, so a change made
 * meanwhile elsewhere is kept.
 */
import { useCallback, useEffect, useRef, useState } from "preact/hooks";

import { ErrorReason, problem, type Problem } from "../api.js";
import { useOrganizationName, useSession } from "../session.js";
import { useReloadWhenLive } from "./live.js";
import { useOrganizationLookup } from "./lookup.js";
import { ProblemNote } from "./problem.js";

export function TrustedPartners() {
  const { api } = useSession();
  const [ids, setIds] = useState<string[] | null>(null);
  const [refusal, setRefusal] = useState<Problem | null>(null);
  const [changeRefusal, setChangeRefusal] = useState<Problem | null>(null);
  const [done, setDone] = useState("");
  const [busy, setBusy] = useState(false);
  // The latest change asked for, for "Try again".
  const last = useRef<{ change: (now: string[]) => string[]; said: string } | null>(null);

  // Only the answer to the latest request is shown: an earlier one may be older.
  const latest = useRef(0);
  const load = useCallback(async () => {
    const mine = ++latest.current;
    try {
      const { policy } = await api.organizations.getOrganizationPolicy({});
      if (mine !== latest.current) return;
      setIds(policy?.autoActivateSourceIds ?? []);
      setRefusal(null);
    } catch (err) {
      if (mine === latest.current) setRefusal(problem(err));
    }
  }, [api]);

  useEffect(() => {
    void load();
  }, [load]);
  // Failed while the server was away: load again as soon as it is back.
  useReloadWhenLive(refusal !== null && refusal.retryable, () => void load());

  /**
   * Replaces the list with `change` of the list as it is now (read again first); says `said` once
   * it is stored. True when it was.
   */
  const update = async (change: (now: string[]) => string[], said: string): Promise<boolean> => {
    const run = async () => {
      const { policy: now } = await api.organizations.getOrganizationPolicy({});
      const { policy } = await api.organizations.updateOrganizationPolicy({
        policy: { autoActivateSourceIds: change(now?.autoActivateSourceIds ?? []) },
      });
      // Newer than any load still on its way.
      latest.current += 1;
      setIds(policy?.autoActivateSourceIds ?? []);
      setDone(said);
    };
    last.current = { change, said };
    setBusy(true);
    setChangeRefusal(null);
    setDone("");
    try {
      await run();
      return true;
    } catch (err) {
      setChangeRefusal(problem(err));
      return false;
    } finally {
      setBusy(false);
    }
  };

  return (
    <section aria-labelledby="trusted-heading">
      <h2 id="trusted-heading" tabIndex={-1}>
        Trusted partners
      </h2>
      <p class="hint">
        Connections these organizations create or reactivate to yours are activated at once, without waiting for you;
        removing one changes no existing connection.
      </p>
      <p role="status" class="found">
        {done}
      </p>
      <ProblemNote problem={changeRefusal} onRetry={() => last.current && void update(last.current.change, last.current.said)} />
      <ProblemNote problem={refusal} onRetry={() => void load()} />
      {ids === null ? (
        refusal ? null : (
          <p role="status">Loading…</p>
        )
      ) : ids.length === 0 ? (
        <div class="empty">
          <p>No trusted partners yet.</p>
          <p class="hint">Until you add one, you activate each connection made to your organization yourself.</p>
        </div>
      ) : (
        <ul class="partners" aria-label="Trusted partners">
          {ids.map((id) => (
            <Partner
              key={id}
              id={id}
              busy={busy}
              onRemove={async (name) => {
                const removed = await update(
                  (now) => now.filter((other) => other !== id),
                  `${name} is no longer a trusted partner. Its existing connections are unchanged.`,
                );
                if (removed) document.getElementById("trusted-heading")?.focus();
              }}
            />
          ))}
        </ul>
      )}
      <AddPartner
        trusted={ids ?? []}
        busy={busy}
        onAdd={(id, name) =>
          update(
            (now) => (now.includes(id) ? now : [...now, id]),
            `${name} is now a trusted partner: connections it creates or reactivates to yours are activated at once.`,
          )
        }
      />
    </section>
  );
}

/** One trusted source: its name, its ID, and "Remove". */
function Partner({ id, busy, onRemove }: { id: string; busy: boolean; onRemove: (name: string) => void }) {
  const name = useOrganizationName(id);
  return (
    <li class="partner">
      <div class="partner-name">
        <strong id={`partner-${id}`}>{name ?? "…"}</strong>
        <span class="id">{id}</span>
      </div>
      <button type="button" disabled={busy} aria-describedby={`partner-${id}`} onClick={() => onRemove(name ?? id)}>
        Remove
      </button>
    </li>
  );
}

/** "Add a trusted partner": an Organization ID, the name it belongs to, then the change. */
function AddPartner({
  trusted,
  busy,
  onAdd,
}: {
  trusted: string[];
  busy: boolean;
  onAdd: (id: string, name: string) => Promise<boolean>;
}) {
  const [entered, setEntered] = useState("");
  const { id, lookup } = useOrganizationLookup(
    entered,
    "That is your own organization's ID. Enter the ID of an organization that shares data with yours.",
    ErrorReason.INVALID_ARGUMENT,
  );

  const found = lookup !== null && lookup.id === id && "name" in lookup ? lookup : null;
  const already = found !== null && trusted.includes(found.id);
  const ready = found !== null && !already;

  return (
    <form
      class="card"
      aria-labelledby="add-partner-heading"
      onSubmit={async (event) => {
        event.preventDefault();
        if (!ready || busy) return;
        if (await onAdd(found.id, found.name)) setEntered("");
      }}
    >
      <h3 id="add-partner-heading">Add a trusted partner</h3>
      <label for="partner-id">Partner's organization ID</label>
      <input
        id="partner-id"
        class="id"
        value={entered}
        autocomplete="off"
        spellcheck={false}
        aria-describedby="partner-found"
        onInput={(event) => setEntered(event.currentTarget.value)}
      />
      <div id="partner-found" aria-live="polite">
        {lookup === null || lookup.id !== id ? (
          <p class="hint">
            {entered.trim() && !id
              ? "An organization ID has 36 characters; the other organization finds it under Organization › Information."
              : "Paste the ID of an organization that shares data with yours."}
          </p>
        ) : "name" in lookup ? (
          <p class="found">
            {already ? (
              <>
                <strong>{lookup.name}</strong> is already a trusted partner.
              </>
            ) : (
              <>
                You are adding <strong>{lookup.name}</strong>.
              </>
            )}
          </p>
        ) : (
          <ProblemNote problem={lookup.refusal} />
        )}
      </div>
      <div class="actions">
        <button type="submit" class="primary" disabled={!ready || busy}>
          Add trusted partner
        </button>
      </div>
    </form>
  );
}
