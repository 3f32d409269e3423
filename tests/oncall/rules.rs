//! The shipped Prometheus rules are valid, every alert has a unit test that `promtool` runs,
//! and every alert's runbook link names a section of docs/runbook.md.

use std::collections::BTreeSet;

use crate::tools::{repo_file, run};

const RULES: &str = "deploy/prometheus/tandem.rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/tandem.rules.test.yml";

/// The values of `key: value` lines (one per line, as the shipped files write them).
fn values_of(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_start().trim_start_matches("- ");
            line.strip_prefix(key)?.strip_prefix(':')
        })
        .map(|value| value.trim().to_owned())
        .collect()
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    let checked = run(
        "promtool",
        &["check", "rules", repo_file(RULES).to_str().unwrap()],
    );
    assert!(
        checked.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let tested = run(
        "promtool",
        &["test", "rules", repo_file(RULE_TESTS).to_str().unwrap()],
    );
    assert!(
        tested.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&tested.stdout),
        String::from_utf8_lossy(&tested.stderr)
    );
}

#[test]
fn every_alert_is_unit_tested_and_has_a_runbook_section() {
    let rules = std::fs::read_to_string(repo_file(RULES)).unwrap();
    let tests = std::fs::read_to_string(repo_file(RULE_TESTS)).unwrap();
    let runbook = std::fs::read_to_string(repo_file("docs/runbook.md")).unwrap();
    let alerts: BTreeSet<String> = values_of(&rules, "alert").into_iter().collect();
    assert!(alerts.len() >= 10, "alerts found: {alerts:?}");

    // promtool passes a file that leaves an alert untested: each must be tested firing.
    let tested: BTreeSet<String> = values_of(&tests, "alertname").into_iter().collect();
    let untested: Vec<&String> = alerts.difference(&tested).collect();
    assert!(
        untested.is_empty(),
        "alerts without a unit test: {untested:?}"
    );

    let sections: BTreeSet<String> = runbook
        .lines()
        .filter_map(|line| line.strip_prefix("## "))
        .map(|heading| heading.trim().to_lowercase())
        .collect();
    let links = values_of(&rules, "runbook_url");
    assert_eq!(links.len(), alerts.len(), "one runbook link per alert");
    for link in &links {
        let anchor = link
            .strip_prefix("docs/runbook.md#")
            .unwrap_or_else(|| panic!("runbook link {link} is not into docs/runbook.md"));
        assert!(
            sections.contains(anchor),
            "no runbook section for #{anchor}"
        );
    }
    for alert in &alerts {
        assert!(
            links.contains(&format!("docs/runbook.md#{}", alert.to_lowercase())),
            "{alert} links to another alert's section"
        );
    }
}
