// One node-postgres client through tandem pg-proxy across shadow → live (tests/pg/wal_proxy.rs):
// a named prepared statement whose second parameter is an enum (a user-defined type, whose OID
// differs between the two servers) inserts a ticket, the client writes READY_FILE, waits for
// GO_FILE (the test changed the stage meanwhile), and runs the same statement again by name
// (node-postgres sends only Bind and Execute for it). A named read taking the enum, whose
// answer does not depend on the rows (the sides may differ by the capture's lag), runs before
// and after. Prints one JSON object: the port of the server that answered each insert, or the
// error (code and message).
// PGHOST, PGPORT, PGUSER and PGDATABASE come from the environment.
const { Client } = require("pg");
const { aroundTheChange, run } = require("./handshake");

async function main() {
  const client = new Client();
  await client.connect();
  const add = async (id, mood) => {
    const answer = await client.query({
      name: "add_ticket",
      text: "INSERT INTO tickets (id, mood) VALUES ($1, $2) RETURNING inet_server_port() AS port",
      values: [id, mood],
    });
    return answer.rows[0].port;
  };
  const none = (mood) =>
    client.query({
      name: "none_of_mood",
      text: "SELECT count(*)::int AS n FROM tickets WHERE mood = $1 AND id < 0",
      values: [mood],
    });
  const result = {};
  await aroundTheChange(
    client,
    result,
    async () => {
      result.first = await add(1, "happy");
      await none("happy");
    },
    async () => {
      result.second = await add(2, "sad");
      await none("sad");
    }
  );
}

run(main);
