/** How views follow the page's live changes (see ../live.ts), and the status line that tells of them. */
import { useCallback, useEffect, useRef, useState } from "preact/hooks";

import { useSession } from "../session.js";
import type { LiveListener, LiveState } from "../live.js";

/**
 * Follows the page's changes while the view is open, with the latest callbacks. Call it before the
 * view loads its snapshot (effects run in order), so that no event delivered after the snapshot
 * was requested escapes the view.
 */
export function useLive(listener: LiveListener): void {
  const { live } = useSession();
  const latest = useRef(listener);
  latest.current = listener;
  useEffect(
    () =>
      live.subscribe({
        onEvent: (event) => latest.current.onEvent?.(event),
        onResync: () => latest.current.onResync?.(),
      }),
    [live],
  );
}

/**
 * `load`, run at most one at a time: a call while a run is in flight asks for one more run after
 * it, so a burst of events costs at most two loads, and the last one starts after the last event.
 */
export function useCoalesced(load: () => Promise<unknown>): () => void {
  const latest = useRef(load);
  latest.current = load;
  const state = useRef({ running: false, again: false });
  return useCallback(() => {
    const s = state.current;
    if (s.running) {
      s.again = true;
      return;
    }
    s.running = true;
    void (async () => {
      try {
        do {
          s.again = false;
          await latest.current();
        } while (s.again);
      } finally {
        s.running = false;
      }
    })();
  }, []);
}

/**
 * Runs `reload` when the page's live status returns (the stream opens again, e.g. after the server
 * restarted) while `failed` is true: a view that could not load while the server was away loads
 * by itself once it is back.
 */
export function useReloadWhenLive(failed: boolean, reload: () => void): void {
  const { live } = useSession();
  const latest = useRef({ failed, reload });
  latest.current = { failed, reload };
  useEffect(() => {
    let previous: LiveState["kind"] | null = null;
    return live.watchState((state) => {
      const returned = state.kind === "live" && previous !== null && previous !== "live";
      previous = state.kind;
      if (returned && latest.current.failed) latest.current.reload();
    });
  }, [live]);
}

const TIME = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });

/** One line on whether the page shows changes as they happen. */
export function LiveStatus() {
  const { live } = useSession();
  const [state, setState] = useState<LiveState>({ kind: "idle" });
  useEffect(() => live.watchState(setState), [live]);
  let text = "";
  let down = false;
  switch (state.kind) {
    case "connecting":
      text = "Connecting to live updates…";
      break;
    case "live":
      text = "Live: changes appear as they happen.";
      break;
    case "reconnecting":
      down = true;
      text = `${state.problem ? `${state.problem.sentence} ` : ""}Reconnecting… Changes made since ${TIME.format(state.since)} may not be shown yet.`;
      break;
    case "stopped":
      down = true;
      text = `${state.problem.sentence} Live updates are off.`;
      break;
  }
  return (
    <p role="status" class={down ? "live live-down" : "live"}>
      {text}
    </p>
  );
}
