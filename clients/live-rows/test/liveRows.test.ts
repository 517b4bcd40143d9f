// Unit tests of the helper against a fake subscribe function: no server.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  LiveChange,
  LiveItem,
  LiveRowsError,
  Row,
  Sink,
  SubscribeRequest,
  backoffDelay,
  compareCursors,
  liveRows,
  rowKey,
} from "../src/liveRows.js";

/** One subscription the helper made. */
interface Call {
  variables: Record<string, unknown>;
  sink: Sink;
  unsubscribed: boolean;
}

/** A subscribe function that records each call; items are pushed by hand. */
function fake() {
  const calls: Call[] = [];
  const subscribe = (request: SubscribeRequest, sink: Sink) => {
    assert.match(request.query, /liveRows\(table: \$table, where: \$where, after: \$after\)/);
    const call: Call = { variables: request.variables, sink, unsubscribed: false };
    calls.push(call);
    return () => {
      call.unsubscribed = true;
    };
  };
  const last = () => calls[calls.length - 1];
  const send = (item: LiveItem, call = last()) => call.sink.next({ data: { liveRows: item } });
  return { calls, subscribe, last, send };
}

const snapshot = (cursor: string, ...rows: Row[]): LiveItem => ({ kind: "SNAPSHOT", rows, cursor });
const ready = (cursor: string): LiveItem => ({ kind: "READY", rows: [], cursor });
const insert = (cursor: string, row: Row): LiveItem => ({ kind: "INSERT", rows: [row], cursor });
const update = (cursor: string, row: Row): LiveItem => ({ kind: "UPDATE", rows: [row], cursor });
const remove = (cursor: string, row: Row): LiveItem => ({ kind: "DELETE", rows: [row], cursor });

/** Snapshot cursors end in i64::MAX, as the server's do. */
const SNAP_A = "tw1:a:7fffffffffffffff";
const SNAP_B = "tw1:20:7fffffffffffffff";

const FAST = { initialDelayMs: 1, maxDelayMs: 5 };

/** The rows as plain `[key, row]` pairs, sorted by key. */
function entries(rows: ReadonlyMap<string, Row>): [string, Row][] {
  return [...rows.entries()].sort(([a], [b]) => a.localeCompare(b));
}

async function until(condition: () => boolean, what: string) {
  const deadline = Date.now() + 2000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

/** A helper with the fake, recording onChange and onError. */
function start(options: { key?: string[]; where?: unknown } = {}) {
  const f = fake();
  const changes: LiveChange[] = [];
  const errors: LiveRowsError[] = [];
  const live = liveRows({
    subscribe: f.subscribe,
    table: "items",
    retry: FAST,
    onChange: (change) => changes.push(change),
    onError: (error) => errors.push(error),
    ...options,
  });
  return { ...f, live, changes, errors };
}

describe("cursors and keys", () => {
  test("cursors compare by position then change, numerically", () => {
    assert.equal(compareCursors("tw1:f:2", "tw1:10:1"), -1); // 15 < 16, though "f" > "1"
    assert.equal(compareCursors("tw1:10:a", "tw1:10:9"), 1);
    assert.equal(compareCursors("tw1:10:2", "tw1:10:10"), -1);
    assert.equal(compareCursors("tw1:10:10", "tw1:10:10"), 0);
    assert.equal(compareCursors("tw1:a:7fffffffffffffff", "tw1:b:1"), -1);
    assert.equal(compareCursors("nonsense", "tw1:1:1"), undefined);
  });

  test("keys are the key columns' values, stable and typed", () => {
    assert.equal(rowKey({ id: 1, name: "x" }, ["id"]), "[1]");
    assert.notEqual(rowKey({ id: 1 }, ["id"]), rowKey({ id: "1" }, ["id"]));
    assert.equal(rowKey({ b: 2, a: "x", c: 3 }, ["a", "b"]), '["x",2]');
  });

  test("backoff grows, is capped and has jitter", () => {
    const retry = { initialDelayMs: 100, maxDelayMs: 1000 };
    assert.equal(backoffDelay(0, retry, () => 1), 100);
    assert.equal(backoffDelay(0, retry, () => 0), 50);
    assert.equal(backoffDelay(3, retry, () => 1), 800);
    assert.equal(backoffDelay(4, retry, () => 1), 1000);
    assert.equal(backoffDelay(500, retry, () => 1), 1000);
    for (let failures = 0; failures < 20; failures++) {
      const delay = backoffDelay(failures, retry);
      assert.ok(delay >= 50 && delay <= 1000, `${delay}`);
    }
  });
});

describe("applying items", () => {
  test("snapshot pages are swapped in whole at READY", () => {
    const t = start({ where: { status: "open" } });
    assert.deepEqual(t.calls[0].variables, { table: "items", where: { status: "open" } });
    assert.equal(t.live.status, "connecting");
    t.send(snapshot(SNAP_A, { id: 1, n: 1 }, { id: 2, n: 2 }));
    t.send(snapshot(SNAP_A, { id: 3, n: 3 }));
    // Nothing shown before READY.
    assert.equal(t.live.rows.size, 0);
    assert.equal(t.live.ready, false);
    assert.equal(t.live.cursor, undefined, "a SNAPSHOT cursor is never a resume point");
    assert.equal(t.live.status, "snapshot");
    assert.equal(t.changes.length, 0);
    t.send(ready(SNAP_A));
    assert.equal(t.live.ready, true);
    assert.equal(t.live.status, "live");
    assert.equal(t.live.cursor, SNAP_A);
    assert.deepEqual(entries(t.live.rows), [
      ["[1]", { id: 1, n: 1 }],
      ["[2]", { id: 2, n: 2 }],
      ["[3]", { id: 3, n: 3 }],
    ]);
    assert.equal(t.changes.length, 1);
    assert.equal(t.changes[0].type, "reset");
    assert.equal(t.live.stats.snapshots, 1);
  });

  test("an empty set is READY alone", () => {
    const t = start();
    t.send(ready(SNAP_A));
    assert.equal(t.live.ready, true);
    assert.equal(t.live.rows.size, 0);
  });

  test("inserts, updates and deletes apply by key and are reported", () => {
    const t = start({ key: ["tenant", "id"] });
    t.send(snapshot(SNAP_A, { tenant: "a", id: 1, v: 0 }));
    t.send(ready(SNAP_A));
    t.send(insert("tw1:b:1", { tenant: "b", id: 1, v: 0 }));
    t.send(update("tw1:b:2", { tenant: "a", id: 1, v: 1 }));
    t.send(remove("tw1:c:1", { tenant: "b", id: 1, v: 0 }));
    assert.deepEqual(entries(t.live.rows), [['["a",1]', { tenant: "a", id: 1, v: 1 }]]);
    assert.deepEqual(
      t.changes.slice(1).map((c) => [c.type, "key" in c ? c.key : ""]),
      [
        ["insert", '["b",1]'],
        ["update", '["a",1]'],
        ["delete", '["b",1]'],
      ],
    );
    const updated = t.changes[2] as Extract<LiveChange, { type: "update" }>;
    assert.deepEqual(updated.previous, { tenant: "a", id: 1, v: 0 });
    assert.equal(t.live.cursor, "tw1:c:1");
    assert.equal(t.live.keyOf({ tenant: "a", id: 1 }), '["a",1]');
    assert.ok(t.live.rows.has(t.live.keyOf({ tenant: "a", id: 1 })));
  });

  test("a replayed item or a duplicate insert is not applied twice", () => {
    const t = start();
    t.send(ready(SNAP_A));
    t.send(insert("tw1:f:1", { id: 1, v: 0 }));
    t.send(insert("tw1:10:1", { id: 2, v: 0 }));
    t.send(remove("tw1:10:2", { id: 2, v: 0 }));
    const before = t.changes.length;
    // Replays: the same items again, and items before the last cursor
    // (compared numerically: 0xf < 0x10, 0x2 < 0x10).
    t.send(insert("tw1:10:1", { id: 2, v: 0 }));
    t.send(insert("tw1:f:1", { id: 1, v: 0 }));
    t.send(update("tw1:f:9", { id: 1, v: 9 }));
    t.send(remove("tw1:10:2", { id: 2, v: 0 }));
    assert.equal(t.live.stats.replaysSkipped, 4);
    assert.equal(t.changes.length, before);
    assert.deepEqual(entries(t.live.rows), [["[1]", { id: 1, v: 0 }]]);
    // A later INSERT of a key already held replaces it: still one row.
    t.send(insert("tw1:10:10", { id: 1, v: 0 }));
    assert.equal(t.changes.length, before, "the same row again is no change");
    t.send(insert("tw1:11:1", { id: 1, v: 5 }));
    assert.equal(t.live.rows.size, 1);
    assert.deepEqual(t.live.rows.get("[1]"), { id: 1, v: 5 });
    assert.equal(t.changes[t.changes.length - 1].type, "update");
    assert.equal(t.live.stats.duplicateInserts, 2);
    assert.equal(t.live.cursor, "tw1:11:1");
  });

  test("updates and deletes of absent keys are counted, not shown twice", () => {
    const t = start();
    t.send(ready(SNAP_A));
    t.send(update("tw1:b:1", { id: 7, v: 1 }));
    t.send(remove("tw1:b:2", { id: 8 }));
    assert.deepEqual(entries(t.live.rows), [["[7]", { id: 7, v: 1 }]]);
    assert.equal(t.live.stats.missingUpdates, 1);
    assert.equal(t.live.stats.missingDeletes, 1);
    assert.deepEqual(
      t.changes.map((c) => c.type),
      ["reset", "insert"],
    );
  });

  test("a callback that throws leaves the item fully applied", () => {
    // As in a browser: reportError logs the error and goes on.
    const thrown: unknown[] = [];
    const scope = globalThis as { reportError?: (error: unknown) => void };
    scope.reportError = (error) => thrown.push(error);
    try {
      const f = fake();
      const live = liveRows({
        subscribe: f.subscribe,
        table: "items",
        onChange: () => {
          throw new Error("a caller's bug");
        },
      });
      f.send(snapshot(SNAP_A, { id: 1 }));
      f.send(ready(SNAP_A));
      f.send({ kind: "DELETE", rows: [{ id: 1 }, { id: 2 }], cursor: "tw1:b:1" });
      f.send(insert("tw1:b:2", { id: 3 }));
      assert.deepEqual([...live.rows.keys()], ["[3]"]);
      assert.equal(live.status, "live");
      // reset, delete of [1], insert of [3]; the DELETE of absent [2] tells nothing.
      assert.equal(thrown.length, 3);
      assert.match(String(thrown[0]), /a caller's bug/);
    } finally {
      delete scope.reportError;
    }
  });
});

describe("reconnecting", () => {
  test("a disconnect mid-snapshot starts over without after and drops the partial snapshot", async () => {
    const t = start();
    t.send(snapshot(SNAP_A, { id: 1 }, { id: 2 }));
    t.last().sink.error({ code: 1006, reason: "" });
    assert.equal(t.live.status, "retrying");
    assert.equal(t.errors.length, 1);
    assert.equal(t.errors[0].closeCode, 1006);
    assert.equal(t.errors[0].willRetry, true);
    await until(() => t.calls.length === 2, "a second subscription");
    assert.deepEqual(t.calls[1].variables, { table: "items" }, "no after: the snapshot was cut short");
    // Row 2 was deleted meanwhile: the new snapshot alone counts.
    t.send(snapshot(SNAP_B, { id: 1 }, { id: 3 }));
    assert.equal(t.live.rows.size, 0);
    t.send(ready(SNAP_B));
    assert.deepEqual([...t.live.rows.keys()].sort(), ["[1]", "[3]"]);
    assert.equal(t.live.stats.snapshots, 1);
  });

  test("a disconnect after READY resumes with the cursor of READY or the last change", async () => {
    const t = start();
    t.send(snapshot(SNAP_A, { id: 1 }));
    t.send(ready(SNAP_A));
    t.last().sink.error({ code: 1001, reason: "server shutting down" });
    await until(() => t.calls.length === 2, "a resume");
    assert.deepEqual(t.calls[1].variables, { table: "items", after: SNAP_A });
    assert.equal(t.live.status, "resuming");
    assert.equal(t.live.rows.size, 1, "the set stays shown while resuming");
    t.send(insert("tw1:b:1", { id: 2 }));
    t.send(update("tw1:b:2", { id: 1, v: 1 }));
    // Errors as the transport reports them: an Error, then a completion.
    t.last().sink.error(new Error("socket hang up"));
    await until(() => t.calls.length === 3, "a second resume");
    assert.deepEqual(t.calls[2].variables, { table: "items", after: "tw1:b:2" });
    // The server replays from after the cursor; a replay of older items
    // (e.g. a transport that resubscribed by itself) is skipped.
    t.send(update("tw1:b:2", { id: 1, v: 1 }));
    t.send(remove("tw1:c:1", { id: 2 }));
    t.last().sink.complete();
    await until(() => t.calls.length === 4, "a resume after completion");
    assert.deepEqual(t.calls[3].variables, { table: "items", after: "tw1:c:1" });
    assert.deepEqual(entries(t.live.rows), [["[1]", { id: 1, v: 1 }]]);
    assert.equal(t.live.stats.snapshots, 1);
    assert.equal(t.live.stats.resumes, 3);
    assert.equal(t.live.stats.replaysSkipped, 1);
    assert.ok(t.calls.slice(0, 3).every((call) => call.unsubscribed));
  });

  test("UNAVAILABLE is retried with the same cursor", async () => {
    const t = start();
    t.send(ready(SNAP_A));
    t.last().sink.error({ code: 1006, reason: "" });
    await until(() => t.calls.length === 2, "a resume");
    t.last().sink.error([{ message: "the database is unavailable", extensions: { code: "UNAVAILABLE" } }]);
    await until(() => t.calls.length === 3, "another resume");
    assert.deepEqual(t.calls[2].variables, { table: "items", after: SNAP_A });
    assert.equal(t.errors[1].code, "UNAVAILABLE");
  });

  test("a resume after a rebuild that was cut short uses the last good cursor, never a SNAPSHOT's", async () => {
    const t = start();
    t.send(snapshot(SNAP_A, { id: 1 }));
    t.send(ready(SNAP_A));
    t.send(insert("tw1:b:1", { id: 2 }));
    // The transport resubscribed by itself with the first variables: a new
    // snapshot arrives on the same subscription, then the socket drops.
    t.send(snapshot(SNAP_B, { id: 9 }));
    assert.equal(t.live.rows.size, 2, "the old set stays until READY");
    t.last().sink.error({ code: 1006, reason: "" });
    await until(() => t.calls.length === 2, "a resume");
    assert.deepEqual(t.calls[1].variables, { table: "items", after: "tw1:b:1" });
    t.send(insert("tw1:21:1", { id: 3 }));
    assert.deepEqual([...t.live.rows.keys()].sort(), ["[1]", "[2]", "[3]"]);
  });

  test("a snapshot arriving after READY rebuilds the set", () => {
    const t = start();
    t.send(snapshot(SNAP_A, { id: 1 }, { id: 2 }));
    t.send(ready(SNAP_A));
    t.send(snapshot(SNAP_B, { id: 2, v: 1 }));
    t.send(ready(SNAP_B));
    assert.deepEqual(entries(t.live.rows), [["[2]", { id: 2, v: 1 }]]);
    // A READY without its own snapshot's pages: pages of another snapshot
    // are not its rows.
    t.send(snapshot(SNAP_A, { id: 5 }));
    t.send(ready("tw1:30:7fffffffffffffff"));
    assert.equal(t.live.rows.size, 0);
    assert.equal(t.live.cursor, "tw1:30:7fffffffffffffff");
    assert.deepEqual(
      t.changes.map((c) => c.type),
      ["reset", "reset", "reset"],
    );
  });

  test("a rebuild from a kept (older) snapshot takes changes from that snapshot's cursor", () => {
    // The server may serve a snapshot read moments ago, at a position before
    // changes this helper already applied; what counts after READY is the
    // new snapshot plus every change after its cursor.
    const t = start();
    t.send(snapshot(SNAP_A, { id: 1 }));
    t.send(ready(SNAP_A));
    t.send(insert("tw1:b:1", { id: 2 }));
    t.send(snapshot(SNAP_A, { id: 1 }));
    t.send(ready(SNAP_A));
    assert.deepEqual([...t.live.rows.keys()], ["[1]"]);
    t.send(insert("tw1:b:1", { id: 2 }));
    assert.deepEqual([...t.live.rows.keys()].sort(), ["[1]", "[2]"]);
    assert.equal(t.live.stats.replaysSkipped, 0);
    assert.equal(t.live.cursor, "tw1:b:1");
  });

  test("CURSOR_EXPIRED rebuilds from a fresh snapshot, replacing the set at READY", async () => {
    const t = start();
    t.send(snapshot(SNAP_A, { id: 1 }, { id: 2 }));
    t.send(ready(SNAP_A));
    t.last().sink.error({ code: 1006, reason: "" });
    await until(() => t.calls.length === 2, "a resume");
    assert.equal(t.calls[1].variables.after, SNAP_A);
    t.last().sink.next({
      errors: [{ message: "cursor expired: refetch", extensions: { code: "CURSOR_EXPIRED" } }],
    });
    t.last().sink.complete(); // Ignored: that subscription is over.
    await until(() => t.calls.length === 3, "a fresh subscription");
    assert.deepEqual(t.calls[2].variables, { table: "items" });
    assert.equal(t.live.cursor, undefined);
    assert.equal(t.live.ready, true, "the previous set is still shown");
    assert.equal(t.live.rows.size, 2);
    t.send(snapshot(SNAP_B, { id: 2 }, { id: 3 }));
    assert.equal(t.live.rows.size, 2);
    assert.ok(t.live.rows.has("[1]"));
    t.send(ready(SNAP_B));
    assert.deepEqual([...t.live.rows.keys()].sort(), ["[2]", "[3]"]);
    assert.equal(t.live.cursor, SNAP_B);
    const reset = t.changes[t.changes.length - 1] as Extract<LiveChange, { type: "reset" }>;
    assert.equal(reset.type, "reset");
    assert.deepEqual([...reset.previous.keys()].sort(), ["[1]", "[2]"]);
    assert.equal(t.live.stats.snapshots, 2);
  });

  for (const [how, fail] of [
    ["BAD_USER_INPUT in a result", (sink: Sink) => sink.next({ errors: [{ message: "no such column", extensions: { code: "BAD_USER_INPUT" } }] })],
    ["FORBIDDEN as an error message", (sink: Sink) => sink.error([{ message: "admins only", extensions: { code: "FORBIDDEN" } }])],
    ["UNAUTHENTICATED", (sink: Sink) => sink.error([{ message: "sign in", extensions: { code: "UNAUTHENTICATED" } }])],
    ["a 4403 close", (sink: Sink) => sink.error({ code: 4403, reason: "Forbidden: the session was revoked" })],
  ] as const) {
    test(`${how} stops the helper`, async () => {
      const t = start();
      t.send(ready(SNAP_A));
      t.send(insert("tw1:b:1", { id: 1 }));
      fail(t.last().sink);
      assert.equal(t.live.status, "stopped");
      assert.equal(t.errors.length, 1);
      assert.equal(t.errors[0].willRetry, false);
      assert.equal(t.errors[0].retryable, false);
      assert.equal(t.live.error, t.errors[0]);
      assert.ok(t.last().unsubscribed);
      await new Promise((resolve) => setTimeout(resolve, 30));
      assert.equal(t.calls.length, 1, "never subscribes again");
      // Late items are ignored; the last set stays readable.
      t.send(insert("tw1:c:1", { id: 2 }));
      assert.deepEqual([...t.live.rows.keys()], ["[1]"]);
    });
  }

  test("maxAttempts bounds consecutive failures", async () => {
    const f = fake();
    const errors: LiveRowsError[] = [];
    const live = liveRows({
      subscribe: f.subscribe,
      table: "items",
      retry: { ...FAST, maxAttempts: 3 },
      onError: (error) => errors.push(error),
    });
    for (let i = 1; i <= 3; i++) {
      await until(() => f.calls.length === i, `attempt ${i}`);
      f.last().sink.error({ code: 1006, reason: "" });
    }
    assert.equal(live.status, "stopped");
    assert.deepEqual(
      errors.map((e) => e.willRetry),
      [true, true, false],
    );
  });

  test("close() ends the subscription and any pending retry", async () => {
    const t = start();
    t.send(ready(SNAP_A));
    t.last().sink.error({ code: 1006, reason: "" });
    t.live.close();
    assert.equal(t.live.status, "stopped");
    await new Promise((resolve) => setTimeout(resolve, 30));
    assert.equal(t.calls.length, 1);
    const u = start();
    u.live.close();
    assert.ok(u.last().unsubscribed);
    u.send(ready(SNAP_A));
    assert.equal(u.live.ready, false);
  });

  test("a subscribe function that fails synchronously is retried", async () => {
    let calls = 0;
    const live = liveRows({
      subscribe: (_request, sink) => {
        calls++;
        if (calls === 1) sink.error(new Error("refused"));
        else sink.next({ data: { liveRows: ready(SNAP_A) } });
        return () => {};
      },
      table: "items",
      retry: FAST,
    });
    await until(() => live.ready, "READY on the second subscription");
    assert.equal(calls, 2);
  });
});
