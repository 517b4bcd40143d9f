// The helper driven through a real graphql-ws Client over a real WebSocket,
// against a scripted graphql-transport-ws server (no Tidewire): close
// codes, `error` messages and graphql-ws's own retries reach the helper as
// they would in a browser.

import assert from "node:assert/strict";
import { AddressInfo } from "node:net";
import { describe, test } from "node:test";

import { createClient } from "graphql-ws";
import { WebSocket, WebSocketServer } from "ws";

import { LiveItem, LiveRowsError, liveRows } from "../src/liveRows.js";

/** One `subscribe` the server received, with the socket it came on. */
interface Subscribed {
  socket: WebSocket;
  id: string;
  variables: Record<string, unknown>;
}

/** A graphql-transport-ws server that records subscriptions; tests answer them. */
async function scriptedServer() {
  const server = new WebSocketServer({ port: 0, handleProtocols: () => "graphql-transport-ws" });
  await new Promise<void>((resolve) => server.once("listening", () => resolve()));
  const subscribed: Subscribed[] = [];
  server.on("connection", (socket) => {
    socket.on("message", (data) => {
      const message = JSON.parse(String(data));
      switch (message.type) {
        case "connection_init":
          socket.send(JSON.stringify({ type: "connection_ack" }));
          break;
        case "ping":
          socket.send(JSON.stringify({ type: "pong" }));
          break;
        case "subscribe":
          subscribed.push({ socket, id: message.id, variables: message.payload.variables ?? {} });
          break;
      }
    });
  });
  const url = `ws://127.0.0.1:${(server.address() as AddressInfo).port}/graphql`;
  const send = (to: Subscribed, item: LiveItem) =>
    to.socket.send(JSON.stringify({ id: to.id, type: "next", payload: { data: { liveRows: item } } }));
  const close = () =>
    new Promise<void>((resolve) => {
      for (const client of server.clients) client.terminate();
      server.close(() => resolve());
    });
  return { url, subscribed, send, close };
}

/** Runs the cleanups registered with the returned function when test `t`
 * ends, passed or failed, last registered first. */
function cleanups(t: { after(fn: () => Promise<void>): void }) {
  const steps: (() => unknown)[] = [];
  t.after(async () => {
    for (const step of steps.reverse()) await step();
  });
  return (step: () => unknown) => steps.push(step);
}

async function until(condition: () => boolean, what: string) {
  const deadline = Date.now() + 5000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

const SNAP = "tw1:a:7fffffffffffffff";
const ids = (rows: ReadonlyMap<string, unknown>) => [...rows.keys()].sort();

describe("through a graphql-ws Client", () => {
  test("a close resumes with after; a replayed item is skipped", async (t) => {
    const cleanup = cleanups(t);
    const server = await scriptedServer();
    cleanup(server.close);
    const client = createClient({ url: server.url, webSocketImpl: WebSocket, retryAttempts: 0 });
    cleanup(() => client.dispose());
    const errors: LiveRowsError[] = [];
    const live = liveRows({
      client,
      table: "items",
      retry: { initialDelayMs: 5, maxDelayMs: 20 },
      onError: (error) => errors.push(error),
    });
    cleanup(live.close);
    await until(() => server.subscribed.length === 1, "the first subscribe");
    const first = server.subscribed[0];
    assert.deepEqual(first.variables, { table: "items" });
    server.send(first, { kind: "SNAPSHOT", rows: [{ id: 1 }, { id: 2 }], cursor: SNAP });
    server.send(first, { kind: "READY", rows: [], cursor: SNAP });
    server.send(first, { kind: "INSERT", rows: [{ id: 3 }], cursor: "tw1:b:1" });
    await until(() => live.cursor === "tw1:b:1", "the insert");
    first.socket.close(1001, "server shutting down");

    await until(() => server.subscribed.length === 2, "a resume");
    const second = server.subscribed[1];
    assert.deepEqual(second.variables, { table: "items", after: "tw1:b:1" });
    assert.equal(errors[0].closeCode, 1001);
    server.send(second, { kind: "INSERT", rows: [{ id: 3 }], cursor: "tw1:b:1" }); // a replay
    server.send(second, { kind: "DELETE", rows: [{ id: 1 }], cursor: "tw1:c:1" });
    await until(() => live.cursor === "tw1:c:1", "the delete");
    second.socket.terminate(); // Abrupt: no close frame.

    await until(() => server.subscribed.length === 3, "a second resume");
    assert.deepEqual(server.subscribed[2].variables, { table: "items", after: "tw1:c:1" });
    assert.deepEqual(ids(live.rows), ["[2]", "[3]"]);
    assert.equal(live.stats.replaysSkipped, 1);
    assert.equal(live.stats.snapshots, 1);
    assert.equal(live.stats.duplicateInserts, 0);

    // An `error` message naming a code retrying cannot fix stops it.
    const third = server.subscribed[2];
    third.socket.send(
      JSON.stringify({ id: third.id, type: "error", payload: [{ message: "admins only", extensions: { code: "FORBIDDEN" } }] }),
    );
    await until(() => live.status === "stopped", "the stop");
    assert.equal(live.error?.code, "FORBIDDEN");
  });

  test("graphql-ws resubscribing by itself (no after) leads to a rebuild, not duplicates", async (t) => {
    const cleanup = cleanups(t);
    const server = await scriptedServer();
    cleanup(server.close);
    const client = createClient({
      url: server.url,
      webSocketImpl: WebSocket,
      retryAttempts: 3,
      retryWait: () => new Promise((resolve) => setTimeout(resolve, 5)),
    });
    cleanup(() => client.dispose());
    const live = liveRows({ client, table: "items" });
    cleanup(live.close);
    await until(() => server.subscribed.length === 1, "the first subscribe");
    const first = server.subscribed[0];
    server.send(first, { kind: "SNAPSHOT", rows: [{ id: 1 }, { id: 2 }], cursor: SNAP });
    server.send(first, { kind: "READY", rows: [], cursor: SNAP });
    server.send(first, { kind: "INSERT", rows: [{ id: 3 }], cursor: "tw1:b:1" });
    await until(() => live.rows.size === 3, "three rows");
    first.socket.close(1001, "server shutting down");

    // graphql-ws sends the first variables again: the server answers with
    // a fresh snapshot, which replaces the set at its READY.
    await until(() => server.subscribed.length === 2, "graphql-ws's own retry");
    const second = server.subscribed[1];
    assert.deepEqual(second.variables, { table: "items" });
    server.send(second, { kind: "SNAPSHOT", rows: [{ id: 2 }, { id: 3 }], cursor: "tw1:d:7fffffffffffffff" });
    server.send(second, { kind: "SNAPSHOT", rows: [{ id: 4 }], cursor: "tw1:d:7fffffffffffffff" });
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.deepEqual(ids(live.rows), ["[1]", "[2]", "[3]"], "the old set until READY");
    server.send(second, { kind: "READY", rows: [], cursor: "tw1:d:7fffffffffffffff" });
    await until(() => live.stats.snapshots === 2, "the rebuild");
    assert.deepEqual(ids(live.rows), ["[2]", "[3]", "[4]"]);
    assert.equal(live.cursor, "tw1:d:7fffffffffffffff");
    assert.equal(live.stats.duplicateSnapshotRows, 0);
    assert.equal(live.stats.resumes, 0);
  });
});
