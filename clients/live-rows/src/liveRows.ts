/**
 * A Tidewire `liveRows` subscription kept as a current `Map` of rows.
 *
 * The server sends `SNAPSHOT` pages (the matching rows as of one database
 * snapshot), one `READY`, then `INSERT` / `UPDATE` (the new row) and
 * `DELETE` (the old row) for every later change, each with a `cursor`.
 * This helper:
 *
 * - builds a snapshot in a separate map and swaps it in at `READY`, so a
 *   reader never sees half a set;
 * - applies changes by primary key, and never applies an item twice (an
 *   item whose cursor is not after the last applied one is skipped);
 * - on a lost connection or a retryable error, subscribes again with
 *   `after:` the cursor of `READY` or the last applied change (never a
 *   `SNAPSHOT` cursor: a snapshot cut short is discarded and started over);
 * - on `CURSOR_EXPIRED`, starts over with a fresh snapshot and replaces the
 *   set at its `READY`;
 * - stops on errors that retrying cannot fix (`BAD_USER_INPUT`,
 *   `FORBIDDEN`, `UNAUTHENTICATED`, or the socket closed with 4400, 4401
 *   or 4403).
 *
 * It has no runtime dependency: pass `client` (a `graphql-ws` `Client`, or
 * anything with the same `subscribe(payload, sink)`) or a bare `subscribe`
 * function.
 */

/** A row as the server sends it (`to_jsonb` of the table's row). */
export type Row = Record<string, unknown>;

/** What a `subscribe` receives: the shape of `graphql-ws`'s `Sink`. */
export interface Sink {
  next(value: unknown): void;
  error(error: unknown): void;
  complete(): void;
}

/** A GraphQL request, as `graphql-ws`'s `SubscribePayload`. */
export interface SubscribeRequest {
  query: string;
  variables: Record<string, unknown>;
}

/** Starts one subscription; returns the function that ends it. */
export type SubscribeFn = (request: SubscribeRequest, sink: Sink) => () => void;

/** Anything with `graphql-ws`'s `Client.subscribe`. */
export interface SubscribeClient {
  subscribe(request: SubscribeRequest, sink: Sink): () => void;
}

export type LiveKind = "SNAPSHOT" | "READY" | "INSERT" | "UPDATE" | "DELETE";

/** One `liveRows` item. */
export interface LiveItem {
  kind: LiveKind;
  rows: unknown[];
  cursor: string;
}

/** What changed in `rows`; `onChange` is told each. */
export type LiveChange<R extends Row = Row> =
  /** A complete snapshot replaced the set (the first one, or a rebuild). */
  | { type: "reset"; rows: ReadonlyMap<string, R>; previous: ReadonlyMap<string, R> }
  | { type: "insert"; key: string; row: R }
  | { type: "update"; key: string; row: R; previous: R }
  | { type: "delete"; key: string; previous: R };

export type LiveStatus =
  /** Subscribing without `after`: a snapshot is on its way. */
  | "connecting"
  /** Subscribed with `after:` the last cursor. */
  | "resuming"
  /** A snapshot is arriving (not shown until `READY`). */
  | "snapshot"
  /** Up to date; changes are applied as they come. */
  | "live"
  /** Waiting before subscribing again. */
  | "retrying"
  /** Ended by `close()` or an error retrying cannot fix. */
  | "stopped";

export interface RetryOptions {
  /** First wait after a failure (default 250 ms). */
  initialDelayMs?: number;
  /** Longest wait (default 10 s). */
  maxDelayMs?: number;
  /** Growth per consecutive failure (default 2). */
  factor?: number;
  /** Consecutive failures before giving up (default: never give up). */
  maxAttempts?: number;
}

/** Counters for what the helper absorbed; all but `replaysSkipped`,
 * `resumes`, `snapshots` and `retries` should stay zero against a correct
 * server. */
export interface LiveStats {
  /** Snapshots swapped in at `READY`. */
  snapshots: number;
  /** Subscriptions made with `after:`. */
  resumes: number;
  /** Failures that led to a new subscription. */
  retries: number;
  /** Change items at or before the last applied cursor, not applied. */
  replaysSkipped: number;
  /** `INSERT`s of a key the set already held (applied as an update). */
  duplicateInserts: number;
  /** `UPDATE`s of a key the set did not hold (applied as an insert). */
  missingUpdates: number;
  /** `DELETE`s of a key the set did not hold (nothing to remove). */
  missingDeletes: number;
  /** Keys sent twice within one snapshot. */
  duplicateSnapshotRows: number;
  /** Items that made no sense where they came (e.g. a change before `READY`). */
  unexpectedItems: number;
}

export interface LiveRowsOptions<R extends Row = Row> {
  /** A `graphql-ws` `Client` (or the same shape). */
  client?: SubscribeClient;
  /** Or a bare subscribe function (e.g. `client.subscribe.bind(client)`). */
  subscribe?: SubscribeFn;
  /** The tracked table, as in `liveRows(table:)`. */
  table: string;
  /** The `where` filter, as in `liveRows(where:)`. */
  where?: unknown;
  /** Primary-key columns (default `["id"]`), or a function giving a row's key. */
  key?: readonly string[] | ((row: R) => string);
  /** Told each change to `rows`, after it is applied. */
  onChange?: (change: LiveChange<R>, live: LiveRows<R>) => void;
  /** Told each error: `error.willRetry` says whether the helper goes on. */
  onError?: (error: LiveRowsError, live: LiveRows<R>) => void;
  /** Told each status change. */
  onStatus?: (status: LiveStatus, live: LiveRows<R>) => void;
  retry?: RetryOptions;
  /** Random source for the backoff jitter (default `Math.random`). */
  random?: () => number;
}

export interface LiveRows<R extends Row = Row> {
  /** The current set, by key. Replaced by a new `Map` at each `READY`:
   * read it through `live.rows` rather than keeping the `Map`. Never holds
   * a partial snapshot. */
  readonly rows: ReadonlyMap<string, R>;
  /** True once a complete snapshot has been applied (stays true while a
   * rebuild is under way: `rows` then still holds the previous set). */
  readonly ready: boolean;
  /** The cursor a resume would use: that of `READY` or the last applied change. */
  readonly cursor: string | undefined;
  readonly status: LiveStatus;
  /** The error that stopped the helper, if one did. */
  readonly error: LiveRowsError | undefined;
  readonly stats: Readonly<LiveStats>;
  /** The key of a row (or of an object holding its key columns). */
  keyOf(row: Partial<R>): string;
  /** Ends the subscription; nothing is applied or reported afterwards. */
  close(): void;
}

/** Error codes retrying cannot fix. */
export const NON_RETRYABLE_CODES: readonly string[] = ["BAD_USER_INPUT", "FORBIDDEN", "UNAUTHENTICATED"];
/** WebSocket close codes retrying cannot fix: bad request, unauthorized, forbidden. */
export const NON_RETRYABLE_CLOSE_CODES: readonly number[] = [4400, 4401, 4403];

export class LiveRowsError extends Error {
  /** The GraphQL error's `extensions.code`, if it had one. */
  readonly code: string | undefined;
  /** The WebSocket close code, if the socket closed. */
  readonly closeCode: number | undefined;
  /** Whether subscribing again can help. */
  readonly retryable: boolean;
  /** Whether the helper will subscribe again (false once it stopped). */
  willRetry = false;
  /** The wait before that, in milliseconds. */
  retryInMs: number | undefined;
  /** What was received: GraphQL errors, a close event, an `Error`, … */
  readonly cause: unknown;

  constructor(message: string, options: { code?: string; closeCode?: number; cause?: unknown }) {
    super(message);
    this.name = "LiveRowsError";
    this.code = options.code;
    this.closeCode = options.closeCode;
    this.cause = options.cause;
    this.retryable =
      (options.code === undefined || !NON_RETRYABLE_CODES.includes(options.code)) &&
      (options.closeCode === undefined || !NON_RETRYABLE_CLOSE_CODES.includes(options.closeCode));
  }
}

export const LIVE_ROWS_QUERY = `subscription LiveRows($table: String!, $where: JSON, $after: String) {
  liveRows(table: $table, where: $where, after: $after) { kind rows cursor }
}`;

/** A parsed cursor `tw1:<hex position>:<hex change>`, or `undefined`. */
export function parseCursor(cursor: string): [bigint, bigint] | undefined {
  const match = /^tw1:([0-9a-f]+):([0-9a-f]+)$/i.exec(cursor);
  if (!match) return undefined;
  return [BigInt(`0x${match[1]}`), BigInt(`0x${match[2]}`)];
}

/** Orders two cursors as the log does (position, then change): negative,
 * zero or positive; `undefined` when either is not a cursor. */
export function compareCursors(a: string, b: string): number | undefined {
  const x = parseCursor(a);
  const y = parseCursor(b);
  if (!x || !y) return undefined;
  if (x[0] !== y[0]) return x[0] < y[0] ? -1 : 1;
  if (x[1] !== y[1]) return x[1] < y[1] ? -1 : 1;
  return 0;
}

/** A stable key from the key columns' values: `JSON.stringify([v1, …])`. */
export function rowKey(row: Partial<Row>, columns: readonly string[]): string {
  return JSON.stringify(columns.map((column) => row[column] ?? null));
}

/** The wait before subscribing again after `failures` consecutive failures
 * (0 for the first): exponential, capped, with jitter in [½, 1] of it. */
export function backoffDelay(failures: number, retry: RetryOptions = {}, random: () => number = Math.random): number {
  const initial = retry.initialDelayMs ?? 250;
  const max = retry.maxDelayMs ?? 10_000;
  const factor = retry.factor ?? 2;
  const ceiling = Math.min(max, initial * Math.pow(factor, Math.min(failures, 64)));
  return Math.round(ceiling / 2 + (ceiling / 2) * Math.min(1, Math.max(0, random())));
}

/** What an error received from the transport means. */
export function toLiveRowsError(received: unknown): LiveRowsError {
  if (received instanceof LiveRowsError) return received;
  // GraphQL errors: an `error` message's payload, or a result's `errors`.
  if (Array.isArray(received) && received.length > 0) {
    const first = received[0] as { message?: unknown; extensions?: { code?: unknown } };
    const code = typeof first?.extensions?.code === "string" ? first.extensions.code : undefined;
    const message = typeof first?.message === "string" ? first.message : "GraphQL error";
    return new LiveRowsError(message, { code, cause: received });
  }
  // A CloseEvent (or an object like one).
  if (isObject(received) && typeof received.code === "number" && "reason" in received) {
    const reason = typeof received.reason === "string" && received.reason ? `: ${received.reason}` : "";
    return new LiveRowsError(`the connection closed (${received.code}${reason})`, {
      closeCode: received.code,
      cause: received,
    });
  }
  if (received instanceof Error) {
    return new LiveRowsError(received.message, { cause: received });
  }
  return new LiveRowsError("the connection failed", { cause: received });
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null;
}

function isLiveItem(value: unknown): value is LiveItem {
  return (
    isObject(value) &&
    typeof value.kind === "string" &&
    Array.isArray(value.rows) &&
    typeof value.cursor === "string"
  );
}

/** Subscribes to `liveRows` and keeps `rows` current until `close()`. */
export function liveRows<R extends Row = Row>(options: LiveRowsOptions<R>): LiveRows<R> {
  const client = options.client;
  const given: SubscribeFn | undefined =
    options.subscribe ?? (client ? (request, sink) => client.subscribe(request, sink) : undefined);
  if (!given) throw new TypeError("liveRows: pass `client` or `subscribe`");
  const subscribe: SubscribeFn = given;
  const keyOption = options.key ?? ["id"];
  const keyOf =
    typeof keyOption === "function"
      ? (row: Partial<R>) => keyOption(row as R)
      : (row: Partial<R>) => rowKey(row, keyOption);
  const random = options.random ?? Math.random;

  let rows = new Map<string, R>();
  /** The snapshot being received, and its cursor. */
  let pending: Map<string, R> | undefined;
  let pendingCursor: string | undefined;
  let ready = false;
  /** Cursor of `READY` or the last applied change: what a resume uses. */
  let cursor: string | undefined;
  let status: LiveStatus = "connecting";
  let stopError: LiveRowsError | undefined;
  let closed = false;
  /** Bumped for each subscription: callbacks of an older one are ignored. */
  let attempt = 0;
  let unsubscribe: (() => void) | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  /** Consecutive failures: reset by a `READY` or an applied change, or
   * by a subscription that lasted longer than the longest wait. */
  let failures = 0;
  let startedAt = 0;
  const stats: LiveStats = {
    snapshots: 0,
    resumes: 0,
    retries: 0,
    replaysSkipped: 0,
    duplicateInserts: 0,
    missingUpdates: 0,
    missingDeletes: 0,
    duplicateSnapshotRows: 0,
    unexpectedItems: 0,
  };

  const live: LiveRows<R> = {
    get rows() {
      return rows;
    },
    get ready() {
      return ready;
    },
    get cursor() {
      return cursor;
    },
    get status() {
      return status;
    },
    get error() {
      return stopError;
    },
    stats,
    keyOf,
    close() {
      if (closed) return;
      closed = true;
      attempt++;
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
      pending = undefined;
      pendingCursor = undefined;
      setStatus("stopped");
      endSubscription();
    },
  };

  /** Calls a caller's callback; what it throws is reported apart (the
   * browser's `reportError`, else rethrown from a timer), so it cannot leave
   * an item half applied nor break the transport. */
  function tell<A>(callback: ((argument: A, live: LiveRows<R>) => void) | undefined, argument: A) {
    if (!callback) return;
    try {
      callback(argument, live);
    } catch (thrown) {
      const report = (globalThis as { reportError?: (error: unknown) => void }).reportError;
      if (typeof report === "function") report(thrown);
      else
        setTimeout(() => {
          throw thrown;
        }, 0);
    }
  }

  function setStatus(next: LiveStatus) {
    if (status === next) return;
    status = next;
    tell(options.onStatus, next);
  }

  function changed(change: LiveChange<R>) {
    tell(options.onChange, change);
  }

  function endSubscription() {
    const end = unsubscribe;
    unsubscribe = undefined;
    end?.();
  }

  function start() {
    if (closed) return;
    timer = undefined;
    startedAt = Date.now();
    const mine = ++attempt;
    const variables: Record<string, unknown> = { table: options.table };
    if (options.where !== undefined) variables.where = options.where;
    if (cursor !== undefined) {
      variables.after = cursor;
      stats.resumes++;
      setStatus("resuming");
    } else {
      setStatus("connecting");
    }
    const current = () => mine === attempt && !closed;
    const end = subscribe(
      { query: LIVE_ROWS_QUERY, variables },
      {
        next(value) {
          if (!current()) return;
          const result = value as { data?: { liveRows?: unknown } | null; errors?: unknown };
          if (Array.isArray(result?.errors) && result.errors.length > 0) {
            fail(toLiveRowsError(result.errors));
            return;
          }
          const item = result?.data?.liveRows;
          if (!isLiveItem(item)) {
            fail(new LiveRowsError("a result without a liveRows item", { cause: value }));
            return;
          }
          apply(item);
        },
        error(error) {
          if (current()) fail(toLiveRowsError(error));
        },
        complete() {
          // liveRows never ends by itself: the connection went away.
          if (current()) fail(new LiveRowsError("the subscription ended", { code: "COMPLETED" }));
        },
      },
    );
    if (current()) unsubscribe = end;
    else end(); // It failed (or was closed) while subscribing.
  }

  function fail(error: LiveRowsError) {
    attempt++; // Nothing more from this subscription.
    endSubscription();
    // A snapshot cut short cannot be resumed: the next one starts afresh.
    pending = undefined;
    pendingCursor = undefined;
    if (error.code === "CURSOR_EXPIRED") {
      // The log no longer reaches back to the cursor: rebuild from a fresh
      // snapshot; `rows` stays as it is until that one's READY.
      cursor = undefined;
    }
    if (Date.now() - startedAt > (options.retry?.maxDelayMs ?? 10_000)) failures = 0;
    const giveUp =
      !error.retryable || (options.retry?.maxAttempts !== undefined && failures + 1 >= options.retry.maxAttempts);
    if (giveUp) {
      closed = true;
      stopError = error;
      error.willRetry = false;
      setStatus("stopped");
      tell(options.onError, error);
      return;
    }
    const delay = backoffDelay(failures, options.retry, random);
    failures++;
    stats.retries++;
    error.willRetry = true;
    error.retryInMs = delay;
    setStatus("retrying");
    tell(options.onError, error);
    if (!closed) timer = setTimeout(start, delay);
  }

  function apply(item: LiveItem) {
    switch (item.kind) {
      case "SNAPSHOT": {
        if (pending === undefined || pendingCursor !== item.cursor) {
          // A new snapshot (the first, a rebuild, or the transport
          // resubscribing by itself): whatever was pending is stale.
          pending = new Map();
          pendingCursor = item.cursor;
        }
        setStatus("snapshot");
        for (const raw of item.rows) {
          const row = raw as R;
          const key = keyOf(row);
          if (pending.has(key)) stats.duplicateSnapshotRows++;
          pending.set(key, row);
        }
        return;
      }
      case "READY": {
        // Pages of another snapshot than this READY's are not its rows.
        const next = pending !== undefined && pendingCursor === item.cursor ? pending : new Map<string, R>();
        pending = undefined;
        pendingCursor = undefined;
        const previous = rows;
        rows = next;
        ready = true;
        cursor = item.cursor;
        failures = 0;
        stats.snapshots++;
        setStatus("live");
        changed({ type: "reset", rows, previous });
        return;
      }
      case "INSERT":
      case "UPDATE":
      case "DELETE":
        break;
      default:
        stats.unexpectedItems++;
        return;
    }
    if (pending !== undefined || cursor === undefined) {
      // A change before READY: the server never sends one.
      stats.unexpectedItems++;
      return;
    }
    const order = compareCursors(item.cursor, cursor);
    if (order !== undefined && order <= 0) {
      stats.replaysSkipped++;
      return;
    }
    cursor = item.cursor;
    failures = 0;
    setStatus("live");
    for (const raw of item.rows) {
      const row = raw as R;
      const key = keyOf(row);
      const previous = rows.get(key);
      if (item.kind === "DELETE") {
        if (previous === undefined) {
          stats.missingDeletes++;
          continue;
        }
        rows.delete(key);
        changed({ type: "delete", key, previous });
        continue;
      }
      if (item.kind === "INSERT" && previous !== undefined) stats.duplicateInserts++;
      if (item.kind === "UPDATE" && previous === undefined) stats.missingUpdates++;
      rows.set(key, row);
      if (previous === undefined) {
        changed({ type: "insert", key, row });
      } else if (item.kind === "UPDATE" || JSON.stringify(previous) !== JSON.stringify(row)) {
        changed({ type: "update", key, row, previous });
      }
    }
  }

  start();
  return live;
}
