// node-postgres sessions changing their settings between reads, through tandem and then
// directly on the authoritative side (tests/pg/compared_reads.rs; the same plan as
// psycopg_compared_reads in tests/pg/python/client.py, with RESET ALL in place of DISCARD
// ALL, which would drop the statements node-postgres keeps prepared). Prints the answers
// both ways, the read-only transactions the other side compares, and how many of them see
// the planted row, as one JSON line.
// TANDEM_PG_DSN (through tandem), TANDEM_PG_OLD_DSN, SESSIONS and ROUNDS come from the
// environment.
const { Client } = require("pg");

const READ = "SELECT name, at::text, day::text, f::text FROM items WHERE id = $1";
const WRITE = "INSERT INTO public.notes (what) VALUES ($1)";
const SEARCH_PATHS = ["public", "tenant_a"];
const ZONES = ["UTC", "America/New_York", "Asia/Kolkata"];
const DATE_STYLES = ["ISO, MDY", "German, DMY", "SQL, DMY", "Postgres, MDY"];
const FLOAT_DIGITS = [1, 0, 3, -5];

function plan(session, rounds) {
  const steps = [];
  let path = "public";
  for (let turn = 0; turn < rounds; turn++) {
    const pick = (values) => values[(session + turn) % values.length];
    path = pick(SEARCH_PATHS);
    const sees = (id) => path === "tenant_a" && id === 2;
    steps.push({ kind: turn === 0 ? "set_and_write" : "set", sql: `SET search_path TO ${path}` });
    steps.push({ kind: turn === 0 ? "set_and_write" : "set", sql: `SET TIME ZONE '${pick(ZONES)}'` });
    steps.push({ kind: "set", sql: `SET DateStyle TO '${pick(DATE_STYLES)}'` });
    steps.push({ kind: "set", sql: `SET extra_float_digits = ${pick(FLOAT_DIGITS)}` });
    steps.push({ kind: "read", id: 1, sees: sees(1) });
    steps.push({ kind: "read", id: 2, sees: sees(2) });
    steps.push({ kind: "prepared", id: 2, sees: sees(2) });
    const inside = SEARCH_PATHS[(session + turn + 1) % 2];
    steps.push({
      kind: "block",
      local: [
        `SET LOCAL TIME ZONE '${ZONES[(session + turn + 1) % ZONES.length]}'`,
        `SET LOCAL search_path TO ${inside}`,
      ],
      ids: [1, 2],
      sees: inside === "tenant_a",
    });
    steps.push({ kind: "read", id: 1, sees: sees(1) });
    if (turn % 2 === 1) {
      steps.push({ kind: "set", sql: "RESET ALL" });
      path = "public";
      steps.push({ kind: "read", id: 2, sees: false });
      steps.push({ kind: "prepared", id: 1, sees: false });
    }
  }
  return steps;
}

const text = (result) => result.rows.map((row) => row.map((value) => String(value)));

async function run(dsn, steps) {
  const client = new Client({ connectionString: dsn });
  await client.connect();
  const answers = [];
  const read = (id) => client.query({ text: READ, values: [id], rowMode: "array" });
  const prepared = (id) =>
    client.query({ name: "compared-read", text: READ, values: [id], rowMode: "array" });
  try {
    for (const step of steps) {
      if (step.kind === "set") {
        await client.query(step.sql);
      } else if (step.kind === "set_and_write") {
        await client.query("BEGIN");
        await client.query(step.sql);
        await client.query(WRITE, [step.kind]);
        await client.query("COMMIT");
      } else if (step.kind === "read") {
        answers.push(text(await read(step.id)));
      } else if (step.kind === "prepared") {
        answers.push(text(await prepared(step.id)));
      } else {
        await client.query("BEGIN");
        for (const sql of step.local) await client.query(sql);
        for (const id of step.ids) answers.push(text(await read(id)));
        await client.query("COMMIT");
      }
    }
  } finally {
    await client.end();
  }
  return answers;
}

async function main() {
  const sessions = Number(process.env.SESSIONS);
  const rounds = Number(process.env.ROUNDS);
  const plans = Array.from({ length: sessions }, (_, session) => plan(session, rounds));
  const through = await Promise.all(plans.map((steps) => run(process.env.TANDEM_PG_DSN, steps)));
  const direct = [];
  for (const steps of plans) direct.push(await run(process.env.TANDEM_PG_OLD_DSN, steps));
  const compared = plans.flat().filter((step) => ["read", "prepared", "block"].includes(step.kind));
  console.log(
    JSON.stringify({
      through,
      direct,
      compared: compared.length,
      planted: compared.filter((step) => step.sees).length,
    }),
  );
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
