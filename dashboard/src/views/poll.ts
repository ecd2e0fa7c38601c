/** Keeps a view fresh: runs `refresh` every few seconds while the tab is visible. */
import { useEffect, useRef } from "preact/hooks";

/** How often an open view asks for changes made by the other party. */
export const POLL_MS = 3_000;

export function usePolling(refresh: () => Promise<void> | void): void {
  const latest = useRef(refresh);
  latest.current = refresh;
  useEffect(() => {
    const timer = window.setInterval(() => {
      if (document.visibilityState === "visible") void latest.current();
    }, POLL_MS);
    return () => window.clearInterval(timer);
  }, []);
}
