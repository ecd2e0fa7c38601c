/**
 * Where the page is: the view its URL's fragment names, and how to show another one.
 *
 *   #/                       Connect › Connections (the list)
 *   #/new                    a new connection
 *   #/connections/<id>       one connection
 *   #/webhooks               Connect › Webhooks
 *   #/organization           Organization › Information
 *   #/organization/trusted-partners
 *                            Organization › Trusted partners
 */
import { useEffect, useState } from "preact/hooks";

export type Route =
  | { view: "list" }
  | { view: "new" }
  | { view: "detail"; id: string }
  | { view: "webhooks" }
  | { view: "information" }
  | { view: "trusted" };

export function route(): Route {
  const hash = window.location.hash.replace(/^#/, "");
  if (hash === "/new") return { view: "new" };
  if (hash === "/organization") return { view: "information" };
  if (hash === "/organization/trusted-partners") return { view: "trusted" };
  if (hash === "/webhooks") return { view: "webhooks" };
  const detail = /^\/connections\/([0-9a-fA-F-]{36})$/.exec(hash);
  if (detail) return { view: "detail", id: detail[1].toLowerCase() };
  return { view: "list" };
}

/** Shows another view. */
export function go(path: string): void {
  window.location.hash = path;
}

/** The view shown now, following the fragment. */
export function useRoute(): Route {
  const [current, setCurrent] = useState(route);
  useEffect(() => {
    const changed = () => setCurrent(route());
    window.addEventListener("hashchange", changed);
    return () => window.removeEventListener("hashchange", changed);
  }, []);
  return current;
}
