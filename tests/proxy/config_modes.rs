//! `tandem config check` knows every command's configuration: the HTTP proxy's, the
//! PostgreSQL proxy's (`--mode pg-proxy`), the comparator's (`--mode comparator`) and the
//! backfill's (`--mode backfill`); each example file passes in its mode, and a bad key is named
//! in one line.

use crate::harness::tandem;

fn example(name: &str) -> String {
    format!("{}/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn each_example_file_passes_in_its_mode() {
    for args in [
        vec![example("tandem.example.toml")],
        vec![
            "--mode".to_owned(),
            "pg-proxy".to_owned(),
            example("pgproxy.example.toml"),
        ],
        vec![
            "--mode".to_owned(),
            "comparator".to_owned(),
            example("comparator.example.toml"),
        ],
        vec![
            "--mode".to_owned(),
            "backfill".to_owned(),
            example("backfill.example.toml"),
        ],
    ] {
        let mut command = vec!["config", "check"];
        command.extend(args.iter().map(String::as_str));
        let output = tandem(&command);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).starts_with("config ok"));
    }
}

#[test]
fn a_bad_key_is_named_in_one_line_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let sides = "old = \"postgres://a@127.0.0.1/x\"\nnew = \"postgres://b@127.0.0.1/x\"\n";
    for (mode, text, named) in [
        (
            "proxy",
            "old = \"http://a:1\"\nnew = \"http://b:2\"\nlistne = \"x\"\n",
            "listne",
        ),
        (
            "pg-proxy",
            &format!("{sides}listne = \"127.0.0.1:1\"\n") as &str,
            "listne",
        ),
        ("pg-proxy", "new = \"postgres://b@127.0.0.1/x\"\n", "old"),
        (
            "comparator",
            &format!("{sides}windwo_rows = 5\n"),
            "windwo_rows",
        ),
        ("comparator", "new = \"postgres://b@127.0.0.1/x\"\n", "old"),
        (
            "comparator",
            &format!("{sides}[alerts]\nalertmanager_url = \"ftp://am:9093\"\n"),
            "alerts.alertmanager_url",
        ),
        (
            "comparator",
            &format!("{sides}[alerts]\npagerduty_routing_key_file = \"/nonexistent/key\"\n"),
            "alerts.pagerduty_routing_key_file",
        ),
        (
            "comparator",
            &format!("{sides}[alerts]\nca_file = \"/nonexistent/ca.pem\"\n"),
            "alerts.ca_file",
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let output = tandem(&["config", "check", "--mode", mode, path.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "{mode}: {text}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(named), "{mode}: {text} -> {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one-line reason: {stderr}");
    }

    let without_file = tandem(&["config", "check", "--mode", "comparator"]);
    assert_eq!(without_file.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&without_file.stderr).contains(
        "old is not set: set `old` in the config file, with --old or with TANDEM_COMPARE_OLD"
    ));
}
