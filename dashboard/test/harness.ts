/**
 * What the browser tests run against: the real `connections` binary (CONNECTIONS_BIN, or
 * ../target/debug/connections) serving the embedded page over a temporary SQLite database, with
 * organizations and keys made by `connections admin`; and Debian's Chromium (CHROMIUM_PATH, or
 * /usr/bin/chromium) driven by playwright-core. Nothing downloads a browser. Every wait is bounded.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { accessSync, closeSync, constants, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { type Browser, type BrowserContext, chromium, type Page } from "playwright-core";

import { ConnectionService } from "../src/gen/connections/v1/connection_service_pb.js";

/** dashboard/ */
export const PACKAGE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");

export const BIN = process.env.CONNECTIONS_BIN
  ? resolve(process.env.CONNECTIONS_BIN)
  : resolve(PACKAGE_DIR, "../target/debug/connections");

export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

/** Where screenshots go (under the repository's target/, never committed from there). */
export const SCREENSHOTS = resolve(PACKAGE_DIR, "../target/dashboard");

export interface Org {
  id: string;
  keyId: string;
  key: string;
  name: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address();
      const port = typeof address === "object" && address ? address.port : 0;
      probe.close(() => resolvePort(port));
    });
  });
}

/** `connections serve` on a free port, over a database of its own. */
export class Server {
  private child?: ChildProcess;

  readonly baseUrl: string;

  private constructor(
    readonly tmp: string,
    readonly env: NodeJS.ProcessEnv,
    readonly port: number,
  ) {
    this.baseUrl = `http://127.0.0.1:${port}`;
  }

  /** Starts the server; `extra` adds environment variables (e.g. an admin token). */
  static async start(extra: NodeJS.ProcessEnv = {}): Promise<Server> {
    accessSync(BIN, constants.X_OK);
    const tmp = mkdtempSync(join(tmpdir(), "connections-dashboard-"));
    const env: NodeJS.ProcessEnv = Object.fromEntries(
      Object.entries(process.env).filter(([name]) => !name.startsWith("CONNECTIONS_")),
    );
    Object.assign(env, extra);
    env.CONNECTIONS_DATABASE_URL = `sqlite://${tmp}/c.db?mode=rwc`;
    const server = new Server(tmp, env, await freePort());
    await server.spawn("w");
    return server;
  }

  /** Runs `connections serve` and waits until it answers; `flags`: "w" starts a new log, "a" appends. */
  private async spawn(flags: "w" | "a"): Promise<void> {
    const log = openSync(join(this.tmp, "server.log"), flags);
    let child: ChildProcess;
    try {
      child = spawn(BIN, ["serve", "--listen", `127.0.0.1:${this.port}`], {
        env: this.env,
        stdio: ["ignore", log, log],
      });
      this.child = child;
    } finally {
      closeSync(log);
    }
    for (let i = 0; i < 150; i++) {
      if (child.exitCode !== null) throw new Error(`the server exited at start:\n${this.log()}`);
      try {
        if ((await fetch(`${this.baseUrl}/`)).ok) return;
      } catch {
        // Not listening yet.
      }
      await sleep(200);
    }
    throw new Error(`the server did not answer within 30 s:\n${this.log()}`);
  }

  /**
   * Stops the server (SIGTERM, as an operator would), then starts it again on the same port and
   * database. `meanwhile` runs while it is down.
   */
  async restart(meanwhile: () => Promise<void> | void = () => {}): Promise<void> {
    await this.terminate();
    await meanwhile();
    await this.spawn("a");
  }

  log(): string {
    try {
      return readFileSync(join(this.tmp, "server.log"), "utf8").slice(-4000);
    } catch {
      return "(no log)";
    }
  }

  /** `connections <args>` on the server's database; its first line of output, as JSON. */
  cli(...args: string[]): Record<string, unknown> {
    const out = execFileSync(BIN, args, { env: this.env, encoding: "utf8", timeout: 60_000 });
    return JSON.parse(out.split("\n")[0]!) as Record<string, unknown>;
  }

  /** A new organization with an API key named "dashboard tests". */
  newOrg(name: string): Org {
    const org = this.cli("admin", "create-org", "--name", name);
    return this.newKey({ id: String(org.id), name }, "dashboard tests");
  }

  /** Another API key of `org`, named `keyName`: the organization as it calls with that key. */
  newKey(org: Pick<Org, "id" | "name">, keyName: string): Org {
    const key = this.cli("admin", "create-key", "--org", org.id, "--name", keyName);
    return { id: org.id, keyId: String(key.id), key: String(key.secret), name: org.name };
  }

  /** ConnectionService as `org`, over gRPC-Web, to check through the API what the page did. */
  connections(org: Org): Client<typeof ConnectionService> {
    const transport = createGrpcWebTransport({
      baseUrl: this.baseUrl,
      interceptors: [
        (next) => async (req) => {
          req.header.set("authorization", `Bearer ${org.key}`);
          return await next(req);
        },
      ],
    });
    return createClient(ConnectionService, transport);
  }

  /** Ends the server process: SIGTERM, then SIGKILL if it has not exited within 30 s. */
  private async terminate(): Promise<void> {
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, 30_000)))]);
      clearTimeout(timer);
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGKILL");
        await exited;
      }
    }
  }

  async stop(): Promise<void> {
    await this.terminate();
    rmSync(this.tmp, { recursive: true, force: true });
  }
}

/** Headless Chromium, from the system's package. */
export async function launch(): Promise<Browser> {
  accessSync(CHROMIUM, constants.X_OK);
  mkdirSync(SCREENSHOTS, { recursive: true });
  return await chromium.launch({ executablePath: CHROMIUM, headless: true });
}

/** A browser context whose every request is recorded, to check that none left the origin. */
export async function context(
  browser: Browser,
  server: Server,
  viewport = { width: 1280, height: 900 },
): Promise<{ context: BrowserContext; requests: string[] }> {
  const context = await browser.newContext({ viewport, baseURL: server.baseUrl });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: server.baseUrl });
  const requests: string[] = [];
  context.on("request", (request) => requests.push(request.url()));
  return { context, requests };
}

/** Opens the page and signs in as `org`. */
export async function signIn(page: Page, org: Org): Promise<void> {
  await page.goto("/");
  await page.getByRole("textbox", { name: "API key" }).fill(org.key);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Connections", exact: true }).waitFor();
}
