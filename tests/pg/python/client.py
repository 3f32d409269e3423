"""Real application patterns, run through tandem by the tests in tests/pg (savepoints.rs,
session_state.rs, liveness.rs) with the drivers of tests/pg/python/requirements.txt.

Usage: TANDEM_PG_DSN=postgres://postgres@127.0.0.1:PORT/anything python client.py CASE

Each case prints one JSON object on stdout for the test to assert on; an unexpected error
ends the script with a traceback and exit code 1. The tables are those the tests create:
items (id serial PRIMARY KEY, name TEXT UNIQUE, at timestamptz, day date) in public and in
the schema tenant_a; public.items holds (1, 'existing').
"""

import asyncio
import json
import os
import sys
import time

DSN = os.environ["TANDEM_PG_DSN"]


def psycopg_get_or_create():
    """An ORM's get-or-create inside an outer transaction: the insert of a name that exists
    runs in a nested transaction (a savepoint), which rolls back on the unique violation;
    the row is then read, and the outer transaction goes on and commits."""
    import psycopg

    error = None
    with psycopg.connect(DSN) as conn:
        with conn.transaction():
            conn.execute("INSERT INTO items (name) VALUES (%s)", ("before",))
            try:
                with conn.transaction():
                    conn.execute("INSERT INTO items (name) VALUES (%s)", ("existing",))
            except psycopg.errors.UniqueViolation as err:
                error = err.sqlstate
            found = conn.execute(
                "SELECT id FROM items WHERE name = %s", ("existing",)
            ).fetchone()[0]
            conn.execute("INSERT INTO items (name) VALUES (%s)", ("after",))
    return {"error": error, "found": found}


def psycopg2_get_or_create():
    """The same with psycopg2 and explicit savepoints (its implicit transaction)."""
    import psycopg2
    import psycopg2.errors

    error = None
    conn = psycopg2.connect(DSN)
    try:
        cur = conn.cursor()
        cur.execute("INSERT INTO items (name) VALUES (%s)", ("before",))
        cur.execute("SAVEPOINT sp")
        try:
            cur.execute("INSERT INTO items (name) VALUES (%s)", ("existing",))
        except psycopg2.errors.UniqueViolation as err:
            error = err.pgcode
            cur.execute("ROLLBACK TO SAVEPOINT sp")
        else:
            cur.execute("RELEASE SAVEPOINT sp")
        cur.execute("SELECT id FROM items WHERE name = %s", ("existing",))
        found = cur.fetchone()[0]
        cur.execute("INSERT INTO items (name) VALUES (%s)", ("after",))
        conn.commit()
    finally:
        conn.close()
    return {"error": error, "found": found}


def asyncpg_get_or_create():
    """The same with asyncpg: nested `async with conn.transaction()` blocks, statements
    prepared by the driver."""
    import asyncpg

    async def run():
        error = None
        conn = await asyncpg.connect(DSN)
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO items (name) VALUES ($1)", "before")
                try:
                    async with conn.transaction():
                        await conn.execute(
                            "INSERT INTO items (name) VALUES ($1)", "existing"
                        )
                except asyncpg.UniqueViolationError as err:
                    error = err.sqlstate
                found = await conn.fetchval(
                    "SELECT id FROM items WHERE name = $1", "existing"
                )
                await conn.execute("INSERT INTO items (name) VALUES ($1)", "after")
        finally:
            await conn.close()
        return {"error": error, "found": found}

    return asyncio.run(run())


def psycopg_autocommit_session():
    """Session settings made on an autocommit connection, each its own statement outside any
    transaction, then writes that depend on them: unqualified names (search_path) and a
    timestamptz literal (TimeZone)."""
    import psycopg

    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("SET search_path TO tenant_a")
        conn.execute(
            "INSERT INTO items (id, name) VALUES (%s, %s)", (70, "psycopg autocommit")
        )
        conn.execute("SET TIME ZONE 'America/New_York'")
        conn.execute(
            "INSERT INTO items (id, name, at) VALUES (%s, %s, '2024-01-01 00:00')",
            (71, "psycopg new york"),
        )
        schema = conn.execute("SELECT current_schema()").fetchone()[0]
    return {"schema": schema}


def psycopg_pooled_session():
    """A connection as a pool hands it out: configured once when opened (settings in a
    transaction of their own that writes nothing, as a pool's `configure` callback does),
    then reused for several transactions, one of them rolled back."""
    import psycopg

    with psycopg.connect(DSN) as conn:
        conn.execute("SET search_path TO tenant_a")
        conn.execute("SET TIME ZONE 'America/New_York'")
        conn.commit()
        for id, name in [(80, "pooled one"), (81, "pooled two")]:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO items (id, name, at) VALUES (%s, %s, '2024-01-01 00:00')",
                    (id, name),
                )
        try:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO items (id, name) VALUES (%s, %s)", (82, "rolled back")
                )
                raise RuntimeError("the application gives up")
        except RuntimeError:
            pass
        with conn.transaction():
            conn.execute(
                "INSERT INTO items (id, name, at) VALUES (%s, %s, '2024-07-01 12:00')",
                (83, "pooled three"),
            )
        schema = conn.execute("SELECT current_schema()").fetchone()[0]
        conn.commit()
    return {"schema": schema}


def outcome(conn):
    """Runs a statement on `conn` and tells what came of it: its answer, or the error."""
    import psycopg

    try:
        return {"answer": conn.execute("SELECT 1").fetchone()[0]}
    except psycopg.Error as err:
        return {"error": type(err).__name__, "sqlstate": err.sqlstate}


def idle_timeout():
    """A session that stays idle inside a transaction past its own
    idle_in_transaction_session_timeout: the server ends it; the next statement must fail
    (not wait for an answer forever)."""
    import psycopg

    with psycopg.connect(
        DSN, autocommit=True, application_name="tandem-idle-timeout"
    ) as conn:
        conn.execute("SET idle_in_transaction_session_timeout = '300ms'")
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO items (id, name) VALUES (%s, %s)", (90, "idle in transaction")
        )
        time.sleep(2)
        return outcome(conn)


def terminated():
    """A session whose server backend is terminated from outside while it is idle: it prints
    `ready` once connected (and after a committed insert), waits for a line on stdin (the
    test terminates the backend, found by application_name, meanwhile), then runs a
    statement, which must fail."""
    import psycopg

    name = os.environ["TANDEM_APPLICATION_NAME"]
    with psycopg.connect(DSN, autocommit=True, application_name=name) as conn:
        conn.execute(
            "INSERT INTO items (id, name) VALUES (%s, %s)", (91, "before termination")
        )
        print("ready", flush=True)
        sys.stdin.readline()
        return outcome(conn)


def serializable_write_skew():
    """Two SERIALIZABLE transactions, each reading the row the other then updates (a write
    skew; public.items holds ids 1 and 2): PostgreSQL lets one commit and fails the other with
    40001, at its update or at its commit, and the application rolls that one back. Prints
    each one's outcome: "committed", or the SQLSTATE it failed with."""
    import psycopg

    with psycopg.connect(DSN) as first, psycopg.connect(DSN) as second:
        for conn in (first, second):
            conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        # name: (connection, the row it reads, the row it updates)
        sessions = {"first": (first, 1, 2), "second": (second, 2, 1)}
        for conn, read, _ in sessions.values():
            conn.execute("SELECT id FROM items WHERE id = %s", (read,)).fetchall()
        outcomes = {}
        for name, (conn, _, update) in sessions.items():
            try:
                conn.execute(
                    "UPDATE items SET name = %s WHERE id = %s", (f"{name} wins", update)
                )
            except psycopg.errors.SerializationFailure as err:
                outcomes[name] = err.sqlstate
                conn.rollback()
        for name, (conn, _, _) in sessions.items():
            if name in outcomes:
                continue
            try:
                conn.commit()
                outcomes[name] = "committed"
            except psycopg.errors.SerializationFailure as err:
                outcomes[name] = err.sqlstate
    return outcomes


def psycopg_set_config_then_reconnect():
    """search_path set with a bound parameter (`set_config('search_path', $1, false)`,
    extended protocol), then the other side's session is terminated from outside (found by
    application_name on TANDEM_PG_NEW_DSN): the session tandem opens there again must get
    the same setting, parameter included."""
    import psycopg

    name = os.environ["TANDEM_APPLICATION_NAME"]
    with psycopg.connect(DSN, autocommit=True, application_name=name) as conn:
        conn.execute("SELECT set_config('search_path', %s, false)", ("tenant_a",))
        conn.execute("INSERT INTO items (id, name) VALUES (%s, %s)", (90, "before"))
        with psycopg.connect(os.environ["TANDEM_PG_NEW_DSN"], autocommit=True) as other:
            # Once the insert has been applied there and the session waits idle (terminated
            # mid-insert, the insert's outcome would be unknown: kept for a replay instead).
            for _ in range(400):
                arrived = other.execute(
                    "SELECT count(*) FROM tenant_a.items WHERE id = 90"
                ).fetchone()[0]
                pids = [
                    row[0]
                    for row in other.execute(
                        "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                        "AND datname = current_database() AND pid <> pg_backend_pid() "
                        "AND state = 'idle'",
                        (name,),
                    )
                ]
                if arrived and pids:
                    break
                time.sleep(0.05)
            for pid in pids:
                other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        conn.execute("INSERT INTO items (id, name) VALUES (%s, %s)", (91, "after"))
        schema = conn.execute("SELECT current_schema()").fetchone()[0]
    return {"schema": schema, "terminated": len(pids)}


def asyncpg_prepare_and_copy():
    """asyncpg's prepare() (Parse and Describe with a Flush, no Sync) followed by plain
    executes, and copy_records_to_table (the same unsynced start) followed by more."""
    import asyncpg

    async def run():
        conn = await asyncpg.connect(DSN)
        try:
            lookup = await conn.prepare("SELECT name FROM items WHERE id = $1")
            for name in ["p1", "p2", "p3"]:
                await conn.execute(f"INSERT INTO items (name) VALUES ('{name}')")
            found = await lookup.fetchval(1)
            await conn.copy_records_to_table(
                "items", records=[(20, "c1"), (21, "c2")], columns=["id", "name"]
            )
            for name in ["after1", "after2"]:
                await conn.execute("INSERT INTO items (name) VALUES ($1)", name)
        finally:
            await conn.close()
        return {"found": found}

    return asyncio.run(run())


# The compared-reads workload (tests/pg/compared_reads.rs): every session changes its settings
# between reads. Both tables hold rows 1 and 2 with the same columns and different names, so
# the search path decides which one a read sees; the time zone, date style and float digits
# decide how the rest reads as text.
READ = "SELECT name, at::text, day::text, f::text FROM items WHERE id = {}"
WRITE = "INSERT INTO public.notes (what) VALUES (%s)"
SEARCH_PATHS = ["public", "tenant_a"]
ZONES = ["UTC", "America/New_York", "Asia/Kolkata"]
DATE_STYLES = ["ISO, MDY", "German, DMY", "SQL, DMY", "Postgres, MDY"]
FLOAT_DIGITS = [1, 0, 3, -5]


def settings_plan(session, rounds):
    """What session number `session` does, as steps a driver runs: ("set", sql) alone,
    ("set_and_write", sql) in a transaction that also writes (the capture carries its row,
    so the other side's session learns the setting with the next read; only in the first
    round: a read followed by a write of its session before its copy ran is not judged, and
    the test counts every read that sees the planted row), ("read", id) in an implicit
    transaction, ("prepared", id) with a prepared statement made
    before the settings changed, ("block", [SET LOCAL …], [ids]) in a transaction, and
    ("reset", sql). Each read step also says whether it sees tenant_a's row 2 (the row the
    test plants a difference in on the other side)."""
    steps, path = [], "public"
    for turn in range(rounds):
        pick = lambda values: values[(session + turn) % len(values)]
        path = pick(SEARCH_PATHS)
        steps += [
            ("set_and_write" if turn == 0 else "set", f"SET search_path TO {path}"),
            ("set_and_write" if turn == 0 else "set", f"SET TIME ZONE '{pick(ZONES)}'"),
            ("set", f"SET DateStyle TO '{pick(DATE_STYLES)}'"),
            ("set", f"SET extra_float_digits = {pick(FLOAT_DIGITS)}"),
        ]
        sees = lambda ids: path == "tenant_a" and 2 in ids
        steps += [("read", 1, sees([1])), ("read", 2, sees([2])), ("prepared", 2, sees([2]))]
        local = [
            f"SET LOCAL TIME ZONE '{ZONES[(session + turn + 1) % len(ZONES)]}'",
            f"SET LOCAL search_path TO {SEARCH_PATHS[(session + turn + 1) % 2]}",
        ]
        inside = SEARCH_PATHS[(session + turn + 1) % 2]
        steps.append(("block", local, [1, 2], inside == "tenant_a"))
        steps.append(("read", 1, sees([1])))
        if turn % 2 == 1:
            steps.append(("reset", "DISCARD ALL" if turn % 4 == 1 else "RESET ALL"))
            path = "public"
            steps += [("read", 2, False), ("prepared", 1, False)]
    return steps


def summary(plans, through, direct):
    """What a compared-reads case prints: the answers through tandem and directly from the
    authoritative side, per session, and the transactions the other side compares (the
    read-only ones) with how many of them see the planted row."""
    compared = [step for plan in plans for step in plan if step[0] in ("read", "prepared", "block")]
    return {
        "through": through,
        "direct": direct,
        "compared": len(compared),
        "planted": sum(1 for step in compared if step[-1]),
    }


def rows_text(rows):
    return [[str(value) for value in row] for row in rows]


def psycopg_compared_reads():
    """Concurrent psycopg 3 sessions (autocommit connections, one per thread) following
    `settings_plan`, through tandem and then directly on TANDEM_PG_OLD_DSN."""
    import concurrent.futures

    import psycopg

    sessions, rounds = int(os.environ["SESSIONS"]), int(os.environ["ROUNDS"])
    plans = [settings_plan(session, rounds) for session in range(sessions)]

    def run(dsn, plan):
        answers = []
        with psycopg.connect(dsn, autocommit=True) as conn:
            for step in plan:
                kind = step[0]
                if kind in ("set", "reset"):
                    conn.execute(step[1])
                elif kind == "set_and_write":
                    with conn.transaction():
                        conn.execute(step[1])
                        conn.execute(WRITE, (kind,))
                elif kind == "read":
                    answers.append(rows_text(conn.execute(READ.format("%s"), (step[1],)).fetchall()))
                elif kind == "prepared":
                    cursor = conn.execute(READ.format("%s"), (step[1],), prepare=True)
                    answers.append(rows_text(cursor.fetchall()))
                else:
                    with conn.transaction():
                        for sql in step[1]:
                            conn.execute(sql)
                        for id in step[2]:
                            answers.append(
                                rows_text(conn.execute(READ.format("%s"), (id,)).fetchall())
                            )
        return answers

    with concurrent.futures.ThreadPoolExecutor(sessions) as pool:
        through = list(pool.map(lambda plan: run(DSN, plan), plans))
    direct = [run(os.environ["TANDEM_PG_OLD_DSN"], plan) for plan in plans]
    return summary(plans, through, direct)


def asyncpg_compared_reads():
    """The same with asyncpg: concurrent sessions as tasks, its statement cache, a statement
    prepared once and re-used after every SET, `RESET ALL` in place of `DISCARD ALL` (which
    would drop the statements asyncpg keeps)."""
    import asyncpg

    sessions, rounds = int(os.environ["SESSIONS"]), int(os.environ["ROUNDS"])
    plans = [
        [
            ("reset", "RESET ALL") + step[2:] if step[:2] == ("reset", "DISCARD ALL") else step
            for step in settings_plan(session, rounds)
        ]
        for session in range(sessions)
    ]

    async def run(dsn, plan):
        answers = []
        conn = await asyncpg.connect(dsn)
        try:
            prepared = await conn.prepare(READ.format("$1"))
            for step in plan:
                kind = step[0]
                if kind in ("set", "reset"):
                    await conn.execute(step[1])
                elif kind == "set_and_write":
                    async with conn.transaction():
                        await conn.execute(step[1])
                        await conn.execute(WRITE.replace("%s", "$1"), kind)
                elif kind == "read":
                    answers.append(rows_text(await conn.fetch(READ.format("$1"), step[1])))
                elif kind == "prepared":
                    answers.append(rows_text(await prepared.fetch(step[1])))
                else:
                    async with conn.transaction():
                        for sql in step[1]:
                            await conn.execute(sql)
                        for id in step[2]:
                            answers.append(rows_text(await conn.fetch(READ.format("$1"), id)))
        finally:
            await conn.close()
        return answers

    async def both():
        through = await asyncio.gather(*(run(DSN, plan) for plan in plans))
        direct = [await run(os.environ["TANDEM_PG_OLD_DSN"], plan) for plan in plans]
        return summary(plans, list(through), direct)

    return asyncio.run(both())


CASES = {
    case.__name__: case
    for case in [
        psycopg_get_or_create,
        psycopg2_get_or_create,
        asyncpg_get_or_create,
        psycopg_autocommit_session,
        psycopg_pooled_session,
        idle_timeout,
        terminated,
        serializable_write_skew,
        asyncpg_prepare_and_copy,
        psycopg_set_config_then_reconnect,
        psycopg_compared_reads,
        asyncpg_compared_reads,
    ]
}

if __name__ == "__main__":
    print(json.dumps(CASES[sys.argv[1]]()), flush=True)
