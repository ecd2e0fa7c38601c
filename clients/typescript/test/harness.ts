/**
 * Runs the real `connections` binary for the tests: bootstraps organizations and API keys with
 * `connections admin`, starts `connections serve` on a free 127.0.0.1 port over a temporary
 * SQLite database, and stops it with SIGTERM; it can start again on the same database and port.
 * Every wait is bounded.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { accessSync, constants, closeSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { Code, ConnectError, connect } from "../src/client.js";

/** clients/typescript */
export const PACKAGE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");

/** CONNECTIONS_BIN, or ../../target/debug/connections relative to clients/typescript. */
export const BIN = process.env.CONNECTIONS_BIN
  ? resolve(process.env.CONNECTIONS_BIN)
  : resolve(PACKAGE_DIR, "../../target/debug/connections");

/** Deadline of every CLI call (the RPCs have theirs in the client: 10 s). */
const CLI_TIMEOUT_MS = 60_000;

export interface Org {
  id: string;
  key: string;
  name: string;
}

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

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class Server {
  readonly baseUrl: string;
  private process?: ChildProcess;
  private exited?: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  private constructor(
    readonly tmp: string,
    readonly env: NodeJS.ProcessEnv,
    readonly listen: string,
  ) {
    this.baseUrl = `http://${listen}`;
  }

  /**
   * A temporary directory and database; nothing runs yet. Fails clearly without the binary.
   * `settings`: CONNECTIONS_* environment variables for the server (e.g. its tokens). Webhook
   * endpoints on private addresses (http://127.0.0.1:...) are always allowed.
   */
  static async prepare(settings: Record<string, string> = {}): Promise<Server> {
    try {
      accessSync(BIN, constants.X_OK);
    } catch {
      throw new Error(
        `no connections binary at ${BIN}: run 'cargo build --bin connections' in the repository root, or set CONNECTIONS_BIN`,
      );
    }
    const tmp = mkdtempSync(join(tmpdir(), "connections-ts-"));
    // Only the database is configured: nothing else from the caller's CONNECTIONS_* leaks in.
    const env: NodeJS.ProcessEnv = Object.fromEntries(
      Object.entries(process.env).filter(([k]) => !k.startsWith("CONNECTIONS_")),
    );
    env.CONNECTIONS_DATABASE_URL = `sqlite://${tmp}/c.db?mode=rwc`;
    // Webhook endpoints on http://127.0.0.1 (the receiver of webhooks.test.ts) are accepted.
    env.CONNECTIONS_WEBHOOK_ALLOW_PRIVATE_ADDRESSES = "true";
    Object.assign(env, settings);
    return new Server(tmp, env, `127.0.0.1:${await freePort()}`);
  }

  get logPath(): string {
    return join(this.tmp, "server.log");
  }

  /** The end of the server's log, for failure messages. */
  log(): string {
    try {
      return readFileSync(this.logPath, "utf8").slice(-4000);
    } catch {
      return "(no server log)";
    }
  }

  /** Runs `connections <args>` on the server's database; returns its first line as JSON. */
  cli(...args: string[]): Record<string, unknown> {
    let out: string;
    try {
      out = execFileSync(BIN, args, {
        env: this.env,
        encoding: "utf8",
        timeout: CLI_TIMEOUT_MS,
        stdio: ["ignore", "pipe", "pipe"],
      });
    } catch (err) {
      const e = err as { status?: number; stderr?: string; message: string };
      throw new Error(`connections ${args.join(" ")} failed (exit ${e.status}): ${e.stderr || e.message}`);
    }
    return JSON.parse(out.split("\n")[0]!) as Record<string, unknown>;
  }

  /** A new organization and an API key for it, through the admin CLI. */
  newOrg(name: string): Org {
    const org = this.cli("admin", "create-org", "--name", name);
    const key = this.cli("admin", "create-key", "--org", String(org.id), "--name", "typescript tests");
    if (typeof org.id !== "string" || typeof key.secret !== "string") {
      throw new Error(`unexpected admin output: ${JSON.stringify(org)} ${JSON.stringify(key)}`);
    }
    return { id: org.id, key: key.secret, name };
  }

  /**
   * Starts `connections serve` (again after stop(): same database and port) and waits (bounded)
   * until a real RPC with `org`'s key succeeds.
   */
  async start(org: Org, attempts = 150, delayMs = 200): Promise<void> {
    const logFd = openSync(this.logPath, "a");
    try {
      const child = spawn(BIN, ["serve", "--listen", this.listen], {
        env: this.env,
        stdio: ["ignore", logFd, logFd],
      });
      this.process = child;
      this.exited = new Promise((r) => child.once("exit", (code, signal) => r({ code, signal })));
    } finally {
      closeSync(logFd);
    }
    const probe = connect({ baseUrl: this.baseUrl, apiKey: org.key, protocol: "grpc", timeoutMs: 1000 });
    try {
      for (let i = 0; i < attempts; i++) {
        if (this.process.exitCode !== null || this.process.signalCode !== null) {
          throw new Error(`server exited (${this.process.exitCode ?? this.process.signalCode}) at start:\n${this.log()}`);
        }
        try {
          await probe.organizations.getOrganization({});
          return;
        } catch (err) {
          const code = ConnectError.from(err).code;
          if (code !== Code.Unavailable && code !== Code.DeadlineExceeded) throw err;
        }
        await sleep(delayMs);
      }
      throw new Error(`server did not answer on ${this.listen} within ${(attempts * delayMs) / 1000}s:\n${this.log()}`);
    } finally {
      probe.close();
    }
  }

  /** Whether start() spawned the server process. */
  get started(): boolean {
    return this.process !== undefined;
  }

  /** SIGTERM, then waits (bounded) for the exit; SIGKILL and throws if it does not come. */
  async stop(timeoutMs = 30_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (!this.process || !this.exited) throw new Error("server was not started");
    if (this.process.exitCode === null && this.process.signalCode === null) this.process.kill("SIGTERM");
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<"timeout">((r) => (timer = setTimeout(() => r("timeout"), timeoutMs)));
    const result = await Promise.race([this.exited, timedOut]);
    clearTimeout(timer);
    if (result === "timeout") {
      this.process.kill("SIGKILL");
      await this.exited;
      throw new Error(`server did not stop within ${timeoutMs / 1000}s of SIGTERM:\n${this.log()}`);
    }
    return result;
  }

  /** Removes the temporary directory (database and log). */
  cleanup(): void {
    rmSync(this.tmp, { recursive: true, force: true });
  }
}
