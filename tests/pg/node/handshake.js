// What the node-postgres clients that live across a stage change share: run `before`, write
// READY_FILE, wait for GO_FILE (the test changes the stage meanwhile), run `after`; an error
// of either is kept in `result` (code and message); then print `result` as one JSON line and
// end the client.
const fs = require("fs");

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function aroundTheChange(client, result, before, after) {
  try {
    await before();
    fs.writeFileSync(process.env.READY_FILE, "");
    while (!fs.existsSync(process.env.GO_FILE)) {
      await sleep(20);
    }
    await after();
  } catch (err) {
    result.error = { code: err.code || null, message: err.message };
  }
  console.log(JSON.stringify(result));
  await client.end().catch(() => {});
}

// Runs `main`, exiting 1 with what it threw.
function run(main) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}

module.exports = { aroundTheChange, run };
