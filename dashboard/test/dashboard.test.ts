/**
 * The dashboard in a real browser (Debian's Chromium through playwright-core), against the real
 * server binary. Selectors use roles and the accessible names of SPEC section 9: they are part of
 * the contract.
 *
 *   CONNECTIONS_BIN=../target/debug/connections node --import tsx --test test/dashboard.test.ts
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import AxeBuilder from "@axe-core/playwright";
import type { Browser, BrowserContext, Page } from "playwright-core";

import { ConnectionState, DataType } from "../src/gen/connections/v1/resources_pb.js";
import { context, launch, type Org, SCREENSHOTS, Server, signIn } from "./harness.js";

const TIMEOUT = 120_000;
/** Long enough for the page's polling (every 3 s) to show another party's change. */
const SEEN_WITHIN = 10_000;

let server: Server;
let browser: Browser;
const contexts: Array<{ context: BrowserContext; requests: string[] }> = [];

before(async () => {
  server = await Server.start();
  browser = await launch();
});

after(async () => {
  for (const { context: c } of contexts) await c.close();
  await browser?.close();
  // No page ever talked to another origin.
  for (const { requests } of contexts) {
    const foreign = requests.filter((url) => !url.startsWith(`${server.baseUrl}/`) && !url.startsWith("data:"));
    assert.deepEqual(foreign, [], "requests to another origin");
  }
  await server?.stop();
});

async function newPage(viewport?: { width: number; height: number }): Promise<Page> {
  const opened = await context(browser, server, viewport);
  contexts.push(opened);
  return await opened.context.newPage();
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
async function seeState(page: Page, word: "Pending" | "Active" | "Inactive"): Promise<void> {
  await page.locator(".fields .state", { hasText: new RegExp(`^${word}$`) }).waitFor({ timeout: SEEN_WITHIN });
}

/** Fills the new-connection form for `destination`, once the page has shown its name. */
async function fillNewConnection(page: Page, destination: Org, types: string[]): Promise<void> {
  await page.getByRole("button", { name: "New connection" }).click();
  await page.getByRole("textbox", { name: "Destination organization ID" }).fill(destination.id);
  await page.getByText(`You are connecting to ${destination.name}.`).waitFor();
  for (const type of types) await page.getByRole("checkbox", { name: type }).check();
}

describe("the dashboard", { timeout: TIMEOUT }, () => {
  it("takes two organizations through the whole lifecycle", async () => {
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
    assert.match((await pageB.locator("li.connection").first().textContent())!, /Pending/);
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

    // A reactivates; B activates again.
    await pageA.getByRole("button", { name: "Reactivate" }).click();
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

    await pageA.getByRole("link", { name: "Back to connections" }).click();
    await pageA.getByRole("link", { name: `To ${b.name}` }).waitFor();
    await pageA.screenshot({ path: join(SCREENSHOTS, "list.jpg"), type: "jpeg", quality: 80 });
  });

  it("creates one connection when Create connection is clicked twice", async () => {
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

  it("tells a stale page that the connection changed, and shows its state now", async () => {
    const e = server.newOrg("Echo Exchange");
    const f = server.newOrg("Foxtrot Finance");
    const { connection } = await server
      .connections(e)
      .createConnection({ destinationOrganizationId: f.id, dataTypes: [DataType.VERIFICATION] });
    const page = await newPage();
    // The page's clock stands still: it does not poll, so it keeps showing what it loaded.
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

  it("refuses a revoked key with a sentence", async () => {
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

  it("can be used with the keyboard alone", async () => {
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
    await page.waitForFunction(() => document.activeElement?.textContent === "Connection");
    await tabTo("Deactivate");
    await page.keyboard.press("Enter");
    await tabTo("Reason");
    await page.keyboard.type("Typed, not clicked");
    await page.keyboard.press("Enter");
    await seeState(page, "Inactive");
    await page.getByText("Reason: Typed, not clicked").waitFor();
  });

  it("works at 375 px wide", async () => {
    const h = server.newOrg("Hotel Holdings");
    const i = server.newOrg("India Insights");
    await server.connections(h).createConnection({ destinationOrganizationId: i.id, dataTypes: [DataType.ACCOUNT] });
    const page = await newPage({ width: 375, height: 740 });
    await signIn(page, h);
    await page.getByRole("link", { name: `To ${i.name}` }).waitFor();
    const overflow = async () => page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok((await overflow()) <= 0, "the list fits the width");
    await assertAccessible(page, "the list at 375 px");
    await page.getByRole("link", { name: `To ${i.name}` }).click();
    await seeState(page, "Pending");
    assert.ok((await overflow()) <= 0, "the detail page fits the width");
    await assertAccessible(page, "the detail page at 375 px");
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByRole("textbox", { name: "API key" }).waitFor();
    assert.equal(await page.evaluate(() => window.sessionStorage.length), 0, "signing out forgets the key");
  });
});
