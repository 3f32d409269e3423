// One node-postgres client through tandem pg-proxy across shadow → live (tests/pg/stages.rs),
// which sets neither TimeZone nor DateStyle (nor search_path, extra_float_digits,
// bytea_output) itself: it reads its settings, writes READY_FILE,
// waits for GO_FILE (the test changed the stage meanwhile), reads them again and inserts now()
// rendered as text. Every ParameterStatus the client was sent is kept as node-postgres heard
// it. Prints one JSON object: the settings before and after, the text inserted, the parameters
// told at the end, or the error (code and message).
// PGHOST, PGPORT, PGUSER and PGDATABASE come from the environment.
const { Client } = require("pg");
const { aroundTheChange, run } = require("./handshake");

async function main() {
  const client = new Client({ application_name: "tandem_params" });
  const told = {};
  client.connection.on("parameterStatus", (message) => {
    told[message.parameterName] = message.parameterValue;
  });
  await client.connect();
  const settings = async () =>
    (
      await client.query(
        "SELECT current_setting('TimeZone') AS timezone, " +
          "current_setting('DateStyle') AS datestyle, " +
          "current_setting('application_name') AS application_name, " +
          "current_setting('search_path') AS search_path, " +
          "current_setting('extra_float_digits') AS extra_float_digits, " +
          "current_setting('bytea_output') AS bytea_output, " +
          "current_database() AS database"
      )
    ).rows[0];
  const result = {};
  await aroundTheChange(
    client,
    result,
    async () => {
      result.before = await settings();
      result.toldBefore = { ...told };
    },
    async () => {
      result.after = await settings();
      result.stamp = (
        await client.query(
          "INSERT INTO stamps (id, at_text, at) VALUES (1, now()::text, now()) RETURNING at_text"
        )
      ).rows[0].at_text;
      result.told = { ...told };
    }
  );
}

run(main);
