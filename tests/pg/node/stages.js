// A node-postgres pool (max 8 connections) through tandem pg-proxy while the stage changes
// (tests/pg/stages.rs): 8 workers loop transactions
//   BEGIN; SELECT current_database(); INSERT INTO log (id, client, served, at)
//   VALUES ($1, $2, $3, clock_timestamp()); COMMIT
// with ids generated here and `served` the database the SELECT named, pausing PAUSE_MS
// after each commit. On any error (57P01 when the stage made the other side authoritative)
// the connection is released as broken and the worker goes on with another pooled one. It
// stops when STOP_FILE exists or after MAX_SECONDS, then prints one JSON object: the
// committed transactions ({id, served, at}), the errors ({code, at, source}: a query's, a
// connection's outside a query, or a failed connect), and how many connections the pool
// opened. Times are the machine's clock, in seconds since the epoch.
// PGHOST, PGPORT, PGUSER and PGDATABASE come from the environment.
const fs = require("fs");
const { Pool } = require("pg");

const STOP_FILE = process.env.STOP_FILE;
const MAX_SECONDS = Number(process.env.MAX_SECONDS || "60");
const CLIENT = process.env.CLIENT || "node";
const PAUSE_MS = Number(process.env.PAUSE_MS || "0");
const WORKERS = 8;

const now = () => Date.now() / 1000;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  const pool = new Pool({ max: WORKERS, idleTimeoutMillis: 0, connectionTimeoutMillis: 10000 });
  const committed = [];
  const errors = [];
  let connections = 0;
  let nextId = 1;
  // Errors a connection reports outside a query (the server ended it while it was idle in
  // the pool, or after a query's error): the pool discards it.
  pool.on("connect", (client) => {
    connections += 1;
    client.on("error", (err) => {
      errors.push({ code: err.code || String(err.message), at: now(), source: "connection" });
    });
  });
  pool.on("error", () => {});
  const deadline = now() + MAX_SECONDS;
  const stopped = () => now() >= deadline || (STOP_FILE && fs.existsSync(STOP_FILE));

  async function worker() {
    while (!stopped()) {
      let client;
      try {
        client = await pool.connect();
      } catch (err) {
        errors.push({ code: err.code || String(err.message), at: now(), source: "connect" });
        await sleep(20);
        continue;
      }
      const id = nextId++;
      try {
        await client.query("BEGIN");
        const answer = await client.query("SELECT current_database() AS db");
        const served = answer.rows[0].db;
        await client.query(
          "INSERT INTO log (id, client, served, at) VALUES ($1, $2, $3, clock_timestamp())",
          [id, CLIENT, served],
        );
        await client.query("COMMIT");
        client.release();
        committed.push({ id, served, at: now() });
        await sleep(PAUSE_MS);
      } catch (err) {
        errors.push({ code: err.code || String(err.message), at: now(), source: "query" });
        client.release(err);
        await sleep(5);
      }
    }
  }

  await Promise.all(Array.from({ length: WORKERS }, worker));
  await pool.end();
  console.log(JSON.stringify({ committed, errors, connections }));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
