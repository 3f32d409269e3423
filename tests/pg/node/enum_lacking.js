// One node-postgres client through tandem pg-proxy across shadow → live (tests/pg/wal_proxy.rs):
// a named prepared statement whose parameter the server takes as an enum that only the old
// side has; the client writes READY_FILE, waits for GO_FILE (the test changed the stage
// meanwhile) and runs it again by name. Prints one JSON object: the first answer, and the
// error of the second (code and message), if any.
// PGHOST, PGPORT, PGUSER and PGDATABASE come from the environment.
const { Client } = require("pg");
const { aroundTheChange, run } = require("./handshake");

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
  await aroundTheChange(
    client,
    result,
    async () => {
      result.first = await mood("happy");
    },
    async () => {
      result.second = await mood("sad");
    }
  );
}

run(main);
