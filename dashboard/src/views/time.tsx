/** Times as people read them: relative ("3 minutes ago"), with the exact time on hover. */
import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";
import { useEffect, useState } from "preact/hooks";

import { ago, expiresIn, iso, when } from "../format.js";

/** How often relative times are brought up to date. */
const TICK_MS = 30_000;

/** The longest delay a browser timer takes (about 24.8 days). */
const LONGEST_TIMER_MS = 2 ** 31 - 1;

/**
 * The time now, brought up to date every half minute while the component is shown, and also at
 * `at` (ms), if given: a moment the words must change at once, such as an expiry.
 */
export function useNow(at?: number): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const timer = window.setInterval(() => setNow(Date.now()), TICK_MS);
    return () => window.clearInterval(timer);
  }, []);
  useEffect(() => {
    const wait = at === undefined ? -1 : at - Date.now();
    if (wait < 0 || wait > LONGEST_TIMER_MS) return;
    const timer = window.setTimeout(() => setNow(Date.now()), wait + 1);
    return () => window.clearTimeout(timer);
  }, [at]);
  return now;
}

/** "3 minutes ago", with the exact time (to the second) as its title and machine-readable value. */
export function Ago({ time }: { time: Timestamp | undefined }) {
  const now = useNow();
  if (!time) return <>—</>;
  return (
    <time dateTime={iso(time)} title={when(time)}>
      {ago(time, now)}
    </time>
  );
}

/** "Expires in 30 days", then "Expired" from that moment on, with the exact time as its title. */
export function Expires({ time }: { time: Timestamp }) {
  const now = useNow(timestampDate(time).getTime());
  return (
    <time class="expiry" dateTime={iso(time)} title={when(time)}>
      {expiresIn(time, now)}
    </time>
  );
}
