/**
 * The dashboard in a real browser (Debian's Chromium through playwright-core), against the real
 * server binary. Selectors use roles and the accessible names of SPEC section 9: they are part of
 * the contract. The server sends a watch heartbeat every second, so that a page's stream has
 * delivered its first message soon after it opens.
 *
 *   CONNECTIONS_BIN=../target/debug/connections node --import tsx --test test/dashboard.test.ts
 */
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createServer as createHttpServer } from "node:http";
import { type AddressInfo, createServer as createNetServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { after, before, describe, it } from "node:test";
import AxeBuilder from "@axe-core/playwright";
import { timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { Webhook } from "standardwebhooks";

import {
  ConnectionEventType,
  ConnectionRole,
  ConnectionState,
  DataType,
} from "../src/gen/connections/v1/resources_pb.js";
import {
  BIN,
  context,
  DIST_ASSETS,
  DOC_SCREENSHOTS,
  launch,
  type Org,
  SCREENSHOTS,
  Server,
  signIn,
} from "./harness.js";

/** The longest a test may take. */
const TIMEOUT = 120_000;
/** The longest the whole suite may take. */
const SUITE_TIMEOUT = 30 * 60_000;
/** Long enough for another party's change to reach an open page over its stream. */
const SEEN_WITHIN = 10_000;
/** The server's heartbeat interval in these tests. */
const HEARTBEAT = "1s";
/** The server's webhook retries in these tests: one, 5 s after a failure; then the event is given up. */
const RETRY_SCHEDULE = "5s";
/** The page's interval when it polled: a window of twice this with no request shows it does not. */
const OLD_POLL_MS = 3_000;
/** What the page says while its stream is open. */
const LIVE = "Live: changes appear as they happen.";
const WATCH = "/connections.v1.ConnectionService/WatchConnectionEvents";

let server: Server;
let browser: Browser;
const contexts: Array<{ context: BrowserContext; requests: string[]; origin: string }> = [];

before(async () => {
  server = await Server.start({
    CONNECTIONS_WATCH_HEARTBEAT_INTERVAL: HEARTBEAT,
    CONNECTIONS_WEBHOOK_RETRY_SCHEDULE: RETRY_SCHEDULE,
  });
  browser = await launch();
});

after(async () => {
  for (const { context: c } of contexts) await c.close();
  await browser?.close();
  // No page ever talked to another origin.
  for (const { requests, origin } of contexts) {
    const foreign = requests.filter((url) => !url.startsWith(`${origin}/`) && !url.startsWith("data:"));
    assert.deepEqual(foreign, [], "requests to another origin");
  }
  await server?.stop();
});

async function newPage(viewport?: { width: number; height: number }): Promise<Page> {
  return (await newRecordedPage(server, viewport)).page;
}

/** A page on `on`, with the URLs of every request its context makes. */
async function newRecordedPage(
  on: Server,
  viewport?: { width: number; height: number },
): Promise<{ page: Page; requests: string[] }> {
  const opened = await context(browser, on, viewport);
  contexts.push({ ...opened, origin: on.baseUrl });
  return { page: await opened.context.newPage(), requests: opened.requests };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** How many of `requests` called the ConnectionService method `method`. */
function calls(requests: string[], method: string): number {
  return requests.filter((url) => url.endsWith(`/connections.v1.ConnectionService/${method}`)).length;
}

/** The page says its stream is open. */
async function seeLive(page: Page, timeout = SEEN_WITHIN): Promise<void> {
  await page.getByRole("status").filter({ hasText: LIVE }).waitFor({ timeout });
}

/** The entries of the detail page's history, as text. */
async function history(page: Page): Promise<string[]> {
  return await page.locator("ol.history li").allTextContents();
}

/**
 * A WatchConnectionEvents stream that the test holds open as `org` (read, so it never falls
 * behind). `ready` settles at its first message, or with its refusal.
 */
function holdStream(on: Server, org: Org): { ready: Promise<void>; close(): void } {
  const controller = new AbortController();
  let settle!: { resolve(): void; reject(err: unknown): void };
  const ready = new Promise<void>((resolve, reject) => (settle = { resolve, reject }));
  ready.catch(() => {});
  void (async () => {
    try {
      for await (const _ of on.connections(org).watchConnectionEvents({}, { signal: controller.signal })) {
        settle.resolve();
      }
      settle.reject(new Error("the stream ended"));
    } catch (err) {
      settle.reject(err);
    }
  })();
  return { ready, close: () => controller.abort() };
}

/** axe-core finds no serious or critical violation on the page as it is now. */
async function assertAccessible(page: Page, what: string): Promise<void> {
  const results = await new AxeBuilder({ page }).analyze();
  const serious = results.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  assert.deepEqual(
    serious.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`),
    [],
    `accessibility of ${what}`,
  );
}

/** The state the detail page shows, once it shows `word`. */
async function seeState(page: Page, word: "Pending" | "Active" | "Inactive", timeout = SEEN_WITHIN): Promise<void> {
  await page.locator(".state-row .state", { hasText: new RegExp(`^${word}$`) }).waitFor({ timeout });
}

/** Fills the new-connection form for `destination`, once the page has shown its name. */
async function fillNewConnection(page: Page, destination: Org, types: string[]): Promise<void> {
  await page.getByRole("button", { name: "New connection" }).click();
  await page.getByRole("textbox", { name: "Destination organization ID" }).fill(destination.id);
  await page.getByText(`You are connecting to ${destination.name}.`).waitFor();
  for (const type of types) await page.getByRole("checkbox", { name: type }).check();
}

/** The page's width beyond the window's (positive: it scrolls sideways). */
async function overflow(page: Page): Promise<number> {
  return await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
}

/** The row of the list for the connection with the organization named `name`. */
function rowOf(page: Page, name: string) {
  return page.locator("tr.connection", { has: page.getByRole("link", { name, exact: true }) });
}

/** The width of the first state badge matching `word` on the page, in CSS pixels. */
async function badgeWidth(page: Page, word: string): Promise<number> {
  const box = await page.locator(".state", { hasText: new RegExp(`^${word}$`) }).first().boundingBox();
  assert.ok(box, `a ${word} badge is shown`);
  return box.width;
}

/** A request a test's webhook receiver was sent: its headers (lower-case names) and body. */
interface Received {
  headers: Record<string, string>;
  body: string;
}

/** An HTTP server on 127.0.0.1 that records every request and answers `status`. */
interface Receiver {
  url: string;
  received: Received[];
  status: number;
  close(): Promise<void>;
}

/** Starts a webhook receiver that answers 204 until told otherwise. */
async function startReceiver(): Promise<Receiver> {
  const receiver: Receiver = { url: "", received: [], status: 204, close: async () => {} };
  const http = createHttpServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const headers: Record<string, string> = {};
      for (const [name, value] of Object.entries(req.headers)) headers[name] = String(value);
      receiver.received.push({ headers, body: Buffer.concat(chunks).toString("utf8") });
      const status = receiver.status;
      res.writeHead(status, { "content-type": "text/plain" });
      res.end(status === 204 ? undefined : `answered ${status}`);
    });
  });
  await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve));
  receiver.url = `http://127.0.0.1:${(http.address() as AddressInfo).port}/webhooks`;
  receiver.close = () =>
    new Promise((resolve) => {
      http.closeAllConnections();
      http.close(() => resolve());
    });
  return receiver;
}

/** The value `check` returns once it is truthy; fails after `timeout` ms. */
async function until<T>(what: string, check: () => T | undefined | null | false, timeout = SEEN_WITHIN): Promise<T> {
  const end = Date.now() + timeout;
  for (;;) {
    const value = check();
    if (value) return value;
    if (Date.now() > end) assert.fail(`${what} within ${timeout} ms`);
    await sleep(100);
  }
}

/** A delivery's body, as the Standard Webhooks library verified it with `secret`. */
interface Payload {
  type: string;
  data: { event: { id: string }; connection: { id: string }; change_token: string };
}

function verified(secret: string, delivery: Received): Payload {
  return new Webhook(secret).verify(delivery.body, delivery.headers) as Payload;
}

/** Opens Organization › Trusted partners from the navigation. */
async function openTrustedPartners(page: Page): Promise<void> {
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Trusted partners" }).click();
  await page.getByRole("heading", { name: "Trusted partners", exact: true }).waitFor();
  await page.waitForFunction(() => document.title === "Organization › Trusted partners");
}

/** The Trusted partners page's item for the organization named `name`. */
function partnerItem(page: Page, name: string) {
  return page.locator("li.partner", { has: page.getByText(name, { exact: true }) });
}

/** The value the detail page shows for the field `term` ("Data shared"). */
function fieldOf(page: Page, term: string) {
  return page
    .locator("dl.fields dt", { hasText: new RegExp(`^${term}$`) })
    .locator("xpath=following-sibling::dd[1]");
}

/** A connection from `source` to `destination`, Active, sharing `types`: its ID. */
async function activeConnection(source: Org, destination: Org, types: DataType[]): Promise<string> {
  const { connection } = await server
    .connections(source)
    .createConnection({ destinationOrganizationId: destination.id, dataTypes: types });
  await server.connections(destination).activateConnection({ connectionId: connection!.id });
  return connection!.id;
}

/** Opens Connect › Webhooks from the navigation. */
async function openWebhooks(page: Page): Promise<void> {
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Webhooks" }).click();
  await page.getByRole("heading", { name: "Webhooks", exact: true }).waitFor();
  await page.waitForFunction(() => document.title === "Connect › Webhooks");
}

/** The Webhooks page's item for the endpoint at `url`. */
function endpointItem(page: Page, url: string) {
  return page.locator("li.endpoint", { has: page.getByRole("heading", { name: url, exact: true }) });
}

/** The rows of the Deliveries table, newest first, as text. */
async function deliveryRows(page: Page): Promise<string[]> {
  return await page.locator("tr.delivery").allTextContents();
}

/** A day and an hour, in milliseconds. */
const DAY_MS = 24 * 3600_000;
const HOUR_MS = 3600_000;

/** An exact time as the page writes it, to the second (e.g. "Dec 7, 2025, 2:12:05 PM"). */
const WITH_SECONDS = /\d{1,2}:\d{2}:\d{2}/;

/** A port nothing listens on now, on 127.0.0.1. */
function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const probe = createNetServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address() as AddressInfo;
      probe.close(() => resolvePort(port));
    });
  });
}

describe("the dashboard", { timeout: SUITE_TIMEOUT }, () => {
  it("signs in with a key that README's quick start printed, on the database it made", { timeout: TIMEOUT }, async () => {
    // README's quick start as written, in a new directory: `connections admin quickstart`, then
    // `connections serve` on the embedded default (./connections.db), with no CONNECTIONS_*
    // setting but the address (a free port rather than 50051).
    const dir = mkdtempSync(join(tmpdir(), "connections-quickstart-"));
    const env: NodeJS.ProcessEnv = Object.fromEntries(
      Object.entries(process.env).filter(([name]) => !name.startsWith("CONNECTIONS_") && name !== "RUST_LOG"),
    );
    const printed = execFileSync(BIN, ["admin", "quickstart"], { cwd: dir, env, encoding: "utf8", timeout: 60_000 });
    const organizations = printed
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line) as Record<string, string>);
    assert.deepEqual(
      organizations.map((o) => o.display_name),
      ["Acme Bank", "Orbit Credit Union"],
    );
    const first = organizations[0]!;
    const org: Org = { id: first.id!, keyId: first.api_key_id!, key: first.api_key_secret!, name: first.display_name! };

    const port = await freePort();
    const baseUrl = `http://127.0.0.1:${port}`;
    const logPath = join(dir, "serve.log");
    const log = openSync(logPath, "w");
    const serve = spawn(BIN, ["serve"], {
      cwd: dir,
      env: { ...env, CONNECTIONS_LISTEN: `127.0.0.1:${port}` },
      stdio: ["ignore", log, log],
    });
    closeSync(log);
    const exited = new Promise<number | null>((r) => serve.once("exit", (code) => r(code)));
    let code: number | null;
    try {
      let up = false;
      for (let i = 0; i < 150 && !up && serve.exitCode === null; i++) {
        up = await fetch(`${baseUrl}/`).then(
          (r) => r.ok,
          () => false,
        );
        if (!up) await sleep(200);
      }
      assert.ok(up, `the server answers:\n${readFileSync(logPath, "utf8")}`);

      const opened = await browser.newContext({ viewport: { width: 1280, height: 900 }, baseURL: baseUrl });
      const requests: string[] = [];
      opened.on("request", (request) => requests.push(request.url()));
      contexts.push({ context: opened, requests, origin: baseUrl });
      const page = await opened.newPage();
      await page.goto("/");
      await page.getByRole("textbox", { name: "API key" }).fill(org.key);
      await page.getByRole("button", { name: "Sign in" }).click();

      // Signed in: the organization's name and ID, and its (empty) Connections page.
      const line = page.getByRole("region", { name: "Your organization" });
      await line.getByText(org.name, { exact: true }).waitFor({ timeout: SEEN_WITHIN });
      assert.equal(await line.getByRole("textbox", { name: "Organization ID", exact: true }).inputValue(), org.id);
      await page.getByRole("heading", { name: "Connections", exact: true }).waitFor();
      const nav = page.getByRole("navigation", { name: "Main" });
      assert.equal(await nav.getByRole("link", { name: "Connections", exact: true }).getAttribute("aria-current"), "page");
      await page.locator(".empty").getByText("No connections here yet.").waitFor();
      await seeLive(page);
    } finally {
      serve.kill("SIGTERM");
      code = await exited;
      rmSync(dir, { recursive: true, force: true });
    }
    assert.equal(code, 0, "the server stops on SIGTERM");
  });

  it("takes two organizations through the whole lifecycle", { timeout: TIMEOUT }, async () => {
    const a = server.newOrg("Acme Lending");
    const b = server.newOrg("Beta Bureau");
    const pageA = await newPage();
    const pageB = await newPage();

    const response = await pageA.goto("/");
    const headers = response!.headers();
    assert.match(headers["content-security-policy"]!, /connect-src 'self'/);
    assert.match(headers["content-security-policy"]!, /frame-ancestors 'none'/);
    assert.doesNotMatch(headers["content-security-policy"]!, /unsafe-inline/);
    assert.equal(headers["x-content-type-options"], "nosniff");
    assert.equal(headers["referrer-policy"], "no-referrer");
    await assertAccessible(pageA, "the sign-in page");

    await signIn(pageA, a);
    await signIn(pageB, b);
    assert.equal(await pageB.getByRole("textbox", { name: "Organization ID", exact: true }).inputValue(), b.id);
    await pageB.getByRole("button", { name: "Copy" }).click();
    assert.equal(await pageB.evaluate(() => navigator.clipboard.readText()), b.id);
    // The key stays in the tab's session, never in localStorage or a cookie.
    assert.equal(await pageA.evaluate(() => window.localStorage.length), 0);
    assert.deepEqual(await pageA.context().cookies(), []);

    // A creates a connection to B, confirming B's name first.
    await fillNewConnection(pageA, b, ["Inquiries", "Transactions"]);
    await assertAccessible(pageA, "the new-connection form");
    await pageA.screenshot({ path: join(SCREENSHOTS, "new-connection.jpg"), type: "jpeg", quality: 80 });
    await pageA.getByRole("button", { name: "Create connection" }).click();
    await seeState(pageA, "Pending");

    // B sees it under Inbound, Pending, and activates it.
    await pageB.getByRole("tab", { name: "Inbound" }).click();
    const row = pageB.getByRole("link", { name: `From ${a.name}` });
    await row.waitFor({ timeout: SEEN_WITHIN });
    assert.match((await pageB.locator("tr.connection").first().textContent())!, /Pending/);
    await assertAccessible(pageB, "the list");
    await row.click();
    await pageB.getByRole("button", { name: "Activate", exact: true }).click();
    await seeState(pageB, "Active");

    // A's open page shows it without a reload; B deactivates with a reason.
    await seeState(pageA, "Active");
    await pageB.getByRole("button", { name: "Deactivate" }).click();
    await pageB.getByRole("textbox", { name: "Reason" }).fill("Contract ended");
    await pageB.getByRole("button", { name: "Confirm" }).click();
    await seeState(pageB, "Inactive");

    await seeState(pageA, "Inactive");
    await pageA.getByText("Reason: Contract ended").waitFor({ timeout: SEEN_WITHIN });
    await assertAccessible(pageA, "the detail page");
    await pageA.screenshot({ path: join(SCREENSHOTS, "detail.jpg"), type: "jpeg", quality: 80, fullPage: true });

    // A reactivates, after a confirmation; B activates again.
    await pageA.getByRole("button", { name: "Reactivate" }).click();
    await pageA.getByRole("button", { name: "Confirm" }).click();
    await seeState(pageA, "Pending");
    await pageB.getByRole("button", { name: "Refresh" }).click();
    await seeState(pageB, "Pending");
    await pageB.getByRole("button", { name: "Activate", exact: true }).click();
    await seeState(pageB, "Active");
    await seeState(pageA, "Active");

    const { connections } = await server.connections(a).listConnections({});
    assert.equal(connections.length, 1);
    assert.equal(connections[0]!.state, ConnectionState.ACTIVE);
    assert.deepEqual(connections[0]!.dataTypes, [DataType.INQUIRY, DataType.TRANSACTION]);
    const { events } = await server.connections(a).listConnectionEvents({ connectionId: connections[0]!.id });
    assert.equal(events.length, 5);
    // Each page's calls were made with the key it signed in with.
    assert.deepEqual(
      events.map((e) => e.actorApiKeyId),
      [a.keyId, b.keyId, b.keyId, a.keyId, b.keyId],
    );

    await pageA.getByRole("link", { name: "Back to the list" }).click();
    await pageA.getByRole("link", { name: `To ${b.name}` }).waitFor();
    await pageA.screenshot({ path: join(SCREENSHOTS, "list.jpg"), type: "jpeg", quality: 80 });
  });

  it("creates one connection when Create connection is clicked twice", { timeout: TIMEOUT }, async () => {
    const c = server.newOrg("Cobalt Credit");
    const d = server.newOrg("Delta Data");
    const page = await newPage();
    await signIn(page, c);
    await fillNewConnection(page, d, ["Accounts"]);
    // Two clicks in the same moment, before the page can disable the button.
    await page.getByRole("button", { name: "Create connection" }).evaluate((button: HTMLButtonElement) => {
      button.click();
      button.click();
    });
    await seeState(page, "Pending");
    assert.equal(await page.getByRole("alert").count(), 0, "no refusal shown");
    const { connections } = await server.connections(c).listConnections({});
    assert.equal(connections.length, 1);
    const { events } = await server.connections(c).listConnectionEvents({ connectionId: connections[0]!.id });
    assert.equal(events.length, 1);
  });

  it("tells a stale page that the connection changed, and shows its state now", { timeout: TIMEOUT }, async () => {
    const e = server.newOrg("Echo Exchange");
    const f = server.newOrg("Foxtrot Finance");
    const { connection } = await server
      .connections(e)
      .createConnection({ destinationOrganizationId: f.id, dataTypes: [DataType.VERIFICATION] });
    const page = await newPage();
    // The page cannot follow changes (its stream is refused, and its clock stands still, so it
    // does not try again): it keeps showing what it loaded.
    await page.route(`**${WATCH}`, (route) => route.abort("connectionrefused"));
    await page.clock.install();
    await signIn(page, f);
    await page.goto(`/#/connections/${connection!.id}`);
    await seeState(page, "Pending");

    await server.connections(e).deactivateConnection({ connectionId: connection!.id, reason: "changed meanwhile" });
    await page.getByRole("button", { name: "Activate", exact: true }).click();
    await page.getByText("This connection changed since you opened it").waitFor();
    await seeState(page, "Inactive");
    const { connection: now } = await server.connections(f).getConnection({ connectionId: connection!.id });
    assert.equal(now!.state, ConnectionState.INACTIVE, "nothing was overwritten");
  });

  it("names the API key that made each change, the page's own included", { timeout: TIMEOUT }, async () => {
    const t = server.newOrg("Tango Trust");
    const deployer = server.newKey(t, "ci-deployer");
    const u = server.newOrg("Uniform Underwriting");
    const page = await newPage();
    // Signed in with the organization's second key: the page's calls are made with it.
    await signIn(page, deployer);
    await fillNewConnection(page, u, ["Accounts"]);
    await page.getByRole("button", { name: "Create connection" }).click();
    await seeState(page, "Pending");
    await page.locator("ol.history li").first().waitFor();
    assert.match((await history(page))[0]!, /Tango Trust \(the source, by key 'ci-deployer'\) created the connection/);

    // The other party acts with its own key; the open page names it.
    const id = page.url().split("/").pop()!;
    await server.connections(u).activateConnection({ connectionId: id });
    await seeState(page, "Active");
    await page.locator("ol.history li").nth(1).waitFor({ timeout: SEEN_WITHIN });
    // Newest first.
    assert.match(
      (await history(page))[0]!,
      /Uniform Underwriting \(the destination, by key 'dashboard tests'\) activated it/,
    );
    await page.getByRole("button", { name: "Deactivate" }).click();
    await page.getByRole("button", { name: "Confirm" }).click();
    await seeState(page, "Inactive");
    await page.locator("ol.history li").nth(2).waitFor({ timeout: SEEN_WITHIN });
    assert.match((await history(page))[0]!, /\(the source, by key 'ci-deployer'\) deactivated it/);
    await assertAccessible(page, "a history naming keys");

    // The API says the same: the page's key, never the organization's other one.
    const { events } = await server.connections(t).listConnectionEvents({ connectionId: id });
    assert.deepEqual(
      events.map((e) => [e.actorApiKeyId, e.actorApiKeyDisplayName]),
      [
        [deployer.keyId, "ci-deployer"],
        [u.keyId, "dashboard tests"],
        [deployer.keyId, "ci-deployer"],
      ],
    );
    assert.notEqual(deployer.keyId, t.keyId);
  });

  it("refuses a revoked key with a sentence", { timeout: TIMEOUT }, async () => {
    const g = server.newOrg("Golf Group");
    server.cli("admin", "revoke-key", "--key", g.keyId);
    const page = await newPage();
    await page.goto("/");
    await page.getByRole("textbox", { name: "API key" }).fill(g.key);
    await page.getByRole("button", { name: "Sign in" }).click();
    const alert = page.getByRole("alert");
    await alert.waitFor();
    assert.match((await alert.textContent())!, /This API key was not accepted/);
    assert.equal(await page.getByRole("heading", { name: "Connections", exact: true }).count(), 0);
  });

  it("can be used with the keyboard alone", { timeout: TIMEOUT }, async () => {
    const j = server.newOrg("Juliet Journals");
    const k = server.newOrg("Kilo Keys");
    const page = await newPage();
    /** Presses Tab until the focused element is named `name`; fails after 40 presses. */
    const tabTo = async (name: string) => {
      for (let i = 0; i < 40; i++) {
        await page.keyboard.press("Tab");
        const focused = await page.evaluate(() => {
          const el = document.activeElement as HTMLElement | null;
          const label = el?.id ? document.querySelector(`label[for="${el.id}"]`)?.textContent : null;
          return (label ?? el?.closest("label")?.textContent ?? el?.textContent ?? "").trim();
        });
        if (focused === name) return;
      }
      assert.fail(`Tab never reached ${name}`);
    };
    await page.goto("/");
    await tabTo("API key");
    await page.keyboard.type(j.key);
    await page.keyboard.press("Enter");
    await page.getByRole("heading", { name: "Connections", exact: true }).waitFor();
    await tabTo("New connection");
    await page.keyboard.press("Enter");
    // Opening a view moves the focus to its heading; Tab on from there.
    await page.waitForFunction(() => document.activeElement?.textContent === "New connection");
    await tabTo("Destination organization ID");
    await page.keyboard.type(k.id);
    await page.getByText(`You are connecting to ${k.name}.`).waitFor();
    await tabTo("Verifications");
    await page.keyboard.press("Space");
    await tabTo("Create connection");
    await page.keyboard.press("Enter");
    await seeState(page, "Pending");
    await page.waitForFunction(() => document.activeElement?.textContent?.startsWith("Connection"));
    await tabTo("Deactivate");
    await page.keyboard.press("Enter");
    await tabTo("Reason");
    await page.keyboard.type("Typed, not clicked");
    await page.keyboard.press("Enter");
    await seeState(page, "Inactive");
    await page.getByText("Reason: Typed, not clicked").waitFor();
  });

  it("works at 375 px wide", { timeout: TIMEOUT }, async () => {
    const h = server.newOrg("Hotel Holdings");
    const i = server.newOrg("India Insights");
    await server.connections(h).createConnection({ destinationOrganizationId: i.id, dataTypes: [DataType.ACCOUNT] });
    const page = await newPage({ width: 375, height: 740 });
    await signIn(page, h);
    await page.getByRole("link", { name: `To ${i.name}` }).waitFor();
    const overflow = async () => page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok((await overflow()) <= 0, "the list fits the width");
    // The organization takes two short lines: its name, then the ID with Copy.
    const orgLine = (await page.locator(".org-line").boundingBox())!;
    assert.ok(orgLine.height < 90, `the organization line is at most two lines high (${orgLine.height} px)`);
    await assertAccessible(page, "the list at 375 px");
    await page.getByRole("link", { name: `To ${i.name}` }).click();
    await seeState(page, "Pending");
    assert.ok((await overflow()) <= 0, "the detail page fits the width");
    await assertAccessible(page, "the detail page at 375 px");
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByRole("textbox", { name: "API key" }).waitFor();
    assert.equal(await page.evaluate(() => window.sessionStorage.length), 0, "signing out forgets the key");
  });

  it("shows another party's change on the list as it happens, without polling", { timeout: TIMEOUT }, async () => {
    const l = server.newOrg("Lima Loans");
    const m = server.newOrg("Mike Markets");
    const { page, requests } = await newRecordedPage(server);
    await signIn(page, m);
    await page.getByRole("tab", { name: "All" }).click();
    await page.getByText("No connections here yet.").waitFor();
    await seeLive(page);
    // Set on this document: a reload would lose it.
    await page.evaluate(() => ((window as unknown as { marker: string }).marker = "not reloaded"));

    // L acts through the API, not through any page.
    const { connection } = await server
      .connections(l)
      .createConnection({ destinationOrganizationId: m.id, dataTypes: [DataType.INQUIRY] });
    const row = rowOf(page, `From ${l.name}`);
    await row.waitFor({ timeout: SEEN_WITHIN });
    assert.match((await row.textContent())!, /Pending/);
    await server.connections(l).deactivateConnection({ connectionId: connection!.id, reason: "Not yet" });
    await row.locator(".state", { hasText: /^Inactive$/ }).waitFor({ timeout: SEEN_WITHIN });
    assert.equal(await page.evaluate(() => (window as unknown as { marker?: string }).marker), "not reloaded");

    // Nothing on a timer: over twice the old polling interval (while heartbeats arrive on the
    // stream every second), the page sends no request at all.
    await sleep(1_000);
    const listed = calls(requests, "ListConnections");
    const sent = requests.length;
    await sleep(2 * OLD_POLL_MS + 1_000);
    assert.equal(calls(requests, "ListConnections"), listed, "ListConnections was not repeated");
    assert.deepEqual(requests.slice(sent), [], "no request while nothing changed");

    // One stream for the page, whichever views it shows.
    await page.getByRole("link", { name: `From ${l.name}` }).click();
    await seeState(page, "Inactive");
    await page.getByRole("link", { name: "Back to the list" }).click();
    await page.getByRole("tab", { name: "Inbound" }).click();
    await row.waitFor();
    assert.equal(calls(requests, "WatchConnectionEvents"), 1, "one stream for the page");
  });

  it("appends another party's event to the open detail page as it happens", { timeout: TIMEOUT }, async () => {
    const n = server.newOrg("November Notes");
    const o = server.newOrg("Oscar Orders");
    const { connection } = await server
      .connections(n)
      .createConnection({ destinationOrganizationId: o.id, dataTypes: [DataType.ACCOUNT] });
    const id = connection!.id;
    const { page, requests } = await newRecordedPage(server);
    await signIn(page, o);
    await page.goto(`/#/connections/${id}`);
    await seeState(page, "Pending");
    await page.locator("ol.history li").first().waitFor();
    assert.equal((await history(page)).length, 1);
    await seeLive(page);

    await server.connections(n).deactivateConnection({ connectionId: id, reason: "Audit pending" });
    await seeState(page, "Inactive");
    await page.getByText("Reason: Audit pending").waitFor({ timeout: SEEN_WITHIN });
    assert.equal((await history(page)).length, 2);

    // The next event joins the history from the stream: the history is not read again.
    await sleep(1_000);
    const read = calls(requests, "ListConnectionEvents");
    await server.connections(n).reactivateConnection({ connectionId: id });
    await seeState(page, "Pending");
    await page.locator("ol.history li").nth(2).waitFor({ timeout: SEEN_WITHIN });
    const entries = await history(page);
    assert.equal(entries.length, 3);
    assert.match(entries[0]!, /reactivated it \(now Pending\)/);
    assert.equal(calls(requests, "ListConnectionEvents"), read, "the event was appended, not read again");
    // O's own action shows once, though it arrives both in the answer and on the stream.
    await page.getByRole("button", { name: "Activate", exact: true }).click();
    await seeState(page, "Active");
    await page.locator("ol.history li").nth(3).waitFor({ timeout: SEEN_WITHIN });
    await sleep(1_000);
    assert.equal((await history(page)).length, 4);

    // Nothing on a timer here either.
    const sent = requests.length;
    await sleep(2 * OLD_POLL_MS + 1_000);
    assert.deepEqual(requests.slice(sent), [], "no request while nothing changed");
  });

  it("recovers after the server restarts, with the changes made while it was away", { timeout: TIMEOUT }, async () => {
    // A server of its own, to restart without disturbing the other tests' pages.
    const own = await Server.start({ CONNECTIONS_WATCH_HEARTBEAT_INTERVAL: HEARTBEAT });
    try {
      const p = own.newOrg("Papa Payments");
      const q = own.newOrg("Quebec Quotes");
      const { connection } = await own
        .connections(q)
        .createConnection({ destinationOrganizationId: p.id, dataTypes: [DataType.TRANSACTION] });
      const id = connection!.id;
      const { page, requests } = await newRecordedPage(own);
      await signIn(page, p);
      await page.goto(`/#/connections/${id}`);
      await seeState(page, "Pending");
      await seeLive(page);
      await own.connections(q).deactivateConnection({ connectionId: id, reason: "Before the restart" });
      await seeState(page, "Inactive");
      await page.getByText("Reason: Before the restart").waitFor({ timeout: SEEN_WITHIN });

      // The server stops (its stream ends) and the page cannot open another until allowed.
      await page.route(`**${WATCH}`, (route) => route.abort("connectionrefused"));
      await own.restart();
      const down = page.getByRole("status").filter({ hasText: "Reconnecting…" });
      await down.waitFor({ timeout: SEEN_WITHIN });
      assert.match((await down.textContent())!, /Changes made since .+ may not be shown yet/);
      const read = calls(requests, "ListConnectionEvents");
      await own.connections(q).reactivateConnection({ connectionId: id });
      await sleep(2_000);
      assert.equal(
        await page.locator(".state-row .state").textContent(),
        "Inactive",
        "nothing else brings the change while the stream is down",
      );

      // Allowed again: the page resumes after its last change token and the missed event arrives.
      await page.unroute(`**${WATCH}`);
      await seeState(page, "Pending").catch(async () => {
        // The backoff may be up to 30 s by now.
        await seeState(page, "Pending", 40_000);
      });
      await seeLive(page);
      assert.equal(await down.count(), 0, "no longer reconnecting");
      const entries = await history(page);
      assert.equal(entries.length, 3, "each event once");
      assert.match(entries[0]!, /reactivated it/);
      assert.equal(calls(requests, "ListConnectionEvents"), read, "resumed from its token, not from a new snapshot");

      // A plain restart: the page reconnects on its own; a change made after it shows.
      await own.restart();
      await own.connections(q).deactivateConnection({ connectionId: id, reason: "After the restart" });
      await page.getByText("Reason: After the restart").waitFor({ timeout: 40_000 });
      await seeState(page, "Inactive");
      await seeLive(page);
      assert.equal((await history(page)).length, 4, "each event once");
    } finally {
      await own.stop();
    }
  });

  it("shares the organization's stream limit, and gives its stream back on sign-out", { timeout: TIMEOUT }, async () => {
    const r = server.newOrg("Romeo Rates");
    const s = server.newOrg("Sierra Savings");
    // The organization's 16 streams are taken.
    const held = Array.from({ length: 16 }, () => holdStream(server, r));
    try {
      await Promise.all(held.map((h) => h.ready));
      const page = await newPage();
      await signIn(page, r);
      await page
        .getByRole("status")
        .filter({ hasText: "Too many pages are following changes for your organization. Close some." })
        .waitFor({ timeout: SEEN_WITHIN });

      // One closes: the page takes its place and follows changes.
      held.pop()!.close();
      await seeLive(page, 40_000);
      await page.getByRole("tab", { name: "Inbound" }).click();
      await page.getByText("No connections here yet.").waitFor();
      await server.connections(s).createConnection({ destinationOrganizationId: r.id, dataTypes: [DataType.INQUIRY] });
      await page.getByRole("link", { name: `From ${s.name}` }).waitFor({ timeout: SEEN_WITHIN });

      // Signing out closes the page's stream at once (well before a view-less page would let it
      // go): its place is free again, and only its place.
      await page.getByRole("button", { name: "Sign out" }).click();
      let freed: ReturnType<typeof holdStream> | null = null;
      for (let i = 0; i < 15 && !freed; i++) {
        const attempt = holdStream(server, r);
        try {
          await attempt.ready;
          freed = attempt;
        } catch (err) {
          assert.equal(ConnectError.from(err).code, Code.ResourceExhausted);
          await sleep(200);
        }
      }
      assert.ok(freed, "the page's stream was given back");
      held.push(freed);
      const extra = holdStream(server, r);
      held.push(extra);
      await assert.rejects(extra.ready, (err) => ConnectError.from(err).code === Code.ResourceExhausted);
    } finally {
      for (const h of held) h.close();
    }
  });
  it("has an Organization › Information page with the name, the ID with Copy, and the creation time", { timeout: TIMEOUT }, async () => {
    const v = server.newOrg("Victor Ventures");
    const page = await newPage();
    await signIn(page, v);
    const nav = page.getByRole("navigation", { name: "Main" });
    assert.match((await nav.textContent())!.replace(/\s+/g, " "), /Connect › Connections.*Organization › Information/);

    // On every other page, the organization is one line: name, ID and Copy side by side.
    const line = page.locator(".org-line");
    const lineBox = (await line.boundingBox())!;
    assert.ok(lineBox.height < 60, `the organization line is one line high (${lineBox.height} px)`);
    const tops = await Promise.all(
      [line.getByText(v.name), page.getByRole("textbox", { name: "Organization ID", exact: true }), page.getByRole("button", { name: "Copy" })].map(
        async (l) => {
          const box = (await l.boundingBox())!;
          return box.y + box.height / 2;
        },
      ),
    );
    assert.ok(Math.max(...tops) - Math.min(...tops) < 8, `name, ID and Copy on one line: ${tops.join(", ")}`);

    await nav.getByRole("link", { name: "Information", exact: true }).click();
    await page.getByRole("heading", { name: "Information", exact: true }).waitFor();
    assert.equal(await nav.getByRole("link", { name: "Information", exact: true }).getAttribute("aria-current"), "page");
    await page.waitForFunction(() => document.title === "Organization › Information");
    const fields = page.locator("dl.fields");
    assert.equal(await fields.locator(".org-name").textContent(), v.name);
    // The ID once, with Copy (the one-line reminder is not repeated here).
    const id = page.getByRole("textbox", { name: "Organization ID", exact: true });
    assert.equal(await id.count(), 1);
    assert.equal(await id.inputValue(), v.id);
    await page.getByRole("button", { name: "Copy" }).click();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), v.id);
    await page.getByRole("status").filter({ hasText: "Copied." }).waitFor();
    // Created: an exact time, just now (the organization was made by this test).
    const created = fields.locator("dd time").first();
    const at = Date.parse((await created.getAttribute("datetime"))!);
    assert.ok(Math.abs(Date.now() - at) < 5 * 60_000, "the creation time is the organization's");
    assert.match((await created.textContent())!, WITH_SECONDS);
    assert.match((await fields.textContent())!, /Created.*\(just now\)/);
    await assertAccessible(page, "the Information page");
    // The page the new-connection form points to exists: its link leads here.
    await nav.getByRole("link", { name: "Connections", exact: true }).click();
    await page.getByRole("heading", { name: "Connections", exact: true }).waitFor();
  });

  it("lists connections in a table a person can read down, with actions where they are needed", { timeout: TIMEOUT }, async () => {
    const w = server.newOrg("Whiskey Wealth");
    const x = server.newOrg("Xray Exchange");
    const y = server.newOrg("Yankee Yields");
    const zId = server.newOrgId("Zulu Zinc");
    // Outbound, Pending: waits for Zulu Zinc.
    await server.connections(w).createConnection({ destinationOrganizationId: zId, dataTypes: [DataType.INQUIRY] });
    // Outbound, Active.
    const { connection: active } = await server
      .connections(w)
      .createConnection({ destinationOrganizationId: y.id, dataTypes: [DataType.INQUIRY, DataType.ACCOUNT] });
    await server.connections(y).activateConnection({ connectionId: active!.id });
    // Inbound, Pending: waits for Whiskey Wealth.
    const { connection: inbound } = await server
      .connections(x)
      .createConnection({ destinationOrganizationId: w.id, dataTypes: [DataType.TRANSACTION] });

    const page = await newPage();
    await signIn(page, w);
    await page.getByRole("tab", { name: "All" }).click();
    await rowOf(page, "To Zulu Zinc").waitFor();
    const table = page.getByRole("table");
    assert.deepEqual(
      (await table.getByRole("columnheader").allTextContents()).map((t) => t.trim()),
      ["Other organization", "Direction", "State", "Data types", "Last change"],
    );
    const zulu = rowOf(page, "To Zulu Zinc");
    await zulu.getByText("Waiting for Zulu Zinc").waitFor();
    assert.match((await zulu.textContent())!, /Outbound/);
    // The other organization's ID, shorter, with the whole of it on hover.
    const shortened = zulu.locator(".id");
    assert.equal(await shortened.getAttribute("title"), zId);
    assert.ok((await shortened.textContent())!.length < 12);
    // Last change: relative, the exact time to the second in the title.
    const changed = zulu.locator("td[data-label='Last change'] time");
    assert.match((await changed.textContent())!, /^(just now|\d+ minutes? ago)$/);
    assert.match((await changed.getAttribute("title"))!, WITH_SECONDS);
    // Badges as wide as their word.
    assert.ok((await badgeWidth(page, "Active")) < 120, "an Active badge is narrow at 1280 px");
    // Filters on one baseline.
    const bottoms = await Promise.all(
      [page.getByLabel("State", { exact: true }), page.getByLabel("Other organization's ID (optional)", { exact: true }), page.getByRole("button", { name: "Refresh" })].map(
        async (l) => {
          const box = (await l.boundingBox())!;
          return Math.round(box.y + box.height);
        },
      ),
    );
    assert.ok(Math.max(...bottoms) - Math.min(...bottoms) <= 2, `filters on one baseline: ${bottoms.join(", ")}`);
    // One page: no pager.
    assert.equal(await page.getByRole("navigation", { name: "Pages" }).count(), 0, "no pager for a single page");
    assert.equal(await page.getByRole("button", { name: "Next" }).count(), 0);

    // The inbound Pending one waits on this organization: it says so, and can be activated here.
    const xray = rowOf(page, "From Xray Exchange");
    await xray.getByText("Needs your action").waitFor();
    assert.equal(await zulu.getByText("Needs your action").count(), 0);
    await assertAccessible(page, "the list as a table");
    await xray.getByRole("button", { name: "Activate", exact: true }).click();
    await xray.locator(".state", { hasText: /^Active$/ }).waitFor({ timeout: SEEN_WITHIN });
    assert.equal(await xray.getByText("Needs your action").count(), 0);
    assert.ok(!page.url().includes("/connections/"), "Activate in the row stays on the list");
    const { connection: now } = await server.connections(w).getConnection({ connectionId: inbound!.id });
    assert.equal(now!.state, ConnectionState.ACTIVE);

    // A click anywhere on a row opens it; so does Enter on its link.
    await rowOf(page, "To Yankee Yields").locator("td[data-label='Data types']").click();
    await page.getByRole("heading", { name: "Connection to Yankee Yields" }).waitFor();
    assert.ok(page.url().endsWith(`#/connections/${active!.id}`));
    await page.goBack();
    await rowOf(page, "To Zulu Zinc").getByRole("link").focus();
    await page.keyboard.press("Enter");
    await page.getByRole("heading", { name: "Connection to Zulu Zinc" }).waitFor();

    // At 375 px: stacked rows, narrow badges, no sideways scrolling.
    const narrow = await newPage({ width: 375, height: 740 });
    await signIn(narrow, w);
    await narrow.getByRole("tab", { name: "All" }).click();
    const first = rowOf(narrow, "To Zulu Zinc");
    await first.waitFor();
    assert.ok((await overflow(narrow)) <= 0, "the table fits 375 px");
    assert.ok((await badgeWidth(narrow, "Active")) < 120, "an Active badge is narrow at 375 px");
    const party = (await first.locator("td[data-label='Other organization']").boundingBox())!;
    const state = (await first.locator("td[data-label='State']").boundingBox())!;
    assert.ok(state.y >= party.y + party.height - 1, "a row's cells are stacked");
    await assertAccessible(narrow, "the table at 375 px");
    await narrow.screenshot({ path: join(SCREENSHOTS, "list-375.png") });
  });

  it("shows Previous and Next only when there is another page", { timeout: TIMEOUT }, async () => {
    const big = server.newOrg("Bravo Bulk");
    const many = Array.from({ length: 21 }, (_, n) => server.newOrgId(`Partner ${n + 1}`));
    for (const id of many) {
      await server.connections(big).createConnection({ destinationOrganizationId: id, dataTypes: [DataType.INQUIRY] });
    }
    const page = await newPage();
    await signIn(page, big);
    await rowOf(page, "To Partner 21").waitFor();
    assert.equal(await page.getByRole("button", { name: "Previous" }).count(), 0, "no Previous on the first page");
    await page.getByRole("button", { name: "Next" }).click();
    await rowOf(page, "To Partner 1").waitFor();
    assert.equal(await page.locator("tr.connection").count(), 1);
    assert.equal(await page.getByRole("button", { name: "Next" }).count(), 0, "no Next on the last page");
    await page.getByRole("button", { name: "Previous" }).click();
    await rowOf(page, "To Partner 21").waitFor();
  });

  it("says what to do next when there are no connections", { timeout: TIMEOUT }, async () => {
    const e = server.newOrg("Empty Estates");
    const page = await newPage();
    await signIn(page, e);
    const empty = page.locator(".empty");
    await empty.getByText("No connections here yet.").waitFor();
    // Outbound: create one.
    await empty.filter({ hasText: /To share data, choose New connection and paste the Organization ID/ }).waitFor();
    await page.getByRole("tab", { name: "Inbound" }).click();
    await empty.getByText("No connections here yet.").waitFor();
    await empty.filter({ hasText: /copy your Organization ID \(above\) and give it to your partner/ }).waitFor();
    assert.doesNotMatch((await empty.textContent())!, /To share data/);
    await page.getByRole("tab", { name: "All" }).click();
    await empty.filter({ hasText: /To share data/ }).filter({ hasText: /copy your Organization ID/ }).waitFor();
    const all = (await empty.textContent())!;
    assert.match(all, /copy your Organization ID/);
    assert.match(all, /New connection/);
    assert.equal(await page.getByRole("navigation", { name: "Pages" }).count(), 0);
    await assertAccessible(page, "the empty list");
  });

  it("sums a connection up, says what happens next, and shows only fields that have a value", { timeout: TIMEOUT }, async () => {
    const src = server.newOrg("Sunrise Savings");
    const dst = server.newOrg("Orbit Credit Union");
    const { connection } = await server
      .connections(src)
      .createConnection({ destinationOrganizationId: dst.id, dataTypes: [DataType.INQUIRY, DataType.ACCOUNT] });
    const id = connection!.id;
    const page = await newPage();
    await signIn(page, src);
    await page.goto(`/#/connections/${id}`);
    await seeState(page, "Pending");
    await page.getByRole("heading", { name: "Connection to Orbit Credit Union" }).waitFor();
    const summary = page.locator(".summary");
    await summary.filter({ hasText: /^Pending since just now; to share Inquiries and Accounts with Orbit Credit Union$/ }).waitFor();
    assert.equal(await page.locator(".next-step").textContent(), "Waiting for Orbit Credit Union to activate. Expires in 30 days.");
    // Empty fields and the etag are not shown.
    const terms = await page.locator("dl.fields dt").allTextContents();
    assert.deepEqual(terms, ["Source", "Destination", "Data shared", "Created", "Last changed", "Connection ID"]);
    assert.equal(await page.getByText("Version").count(), 0, "no Version");
    assert.doesNotMatch((await page.locator("main").textContent())!, new RegExp(connection!.etag));
    // The actions beside the state, above the summary; Refresh below, with the history.
    const deactivate = (await page.getByRole("button", { name: "Deactivate" }).boundingBox())!;
    const badge = (await page.locator(".state-row .state").boundingBox())!;
    assert.ok(Math.abs(deactivate.y + deactivate.height / 2 - (badge.y + badge.height / 2)) < 12, "Deactivate beside the state");
    assert.ok(deactivate.y < (await summary.boundingBox())!.y, "the actions come before the summary");
    const refresh = (await page.getByRole("button", { name: "Refresh" }).boundingBox())!;
    assert.ok(refresh.y > (await page.locator("dl.fields").boundingBox())!.y, "Refresh is not in the header");

    // The destination activates: the open page sums it up again.
    await server.connections(dst).activateConnection({ connectionId: id });
    await seeState(page, "Active");
    await summary.filter({ hasText: /^Active since (just now|\d+ minutes? ago); sharing Inquiries and Accounts with Orbit Credit Union$/ }).waitFor({ timeout: SEEN_WITHIN });
    const since = summary.locator("time");
    assert.match((await since.getAttribute("title"))!, WITH_SECONDS);

    // The reason shows only while the connection is Inactive.
    await server.connections(dst).deactivateConnection({ connectionId: id, reason: "Annual review" });
    await seeState(page, "Inactive");
    await page.locator("dl.fields dt", { hasText: "Deactivation reason" }).waitFor({ timeout: SEEN_WITHIN });
    assert.equal(await page.locator("dl.fields .reason-field").textContent(), "Annual review");
    assert.match((await summary.textContent())!, /deactivated by Orbit Credit Union; nothing is shared/);
    assert.equal(await page.locator(".next-step").textContent(), "Reactivate it to ask Orbit Credit Union to activate it again.");
    await page.getByRole("button", { name: "Reactivate" }).click();
    await page.getByRole("button", { name: "Confirm" }).click();
    await seeState(page, "Pending");
    await page.locator("ol.history li").nth(3).waitFor({ timeout: SEEN_WITHIN });
    assert.equal(await page.locator("dl.fields dt", { hasText: "Deactivation reason" }).count(), 0);
    assert.ok((await page.locator("dl.fields dt").allTextContents()).includes("Last deactivated"));

    // History: newest first, times to the second, the reason set apart.
    const entries = await history(page);
    assert.match(entries[0]!, /reactivated it/);
    assert.match(entries[1]!, /deactivated it/);
    assert.match(entries[3]!, /created the connection/);
    for (const time of await page.locator("ol.history li time").allTextContents()) assert.match(time, WITH_SECONDS);
    const reason = page.locator("ol.history li .reason");
    assert.equal(await reason.textContent(), "Reason: Annual review");
    assert.equal(await reason.evaluate((el) => getComputedStyle(el).display), "block", "the reason on a line of its own");
    await assertAccessible(page, "the detail page with its summary");

    // The destination's view of a Pending one: its action is needed.
    const other = await newPage();
    await signIn(other, dst);
    await other.goto(`/#/connections/${id}`);
    await seeState(other, "Pending");
    await other.locator(".next-step").filter({ hasText: /^Needs your action: Activate it to start receiving Inquiries and Accounts/ }).waitFor();
    await other.locator(".summary").filter({ hasText: /Sunrise Savings asks to share Inquiries and Accounts with you$/ }).waitFor();
  });

  it("asks before deactivating, and keeps a reason being typed when the other party acts", { timeout: TIMEOUT }, async () => {
    const src = server.newOrg("Quartz Capital");
    const dst = server.newOrg("Orbit Credit Union");
    const { connection } = await server
      .connections(src)
      .createConnection({ destinationOrganizationId: dst.id, dataTypes: [DataType.ACCOUNT] });
    const id = connection!.id;
    const page = await newPage();
    await signIn(page, src);
    await page.goto(`/#/connections/${id}`);
    await seeState(page, "Pending");
    await seeLive(page);
    await page.getByRole("button", { name: "Deactivate" }).click();
    const form = page.locator("form.confirm");
    await form
      .getByText("Deactivate the connection to Orbit Credit Union? Sharing stops at once.", { exact: true })
      .waitFor();
    assert.equal(await form.getByRole("button", { name: "Confirm" }).count(), 1);
    assert.equal(await form.getByRole("button", { name: "Cancel" }).count(), 1);
    await page.getByRole("textbox", { name: "Reason" }).fill("Moving to a new provider");
    await assertAccessible(page, "the deactivation form");

    // The other party activates meanwhile: the form and what was typed stay, with a notice.
    await server.connections(dst).activateConnection({ connectionId: id });
    await seeState(page, "Active");
    await form
      .getByRole("status")
      .filter({ hasText: "This connection changed while this was open: it is now Active." })
      .waitFor({ timeout: SEEN_WITHIN });
    assert.equal(await page.getByRole("textbox", { name: "Reason" }).inputValue(), "Moving to a new provider");
    await page.getByRole("button", { name: "Confirm" }).click();
    await seeState(page, "Inactive");
    const { connection: now } = await server.connections(src).getConnection({ connectionId: id });
    assert.equal(now!.deactivationReason, "Moving to a new provider");

    // Cancel closes it; a deactivation by the other party while it is open leaves nothing to confirm.
    await page.getByRole("button", { name: "Reactivate" }).click();
    await page.getByRole("button", { name: "Confirm" }).click();
    await seeState(page, "Pending");
    await page.getByRole("button", { name: "Deactivate" }).click();
    await page.getByRole("textbox", { name: "Reason" }).fill("Second thoughts");
    await server.connections(dst).deactivateConnection({ connectionId: id, reason: "Declined" });
    await seeState(page, "Inactive");
    await form.getByRole("status").filter({ hasText: "it is now Inactive" }).waitFor({ timeout: SEEN_WITHIN });
    assert.equal(await page.getByRole("textbox", { name: "Reason" }).inputValue(), "Second thoughts");
    assert.ok(await page.getByRole("button", { name: "Confirm" }).isDisabled());
    await page.getByRole("button", { name: "Cancel" }).click();
    assert.equal(await form.count(), 0);
  });

  it("sends a message with a new connection: the destination reads it as written, and when the invitation expires", { timeout: TIMEOUT }, async () => {
    const src = server.newOrg("Maple Mortgage");
    const dst = server.newOrg("Nimbus Notary");
    const message =
      "Hello Nimbus,\nthis is our <b>loan desk</b>: https://maple.example/partners/onboarding/" +
      "a-long-path-that-does-not-fit-a-narrow-screen\n\tThank you!";
    const page = await newPage();
    await signIn(page, src);
    await fillNewConnection(page, dst, ["Inquiries"]);
    const box = page.getByRole("textbox", { name: "Message to the destination (optional)" });
    assert.equal(await box.evaluate((el) => el.tagName), "TEXTAREA", "a field of several lines");
    assert.equal(await box.getAttribute("maxlength"), "1000");
    await box.fill(`  ${message}\n\n`);
    await assertAccessible(page, "the new-connection form with a message");
    await page.getByRole("button", { name: "Create connection" }).click();
    await seeState(page, "Pending");
    const id = page.url().split("/").pop()!;
    const { connection } = await server.connections(dst).getConnection({ connectionId: id });
    assert.equal(connection!.invitationMessage, message, "sent as typed, trimmed by the server");
    const expireMs = timestampMs(connection!.expireTime!);
    assert.ok(Math.abs(expireMs - (Date.now() + 30 * DAY_MS)) < 5 * 60_000, "the server's default of 30 days");
    // The source sees its own message.
    await page.locator("figure.invitation figcaption").filter({ hasText: /^Your message to Nimbus Notary$/ }).waitFor();
    assert.equal(await page.locator("figure.invitation blockquote").textContent(), message);

    // The destination: in the list, what it must do and by when.
    const other = await newPage();
    await signIn(other, dst);
    await other.getByRole("tab", { name: "Inbound" }).click();
    const row = rowOf(other, `From ${src.name}`);
    await row.getByText("Needs your action").waitFor();
    assert.equal(await row.locator("time.expiry").textContent(), "Expires in 30 days");
    await row.getByRole("link").click();
    await seeState(other, "Pending");

    // The message as text: its tags shown, not applied; its line breaks and tab kept.
    const invitation = other.locator("figure.invitation");
    await invitation.locator("figcaption").filter({ hasText: "Maple Mortgage" }).waitFor();
    assert.equal(await invitation.locator("figcaption").textContent(), "Message from Maple Mortgage");
    const text = invitation.locator("blockquote");
    assert.equal(await text.textContent(), message);
    assert.equal(await invitation.locator("b").count(), 0, "not read as HTML");
    assert.equal(await text.evaluate((el) => (el as HTMLElement).innerText), message, "line breaks kept");

    // When it expires, in words, with the exact time on hover.
    const expiry = other.locator(".next-step time.expiry");
    assert.equal(await expiry.textContent(), "Expires in 30 days");
    assert.ok(Math.abs(Date.parse((await expiry.getAttribute("datetime"))!) - expireMs) < 1_000);
    assert.match((await expiry.getAttribute("title"))!, WITH_SECONDS);
    assert.match(
      (await other.locator(".next-step").textContent())!,
      /^Needs your action: Activate it to start receiving Inquiries, or deactivate it to decline\. Expires in 30 days\.$/,
    );

    // The history keeps the message with the creation.
    await other.locator("ol.history li").first().waitFor();
    const entries = await history(other);
    assert.match(entries[0]!, /Maple Mortgage \(the source, by key 'dashboard tests'\) created the connection \(now Pending\)\./);
    const kept = other.locator("ol.history li .message");
    assert.equal(await kept.evaluate((el) => (el as HTMLElement).innerText), `Message: ${message}`);
    assert.equal(await kept.evaluate((el) => getComputedStyle(el).display), "block", "the message on lines of its own");
    await assertAccessible(other, "an invitation with its message");
    await other.screenshot({ path: join(SCREENSHOTS, "invitation.jpg"), type: "jpeg", quality: 80, fullPage: true });

    // At 375 px, the long message wraps.
    const narrow = await newPage({ width: 375, height: 740 });
    await signIn(narrow, dst);
    await narrow.goto(`/#/connections/${id}`);
    await seeState(narrow, "Pending");
    await narrow.locator("figure.invitation").waitFor();
    await narrow.locator("ol.history li .message").waitFor();
    assert.ok((await overflow(narrow)) <= 0, "the invitation fits the width");
    await assertAccessible(narrow, "an invitation at 375 px");
    await narrow.getByRole("link", { name: "Back to the list" }).click();
    await narrow.getByRole("tab", { name: "Inbound" }).click();
    await rowOf(narrow, `From ${src.name}`).locator("time.expiry").waitFor();
    assert.ok((await overflow(narrow)) <= 0, "the list with an expiry fits the width");
    await assertAccessible(narrow, "the list with an expiry at 375 px");
  });

  it("shows the server's refusal of a message with a control character next to it, and creates nothing", { timeout: TIMEOUT }, async () => {
    const src = server.newOrg("Onyx Operations");
    const dst = server.newOrg("Pine Payments");
    const page = await newPage();
    await signIn(page, src);
    await fillNewConnection(page, dst, ["Accounts"]);
    const box = page.getByRole("textbox", { name: "Message to the destination (optional)" });
    await box.fill("Ring the bell\u0007 when ready");
    assert.equal(await box.inputValue(), "Ring the bell\u0007 when ready", "the browser keeps the character");
    await page.getByRole("button", { name: "Create connection" }).click();
    const note = page.getByRole("alert").filter({ hasText: /^The message must not contain control characters\.$/ });
    await note.waitFor();
    assert.equal(await page.getByRole("alert").count(), 1, "told once, next to the field");
    assert.equal(await box.getAttribute("aria-invalid"), "true");
    assert.ok((await box.getAttribute("aria-describedby"))!.split(" ").includes((await note.getAttribute("id"))!));
    assert.ok(page.url().endsWith("#/new"), "the form stays, with what was typed");
    assert.equal(await box.inputValue(), "Ring the bell\u0007 when ready");
    assert.equal((await server.connections(src).listConnections({})).connections.length, 0, "nothing was created");
    await assertAccessible(page, "a refused message");

    // Line breaks and tabs are allowed; once the message is corrected, the connection is created.
    await box.fill("Ring the bell\twhen ready,\nplease.");
    assert.equal(await page.getByRole("alert").count(), 0, "typing clears the refusal");
    assert.equal(await box.getAttribute("aria-invalid"), "false");
    await page.getByRole("button", { name: "Create connection" }).click();
    await seeState(page, "Pending");
    const { connections } = await server.connections(src).listConnections({});
    assert.equal(connections.length, 1);
    assert.equal(connections[0]!.invitationMessage, "Ring the bell\twhen ready,\nplease.");
  });

  it("reactivates with a new message, which replaces the last one for both organizations", { timeout: TIMEOUT }, async () => {
    const src = server.newOrg("Quartz Quarry");
    const dst = server.newOrg("Topaz Trust");
    const { connection } = await server.connections(src).createConnection({
      destinationOrganizationId: dst.id,
      dataTypes: [DataType.ACCOUNT],
      message: "First invitation",
    });
    const id = connection!.id;
    await server.connections(dst).deactivateConnection({ connectionId: id, reason: "Not now" });
    // On a narrow screen, where the form must fit too.
    const page = await newPage({ width: 375, height: 740 });
    await signIn(page, src);
    await page.goto(`/#/connections/${id}`);
    await seeState(page, "Inactive");
    await seeLive(page);
    const quote = page.locator("figure.invitation blockquote");
    assert.equal(await quote.textContent(), "First invitation", "the last invitation's message");

    // Reactivate asks first, with room for a message; Cancel changes nothing.
    await page.getByRole("button", { name: "Reactivate" }).click();
    const form = page.locator("form.confirm");
    await form
      .getByText("Reactivate the connection to Topaz Trust? Topaz Trust is asked to activate it again.", { exact: true })
      .waitFor();
    await form.getByRole("button", { name: "Cancel" }).click();
    assert.equal(await form.count(), 0);
    await sleep(500);
    await seeState(page, "Inactive");
    assert.equal((await server.connections(src).getConnection({ connectionId: id })).connection!.state, ConnectionState.INACTIVE);

    await page.getByRole("button", { name: "Reactivate" }).click();
    const box = form.getByRole("textbox", { name: "Message to the destination (optional)" });
    assert.equal(await box.inputValue(), "", "a new invitation starts without a message");
    assert.equal(await box.getAttribute("maxlength"), "1000");
    await box.fill("Second invitation:\nthe new contract is signed.");
    assert.ok((await overflow(page)) <= 0, "the reactivation form fits the width");
    await assertAccessible(page, "the reactivation form at 375 px");
    await form.getByRole("button", { name: "Confirm" }).click();
    await seeState(page, "Pending");
    assert.equal(await form.count(), 0, "the form closes");
    await quote.filter({ hasText: /^Second invitation:/ }).waitFor();
    assert.equal(await quote.evaluate((el) => (el as HTMLElement).innerText), "Second invitation:\nthe new contract is signed.");
    assert.equal(await page.locator(".next-step").textContent(), "Waiting for Topaz Trust to activate. Expires in 30 days.");
    await page.locator("ol.history li").nth(2).waitFor({ timeout: SEEN_WITHIN });
    const entries = await history(page);
    assert.match(entries[0]!, /reactivated it \(now Pending\)\.Message: Second invitation:/);
    assert.match(entries[2]!, /created the connection \(now Pending\)\.Message: First invitation$/);

    // The destination reads the new message.
    const other = await newPage();
    await signIn(other, dst);
    await other.goto(`/#/connections/${id}`);
    await seeState(other, "Pending");
    const theirs = other.locator("figure.invitation");
    await theirs.locator("blockquote").filter({ hasText: /^Second invitation:/ }).waitFor();
    // The source's name arrives after the page (it is looked up): wait for it, then read.
    await theirs.locator("figcaption").filter({ hasText: "Quartz Quarry" }).waitFor();
    assert.equal(await theirs.locator("figcaption").textContent(), "Message from Quartz Quarry");
    assert.match((await other.locator(".next-step time.expiry").textContent())!, /^Expires in 30 days$/);
    const { events } = await server.connections(dst).listConnectionEvents({ connectionId: id });
    assert.deepEqual(
      events.map((e) => e.message),
      ["First invitation", "", "Second invitation:\nthe new contract is signed."],
    );

    // A reactivation without a message leaves none: the old one is not shown again.
    await server.connections(dst).deactivateConnection({ connectionId: id });
    await seeState(page, "Inactive");
    await page.getByRole("button", { name: "Reactivate" }).click();
    await form.getByRole("button", { name: "Confirm" }).click();
    await seeState(page, "Pending");
    await page.locator("ol.history li").nth(4).waitFor({ timeout: SEEN_WITHIN });
    assert.equal(await page.locator("figure.invitation").count(), 0);
    await seeState(other, "Pending");
    await other.locator("ol.history li").nth(4).waitFor({ timeout: SEEN_WITHIN });
    assert.equal(await other.locator("figure.invitation").count(), 0);
  });

  it("expires an invitation not activated in time: the history says the service did, and a late activation is refused with a sentence", { timeout: TIMEOUT }, async () => {
    // A server of its own whose invitations last 2 s.
    const own = await Server.start({ CONNECTIONS_WATCH_HEARTBEAT_INTERVAL: HEARTBEAT, CONNECTIONS_PENDING_EXPIRY: "2s" });
    try {
      const src = own.newOrg("Quill Quotes");
      const dst = own.newOrg("Raven Realty");
      const elsewhere = own.newOrgId("Sigma Storage");
      const page = (await newRecordedPage(own)).page;
      await signIn(page, dst);
      await seeLive(page);
      // The service looks for expired invitations every 10 s. A first invitation, to another
      // organization, shows when it has just looked: the one sent right after expires 2 s later,
      // several seconds before it looks again, which leaves the time for a late activation.
      const { connection: first } = await own
        .connections(src)
        .createConnection({ destinationOrganizationId: elsewhere, dataTypes: [DataType.ACCOUNT] });
      for (const end = Date.now() + 15_000; ; await sleep(100)) {
        const { connection: now } = await own.connections(src).getConnection({ connectionId: first!.id });
        if (now!.state === ConnectionState.INACTIVE) break;
        assert.ok(Date.now() < end, "the first invitation expires within 15 s");
      }
      const { connection } = await own.connections(src).createConnection({
        destinationOrganizationId: dst.id,
        dataTypes: [DataType.INQUIRY],
        message: "Please activate by Friday",
      });
      const id = connection!.id;
      await page.goto(`/#/connections/${id}`);
      await seeState(page, "Pending");
      await seeLive(page);
      // Past its expire time, the page says so at once, not at its next half-minute tick.
      const expiry = page.locator(".next-step time.expiry");
      await expiry.filter({ hasText: /^Expired$/ }).waitFor({ timeout: 5_000 });
      assert.match((await expiry.getAttribute("title"))!, WITH_SECONDS);

      // The service has not expired it yet: the destination tries to activate it, and is told why not.
      await page.getByRole("button", { name: "Activate", exact: true }).click();
      await page
        .getByRole("alert")
        .filter({ hasText: "This invitation expired before it was activated. The source can send it again." })
        .waitFor();
      assert.equal((await own.connections(dst).getConnection({ connectionId: id })).connection!.state, ConnectionState.PENDING);
      await assertAccessible(page, "a refused late activation");

      // The service expires it; the open page shows it as the service's act, not an organization's.
      await seeState(page, "Inactive", 15_000);
      await page.locator("ol.history li").nth(1).waitFor({ timeout: SEEN_WITHIN });
      const entries = await history(page);
      assert.match(entries[0]!, /: Expired: the destination did not activate it in time \(now Inactive\)\.$/);
      assert.doesNotMatch(entries[0]!, /the source|Quill Quotes|Raven Realty|by key|expired it/);
      assert.match((await page.locator(".summary").textContent())!, /; expired before you activated it; nothing is shared$/);
      assert.equal(await page.locator(".next-step").textContent(), "Only Quill Quotes can reactivate it; you would then activate it again.");
      await assertAccessible(page, "an expired invitation");

      // The source is told the same, and can invite again.
      const source = (await newRecordedPage(own)).page;
      await signIn(source, src);
      await rowOf(source, "To Raven Realty").locator(".state", { hasText: /^Inactive$/ }).waitFor();
      await source.goto(`/#/connections/${id}`);
      await seeState(source, "Inactive");
      await source.locator("ol.history li").nth(1).waitFor();
      assert.match((await history(source))[0]!, /: Expired: the destination did not activate it in time \(now Inactive\)\.$/);
      assert.match((await source.locator(".summary").textContent())!, /; expired before Raven Realty activated it; nothing is shared$/);
      await source.getByRole("button", { name: "Reactivate" }).waitFor();
      const { events } = await own.connections(src).listConnectionEvents({ connectionId: id });
      assert.deepEqual(
        events.map((e) => [e.type, e.actorOrganizationId, e.actorRole]),
        [
          [ConnectionEventType.CREATED, src.id, ConnectionRole.SOURCE],
          [ConnectionEventType.EXPIRED, "", ConnectionRole.UNSPECIFIED],
        ],
      );
    } finally {
      await own.stop();
    }
  });

  it("words an invitation's expiry in days, then hours, then minutes, then Expired", { timeout: TIMEOUT }, async () => {
    const { expiresIn } = await import("../src/format.js");
    const now = Date.parse("2026-03-02T09:00:00Z");
    const at = (ms: number) => timestampFromMs(now + ms);
    const words = (ms: number) => expiresIn(at(ms), now);
    assert.equal(words(30 * DAY_MS - 1_000), "Expires in 30 days");
    assert.equal(words(29 * DAY_MS + 9 * HOUR_MS), "Expires in 29 days");
    assert.equal(words(2 * DAY_MS), "Expires in 2 days");
    assert.equal(words(47 * HOUR_MS), "Expires in 47 hours");
    assert.equal(words(36 * HOUR_MS), "Expires in 36 hours");
    assert.equal(words(3 * HOUR_MS + 10 * 60_000), "Expires in 3 hours");
    assert.equal(words(HOUR_MS), "Expires in 1 hour");
    assert.equal(words(20 * 60_000), "Expires in 20 minutes");
    assert.equal(words(20_000), "Expires in less than a minute");
    assert.equal(words(0), "Expired");
    assert.equal(words(-5 * DAY_MS), "Expired");
  });

  it("offers Try again on a page that failed while the server was down, and loads it when it is back", { timeout: TIMEOUT }, async () => {
    const own = await Server.start({ CONNECTIONS_WATCH_HEARTBEAT_INTERVAL: HEARTBEAT });
    try {
      const r = own.newOrg("Restart Realty");
      const s2 = own.newOrg("Second Source");
      const { connection } = await own
        .connections(s2)
        .createConnection({ destinationOrganizationId: r.id, dataTypes: [DataType.INQUIRY] });
      const page = await newRecordedPage(own).then((p) => p.page);
      await signIn(page, r);
      await page.getByRole("tab", { name: "Inbound" }).click();
      await rowOf(page, "From Second Source").waitFor();
      await seeLive(page);
      await own.restart(async () => {
        // While the server is down, the connection is opened: it cannot load.
        await page.evaluate((id) => (window.location.hash = `/connections/${id}`), connection!.id);
        const problem = page.getByRole("alert").filter({ hasText: "The service cannot be reached right now." });
        await problem.waitFor({ timeout: SEEN_WITHIN });
        await problem.getByRole("button", { name: "Try again" }).waitFor();
        await assertAccessible(page, "a page that failed to load");
      });
      // Back: the page loads by itself once its live status returns, without Try again.
      await seeState(page, "Pending", 40_000);
      await seeLive(page);
      assert.equal(await page.getByRole("button", { name: "Try again" }).count(), 0);
      await page.locator("ol.history li").first().waitFor({ timeout: SEEN_WITHIN });
    } finally {
      await own.stop();
    }
  });

  it("adds a webhook endpoint, shows its secret once, and lists the signed deliveries its receiver got", { timeout: TIMEOUT }, async () => {
    const w = server.newOrg("Whiskey Wholesale");
    const x = server.newOrg("Xray Exchange");
    const receiver = await startReceiver();
    try {
      const page = await newPage({ width: 1280, height: 720 });
      await signIn(page, w);
      await openWebhooks(page);
      const nav = page.getByRole("navigation", { name: "Main" });
      assert.equal(await nav.getByRole("link", { name: "Webhooks" }).getAttribute("aria-current"), "page");
      assert.equal(await nav.getByRole("link", { name: "Connections" }).getAttribute("aria-current"), null);
      await page.getByText("No webhook endpoints yet.").waitFor();
      assert.equal(await page.getByRole("heading", { name: "Deliveries" }).count(), 0, "no deliveries without an endpoint");
      await assertAccessible(page, "the Webhooks page without endpoints");

      // The form opens with the focus on the URL; a URL the server refuses is told next to it.
      await page.getByRole("button", { name: "Add endpoint" }).click();
      const url = page.getByRole("textbox", { name: "Endpoint URL" });
      await page.waitForFunction(() => document.activeElement?.id === "endpoint-url");
      for (const type of ["Created", "Activated", "Deactivated", "Reactivated", "Expired"]) {
        assert.equal(await page.getByRole("checkbox", { name: type, exact: true }).isChecked(), false);
      }
      await url.fill("ftp://127.0.0.1/webhooks");
      await page.getByRole("button", { name: "Create endpoint" }).click();
      const refused = page.getByRole("alert").filter({ hasText: "Deliveries cannot be sent to this URL: it must use https." });
      await refused.waitFor();
      assert.equal(await url.getAttribute("aria-invalid"), "true");
      assert.equal(await refused.getAttribute("id"), await url.getAttribute("aria-describedby"), "the URL field is described by the refusal");
      await assertAccessible(page, "a refused webhook URL");
      await page.screenshot({ path: join(SCREENSHOTS, "new-endpoint.jpg"), type: "jpeg", quality: 80 });
      await url.fill(receiver.url);
      assert.equal(await page.getByRole("alert").count(), 0, "typing clears the refusal");
      await page.getByRole("textbox", { name: "Description (optional)" }).fill("Order sync");
      await assertAccessible(page, "the new-endpoint form");
      await page.getByRole("button", { name: "Create endpoint" }).click();

      // The secret, once, with a note that says so, and Copy secret.
      const secretBox = page.getByRole("textbox", { name: "Signing secret" });
      await secretBox.waitFor();
      const secret = await secretBox.inputValue();
      assert.match(secret, /^whsec_[A-Za-z0-9+/]{43}=$/);
      await page.getByText("Store this signing secret now: it will not be shown again.").waitFor();
      assert.equal(await page.evaluate(() => document.activeElement?.id.startsWith("secret-")), true, "the focus is on the secret");
      await page.getByRole("button", { name: "Copy secret" }).click();
      await page.getByRole("status").filter({ hasText: "Copied." }).waitFor();
      assert.equal(await page.evaluate(() => navigator.clipboard.readText()), secret);
      await page.screenshot({ path: join(SCREENSHOTS, "webhook-secret.jpg"), type: "jpeg", quality: 80 });

      const item = endpointItem(page, receiver.url);
      const text = (await item.textContent())!;
      assert.match(text, /Enabled/);
      assert.match(text, /EventsAll events/);
      assert.match(text, /DescriptionOrder sync/);
      const { endpoints } = await server.webhooks(w).listWebhookEndpoints({});
      assert.deepEqual(
        endpoints.map((e) => [e.url, e.description, e.eventTypes, e.disabled]),
        [[receiver.url, "Order sync", [], false]],
      );
      await page.getByRole("heading", { name: "Deliveries" }).waitFor();
      await page.getByText("No delivery attempts yet.").waitFor();

      // An event of W's connections reaches the receiver, signed with that secret, and is listed
      // under Deliveries without a reload.
      await seeLive(page);
      const { connection } = await server
        .connections(w)
        .createConnection({ destinationOrganizationId: x.id, dataTypes: [DataType.INQUIRY] });
      const delivery = await until("a delivery at the receiver", () => receiver.received[0]);
      const payload = verified(secret, delivery);
      assert.equal(payload.type, "connection.created");
      assert.equal(payload.data.connection.id, connection!.id);
      assert.equal(delivery.headers["webhook-id"], payload.data.event.id);
      assert.throws(() => verified(secret, { ...delivery, body: delivery.body.replace("created", "activated") }));
      const row = page.locator("tr.delivery").first();
      await row.waitFor({ timeout: SEEN_WITHIN });
      const cells = await row.locator("td").allTextContents();
      assert.match(cells[0]!, WITH_SECONDS);
      assert.equal(cells[1], `…${payload.data.event.id.slice(-8)}`);
      assert.equal(await row.locator("td[data-label=Event] .id").getAttribute("title"), payload.data.event.id);
      assert.deepEqual(cells.slice(2, 5), ["1", "Delivered", "HTTP 204"]);
      assert.match(cells[5]!, /^\d+(\.\d)? m?s$/);
      assert.equal(cells[6], "—");
      await assertAccessible(page, "the Webhooks page with a delivery");

      // Hidden, the secret is nowhere: not on the page, not after a reload.
      await page.getByRole("button", { name: "Hide secret" }).click();
      assert.equal(await secretBox.count(), 0);
      await page.reload();
      await endpointItem(page, receiver.url).waitFor();
      await page.locator("tr.delivery").first().waitFor();
      assert.doesNotMatch((await page.locator("main").textContent())!, /whsec_/);

      // A receiver that answers 410 Gone has the server disable its endpoint: the open page shows
      // the attempt and the endpoint's new state.
      await seeLive(page);
      receiver.status = 410;
      await server.connections(x).activateConnection({ connectionId: connection!.id });
      await page.locator("tr.delivery").first().filter({ hasText: "HTTP 410" }).waitFor({ timeout: SEEN_WITHIN });
      const disabled = endpointItem(page, receiver.url);
      await disabled.locator(".state", { hasText: /^Disabled$/ }).waitFor({ timeout: SEEN_WITHIN });
      await disabled
        .getByText(/^Disabled by the service \(.*410 Gone\)\. Its events are kept: enable it to resume/)
        .waitFor();
      await disabled.getByRole("button", { name: "Enable" }).waitFor();

      // Cancelling the form gives the focus back to Add endpoint.
      await page.getByRole("button", { name: "Add endpoint" }).click();
      await page.getByRole("button", { name: "Cancel" }).click();
      await page.waitForFunction(() => document.activeElement?.textContent === "Add endpoint");
    } finally {
      await receiver.close();
    }
  });

  it("rotates a webhook secret, disables and enables the endpoint, recovers after a change token, and deletes it after a confirmation", { timeout: TIMEOUT }, async () => {
    const y = server.newOrg("Yankee Yields");
    const z = server.newOrg("Zulu Zinc");
    const receiver = await startReceiver();
    try {
      const { secret: first } = await server.webhooks(y).createWebhookEndpoint({ url: receiver.url });
      const page = await newPage();
      await signIn(page, y);
      await openWebhooks(page);
      const item = endpointItem(page, receiver.url);
      await item.waitFor();
      await seeLive(page);

      // Rotate: the new secret, once, and until when the previous one signs too.
      await item.getByRole("button", { name: "Rotate secret" }).click();
      const secretBox = item.getByRole("textbox", { name: "Signing secret" });
      await secretBox.waitFor();
      const second = await secretBox.inputValue();
      assert.match(second, /^whsec_/);
      assert.notEqual(second, first);
      const note = item.locator(".secret .notice");
      assert.match((await note.textContent())!, /it will not be shown again\..*The previous secret also signs every delivery until .+: switch your receiver/);
      assert.match((await note.locator("time").textContent())!, WITH_SECONDS);
      await item.getByRole("button", { name: "Copy secret" }).click();
      assert.equal(await page.evaluate(() => navigator.clipboard.readText()), second);
      await assertAccessible(page, "a rotated secret");
      await page.screenshot({ path: join(SCREENSHOTS, "webhook-rotated.jpg"), type: "jpeg", quality: 80 });
      // The server's deliverer reads the endpoint's secrets again every second.
      await sleep(1_500);

      // While both sign, a delivery verifies with either.
      const { connection } = await server
        .connections(y)
        .createConnection({ destinationOrganizationId: z.id, dataTypes: [DataType.ACCOUNT] });
      const id = connection!.id;
      const created = await until("the first delivery", () => receiver.received[0]);
      assert.equal(created.headers["webhook-signature"]!.split(" ").length, 2, "two signatures");
      assert.equal(verified(second, created).type, "connection.created");
      assert.equal(verified(first, created).type, "connection.created");
      await page.locator("tr.delivery").first().waitFor({ timeout: SEEN_WITHIN });

      // A failed attempt: Will retry, with the receiver's status and answer and the next attempt's time.
      receiver.status = 500;
      await server.connections(z).activateConnection({ connectionId: id });
      await until("the second delivery", () => receiver.received[1]);
      const failed = page.locator("tr.delivery", { hasText: "Will retry" }).first();
      await failed.waitFor({ timeout: SEEN_WITHIN });
      const cells = await failed.locator("td").allTextContents();
      assert.deepEqual(cells.slice(2, 5), ["1", "Will retry", "HTTP 500: answered 500"]);
      assert.match(cells[6]!, WITH_SECONDS);
      await page.getByRole("checkbox", { name: "Failed only" }).check();
      await page.waitForFunction(() => document.querySelectorAll("tr.delivery").length === 1);
      const onlyFailed = await deliveryRows(page);
      assert.equal(onlyFailed.length, 1);
      assert.match(onlyFailed[0]!, /Will retry/);
      await page.getByRole("checkbox", { name: "Failed only" }).uncheck();
      // The retry (after about 5 s) succeeds, and shows by itself once it is due.
      receiver.status = 204;
      await page
        .locator("tr.delivery")
        .first()
        .filter({ hasText: /^.+…\w{8}2Delivered/ })
        .waitFor({ timeout: 30_000 });
      const rows = await deliveryRows(page);
      assert.equal(rows.length, 3, "newest first: the retry, the failure, the first delivery");
      assert.match(rows[1]!, /Will retry/);
      assert.match(rows[2]!, /1DeliveredHTTP 204/);

      // Disabled, it is sent nothing; enabled, it gets what was kept meanwhile.
      await item.getByRole("button", { name: "Disable" }).click();
      await item.locator(".state", { hasText: /^Disabled$/ }).waitFor();
      await item.getByText("Its events are kept: enable it to resume deliveries where they stopped.").waitFor();
      assert.equal((await server.webhooks(y).listWebhookEndpoints({})).endpoints[0]!.disabled, true);
      // The server's deliverer reads the endpoint's state again every second.
      await sleep(1_500);
      const before = receiver.received.length;
      await server.connections(y).deactivateConnection({ connectionId: id, reason: "Paused" });
      await sleep(2_500);
      assert.equal(receiver.received.length, before, "nothing is sent to a disabled endpoint");
      await item.getByRole("button", { name: "Enable" }).click();
      await item.locator(".state", { hasText: /^Enabled$/ }).waitFor();
      const resumed = await until("the kept event", () => receiver.received[before]);
      assert.equal(verified(second, resumed).type, "connection.deactivated");

      // Recover after the first delivery's change token: the two later events are sent again.
      await item.getByRole("button", { name: "Recover" }).click();
      const tokenBox = item.getByRole("textbox", { name: "Change token" });
      await tokenBox.fill("not-a-change-token");
      await item.getByRole("button", { name: "Queue events again" }).click();
      await item.getByRole("alert").filter({ hasText: "This is not a change token of this service." }).waitFor();
      await assertAccessible(page, "the recover form with a refusal");
      await tokenBox.fill(verified(second, created).data.change_token);
      const sent = receiver.received.length;
      await item.getByRole("button", { name: "Queue events again" }).click();
      await item.getByRole("status").filter({ hasText: "2 events queued for delivery." }).waitFor();
      assert.equal(await tokenBox.count(), 0, "the form closes");
      await until("the recovered events", () => receiver.received.length >= sent + 2);
      const again = receiver.received.slice(sent).map((d) => verified(second, d).type);
      assert.deepEqual(again, ["connection.activated", "connection.deactivated"]);
      assert.deepEqual(
        receiver.received.slice(sent).map((d) => d.headers["webhook-id"]),
        [receiver.received[1]!.headers["webhook-id"], resumed.headers["webhook-id"]],
        "the same webhook-id as the first time",
      );

      // Delete asks first; Cancel keeps it.
      await item.getByRole("button", { name: "Delete" }).click();
      const confirm = item.locator("form.confirm");
      await confirm.getByText(`Delete the endpoint ${receiver.url}? Deliveries to it stop at once`).waitFor();
      await assertAccessible(page, "the delete confirmation");
      await confirm.getByRole("button", { name: "Cancel" }).click();
      assert.equal(await confirm.count(), 0);
      assert.equal((await server.webhooks(y).listWebhookEndpoints({})).endpoints.length, 1);
      await item.getByRole("button", { name: "Delete" }).click();
      await confirm.getByRole("button", { name: "Confirm" }).click();
      await page.getByRole("status").filter({ hasText: `The endpoint ${receiver.url} was deleted.` }).waitFor();
      await page.getByText("No webhook endpoints yet.").waitFor();
      assert.equal(await item.count(), 0);
      assert.equal(await page.getByRole("heading", { name: "Deliveries" }).count(), 0);
      assert.equal((await server.webhooks(y).listWebhookEndpoints({})).endpoints.length, 0);
    } finally {
      await receiver.close();
    }
  });

  it("refuses webhook URLs the server does not allow, and an endpoint past the limit, with the reason", { timeout: TIMEOUT }, async () => {
    // A server as in production (no private addresses), with room for one endpoint.
    const own = await Server.start(
      { CONNECTIONS_WATCH_HEARTBEAT_INTERVAL: HEARTBEAT, CONNECTIONS_WEBHOOK_ENDPOINTS_PER_ORGANIZATION: "1" },
      { privateWebhooks: false },
    );
    try {
      const v = own.newOrg("Victor Ventures");
      const page = (await newRecordedPage(own)).page;
      await signIn(page, v);
      await openWebhooks(page);
      await page.getByRole("button", { name: "Add endpoint" }).click();
      const url = page.getByRole("textbox", { name: "Endpoint URL" });
      const create = page.getByRole("button", { name: "Create endpoint" });
      for (const [value, told] of [
        ["http://127.0.0.1:8080/webhooks", "Deliveries cannot be sent to this URL: it must use https."],
        ["https://127.0.0.1/webhooks", "Deliveries cannot be sent to this URL: it must not name a loopback address."],
        ["https://10.1.2.3/webhooks", "Deliveries cannot be sent to this URL: it must not name a private address."],
        ["webhooks.example.com", "This URL is not valid: it is not an absolute URL"],
      ] as const) {
        await url.fill(value);
        await create.click();
        const alert = page.getByRole("alert");
        await alert.waitFor();
        assert.ok((await alert.textContent())!.startsWith(told), `${value}: ${await alert.textContent()}`);
        assert.equal(await alert.getByRole("button", { name: "Try again" }).count(), 0);
      }
      assert.equal((await own.webhooks(v).listWebhookEndpoints({})).endpoints.length, 0);

      await url.fill("https://hooks.partner.invalid/connections");
      await page.getByRole("checkbox", { name: "Activated", exact: true }).check();
      await page.getByRole("checkbox", { name: "Deactivated", exact: true }).check();
      await create.click();
      await page.getByRole("textbox", { name: "Signing secret" }).waitFor();
      const item = endpointItem(page, "https://hooks.partner.invalid/connections");
      assert.match((await item.textContent())!, /EventsActivated and Deactivated/);

      await page.getByRole("button", { name: "Add endpoint" }).click();
      await url.fill("https://hooks.partner.invalid/second");
      await create.click();
      const limit = page.getByRole("alert").filter({ hasText: "Your organization has as many webhook endpoints as it may. Delete one to add another." });
      await limit.waitFor();
      assert.equal(await limit.getByRole("button", { name: "Try again" }).count(), 0, "waiting does not lift the limit");
      await assertAccessible(page, "the endpoint limit");
    } finally {
      await own.stop();
    }
  });

  it("shows the Webhooks page wide and at 375 px, and takes its screenshots for the README", { timeout: TIMEOUT }, async () => {
    const n = server.newOrg("Northwind Bank");
    const o = server.newOrg("Orbit Credit Union");
    const receiver = await startReceiver();
    try {
      await server.webhooks(n).createWebhookEndpoint({ url: receiver.url, description: "Ledger sync" });
      const { connection } = await server
        .connections(n)
        .createConnection({ destinationOrganizationId: o.id, dataTypes: [DataType.INQUIRY, DataType.ACCOUNT] });
      await until("the first delivery", () => receiver.received[0]);
      await server.connections(o).activateConnection({ connectionId: connection!.id });
      await until("the second delivery", () => receiver.received[1]);
      // The receiver is down: the third event is tried again once, then given up.
      receiver.status = 503;
      await server.connections(o).deactivateConnection({ connectionId: connection!.id, reason: "Annual review" });
      await until("the third delivery", () => receiver.received[2]);

      const wide = await newPage({ width: 1280, height: 720 });
      await signIn(wide, n);
      await openWebhooks(wide);
      await wide.locator("tr.delivery").nth(2).waitFor();
      await seeLive(wide);
      // The retry shows by itself once it is due.
      await wide.locator("tr.delivery").nth(3).waitFor({ timeout: 20_000 });
      const rows = await deliveryRows(wide);
      assert.match(rows[0]!, /2Gave upHTTP 503: answered 503\d+ m?s—$/);
      assert.match(rows[1]!, /1Will retryHTTP 503: answered 503\d+ m?s\d{1,2}:\d{2}:\d{2}/);
      assert.match(rows[2]!, /1DeliveredHTTP 204/);
      await wide.getByRole("checkbox", { name: "Failed only" }).check();
      await wide.waitForFunction(() => document.querySelectorAll("tr.delivery").length === 2);
      await wide.getByRole("checkbox", { name: "Failed only" }).uncheck();
      await wide.locator("tr.delivery").nth(3).waitFor();
      // A table a person reads across: one line per attempt.
      const row = (await wide.locator("tr.delivery").first().boundingBox())!;
      assert.ok(row.height < 50, `an attempt takes one line (${row.height} px)`);
      await assertAccessible(wide, "the Webhooks page with deliveries");
      await wide.screenshot({ path: join(DOC_SCREENSHOTS, "webhooks.png"), fullPage: true });

      const page = await newPage({ width: 375, height: 812 });
      await signIn(page, n);
      await openWebhooks(page);
      const item = endpointItem(page, receiver.url);
      await item.waitFor();
      await page.locator("tr.delivery").nth(2).waitFor();
      await seeLive(page);
      assert.ok((await overflow(page)) <= 0, "the Webhooks page fits the width");
      // A delivery's cells are stacked, each with its label.
      const first = page.locator("tr.delivery").first();
      const time = (await first.locator("td[data-label=Time]").boundingBox())!;
      const outcome = (await first.locator("td[data-label=Outcome]").boundingBox())!;
      assert.ok(outcome.y >= time.y + time.height - 1, "a delivery's cells are stacked");
      await assertAccessible(page, "the Webhooks page at 375 px");
      await page.screenshot({ path: join(DOC_SCREENSHOTS, "webhooks-375.png") });

      await item.getByRole("button", { name: "Rotate secret" }).click();
      await item.getByRole("textbox", { name: "Signing secret" }).waitFor();
      await item.getByRole("button", { name: "Recover" }).click();
      await item.getByRole("textbox", { name: "Change token" }).waitFor();
      await item.getByRole("button", { name: "Delete" }).click();
      await item.locator("form.confirm").waitFor();
      assert.ok((await overflow(page)) <= 0, "the secret and the forms fit the width");
      await assertAccessible(page, "a secret and the forms at 375 px");
      await page.screenshot({ path: join(SCREENSHOTS, "webhook-forms-375.png"), fullPage: true });
      await page.getByRole("button", { name: "Add endpoint" }).click();
      await page.getByRole("textbox", { name: "Endpoint URL" }).fill("ftp://example.com/webhooks");
      await page.getByRole("button", { name: "Create endpoint" }).click();
      await page.getByRole("alert").filter({ hasText: "it must use https" }).waitFor();
      assert.ok((await overflow(page)) <= 0, "the new-endpoint form fits the width");
      await assertAccessible(page, "the new-endpoint form at 375 px");
    } finally {
      await receiver.close();
    }
  });

  it("lets the source change the data types of an active connection: a removed type stops at once, an added one waits for approval", { timeout: TIMEOUT }, async () => {
    const src = server.newOrg("Amber Analytics");
    const dst = server.newOrg("Birch Bank");
    const id = await activeConnection(src, dst, [DataType.INQUIRY, DataType.ACCOUNT]);
    const page = await newPage();
    await signIn(page, src);
    await page.goto(`/#/connections/${id}`);
    await seeState(page, "Active");
    await page.locator("ol.history li").nth(1).waitFor();

    // The form: the four types, the current ones checked, and what a change does.
    await page.getByRole("button", { name: "Change data types" }).click();
    const form = page.locator("form.confirm");
    await form.getByText("Change the data types you share with Birch Bank", { exact: true }).waitFor();
    await form
      .getByText(
        "Types you add wait for Birch Bank's approval and are not shared until then; types you remove stop being shared at once.",
      )
      .waitFor();
    const checked = async () =>
      Object.fromEntries(
        await Promise.all(
          ["Inquiries", "Verifications", "Accounts", "Transactions"].map(async (name) => [
            name,
            await form.getByRole("checkbox", { name }).isChecked(),
          ]),
        ),
      );
    assert.deepEqual(await checked(), { Inquiries: true, Verifications: false, Accounts: true, Transactions: false });
    const save = form.getByRole("button", { name: "Save" });
    assert.ok(await save.isDisabled(), "nothing to save before a change");
    await form.getByRole("checkbox", { name: "Accounts" }).uncheck();
    await form.getByRole("checkbox", { name: "Transactions" }).check();
    await assertAccessible(page, "the source's data types form");
    await save.click();
    // The form closes once the change is made.
    await form.waitFor({ state: "detached" });

    // Accounts stopped at once; Transactions waits for Birch Bank.
    await fieldOf(page, "Data shared").filter({ hasText: /^Inquiries$/ }).waitFor();
    assert.equal(await fieldOf(page, "Waiting for approval").textContent(), "Transactions");
    assert.equal(
      await page.locator(".next-step").textContent(),
      "Waiting for Birch Bank to approve Transactions: not shared until then.",
    );
    await page.locator("ol.history li").nth(2).waitFor({ timeout: SEEN_WITHIN });
    assert.match(
      (await history(page))[0]!,
      /Amber Analytics \(the source, by key 'dashboard tests'\) proposed data types \(now Active\)\.Shared now: Inquiries; waiting for approval: Transactions$/,
    );
    const { connection } = await server.connections(dst).getConnection({ connectionId: id });
    assert.deepEqual(connection!.dataTypes, [DataType.INQUIRY]);
    assert.deepEqual(connection!.pendingDataTypes, [DataType.TRANSACTION]);
    assert.equal(connection!.state, ConnectionState.ACTIVE);

    // Opened again, the form shows what waits, checked, and says how to withdraw it.
    await page.getByRole("button", { name: "Change data types" }).click();
    await form.getByRole("checkbox", { name: "Transactions (waiting for approval)" }).waitFor();
    assert.deepEqual(await checked(), { Inquiries: true, Verifications: false, Accounts: false, Transactions: true });
    await form.getByText("Uncheck a type waiting for approval to withdraw the request.", { exact: false }).waitFor();
    await form.getByRole("button", { name: "Cancel" }).click();
    assert.equal(await form.count(), 0);

    // On an Inactive connection the set is replaced, for the next activation.
    await server.connections(dst).deactivateConnection({ connectionId: id });
    await seeState(page, "Inactive");
    await page.getByRole("button", { name: "Change data types" }).click();
    await form.getByText("The new types replace the current ones; Birch Bank agrees to them when it activates the connection.").waitFor();
    await form.getByRole("checkbox", { name: "Verifications" }).check();
    await form.getByRole("button", { name: "Save" }).click();
    await fieldOf(page, "Data shared").filter({ hasText: /^Inquiries, Verifications$/ }).waitFor();
    assert.equal(await fieldOf(page, "Waiting for approval").count(), 0);
  });

  it("shows the destination the data types waiting for its approval: it approves one request and declines the next with a reason", { timeout: TIMEOUT }, async () => {
    const src = server.newOrg("Cedar Credit");
    const dst = server.newOrg("Dune Data");
    const id = await activeConnection(src, dst, [DataType.INQUIRY]);
    await server.connections(src).updateConnectionDataTypes({ connectionId: id, dataTypes: [DataType.INQUIRY, DataType.ACCOUNT] });
    const page = await newPage();
    await signIn(page, dst);
    await page.goto(`/#/connections/${id}`);
    await seeState(page, "Active");
    await seeLive(page);
    const request = page.getByRole("region", { name: /asks to also share/ });
    await request
      .locator(".question")
      .filter({ hasText: /^Needs your action: Cedar Credit asks to also share Accounts\.$/ })
      .waitFor();
    await assertAccessible(page, "a request to approve data types");
    // The source's open page follows the approval.
    const source = await newPage();
    await signIn(source, src);
    await source.goto(`/#/connections/${id}`);
    await seeState(source, "Active");
    await seeLive(source);

    await request.getByRole("button", { name: "Approve" }).click();
    await fieldOf(page, "Data shared").filter({ hasText: /^Inquiries, Accounts$/ }).waitFor();
    assert.equal(await request.count(), 0, "nothing waits any more");
    assert.equal(await fieldOf(page, "Waiting for approval").count(), 0);
    await page.locator("ol.history li").nth(3).waitFor({ timeout: SEEN_WITHIN });
    assert.match(
      (await history(page))[0]!,
      /Dune Data \(the destination, by key 'dashboard tests'\) approved the data types waiting for approval \(now Active\)\.Shared now: Inquiries and Accounts$/,
    );
    await fieldOf(source, "Data shared").filter({ hasText: /^Inquiries, Accounts$/ }).waitFor({ timeout: SEEN_WITHIN });

    // The next request arrives while the page is open; the destination declines it with a reason.
    await server.connections(src).updateConnectionDataTypes({
      connectionId: id,
      dataTypes: [DataType.INQUIRY, DataType.ACCOUNT, DataType.TRANSACTION],
    });
    await request.locator(".question").filter({ hasText: "Cedar Credit asks to also share Transactions." }).waitFor({ timeout: SEEN_WITHIN });
    await request.getByRole("button", { name: "Decline" }).click();
    const form = page.locator("form.confirm");
    await form
      .getByText("Decline the request of Cedar Credit to also share Transactions? Inquiries and Accounts stay shared.", { exact: true })
      .waitFor();
    await form.getByRole("textbox", { name: "Reason" }).fill("Not in our contract");
    await assertAccessible(page, "the decline form");
    await form.getByRole("button", { name: "Confirm" }).click();
    // The form closes once the request is declined.
    await form.waitFor({ state: "detached" });
    await page.locator("ol.history li").nth(5).waitFor({ timeout: SEEN_WITHIN });
    assert.equal(await request.count(), 0);
    const entries = await history(page);
    assert.match(
      entries[0]!,
      /Dune Data \(the destination, by key 'dashboard tests'\) declined the data types waiting for approval \(now Active\)\.Shared now: Inquiries and Accounts; declined: TransactionsReason: Not in our contract$/,
    );
    assert.match(entries[1]!, /Cedar Credit \(the source, by key 'dashboard tests'\) proposed data types \(now Active\)\.Shared now: Inquiries and Accounts; waiting for approval: Transactions$/);
    assert.equal(await fieldOf(page, "Data shared").textContent(), "Inquiries, Accounts");
    const { connection } = await server.connections(src).getConnection({ connectionId: id });
    assert.deepEqual(connection!.dataTypes, [DataType.INQUIRY, DataType.ACCOUNT]);
    assert.deepEqual(connection!.pendingDataTypes, []);
    const { events } = await server.connections(src).listConnectionEvents({ connectionId: id });
    assert.deepEqual(
      events.map((e) => [e.type, e.reason]),
      [
        [ConnectionEventType.CREATED, ""],
        [ConnectionEventType.ACTIVATED, ""],
        [ConnectionEventType.DATA_TYPES_PROPOSED, ""],
        [ConnectionEventType.DATA_TYPES_APPROVED, ""],
        [ConnectionEventType.DATA_TYPES_PROPOSED, ""],
        [ConnectionEventType.DATA_TYPES_DECLINED, "Not in our contract"],
      ],
    );
    await source.locator("ol.history li").nth(5).waitFor({ timeout: SEEN_WITHIN });
    assert.match((await history(source))[0]!, /declined the data types waiting for approval.*Reason: Not in our contract$/);
  });

  it("never approves data types the page did not show: a request changed meanwhile is shown instead", { timeout: TIMEOUT }, async () => {
    const src = server.newOrg("Elm Equity");
    const dst = server.newOrg("Fjord Funds");
    const id = await activeConnection(src, dst, [DataType.INQUIRY]);
    await server.connections(src).updateConnectionDataTypes({ connectionId: id, dataTypes: [DataType.INQUIRY, DataType.ACCOUNT] });
    const page = await newPage();
    // The page cannot follow changes: it keeps showing what it loaded.
    await page.route(`**${WATCH}`, (route) => route.abort("connectionrefused"));
    await page.clock.install();
    await signIn(page, dst);
    await page.goto(`/#/connections/${id}`);
    await seeState(page, "Active");
    const request = page.getByRole("region", { name: /asks to also share/ });
    await request.getByText("Elm Equity asks to also share Accounts.").waitFor();

    // The source asks for Transactions instead; the page still shows Accounts when Approve is clicked.
    await server.connections(src).updateConnectionDataTypes({ connectionId: id, dataTypes: [DataType.INQUIRY, DataType.TRANSACTION] });
    await request.getByRole("button", { name: "Approve" }).click();
    await page.getByRole("alert").filter({ hasText: "This connection changed since you opened it. Here is its current state." }).waitFor();
    await request.getByText("Elm Equity asks to also share Transactions.").waitFor();
    assert.equal(await fieldOf(page, "Waiting for approval").textContent(), "Transactions");
    const { connection } = await server.connections(dst).getConnection({ connectionId: id });
    assert.deepEqual(connection!.dataTypes, [DataType.INQUIRY], "nothing was approved");
    assert.deepEqual(connection!.pendingDataTypes, [DataType.TRANSACTION]);
  });

  it("lets the destination of an active connection remove data types it receives, and only remove them", { timeout: TIMEOUT }, async () => {
    const src = server.newOrg("Garnet Grants");
    const dst = server.newOrg("Harbor Health");
    const id = await activeConnection(src, dst, [DataType.INQUIRY, DataType.ACCOUNT, DataType.TRANSACTION]);
    const page = await newPage();
    await signIn(page, dst);
    await page.goto(`/#/connections/${id}`);
    await seeState(page, "Active");
    await page.getByRole("button", { name: "Change data types" }).click();
    const form = page.locator("form.confirm");
    await form.getByText("Change the data types you receive from Garnet Grants", { exact: true }).waitFor();
    await form.getByText("Types you uncheck stop being shared at once. Only Garnet Grants can add types, with your approval.").waitFor();
    // Only the types it receives, all checked: nothing to add.
    const boxes = form.getByRole("checkbox");
    assert.equal(await boxes.count(), 3);
    assert.deepEqual(
      await boxes.evaluateAll((els) => els.map((el) => [el.closest("label")!.textContent, (el as HTMLInputElement).checked])),
      [
        ["Inquiries", true],
        ["Accounts", true],
        ["Transactions", true],
      ],
    );
    assert.equal(await form.getByRole("checkbox", { name: "Verifications" }).count(), 0);
    // It keeps at least one.
    for (const name of ["Inquiries", "Accounts", "Transactions"]) await form.getByRole("checkbox", { name }).uncheck();
    await form.getByRole("alert").filter({ hasText: "Keep at least one type. To stop sharing altogether, deactivate the connection." }).waitFor();
    assert.ok(await form.getByRole("button", { name: "Save" }).isDisabled());
    await form.getByRole("checkbox", { name: "Inquiries" }).check();
    await form.getByRole("checkbox", { name: "Accounts" }).check();
    await assertAccessible(page, "the destination's data types form");
    await form.getByRole("button", { name: "Save" }).click();
    await fieldOf(page, "Data shared").filter({ hasText: /^Inquiries, Accounts$/ }).waitFor();
    await page.locator("ol.history li").nth(2).waitFor({ timeout: SEEN_WITHIN });
    assert.match(
      (await history(page))[0]!,
      /Harbor Health \(the destination, by key 'dashboard tests'\) changed the data types \(now Active\)\.Shared now: Inquiries and Accounts$/,
    );
    const { connection } = await server.connections(src).getConnection({ connectionId: id });
    assert.deepEqual(connection!.dataTypes, [DataType.INQUIRY, DataType.ACCOUNT]);
    assert.deepEqual(connection!.pendingDataTypes, []);

    // Down to one type, there is nothing left to remove.
    await page.getByRole("button", { name: "Change data types" }).click();
    await form.getByRole("checkbox", { name: "Accounts" }).uncheck();
    await form.getByRole("button", { name: "Save" }).click();
    await fieldOf(page, "Data shared").filter({ hasText: /^Inquiries$/ }).waitFor();
    assert.equal(await page.getByRole("button", { name: "Change data types" }).count(), 0);
    await page.getByRole("button", { name: "Deactivate" }).waitFor();
  });

  it("marks an inbound Active connection whose new data types wait for approval as Needs your action", { timeout: TIMEOUT }, async () => {
    const src = server.newOrg("Indigo Insurance");
    const dst = server.newOrg("Jasper Jobs");
    const id = await activeConnection(src, dst, [DataType.VERIFICATION]);
    const page = await newPage();
    await signIn(page, dst);
    await page.getByRole("tab", { name: "Inbound" }).click();
    const row = rowOf(page, `From ${src.name}`);
    await row.waitFor();
    await seeLive(page);
    assert.equal(await row.getByText("Needs your action").count(), 0);

    // The source asks for more: the open list says so as it happens.
    await server.connections(src).updateConnectionDataTypes({
      connectionId: id,
      dataTypes: [DataType.VERIFICATION, DataType.ACCOUNT],
    });
    await row.getByText("Needs your action").waitFor({ timeout: SEEN_WITHIN });
    assert.match((await row.locator("td[data-label='State']").textContent())!, /^ActiveNeeds your actionApprove or decline Accounts$/);
    assert.equal(await row.getByRole("button").count(), 0, "approved on the connection's page, not from the row");
    await assertAccessible(page, "the list with a request to approve");

    // The source's list says what it waits for.
    const source = await newPage();
    await signIn(source, src);
    const outbound = rowOf(source, `To ${dst.name}`);
    await outbound.getByText(`Waiting for ${dst.name} to approve Accounts`).waitFor();
    assert.equal(await outbound.getByText("Needs your action").count(), 0);

    // The row opens the request; once approved, nothing is needed any more.
    await row.getByRole("link").click();
    await page.getByRole("button", { name: "Approve" }).click();
    await fieldOf(page, "Data shared").filter({ hasText: /^Verifications, Accounts$/ }).waitFor();
    await page.getByRole("link", { name: "Back to the list" }).click();
    await page.getByRole("tab", { name: "Inbound" }).click();
    await row.locator("td[data-label='Data types']").filter({ hasText: /^Verifications, Accounts$/ }).waitFor();
    assert.equal(await row.getByText("Needs your action").count(), 0);
  });

  it("adds a trusted partner once its name is shown, activates the connections it creates at once, and removes it", { timeout: TIMEOUT }, async () => {
    const dst = server.newOrg("Kestrel Kapital");
    const partner = server.newOrg("Lagoon Leasing");
    const other = server.newOrg("Mesa Mutual");
    const page = await newPage();
    await signIn(page, dst);
    await openTrustedPartners(page);
    const nav = page.getByRole("navigation", { name: "Main" });
    assert.equal(await nav.getByRole("link", { name: "Trusted partners" }).getAttribute("aria-current"), "page");
    assert.equal(await nav.getByRole("link", { name: "Information", exact: true }).getAttribute("aria-current"), null);
    assert.match((await nav.textContent())!.replace(/\s+/g, " "), /Organization › Information Trusted partners/);
    await page
      .getByText(
        "Connections these organizations create or reactivate to yours are activated at once, without waiting for you; removing one changes no existing connection.",
      )
      .waitFor();
    await page.getByText("No trusted partners yet.").waitFor();
    await assertAccessible(page, "the empty Trusted partners page");

    // The ID is looked up first: its own, an unknown one, then the partner's, by name.
    const id = page.getByRole("textbox", { name: "Partner's organization ID" });
    const add = page.getByRole("button", { name: "Add trusted partner" });
    await id.fill(dst.id);
    await page.getByRole("alert").filter({ hasText: "That is your own organization's ID." }).waitFor();
    assert.ok(await add.isDisabled());
    await id.fill("01890000-0000-7000-8000-000000000000");
    await page.getByRole("alert").filter({ hasText: "No organization has this ID. Check the ID with the organization." }).waitFor();
    assert.ok(await add.isDisabled());
    await id.fill(partner.id);
    await page.getByText(`You are adding ${partner.name}.`).waitFor();
    await assertAccessible(page, "the add-a-partner form with a name");
    await add.click();
    await page.getByRole("status").filter({ hasText: `${partner.name} is now a trusted partner` }).waitFor();
    const item = partnerItem(page, partner.name);
    await item.waitFor();
    assert.match((await item.textContent())!, new RegExp(partner.id));
    // The form is ready for another.
    await page.waitForFunction(() => (document.getElementById("partner-id") as HTMLInputElement).value === "");
    await id.fill(partner.id);
    await page.getByText(`${partner.name} is already a trusted partner.`).waitFor();
    assert.ok(await add.isDisabled());
    await id.fill(other.id);
    await page.getByText(`You are adding ${other.name}.`).waitFor();
    await add.click();
    await partnerItem(page, other.name).waitFor();
    const { policy } = await server.organizations(dst).getOrganizationPolicy({});
    assert.deepEqual(policy!.autoActivateSourceIds, [partner.id, other.id].sort());
    await assertAccessible(page, "the Trusted partners page with partners");

    // The partner creates a connection through the API: it is Active at once.
    const { connection } = await server
      .connections(partner)
      .createConnection({ destinationOrganizationId: dst.id, dataTypes: [DataType.ACCOUNT] });
    assert.equal(connection!.state, ConnectionState.ACTIVE);
    await nav.getByRole("link", { name: "Connections", exact: true }).click();
    await page.getByRole("tab", { name: "Inbound" }).click();
    const row = rowOf(page, `From ${partner.name}`);
    await row.locator(".state", { hasText: /^Active$/ }).waitFor();
    assert.equal(await row.getByText("Needs your action").count(), 0);
    await row.getByRole("link").click();
    await seeState(page, "Active");
    await page.locator("ol.history li").nth(1).getByText(partner.name).waitFor();
    await page.locator("ol.history li").first().getByText(dst.name).waitFor();
    const entries = await history(page);
    assert.match(entries[0]!, /: Kestrel Kapital \(the destination\) activated it automatically \(trusted partner\) \(now Active\)\.$/);
    assert.match(entries[1]!, /Lagoon Leasing \(the source, by key 'dashboard tests'\) created the connection/);
    const { events } = await server.connections(dst).listConnectionEvents({ connectionId: connection!.id });
    assert.equal(events[1]!.byPolicy, true);

    // Removed, it is no longer trusted; its connection stays Active, and the other partner stays.
    await openTrustedPartners(page);
    await item.getByRole("button", { name: "Remove" }).click();
    await page
      .getByRole("status")
      .filter({ hasText: `${partner.name} is no longer a trusted partner. Its existing connections are unchanged.` })
      .waitFor();
    assert.equal(await item.count(), 0);
    await partnerItem(page, other.name).waitFor();
    const { policy: after } = await server.organizations(dst).getOrganizationPolicy({});
    assert.deepEqual(after!.autoActivateSourceIds, [other.id]);
    const { connection: still } = await server.connections(dst).getConnection({ connectionId: connection!.id });
    assert.equal(still!.state, ConnectionState.ACTIVE);
    // Its next connection waits for the destination again.
    await server.connections(partner).deactivateConnection({ connectionId: connection!.id });
    const { connection: again } = await server.connections(partner).reactivateConnection({ connectionId: connection!.id });
    assert.equal(again!.state, ConnectionState.PENDING);
  });

  it("shows the data type forms, a request to approve and Trusted partners at 375 px", { timeout: TIMEOUT }, async () => {
    const src = server.newOrg("Nectar Neobank");
    const dst = server.newOrg("Opal Outsourcing");
    const id = await activeConnection(src, dst, [DataType.INQUIRY, DataType.VERIFICATION]);
    await server.connections(src).updateConnectionDataTypes({
      connectionId: id,
      dataTypes: [DataType.INQUIRY, DataType.VERIFICATION, DataType.ACCOUNT, DataType.TRANSACTION],
    });
    await server.organizations(dst).updateOrganizationPolicy({ policy: { autoActivateSourceIds: [src.id] } });

    const page = await newPage({ width: 375, height: 740 });
    await signIn(page, dst);
    await page.goto(`/#/connections/${id}`);
    await seeState(page, "Active");
    const request = page.getByRole("region", { name: /asks to also share/ });
    await request.getByText("Nectar Neobank asks to also share Accounts and Transactions.").waitFor();
    assert.ok((await overflow(page)) <= 0, "a request to approve fits the width");
    await assertAccessible(page, "a request to approve at 375 px");
    await request.getByRole("button", { name: "Decline" }).click();
    await page.getByRole("textbox", { name: "Reason" }).waitFor();
    assert.ok((await overflow(page)) <= 0, "the decline form fits the width");
    await assertAccessible(page, "the decline form at 375 px");
    await page.getByRole("button", { name: "Cancel" }).click();
    await page.getByRole("button", { name: "Change data types" }).click();
    await page.getByRole("checkbox", { name: "Verifications" }).waitFor();
    assert.ok((await overflow(page)) <= 0, "the destination's data types form fits the width");
    await assertAccessible(page, "the destination's data types form at 375 px");
    await page.screenshot({ path: join(SCREENSHOTS, "data-types-375.png"), fullPage: true });

    const source = await newPage({ width: 375, height: 740 });
    await signIn(source, src);
    await source.goto(`/#/connections/${id}`);
    await seeState(source, "Active");
    await source.getByRole("button", { name: "Change data types" }).click();
    await source.getByRole("checkbox", { name: "Accounts (waiting for approval)" }).waitFor();
    assert.ok((await overflow(source)) <= 0, "the source's data types form fits the width");
    await assertAccessible(source, "the source's data types form at 375 px");

    await openTrustedPartners(page);
    await partnerItem(page, src.name).waitFor();
    await page.getByRole("textbox", { name: "Partner's organization ID" }).fill(src.id);
    await page.getByText(`${src.name} is already a trusted partner.`).waitFor();
    assert.ok((await overflow(page)) <= 0, "Trusted partners fits the width");
    await assertAccessible(page, "Trusted partners at 375 px");
    await page.screenshot({ path: join(SCREENSHOTS, "trusted-partners-375.png"), fullPage: true });
  });

  it("keeps the page's code within its budget (150 KB gzipped)", { timeout: TIMEOUT }, () => {
    let total = 0;
    for (const file of readdirSync(DIST_ASSETS)) {
      total += gzipSync(readFileSync(join(DIST_ASSETS, file)), { level: 9 }).length;
    }
    assert.ok(total > 10_000, "the built assets are there");
    assert.ok(total < 150 * 1024, `the assets are ${total} bytes gzipped`);
  });

  it("takes the README's screenshots", { timeout: TIMEOUT }, async () => {
    const me = server.newOrg("Northwind Bank");
    const orbit = server.newOrg("Orbit Credit Union");
    const summit = server.newOrg("Summit Payroll");
    const cedar = server.newOrg("Cedar Insurance");
    const harbor = server.newOrgId("Harbor Mortgage");
    const mine = server.connections(me);
    const { connection: active } = await mine.createConnection({
      destinationOrganizationId: orbit.id,
      dataTypes: [DataType.INQUIRY, DataType.ACCOUNT],
      message: "Hello Orbit team,\nthis connects our lending desk to your member inquiries, as agreed on Monday.",
    });
    await server.connections(orbit).activateConnection({ connectionId: active!.id });
    const { connection: closed } = await server
      .connections(cedar)
      .createConnection({ destinationOrganizationId: me.id, dataTypes: [DataType.VERIFICATION] });
    await mine.activateConnection({ connectionId: closed!.id });
    await server.connections(cedar).deactivateConnection({ connectionId: closed!.id, reason: "Policy renewal" });
    await mine.createConnection({ destinationOrganizationId: harbor, dataTypes: [DataType.TRANSACTION] });
    await server
      .connections(summit)
      .createConnection({ destinationOrganizationId: me.id, dataTypes: [DataType.ACCOUNT, DataType.TRANSACTION] });

    const page = await newPage({ width: 1280, height: 720 });
    await signIn(page, me);
    await page.getByRole("tab", { name: "All" }).click();
    await rowOf(page, "From Summit Payroll").getByText("Needs your action").waitFor();
    await rowOf(page, "To Harbor Mortgage").getByText("Waiting for Harbor Mortgage").waitFor();
    await seeLive(page);
    await page.screenshot({ path: join(DOC_SCREENSHOTS, "list.png") });

    await rowOf(page, "To Orbit Credit Union").getByRole("link").click();
    await seeState(page, "Active");
    await page.locator("ol.history li").nth(1).waitFor();
    await page.screenshot({ path: join(DOC_SCREENSHOTS, "detail.png"), fullPage: true });

    await page.getByRole("link", { name: "Connections", exact: true }).click();
    await fillNewConnection(page, cedar, ["Verifications", "Accounts"]);
    await page
      .getByRole("textbox", { name: "Message to the destination (optional)" })
      .fill("Hello Cedar,\nthe verifications for the policy renewals, as discussed.");
    await page.screenshot({ path: join(DOC_SCREENSHOTS, "new-connection.png") });

    const narrow = await newPage({ width: 375, height: 812 });
    await signIn(narrow, me);
    await narrow.getByRole("tab", { name: "All" }).click();
    await rowOf(narrow, "From Summit Payroll").getByText("Needs your action").waitFor();
    await seeLive(narrow);
    await narrow.screenshot({ path: join(DOC_SCREENSHOTS, "list-375.png") });
  });
});
