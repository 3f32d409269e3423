//! `tandem demo`, run as a real process: its scenario and summary, a clear error for a port in
//! use, and its dashboard in a real browser (headless Chromium driven through ChromeDriver).

// A test fails by panicking; unwrapping is how these helpers say "this must hold".
#![allow(clippy::unwrap_used)]

mod browser;

use std::process::Command;
use std::time::Duration;

use tandem_testkit::ChildProcess;

fn demo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("demo")
        .args(["--listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_demo_runs_its_scenario_and_ends_with_a_summary() {
    // `--duration` shorter than the scenario: the scenario still runs to its end.
    let output = demo(&["--duration", "5s", "--repair-after", "1s"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for step in [
        "stage dual-write",
        "stage shadow",
        "stage live",
        "injecting drift: orders 3, 5, 8",
        "comparator confirmed it: alert #",
        "automatic rollback live -> dual-write by tandem:auto-rollback",
        "repair from old: ",
        "old and new are identical again",
        "tandem demo summary",
        "divergent rows found         3",
        "old and new at the end       identical",
    ] {
        assert!(stdout.contains(step), "{step:?} missing from:\n{stdout}");
    }
    // The three drifted rows are repaired; traffic goes on meanwhile, so a row whose mirrored
    // copy is still on its way when the repair reads it may be repaired too.
    let number_after = |prefix: &str| -> u64 {
        stdout
            .lines()
            .find_map(|line| line.split_once(prefix).map(|(_, rest)| rest.trim_start()))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|count| count.parse().ok())
            .unwrap_or_else(|| panic!("no number after {prefix:?} in:\n{stdout}"))
    };
    // The history (orders 1000 to 2999) is on old only, and the traffic never writes it: the
    // backfill copies all 2,000 rows, and any row of the traffic whose mirrored copy is still
    // on its way when the backfill reads it.
    assert!(number_after("backfill done:") >= 2_000, "{stdout}");
    assert!(stdout.contains(" rows copied in "), "{stdout}");
    assert!(number_after("repair from old:") >= 3, "{stdout}");
    assert!(number_after("rows repaired") >= 3, "{stdout}");
    let requests: u64 = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("requests through the proxy"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap();
    // Traffic went through the proxy the whole scenario (how much depends on the machine).
    assert!(requests > 0, "{stdout}");
    assert!(stdout.contains("(0 failed)"), "{stdout}");
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "demo",
            "--listen",
            &address,
            "--proxy-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {address} for the dashboard")),
        "{stderr}"
    );
}

/// The demo, its SQLite files in `dir`, held with its drift alert open, for the browser.
fn demo_with_open_alert(dir: &std::path::Path) -> (ChildProcess, String) {
    let dir = dir.display().to_string();
    let (mut process, line) = ChildProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_tandem")),
        &[
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--proxy-listen",
            "127.0.0.1:0",
            "--repair-after",
            "120s",
            "--duration",
            "180s",
            "--dir",
            &dir,
        ],
        &[],
        "dashboard: ",
    );
    let dashboard = line.rsplit(' ').next().unwrap().to_owned();
    process.wait_for_line("comparator confirmed it", Duration::from_secs(60));
    (process, dashboard)
}

/// Rows of `widgets` on the old side of the backfill the dashboard is shown.
const WIDGETS: i64 = 37;

/// Starts a backfill of `widgets` (WIDGETS rows, between two SQLite files of its own in
/// `dir`) checkpointed in the demo's control store there, throttled to a few rows a second so
/// that the dashboard sees it running; [`widgets_report`] waits for its JSON report.
fn backfill_widgets(dir: &std::path::Path) -> std::process::Child {
    let url = |name: &str| format!("sqlite://{}", dir.join(name).display());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        sqlx::any::install_default_drivers();
        for (name, rows) in [("widgets-old.db", WIDGETS), ("widgets-new.db", 0)] {
            let pool = sqlx::any::AnyPoolOptions::new()
                .max_connections(1)
                .connect(&format!("{}?mode=rwc", url(name)))
                .await
                .unwrap();
            sqlx::query("CREATE TABLE widgets (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query(&format!(
                "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {rows}) \
                 INSERT INTO widgets SELECT g, 'widget ' || g FROM s WHERE g <= {rows}"
            ))
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
    });
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["backfill", "--old", &url("widgets-old.db"), "--new"])
        .args([&url("widgets-new.db"), "--table", "widgets", "--control-db"])
        .args([&url("control.db"), "--chunk-rows", "10", "--format", "json"])
        .args(["--max-rows-per-sec", "8"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The JSON report of the backfill [`backfill_widgets`] started, once it has ended.
fn widgets_report(backfill: std::process::Child) -> serde_json::Value {
    let output = backfill.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Records in the demo's control store (in `dir`) the summary a fleet proxy writes of its
/// shared journal: copies waiting in partition 3, delivered by `host-b:7`, and in partition 9,
/// which nobody delivers.
fn record_fleet_summary(dir: &std::path::Path) {
    let url = format!("sqlite://{}", dir.join("control.db").display());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = tandem_control::ControlStore::open(&url).await.unwrap();
        let now = tandem_control::Timestamp::now();
        let partition =
            |partition, copies, holder: Option<&str>| tandem_control::PartitionPending {
                partition,
                copies,
                holder: holder.map(str::to_owned),
            };
        let summary = tandem_control::JournalSummary {
            journal: "nats://127.0.0.1:4222/TANDEM".to_owned(),
            instance: "host-a:9".to_owned(),
            written_at: now,
            interval_ms: 60_000,
            pending: 6,
            oldest_accepted_at: Some(now),
            oldest_age_ms: None,
            keys: Vec::new(),
            partitions: vec![
                partition(3, 4, Some("host-b:7")),
                partition(5, 0, Some("host-a:9")),
                partition(9, 2, None),
            ],
            stale: false,
        };
        store.record_journal_summary(&summary).await.unwrap();
        store.close().await;
    });
}

#[test]
fn the_dashboard_shows_the_stage_and_acknowledges_an_alert_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let (demo, dashboard) = demo_with_open_alert(dir.path());
    let browser = browser::Browser::start();
    browser.open(&dashboard);
    let stage = browser.wait_for_text("#stage", |text| text == "dual-write");
    assert_eq!(stage, "dual-write", "the rollback is shown");
    browser.wait_for_text("tr.alert td.status", |text| text == "open");
    let row = browser.text("#alerts tbody");
    assert!(row.contains("drift") && row.contains("orders"), "{row}");
    browser.click("tr.alert button.ack");
    browser.wait_for_text("tr.alert td.status", |text| text == "acknowledged");
    // The table is drawn again every second: a click on a row being replaced is lost, so it
    // is repeated until the drill-down opens.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let drill = loop {
        browser.click("#tables tbody tr");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let title = browser.text("#drill-title");
        if title.contains("orders") {
            break title;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "#drill-title shows {title:?}"
        );
    };
    assert!(drill.contains("Divergent rows of orders"), "{drill}");
    // A backfill checkpointed in the same control store shows in the backfills panel, beside
    // the demo's own backfill of `orders`: running while it copies, then finished.
    let backfill = backfill_widgets(dir.path());
    let widgets = "#backfills tr[data-table=\"widgets\"]";
    browser.wait_for_text(&format!("{widgets} td.state"), |text| text == "running");
    let report = widgets_report(backfill);
    assert_eq!(report["tables"][0]["copied"], WIDGETS, "{report}");
    browser.wait_for_text(&format!("{widgets} td.state"), |text| text == "finished");
    let copied = browser.text(&format!("{widgets} td.copied"));
    assert_eq!(copied, WIDGETS.to_string());
    let chunks = &report["tables"][0]["chunks"];
    assert_eq!(
        browser.text(&format!("{widgets} td.chunks")),
        format!("{chunks} / {chunks}")
    );
    assert_eq!(browser.text(&format!("{widgets} td.skipped")), "0");
    let orders = browser.text("#backfills tr[data-table=\"orders\"] td.state");
    assert_eq!(orders, "finished", "the demo's backfill of orders");
    // A fleet's shared journal shows its waiting copies per partition, and who delivers them.
    record_fleet_summary(dir.path());
    let journals = browser.wait_for_text("#journals tbody", |text| text.contains("partition 3"));
    assert!(
        journals.contains("partition 3 ×4 by host-b:7"),
        "{journals}"
    );
    assert!(
        journals.contains("partition 9 ×2 (NOT DELIVERED)"),
        "{journals}"
    );
    assert!(!journals.contains("partition 5"), "{journals}");
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    browser.screenshot(&screenshot);
    demo.terminate();
}
