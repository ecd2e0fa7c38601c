/** Times as people read them: relative ("3 minutes ago"), with the exact time on hover. */
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { useEffect, useState } from "preact/hooks";

import { ago, iso, when } from "../format.js";

/** How often relative times are brought up to date. */
const TICK_MS = 30_000;

/** The time now, brought up to date every half minute while the component is shown. */
export function useNow(): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const timer = window.setInterval(() => setNow(Date.now()), TICK_MS);
    return () => window.clearInterval(timer);
  }, []);
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
