// One node-postgres client through tandem pg-proxy across shadow → live (tests/pg/wal_proxy.rs):
// a named prepared statement whose parameter the server takes as an enum that only the old
// side has; the client writes READY_FILE, waits for GO_FILE (the test changed the stage
// meanwhile) and runs it again by name. Prints one JSON object: the first answer, and the
// error of the second (code and message), if any.
// PGHOST, PGPORT, PGUSER and PGDATABASE come from the environment.
const fs = require("fs");
const { Client } = require("pg");

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  const client = new Client();
  client.on("error", () => {});
  await client.connect();
  const mood = async (value) => {
    const answer = await client.query({
      name: "as_mood",
      text: "SELECT $1::mood::text AS m",
      values: [value],
    });
    return answer.rows[0].m;
  };
  const result = {};
  try {
    result.first = await mood("happy");
    fs.writeFileSync(process.env.READY_FILE, "");
    while (!fs.existsSync(process.env.GO_FILE)) {
      await sleep(20);
    }
    result.second = await mood("sad");
  } catch (err) {
    result.error = { code: err.code || null, message: err.message };
  }
  console.log(JSON.stringify(result));
  await client.end().catch(() => {});
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
