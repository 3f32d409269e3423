//! One configuration layer for every command, through the real binary: defaults < file <
//! `TANDEM_*` variables < flags in each mode, every refusal one line naming its key and where
//! its value came from, unknown keys and misspelt variables named, secrets never printed.

use std::path::{Path, PathBuf};
use std::process::Output;

/// `tandem config check --mode MODE FILE -- FLAGS`, with `env` set and no other `TANDEM_*`
/// variable.
fn check(mode: &str, file: &Path, env: &[(&str, &str)], flags: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"));
    command.args(["config", "check", "--mode", mode]);
    command.arg(file).arg("--").args(flags);
    for (name, _) in std::env::vars() {
        if name.starts_with("TANDEM_") {
            command.env_remove(name);
        }
    }
    command.env("TANDEM_LOG", "warn").envs(env.iter().copied());
    command.output().expect("run tandem")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The line `config check` printed for `key`, without its padding.
fn line_of(printed: &str, key: &str) -> String {
    printed
        .lines()
        .map(str::trim)
        .find(|line| line.split(" = ").next().map(str::trim) == Some(key))
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| panic!("no `{key}` in {printed}"))
}

const PG_SIDES: &str = "old = \"postgres://a@127.0.0.1/x\"\nnew = \"postgres://b@127.0.0.1/x\"\n";
const HTTP_SIDES: &str = "old = \"http://127.0.0.1:1\"\nnew = \"http://127.0.0.1:2\"\n";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Per mode: the key, its file text, its variable and its flag.
const LAYERED: [(&str, &str, &str, &str, &str); 6] = [
    (
        "proxy",
        HTTP_SIDES,
        "max_in_flight",
        "TANDEM_MAX_IN_FLIGHT",
        "--max-in-flight",
    ),
    (
        "pg-proxy",
        PG_SIDES,
        "max_client_connections",
        "TANDEM_PG_MAX_CLIENT_CONNECTIONS",
        "--max-client-connections",
    ),
    (
        "comparator",
        PG_SIDES,
        "window_rows",
        "TANDEM_COMPARE_WINDOW_ROWS",
        "--window-rows",
    ),
    (
        "comparator",
        PG_SIDES,
        "chunk_rows",
        "TANDEM_COMPARATOR_CHUNK_ROWS",
        "--chunk-rows",
    ),
    (
        "backfill",
        PG_SIDES,
        "threads",
        "TANDEM_COMPARE_THREADS",
        "--threads",
    ),
    (
        "backfill",
        PG_SIDES,
        "backfill.chunk_rows",
        "TANDEM_BACKFILL_CHUNK_ROWS",
        "--chunk-rows",
    ),
];

#[test]
fn every_mode_layers_defaults_then_file_then_variable_then_flag() {
    let dir = tempfile::tempdir().unwrap();
    for (mode, sides, key, variable, flag) in LAYERED {
        let bare = write(dir.path(), "bare.toml", sides);
        let defaulted = check(mode, &bare, &[], &[]);
        assert!(defaulted.status.success(), "{mode}: {}", stderr(&defaulted));
        assert!(
            line_of(&stdout(&defaulted), key).ends_with("(default)"),
            "{mode}: {}",
            stdout(&defaulted)
        );

        let file = write(dir.path(), "layers.toml", &format!("{sides}{key} = 11\n"));
        let from_file = check(mode, &file, &[], &[]);
        assert_eq!(
            line_of(&stdout(&from_file), key),
            format!("{key} = 11 (from {})", file.display()),
            "{mode}: {}",
            stderr(&from_file)
        );
        let from_env = check(mode, &file, &[(variable, "12")], &[]);
        assert_eq!(
            line_of(&stdout(&from_env), key),
            format!("{key} = 12 (from {variable})"),
            "{mode}: {}",
            stderr(&from_env)
        );
        let from_flag = check(mode, &file, &[(variable, "12")], &[flag, "13"]);
        assert_eq!(
            line_of(&stdout(&from_flag), key),
            format!("{key} = 13 (from {flag})"),
            "{mode}: {}",
            stderr(&from_flag)
        );
    }
}

/// A mode, its file, variables and flags, and the one line it is refused with.
type Refusal<'a> = (
    &'a str,
    PathBuf,
    Vec<(&'a str, &'a str)>,
    Vec<&'a str>,
    String,
);

#[test]
fn each_refusal_is_one_line_naming_the_key_and_where_its_value_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let written = std::cell::Cell::new(0);
    let file = |text: &str| {
        written.set(written.get() + 1);
        write(dir.path(), &format!("bad{}.toml", written.get()), text)
    };
    let cases: Vec<Refusal> = vec![
        (
            "pg-proxy",
            file(&format!("{PG_SIDES}max_client_connections = 0\n")),
            vec![],
            vec![],
            "max_client_connections = 0 (from {FILE}) must be at least 1".to_owned(),
        ),
        (
            "pg-proxy",
            file(PG_SIDES),
            vec![("TANDEM_PG_MAX_SERVER_CONNECTIONS", "0")],
            vec![],
            "max_server_connections = 0 (from TANDEM_PG_MAX_SERVER_CONNECTIONS) must be at least 1"
                .to_owned(),
        ),
        (
            "pg-proxy",
            file(PG_SIDES),
            vec![],
            vec!["--session-threads", "0"],
            "session_threads = 0 (from --session-threads) must be at least 1".to_owned(),
        ),
        (
            "pg-proxy",
            file(PG_SIDES),
            vec![],
            vec!["--max-mirror-backlog", "0"],
            "max_mirror_backlog = 0 (from --max-mirror-backlog) must be at least 1".to_owned(),
        ),
        (
            "pg-proxy",
            file(PG_SIDES),
            vec![("TANDEM_PG_COMPARE_READS", "1.5")],
            vec![],
            "compare_reads = 1.5 (from TANDEM_PG_COMPARE_READS) must be a fraction from 0 \
             (no read compared) to 1 (every read)"
                .to_owned(),
        ),
        (
            "pg-proxy",
            file(&format!("{PG_SIDES}login_timeout = \"0s\"\n")),
            vec![],
            vec![],
            "login_timeout = 0s (from {FILE}) must be longer than 0s".to_owned(),
        ),
        (
            "pg-proxy",
            file("old = \"\"\nnew = \"postgres://b@127.0.0.1/x\"\n"),
            vec![],
            vec![],
            "old = \"\" (from {FILE}) must be a postgres://user@host[:port]/database URL"
                .to_owned(),
        ),
        (
            "pg-proxy",
            file(&format!("{PG_SIDES}capture_slot = \"\"\n")),
            vec![],
            vec![],
            "capture_slot = \"\" (from {FILE}) must not be empty".to_owned(),
        ),
        (
            "proxy",
            file(&format!("{HTTP_SIDES}max_body_bytes = 0\n")),
            vec![],
            vec![],
            "max_body_bytes = 0 (from {FILE}) must be greater than 0".to_owned(),
        ),
        (
            "proxy",
            file(HTTP_SIDES),
            vec![("TANDEM_OLD_TIMEOUT", "0s")],
            vec![],
            "old_timeout = 0s (from TANDEM_OLD_TIMEOUT) must be longer than 0s".to_owned(),
        ),
        (
            "proxy",
            file(&format!("{HTTP_SIDES}max_in_flight = \"many\"\n")),
            vec![],
            vec![],
            "max_in_flight = many (from {FILE}) invalid type: string \"many\", expected usize"
                .to_owned(),
        ),
        (
            "comparator",
            file(&format!("{PG_SIDES}threads = 0\n")),
            vec![],
            vec![],
            "threads = 0 (from {FILE}) must be at least 1".to_owned(),
        ),
        (
            "comparator",
            file(PG_SIDES),
            vec![("TANDEM_COMPARATOR_INTERVAL", "0s")],
            vec![],
            "interval = 0s (from TANDEM_COMPARATOR_INTERVAL) must be longer than 0s".to_owned(),
        ),
        (
            "comparator",
            file(&format!("{PG_SIDES}[alerts]\nmismatch_rate = 2.0\n")),
            vec![],
            vec![],
            "alerts.mismatch_rate = 2.0 (from {FILE}) must be between 0 and 1".to_owned(),
        ),
        (
            "backfill",
            file(PG_SIDES),
            vec![],
            vec!["--chunk-rows", "0"],
            "backfill.chunk_rows = 0 (from --chunk-rows) must be between 1 and 100000".to_owned(),
        ),
        (
            "backfill",
            file(PG_SIDES),
            vec![("TANDEM_COMPARE_MAX_ROWS_PER_SEC", "0")],
            vec![],
            "max_rows_per_sec = 0 (from TANDEM_COMPARE_MAX_ROWS_PER_SEC) must be at least 1 \
             (leave it out for no limit)"
                .to_owned(),
        ),
        (
            "comparator",
            file("new = \"postgres://b@127.0.0.1/x\"\n"),
            vec![],
            vec![],
            "old is not set: set `old` in the config file, with --old or with TANDEM_COMPARE_OLD"
                .to_owned(),
        ),
    ];
    for (mode, path, env, flags, expected) in cases {
        let output = check(mode, &path, &env, &flags);
        let said = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{mode} {expected}: {said}");
        let expected = format!(
            "error: {}\n",
            expected.replace("{FILE}", &path.display().to_string())
        );
        assert_eq!(said, expected, "{mode}");
    }
}

#[test]
fn an_unknown_key_is_refused_by_name_and_line_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    for (mode, text, key, line) in [
        (
            "proxy",
            format!("{HTTP_SIDES}listne = \"x\"\n"),
            "listne",
            3,
        ),
        (
            "pg-proxy",
            format!("{PG_SIDES}[classify]\nstatement = []\n"),
            "classify.statement",
            4,
        ),
        (
            "comparator",
            format!("{PG_SIDES}[alerts]\nmismatch_rat = 0.1\n"),
            "alerts.mismatch_rat",
            4,
        ),
        (
            "backfill",
            format!("{PG_SIDES}[backfill]\nchunk_rowz = 5\n"),
            "backfill.chunk_rowz",
            4,
        ),
    ] {
        let path = write(dir.path(), "unknown.toml", &text);
        let output = check(mode, &path, &[], &[]);
        assert_eq!(output.status.code(), Some(2), "{mode}");
        assert_eq!(
            stderr(&output),
            format!(
                "error: unknown key `{key}` in {} (line {line})\n",
                path.display()
            ),
            "{mode}"
        );
    }
}

#[test]
fn a_misspelt_variable_is_named_in_a_warning_and_a_known_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "pg.toml", PG_SIDES);
    let output = check(
        "pg-proxy",
        &path,
        &[
            ("TANDEM_PG_MAX_CLIENT_CONECTIONS", "5"),
            ("TANDEM_PG_STAGE_GRACE", "2s"),
            ("TANDEM_LOADTEST_DB", "postgres://127.0.0.1/x"),
        ],
        &[],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let warned = stderr(&output);
    assert!(
        warned.contains("TANDEM_PG_MAX_CLIENT_CONECTIONS is set but no tandem command reads it"),
        "{warned}"
    );
    assert!(!warned.contains("TANDEM_PG_STAGE_GRACE"), "{warned}");
    assert!(
        !warned.contains("TANDEM_LOADTEST_DB"),
        "the load test's own: {warned}"
    );
    assert_eq!(warned.lines().count(), 1, "{warned}");
}

#[test]
fn config_check_prints_each_origin_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = write(
        dir.path(),
        "proxy.toml",
        &format!(
            "{HTTP_SIDES}admin_token = \"tok-s3cret\"\ncontrol_db = \"postgres://u:hunter2@127.0.0.1/c\"\n\
             journal = \"nats://n:natspw@127.0.0.1:4222\"\n"
        ),
    );
    let printed = check("proxy", &proxy, &[], &["--listen", "127.0.0.1:7001"]);
    let out = stdout(&printed);
    assert!(printed.status.success(), "{}", stderr(&printed));
    assert!(out.starts_with("config ok (proxy)\n"), "{out}");
    assert_eq!(
        line_of(&out, "listen"),
        "listen = 127.0.0.1:7001 (from --listen)"
    );
    assert_eq!(
        line_of(&out, "admin_token"),
        format!("admin_token = <redacted> (from {})", proxy.display())
    );
    assert_eq!(
        line_of(&out, "control_db"),
        format!(
            "control_db = postgres://u:***@127.0.0.1/c (from {})",
            proxy.display()
        )
    );
    assert_eq!(
        line_of(&out, "mirror_workers"),
        "mirror_workers = 32 (default)"
    );
    for secret in ["tok-s3cret", "hunter2", "natspw"] {
        assert!(!out.contains(secret), "{secret} in {out}");
    }
    // A NATS token is given as the URL's user name.
    let printed = check(
        "proxy",
        &proxy,
        &[],
        &["--journal", "nats://natstok3n@127.0.0.1:4222"],
    );
    let out = stdout(&printed);
    assert_eq!(
        line_of(&out, "journal"),
        "journal = nats://***@127.0.0.1:4222 (from --journal)"
    );

    let pg = write(
        dir.path(),
        "pg.toml",
        "old = \"postgres://app:pgpw@127.0.0.1/x\"\nnew = \"postgres://b@127.0.0.1/x\"\n",
    );
    let printed = check("pg-proxy", &pg, &[("TANDEM_PG_USERS", "app:userpw")], &[]);
    let out = stdout(&printed);
    assert!(printed.status.success(), "{}", stderr(&printed));
    assert_eq!(
        line_of(&out, "old"),
        format!(
            "old = postgres://app:***@127.0.0.1/x (from {})",
            pg.display()
        )
    );
    assert!(!out.contains("pgpw") && !out.contains("userpw"), "{out}");

    let comparator = write(
        dir.path(),
        "comparator.toml",
        &format!("{PG_SIDES}[alerts]\nwebhook_url = \"http://hook:hookpw@127.0.0.1:1/x\"\n"),
    );
    let printed = check(
        "comparator",
        &comparator,
        &[("TANDEM_ADMIN_TOKEN", "admintok")],
        &[],
    );
    let out = stdout(&printed);
    assert!(printed.status.success(), "{}", stderr(&printed));
    assert_eq!(
        line_of(&out, "admin_token"),
        "admin_token = <redacted> (from TANDEM_ADMIN_TOKEN)"
    );
    assert!(
        out.contains("alerts.webhook_url = http://hook:***@127.0.0.1:1/x"),
        "{out}"
    );
    assert!(
        !out.contains("hookpw") && !out.contains("admintok"),
        "{out}"
    );
}

#[test]
fn mirror_replay_names_the_origin_of_a_refused_side() {
    let dir = tempfile::tempdir().unwrap();
    let control = format!("sqlite://{}", dir.path().join("control.db").display());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "mirror",
            "replay",
            "--new",
            "http://127.0.0.1:2",
            "--control-db",
            &control,
        ])
        .env("TANDEM_OLD", "ftp://127.0.0.1:1")
        .env("TANDEM_LOG", "warn")
        .output()
        .expect("run tandem");
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr(&output),
        "error: old = ftp://127.0.0.1:1/ (from TANDEM_OLD) ftp://127.0.0.1:1/ must be an \
         http://HOST:PORT or https://HOST:PORT URL\n"
    );
    assert!(
        !dir.path().join("control.db").exists(),
        "refused before the store was opened"
    );
}
