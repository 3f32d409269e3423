//! A transaction the other side can never apply (a table it does not have) holds every later
//! one behind it: `tandem pg-replay` names it, the same one each time, and a person moves past
//! it with `--skip ID --reason --by`, which is audited and alerted, after which the ones behind
//! it are applied.

use sqlx::{Connection, Executor};

use super::exact::{
    assert_carried_over, identical_sides, psql_query, rows, succeeded, tandem_json,
};
use super::{eventually, mirror_failures, Proxy};

/// `tandem pg-replay` of the transactions kept in `control`, as JSON, with `extra`
/// arguments: its exit code, report and standard error.
fn replay(
    old: &str,
    new: &str,
    control: &str,
    extra: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    let mut args = vec![
        "pg-replay",
        "--old",
        old,
        "--new",
        new,
        "--control-db",
        control,
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    tandem_json(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_can_never_apply_is_reported_and_skipped() {
    let (old, new) = identical_sides().await;
    let mut direct = sqlx::PgConnection::connect(&old.url).await.unwrap();
    direct
        .execute("CREATE TABLE only_on_old (n INT PRIMARY KEY)")
        .await
        .unwrap();
    direct.close().await.unwrap();
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &[]);
    for sql in [
        "INSERT INTO items (name) VALUES ('one')",
        "INSERT INTO only_on_old VALUES (1)",
        "INSERT INTO items (name) VALUES ('two')",
        "INSERT INTO items (name) VALUES ('three')",
    ] {
        succeeded(&psql_query(&proxy.port, sql).await, sql);
    }
    let expected: &[&str] = &["1|existing||", "2|one||", "3|two||", "4|three||"];
    assert_eq!(rows(&old.url, "public.items").await, expected);
    eventually(&new.url, "SELECT count(*) FROM items WHERE name = 'one'", 1).await;

    // The insert into only_on_old failed on new and is kept; the two after it are kept
    // behind it, unapplied.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while mirror_failures(&proxy.control, false)
        .as_array()
        .map_or(0, Vec::len)
        < 3
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            mirror_failures(&proxy.control, true)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        rows(&new.url, "public.items").await,
        ["1|existing||", "2|one||"]
    );

    // The replay stops at it, names it, and holds the rest; again the same one.
    let mut blocker = serde_json::Value::Null;
    for attempt in 0..2 {
        let (code, report, stderr) = replay(&old.url, &new.url, &proxy.control, &[]);
        assert_eq!(code, Some(1), "attempt {attempt}: {report} {stderr}");
        let blocked = &report["blocked_by"];
        assert!(blocked["id"].is_i64(), "{report}");
        assert_eq!(blocked["target"], "new", "{report}");
        assert_eq!(
            blocked["fingerprint"], "INSERT INTO only_on_old VALUES (?)",
            "{report}"
        );
        assert!(
            blocked["reason"].as_str().unwrap().contains("42P01"),
            "{report}"
        );
        assert!(report["held"].as_i64().unwrap() >= 1, "{report}");
        assert_eq!(report["replayed"], 0, "{report}");
        if attempt == 1 {
            assert_eq!(blocked["id"], blocker["id"], "the same blocker: {report}");
        }
        blocker = blocked.clone();
    }
    let id = blocker["id"].as_i64().unwrap();
    let id_text = id.to_string();

    // A skip needs a reason and a name; one of nothing awaiting replay is refused.
    let (code, _, stderr) = replay(&old.url, &new.url, &proxy.control, &["--skip", &id_text]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--reason") && stderr.contains("--by"),
        "the argument parser names what is missing: {stderr}"
    );
    let (code, report, stderr) = replay(
        &old.url,
        &new.url,
        &proxy.control,
        &["--skip", "999999", "--reason", "x", "--by", "y"],
    );
    assert_eq!(code, Some(2), "{report} {stderr}");
    assert!(
        stderr.contains("#999999") && stderr.contains("awaits replay"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(
        rows(&new.url, "public.items").await,
        ["1|existing||", "2|one||"],
        "refused skips replayed nothing"
    );

    // Skipped: the two behind it are applied.
    let reason = "table dropped in the new schema";
    let (code, report, stderr) = replay(
        &old.url,
        &new.url,
        &proxy.control,
        &["--skip", &id_text, "--reason", reason, "--by", "alice"],
    );
    assert_eq!(code, Some(0), "{report} {stderr}");
    assert_eq!(report["skipped"], id, "{report}");
    assert_eq!(report["replayed"], 2, "{report}");
    assert_eq!(report["blocked_by"], serde_json::Value::Null, "{report}");
    assert_eq!(rows(&new.url, "public.items").await, expected);

    // Audited, alerted, and listed as skipped.
    let (code, audit, stderr) =
        tandem_json(&["audit", "--format", "json", "--control-db", &proxy.control]);
    assert_eq!(code, Some(0), "{stderr}");
    let skips: Vec<&serde_json::Value> = audit
        .as_array()
        .unwrap_or_else(|| panic!("{audit}"))
        .iter()
        .filter(|entry| entry["action"] == "mirror_skipped")
        .collect();
    assert_eq!(skips.len(), 1, "{audit}");
    assert_eq!(skips[0]["actor"], "alice", "{audit}");
    assert_eq!(skips[0]["detail"], reason, "{audit}");
    assert!(
        skips[0]["subject"]
            .as_str()
            .unwrap()
            .contains(&format!("#{id}")),
        "{audit}"
    );
    let (code, alerts, stderr) = tandem_json(&[
        "alerts",
        "list",
        "--format",
        "json",
        "--control-db",
        &proxy.control,
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let skipped: Vec<&serde_json::Value> = alerts
        .as_array()
        .unwrap_or_else(|| panic!("{alerts}"))
        .iter()
        .filter(|alert| alert["kind"] == "skipped_transaction")
        .collect();
    assert_eq!(skipped.len(), 1, "{alerts}");
    assert_eq!(skipped[0]["status"], "open", "{alerts}");
    let summary = skipped[0]["summary"].as_str().unwrap();
    assert!(summary.contains(&format!("#{id}")), "{summary}");
    let all = mirror_failures(&proxy.control, true);
    let listed = all
        .as_array()
        .unwrap()
        .iter()
        .find(|failure| failure["id"] == id)
        .unwrap_or_else(|| panic!("#{id} is listed: {all}"));
    assert_eq!(listed["status"], "skipped", "{all}");
    assert_eq!(
        mirror_failures(&proxy.control, false),
        serde_json::json!([]),
        "nothing pending"
    );
    // Skipped once: it awaits replay no longer.
    let (code, _, stderr) = replay(
        &old.url,
        &new.url,
        &proxy.control,
        &["--skip", &id_text, "--reason", reason, "--by", "alice"],
    );
    assert_eq!(code, Some(2), "{stderr}");

    // The only difference the skip left is the table new never had; with it gone from old
    // (as it is from the new schema), the sides are identical and mirroring goes on.
    let mut direct = sqlx::PgConnection::connect(&old.url).await.unwrap();
    direct.execute("DROP TABLE only_on_old").await.unwrap();
    direct.close().await.unwrap();
    assert_carried_over(
        &old,
        &new,
        &proxy.port,
        &proxy.control,
        &[("public.items", expected)],
    )
    .await;
}
