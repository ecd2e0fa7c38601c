/**
 * The page's live view of changes: one WatchConnectionEvents stream per signed-in page, shared by
 * every view that shows connections, instead of each view asking again every few seconds.
 *
 * An organization may hold only a few streams at once (the server refuses more with
 * WATCH_LIMIT_EXCEEDED), so the page never opens more than one, and closes it when no view has
 * followed it for a few seconds, when the tab has been in the background for a minute, and on
 * sign-out. It opens again, from where it stopped, when a view needs it.
 *
 * Why no change is ever missed:
 *
 * - Every message carries the change token to resume after it. After the stream ends (the server
 *   stopped: UNAVAILABLE or a cut stream; the page fell behind: ABORTED; the network failed; the
 *   page closed it), the page opens it again, after a backoff, *from its last token*: the server
 *   then sends every event after that token, including those committed while the page was away.
 *   Views apply them as they arrive, so no snapshot is needed after a resume.
 * - Only when the page has no token yet (the first stream of the page, or one that ended before
 *   its first message, or a token the server no longer accepts) does it watch "from now". The
 *   views load their own snapshot (ListConnections, GetConnection, ...) when they open, but that
 *   snapshot may have been read just before the server fixed where "from now" starts, and a change
 *   committed in between would be in neither. The server fixes that point before it sends the
 *   stream's first message (an event or a heartbeat), so at the first message of a "from now"
 *   stream the page asks every view to load its snapshot again (`onResync`): everything before
 *   the stream's start is in that snapshot, everything after it comes on the stream. Tokens of
 *   write responses are not used to resume: a write's token covers every change committed before
 *   the write, including events of the other party the stream may not have delivered yet, so
 *   resuming from it could skip them.
 * - Views tolerate seeing a change twice (in their snapshot and on the stream): they reload what
 *   an event touches, or append an event only when it is the next one they do not show yet.
 *
 * The stream is live while messages arrive: the server sends a heartbeat at least every
 * `--watch-heartbeat-interval`. A stream silent for much longer than that is dead (e.g. a network
 * that dropped the connection without closing it) and is opened again. The page learns the
 * interval from the heartbeats it sees; until then it waits long enough for the default (15 s).
 */
import { Code, ConnectError, ErrorReason, problem, type Api, type Problem } from "./api.js";
import type { ConnectionEvent } from "./gen/connections/v1/resources_pb.js";

/** What the page can tell the user about its live view. */
export type LiveState =
  /** No stream is open: no view follows changes now, or the tab is in the background. */
  | { kind: "idle" }
  /** Opening the stream. */
  | { kind: "connecting" }
  /** The stream is open: changes appear as they are committed. */
  | { kind: "live" }
  /**
   * The stream ended and will be opened again. Changes made since `since` (the last moment the
   * page knew the stream was working) may not be shown yet. `problem` is the refusal, when it is
   * one the user can act on (e.g. too many open streams).
   */
  | { kind: "reconnecting"; since: Date; problem: Problem | null }
  /** The server refused the stream in a way trying again cannot fix (e.g. the key was revoked). */
  | { kind: "stopped"; problem: Problem };

/** A view that follows changes. */
export interface LiveListener {
  /** An event of one of the organization's connections, in the change log's order. */
  onEvent?(event: ConnectionEvent): void;
  /** Changes may have been missed: load what the view shows again. */
  onResync?(): void;
}

/** How long the stream stays open after the last view stopped following it. */
const IDLE_LINGER_MS = 10_000;
/** How long the stream stays open while the tab is in the background. */
const HIDDEN_LINGER_MS = 60_000;
/** Backoff between attempts: the first delay, and the longest. */
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30_000;
/** Silence after which a stream counts as dead while the heartbeat interval is unknown. */
const SILENCE_GUESS_MS = 45_000;
/** Longest silence tolerated, however long the server's heartbeat interval seems. */
const SILENCE_MAX_MS = 10 * 60_000;

export class LiveFeed {
  private readonly listeners = new Set<LiveListener>();
  private readonly watchers = new Set<(state: LiveState) => void>();
  private state: LiveState = { kind: "idle" };
  /** Where the next stream starts; "" = from now. */
  private token = "";
  /** Whether a stream should be open now (some view follows it, the tab is not long hidden). */
  private wanted = false;
  private closed = false;
  private running = false;
  private linger: number | undefined;
  /** Aborts the open stream, or ends the wait before the next attempt. */
  private abort: AbortController | null = null;
  private wake: (() => void) | null = null;
  /** The last moment the page knew the stream was working. */
  private lastAlive = new Date();
  /** The interval between two heartbeats, once seen. */
  private heartbeatMs: number | null = null;
  private silenceGuessMs = SILENCE_GUESS_MS;

  constructor(private readonly api: Api) {
    document.addEventListener("visibilitychange", this.reconsider);
    window.addEventListener("online", this.retryNow);
  }

  /** Follows changes until the returned function is called. */
  subscribe(listener: LiveListener): () => void {
    this.listeners.add(listener);
    this.reconsider();
    return () => {
      this.listeners.delete(listener);
      this.reconsider();
    };
  }

  /** The state now, then every change of it, until the returned function is called. */
  watchState(watcher: (state: LiveState) => void): () => void {
    this.watchers.add(watcher);
    watcher(this.state);
    return () => this.watchers.delete(watcher);
  }

  /** Closes the stream for good (sign-out). */
  close(): void {
    this.closed = true;
    this.wanted = false;
    window.clearTimeout(this.linger);
    document.removeEventListener("visibilitychange", this.reconsider);
    window.removeEventListener("online", this.retryNow);
    this.listeners.clear();
    this.abort?.abort();
    this.wake?.();
    this.setState({ kind: "idle" });
    this.watchers.clear();
  }

  /** Opens or closes the stream as the views and the tab's visibility require. */
  private readonly reconsider = (): void => {
    if (this.closed) return;
    const needed = this.listeners.size > 0 && document.visibilityState !== "hidden";
    window.clearTimeout(this.linger);
    this.linger = undefined;
    if (needed) {
      this.wanted = true;
      void this.run();
    } else if (this.wanted) {
      const after = this.listeners.size > 0 ? HIDDEN_LINGER_MS : IDLE_LINGER_MS;
      this.linger = window.setTimeout(() => {
        this.linger = undefined;
        this.wanted = false;
        this.abort?.abort();
        this.wake?.();
      }, after);
    }
  };

  /** Ends the wait before the next attempt (the browser is back online). */
  private readonly retryNow = (): void => {
    this.wake?.();
  };

  private setState(state: LiveState): void {
    this.state = state;
    for (const watcher of [...this.watchers]) watcher(state);
  }

  /** Keeps a stream open while one is wanted. */
  private async run(): Promise<void> {
    if (this.running) return;
    this.running = true;
    let failures = 0;
    try {
      while (this.wanted && !this.closed) {
        const { received, error } = await this.attempt();
        if (!this.wanted || this.closed) break;
        if (received) failures = 0;
        const refused = problem(error);
        const code = ConnectError.from(error).code;
        if (refused.reason === ErrorReason.INVALID_CHANGE_TOKEN) {
          // The server no longer knows the token: start from now; the views load a snapshot
          // again at the first message (see above).
          this.token = "";
        } else if (
          [Code.Unauthenticated, Code.PermissionDenied, Code.InvalidArgument, Code.Unimplemented].includes(code)
        ) {
          this.setState({ kind: "stopped", problem: refused });
          this.wanted = false;
          break;
        }
        this.setState({
          kind: "reconnecting",
          since: this.lastAlive,
          problem: refused.reason === ErrorReason.WATCH_LIMIT_EXCEEDED ? refused : null,
        });
        const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** failures) * (0.5 + Math.random() / 2);
        failures += 1;
        await this.pause(delay);
      }
    } finally {
      this.running = false;
      if (!this.closed && !this.wanted && this.state.kind !== "stopped") this.setState({ kind: "idle" });
    }
    // Wanted again while this loop was ending.
    if (this.wanted && !this.closed) void this.run();
  }

  /** Waits `ms`, or less if woken. */
  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        window.clearTimeout(timer);
        this.wake = null;
        resolve();
      };
      const timer = window.setTimeout(done, ms);
      this.wake = done;
    });
  }

  /** Silence after which the open stream counts as dead. */
  private silenceLimitMs(): number {
    return this.heartbeatMs === null
      ? this.silenceGuessMs
      : Math.min(SILENCE_MAX_MS, Math.max(10_000, 3 * this.heartbeatMs + 2_000));
  }

  /** One stream, from the last token, until it ends; what ended it. */
  private async attempt(): Promise<{ received: boolean; error: unknown }> {
    const controller = new AbortController();
    this.abort = controller;
    const fromNow = this.token === "";
    let received = false;
    let silent = false;
    let watchdog: number | undefined;
    const arm = () => {
      window.clearTimeout(watchdog);
      watchdog = window.setTimeout(() => {
        silent = true;
        controller.abort();
      }, this.silenceLimitMs());
    };
    let lastHeartbeat: number | null = null;
    if (this.state.kind !== "reconnecting") this.setState({ kind: "connecting" });
    try {
      arm();
      const stream = this.api.connections.watchConnectionEvents(
        { afterChangeToken: this.token },
        {
          signal: controller.signal,
          // A stream has no deadline; the watchdog ends a silent one.
          timeoutMs: 0,
          onHeader: () => this.alive(),
        },
      );
      for await (const message of stream) {
        arm();
        const now = Date.now();
        if (!message.event) {
          if (lastHeartbeat !== null) this.heartbeatMs = Math.max(this.heartbeatMs ?? 0, now - lastHeartbeat);
          lastHeartbeat = now;
        }
        if (message.changeToken) this.token = message.changeToken;
        this.alive();
        const event = message.event;
        if (event) this.notify((listener) => listener.onEvent?.(event));
        if (fromNow && !received) this.notify((listener) => listener.onResync?.());
        received = true;
      }
      return { received, error: new ConnectError("the stream ended", Code.Unavailable) };
    } catch (error) {
      if (silent && !received) {
        // Perhaps the server's heartbeats are further apart than guessed.
        this.silenceGuessMs = Math.min(SILENCE_MAX_MS, this.silenceGuessMs * 2);
      }
      return { received, error: silent ? new ConnectError("the stream went silent", Code.Unavailable) : error };
    } finally {
      window.clearTimeout(watchdog);
      if (this.abort === controller) this.abort = null;
    }
  }

  /** Tells every view; one that fails does not keep the others from hearing, nor end the stream. */
  private notify(tell: (listener: LiveListener) => void): void {
    for (const listener of [...this.listeners]) {
      try {
        tell(listener);
      } catch (err) {
        reportError(err);
      }
    }
  }

  private alive(): void {
    this.lastAlive = new Date();
    if (this.state.kind !== "live") this.setState({ kind: "live" });
  }
}
