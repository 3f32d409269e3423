// node-postgres through tandem pg-proxy: a parameterised write in a transaction, a named
// prepared statement run twice, and an error; prints what it got as one JSON line.
// PGHOST, PGPORT, PGUSER and PGDATABASE come from the environment.
const { Client } = require("pg");

async function main() {
  const client = new Client();
  await client.connect();
  await client.query("BEGIN");
  await client.query("INSERT INTO items (id, side) VALUES ($1, $2)", [70, "from node"]);
  await client.query("COMMIT");
  const byId = { name: "side-by-id", text: "SELECT side FROM items WHERE id = $1" };
  const first = await client.query({ ...byId, values: [1] });
  const second = await client.query({ ...byId, values: [70] });
  let error = null;
  try {
    await client.query("INSERT INTO items (id, side) VALUES ($1, $2)", [70, "again"]);
  } catch (err) {
    error = err.code;
  }
  await client.end();
  console.log(JSON.stringify({ first: first.rows[0].side, second: second.rows[0].side, error }));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
