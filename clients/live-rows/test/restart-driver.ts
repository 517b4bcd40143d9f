// Driver for the Rust test `tests/live_rows_client.rs`: runs the helper
// against a real Tidewire through graphql-ws and reports, as one JSON
// object per line on stdout, what it does:
//
//   {"event":"subscribe","after":null|"tw1:…"}   each subscription made
//   {"event":"status","status":"live"}           each status change
//   {"event":"reset","size":n}                   a snapshot swapped in
//   {"event":"insert"|"update"|"delete","key":"[id]"}
//   {"event":"error","code":…,"closeCode":…,"message":…,"willRetry":…}
//   {"event":"state",…}                          on the line `dump` on stdin
//
// It keeps its own copy of the set from `onChange` alone and counts as a
// violation any insert of a key already shown, any update or delete of a
// key not shown, and any difference between that copy and `live.rows`.
// `exit` on stdin (or stdin closing) ends it.
//
// Usage: node dist/test/restart-driver.js ws://127.0.0.1:4000/graphql [table]
// (or TIDEWIRE_WS_URL, TIDEWIRE_TABLE).

import { createInterface } from "node:readline";

import { createClient } from "graphql-ws";
import { WebSocket } from "ws";

import { Row, SubscribeClient, liveRows } from "../src/liveRows.js";

const url = process.argv[2] ?? process.env.TIDEWIRE_WS_URL;
const table = process.argv[3] ?? process.env.TIDEWIRE_TABLE ?? "items";
if (!url) {
  console.error("usage: restart-driver.js <ws url> [table]");
  process.exit(2);
}

const print = (line: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(line)}\n`);

// graphql-ws must not resubscribe by itself: the helper resumes with `after`.
const client = createClient({ url, webSocketImpl: WebSocket, retryAttempts: 0 });
const reporting: SubscribeClient = {
  subscribe(request, sink) {
    print({ event: "subscribe", after: request.variables.after ?? null });
    return client.subscribe(request, sink);
  },
};

const shown = new Map<string, Row>();
const violations: string[] = [];

const live = liveRows({
  client: reporting,
  table,
  key: ["id"],
  retry: { initialDelayMs: 50, maxDelayMs: 400 },
  onStatus: (status) => print({ event: "status", status }),
  onError: (error) =>
    print({
      event: "error",
      code: error.code ?? null,
      closeCode: error.closeCode ?? null,
      message: error.message,
      willRetry: error.willRetry,
    }),
  onChange: (change) => {
    switch (change.type) {
      case "reset":
        shown.clear();
        for (const [key, row] of change.rows) shown.set(key, row);
        print({ event: "reset", size: change.rows.size });
        return;
      case "insert":
        if (shown.has(change.key)) violations.push(`insert of ${change.key}, already shown`);
        shown.set(change.key, change.row);
        break;
      case "update":
        if (!shown.has(change.key)) violations.push(`update of ${change.key}, not shown`);
        shown.set(change.key, change.row);
        break;
      case "delete":
        if (!shown.has(change.key)) violations.push(`delete of ${change.key}, not shown`);
        shown.delete(change.key);
        break;
    }
    print({ event: change.type, key: change.key });
  },
});

function dump() {
  const rows = live.rows;
  const differences = [...new Set([...rows.keys(), ...shown.keys()])].filter(
    (key) => JSON.stringify(rows.get(key)) !== JSON.stringify(shown.get(key)),
  );
  print({
    event: "state",
    ready: live.ready,
    status: live.status,
    cursor: live.cursor ?? null,
    stats: live.stats,
    violations: [...violations, ...differences.map((key) => `onChange and rows disagree on ${key}`)],
    rows: [...rows.values()],
  });
}

async function exit() {
  live.close();
  await client.dispose();
  process.exit(0);
}

const input = createInterface({ input: process.stdin });
input.on("line", (line) => {
  const command = line.trim();
  if (command === "dump") dump();
  else if (command === "exit") void exit();
  else if (command) print({ event: "unknown-command", command });
});
input.on("close", () => void exit());
