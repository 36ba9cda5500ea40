//! The deployment files under `deploy/`, checked by the real tools and against the
//! metric names voxd exports: `promtool check config` / `check rules` / `test rules`
//! for Prometheus, `haproxy -c` for HAProxy, `voxd check` for every voxd
//! configuration they ship, `promtool check rules` again for every PromQL query of
//! the Grafana dashboard, and structural checks (parsed JSON/YAML) for the
//! dashboard, the Kubernetes DaemonSet, the compose files and the Dockerfile.
//!
//! Needs `promtool` (Debian package `prometheus`) and `haproxy` (Debian package
//! `haproxy`) on the PATH; `.ci/run` installs both. A missing tool fails the test.
//!
//! [`EXPORTED_METRICS`] is the one list of metric families the deploy files may
//! use; docs/monitoring.md documents each of them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// What kind of Prometheus metric family a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    /// Exported as `<name>_bucket{le}`, `<name>_sum`, `<name>_count`.
    Histogram,
}

/// Every metric family voxd exports (or will: the lead wires the last ones), with
/// its kind and labels. `voxd_draining` is the one name added to the list in the
/// brief: VoxdNotReady must stay quiet while a host drains on purpose.
const EXPORTED_METRICS: &[(&str, Kind, &[&str])] = &[
    ("voxd_up", Kind::Gauge, &["version", "io_backend"]),
    ("voxd_ready", Kind::Gauge, &[]),
    ("voxd_draining", Kind::Gauge, &[]),
    ("voxd_uptime_seconds", Kind::Gauge, &[]),
    ("voxd_ari_connected", Kind::Gauge, &[]),
    ("voxd_ari_reconnects_total", Kind::Counter, &[]),
    ("ai_agent_active_calls", Kind::Gauge, &[]),
    ("ai_agent_calls_total", Kind::Counter, &["reason"]),
    ("ai_agent_call_duration_seconds", Kind::Histogram, &[]),
    ("ai_agent_turn_response_seconds", Kind::Histogram, &[]),
    ("voxd_caller_to_provider_seconds", Kind::Histogram, &[]),
    ("ai_agent_barge_in_reaction_seconds", Kind::Histogram, &[]),
    ("ai_agent_barge_in_events_total", Kind::Counter, &[]),
    ("ai_agent_stream_frames_sent_total", Kind::Counter, &[]),
    ("ai_agent_stream_underflow_events_total", Kind::Counter, &[]),
    ("ai_agent_audiosocket_active_connections", Kind::Gauge, &[]),
    ("ai_agent_audiosocket_rx_bytes_total", Kind::Counter, &[]),
    ("ai_agent_audiosocket_tx_bytes_total", Kind::Counter, &[]),
    ("voxd_rtp_packets_total", Kind::Counter, &["direction"]),
    ("voxd_rtp_lost_packets_total", Kind::Counter, &[]),
    ("voxd_rtp_late_packets_total", Kind::Counter, &[]),
    ("voxd_rtp_jitter_seconds", Kind::Histogram, &[]),
    ("voxd_ring_drops_total", Kind::Counter, &[]),
    ("voxd_shard_calls", Kind::Gauge, &["shard"]),
    ("voxd_shard_busy_ratio", Kind::Gauge, &["shard"]),
    (
        "voxd_provider_errors_total",
        Kind::Counter,
        &["provider", "class"],
    ),
    ("voxd_provider_reconnects_total", Kind::Counter, &[]),
    ("voxd_provider_connect_seconds", Kind::Histogram, &[]),
    ("voxd_caller_audio_dropped_total", Kind::Counter, &[]),
    ("process_cpu_seconds_total", Kind::Counter, &[]),
    ("process_resident_memory_bytes", Kind::Gauge, &[]),
    ("process_open_fds", Kind::Gauge, &[]),
];

/// Labels every scraped series carries (target labels added by Prometheus).
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// The alerts issue 6 asks for, each with at least one promtool unit test.
const ALERTS: &[&str] = &[
    "VoxdDown",
    "VoxdNotReady",
    "TurnLatencyHigh",
    "UnderflowRate",
    "RtpLoss",
    "RingDrops",
    "ProviderErrorRate",
    "ShardSaturated",
    "AriDisconnected",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn yaml(rel: &str) -> Value {
    serde_saphyr::from_str::<Value>(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Runs a tool; fails the test (with its output) unless it exits 0.
fn run_ok(tool: &str, args: &[&str], hint: &str) -> String {
    let out = Command::new(tool)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool} ({hint}): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{tool} {} failed:\n{text}",
        args.join(" ")
    );
    text
}

fn promtool(args: &[&str]) -> String {
    run_ok("promtool", args, "Debian package prometheus")
}

/// A scratch directory for generated files.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("voxd-deploy-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---------------------------------------------------------------------------
// PromQL: which metric names and label names a query uses.

/// Aggregation operators: followed by `by (...)`/`without (...)` or `(`.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
];
/// Keywords that are neither metrics nor functions.
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "atan2"];
/// Keywords followed by a parenthesised label list.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Names used in a PromQL expression.
#[derive(Debug, Default)]
struct Used {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

/// Scans `expr` (Grafana variables allowed) for metric and label names. Strings,
/// numbers, durations, functions and keywords are skipped; `{...}` matchers and
/// `by (...)`-style lists give label names.
fn promql_names(expr: &str) -> Used {
    let c: Vec<char> = expr.chars().collect();
    let mut used = Used::default();
    let mut i = 0;
    let ident_start = |ch: char| ch.is_ascii_alphabetic() || ch == '_' || ch == ':';
    let ident_char = |ch: char| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':';
    let skip_ws = |mut j: usize| {
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            i += 1;
            while i < c.len() && c[i] != ch {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if ch == '{' {
            // Label matchers: `name op "value"`, comma separated.
            i += 1;
            while i < c.len() && c[i] != '}' {
                if c[i] == '"' || c[i] == '\'' || c[i] == '`' {
                    let q = c[i];
                    i += 1;
                    while i < c.len() && c[i] != q {
                        i += if c[i] == '\\' { 2 } else { 1 };
                    }
                    i += 1;
                } else if ident_start(c[i]) {
                    let s = i;
                    while i < c.len() && ident_char(c[i]) {
                        i += 1;
                    }
                    used.labels.insert(c[s..i].iter().collect());
                } else {
                    i += 1;
                }
            }
            i += 1;
        } else if ch == '[' {
            while i < c.len() && c[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if ch == '$' {
            // Grafana variable: $name or ${name}.
            i += 1;
            if i < c.len() && c[i] == '{' {
                while i < c.len() && c[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < c.len() && ident_char(c[i]) {
                    i += 1;
                }
            }
        } else if ch.is_ascii_digit() || ch == '.' {
            // A number or a duration (5m, 1e3, 0x1F).
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if ident_start(ch) {
            let s = i;
            while i < c.len() && ident_char(c[i]) {
                i += 1;
            }
            let word: String = c[s..i].iter().collect();
            let next = skip_ws(i);
            let followed_by_paren = next < c.len() && c[next] == '(';
            if LABEL_LISTS.contains(&word.as_str()) {
                if followed_by_paren {
                    let mut j = next + 1;
                    while j < c.len() && c[j] != ')' {
                        if ident_start(c[j]) {
                            let s = j;
                            while j < c.len() && ident_char(c[j]) {
                                j += 1;
                            }
                            used.labels.insert(c[s..j].iter().collect());
                        } else {
                            j += 1;
                        }
                    }
                    i = j + 1;
                }
            } else if followed_by_paren
                || AGGREGATIONS.contains(&word.as_str())
                || KEYWORDS.contains(&word.as_str())
            {
                // A function call, an aggregation or a keyword.
            } else {
                used.metrics.insert(word);
            }
        } else {
            i += 1;
        }
    }
    used
}

/// The exported family a series name belongs to (`x_bucket` of histogram `x` is
/// `x`), or `None` when voxd exports no such family.
fn family(series: &str) -> Option<&'static str> {
    if series == "up" {
        return Some("up");
    }
    EXPORTED_METRICS.iter().find_map(|(name, kind, _)| {
        let hit = match kind {
            Kind::Histogram => ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| series.strip_suffix(s) == Some(name)),
            _ => series == *name,
        };
        hit.then_some(*name)
    })
}

/// Fails unless every metric and label name in `exprs` is one voxd exports.
/// Returns the families used.
fn check_names(what: &str, exprs: &[String]) -> BTreeSet<&'static str> {
    let mut labels: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
    labels.insert("le");
    for (_, _, ls) in EXPORTED_METRICS {
        labels.extend(ls.iter().copied());
    }
    let mut families = BTreeSet::new();
    let mut problems = Vec::new();
    for e in exprs {
        let used = promql_names(e);
        assert!(!used.metrics.is_empty(), "{what}: no metric in `{e}`");
        for m in &used.metrics {
            match family(m) {
                Some(f) => {
                    families.insert(f);
                }
                None => problems.push(format!("unknown metric `{m}` in `{e}`")),
            }
        }
        for l in &used.labels {
            if !labels.contains(l.as_str()) {
                problems.push(format!("unknown label `{l}` in `{e}`"));
            }
        }
    }
    assert!(problems.is_empty(), "{what}:\n{}", problems.join("\n"));
    families
}

#[test]
fn promql_scanner_finds_metrics_and_labels() {
    let u = promql_names(
        r#"histogram_quantile(0.95, sum by (job, le) (rate(a_seconds_bucket{job="voxd", instance=~"$instance"}[$__rate_interval]))) / on (instance) group_left b_total offset 5m > bool 2 unless c"#,
    );
    let m: Vec<&str> = u.metrics.iter().map(String::as_str).collect();
    assert_eq!(m, ["a_seconds_bucket", "b_total", "c"]);
    let l: Vec<&str> = u.labels.iter().map(String::as_str).collect();
    assert_eq!(l, ["instance", "job", "le"]);
    assert_eq!(
        family("voxd_rtp_jitter_seconds_bucket"),
        Some("voxd_rtp_jitter_seconds")
    );
    assert_eq!(family("voxd_ring_drops_total_bucket"), None);
    assert_eq!(family("voxd_ring_drop_total"), None);
}

// ---------------------------------------------------------------------------
// Prometheus

#[test]
fn prometheus_config_passes_promtool() {
    let out = promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
    assert!(
        out.contains("alert-rules.yml"),
        "the config loads the rules: {out}"
    );
    let cfg = yaml("deploy/prometheus/prometheus.yml");
    let jobs = cfg["scrape_configs"].as_array().expect("scrape_configs");
    let voxd = jobs
        .iter()
        .find(|j| j["job_name"] == "voxd")
        .expect("a job named voxd (the rules and the dashboard select job=\"voxd\")");
    for sc in voxd["static_configs"].as_array().expect("static_configs") {
        for t in sc["targets"].as_array().unwrap() {
            let t = t.as_str().unwrap();
            assert!(t.ends_with(":15000"), "voxd's health port: {t}");
        }
    }
}

/// Every alert's name and expression, from the rule file (checking its severity
/// label and runbook annotation on the way).
fn alert_rules() -> Vec<(String, String)> {
    let rules = yaml("deploy/prometheus/alert-rules.yml");
    let mut out = Vec::new();
    for g in rules["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            if let Some(a) = r["alert"].as_str() {
                let sev = r["labels"]["severity"].as_str().unwrap_or("");
                assert!(
                    sev == "critical" || sev == "warning",
                    "{a}: severity critical|warning, got {sev:?}"
                );
                let runbook = r["annotations"]["runbook"].as_str().unwrap_or("");
                assert_eq!(
                    runbook,
                    format!("docs/monitoring.md#{}", a.to_lowercase()),
                    "{a}: runbook annotation"
                );
                out.push((a.to_string(), r["expr"].as_str().unwrap().to_string()));
            }
        }
    }
    out
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let out = promtool(&["check", "rules", "deploy/prometheus/alert-rules.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["test", "rules", "deploy/prometheus/alert-rules.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");

    let rules = alert_rules();
    let names: BTreeSet<&str> = rules.iter().map(|(n, _)| n.as_str()).collect();
    let wanted: BTreeSet<&str> = ALERTS.iter().copied().collect();
    assert_eq!(names, wanted, "the alerts of issue 6");

    // Each alert has a unit test that expects it to fire on some series.
    let tests = yaml("deploy/prometheus/alert-rules.test.yml");
    let mut fired: BTreeMap<String, usize> = BTreeMap::new();
    for t in tests["tests"].as_array().expect("tests") {
        for a in t["alert_rule_test"].as_array().into_iter().flatten() {
            let n = a["exp_alerts"].as_array().map_or(0, Vec::len);
            *fired
                .entry(a["alertname"].as_str().unwrap().to_string())
                .or_default() += n;
        }
    }
    for a in ALERTS {
        assert!(
            fired.get(*a).copied().unwrap_or(0) > 0,
            "{a}: no unit test expects it to fire"
        );
    }

    let exprs: Vec<String> = rules.into_iter().map(|(_, e)| e).collect();
    check_names("alert-rules.yml", &exprs);
}

// ---------------------------------------------------------------------------
// Grafana

/// The dashboard's rows (in order) and panels under each.
fn dashboard_rows(d: &Value) -> Vec<(String, Vec<&Value>)> {
    let mut rows: Vec<(String, Vec<&Value>)> = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            rows.push((p["title"].as_str().unwrap().to_string(), Vec::new()));
        } else {
            rows.last_mut().expect("the first panel is a row").1.push(p);
        }
    }
    rows
}

#[test]
fn grafana_dashboard_is_valid_and_uses_exported_metrics() {
    let text = read("deploy/grafana/voxd-dashboard.json");
    let d: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36, "schemaVersion");
    assert_eq!(d["uid"], "voxd-overview");
    assert_eq!(d["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(d["__inputs"][0]["pluginId"], "prometheus");
    assert!(d["id"].is_null(), "importable: no database id");

    let rows = dashboard_rows(&d);
    let titles: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        titles,
        [
            "Calls",
            "Latency",
            "Audio health",
            "Providers",
            "Shards",
            "Process"
        ]
    );
    // Panels that each row promises, by title.
    let promised: &[(&str, &[&str])] = &[
        (
            "Calls",
            &["Active calls", "Calls started and ended", "Call duration"],
        ),
        ("Latency", &["Turn response", "Barge-in reaction"]),
        (
            "Audio health",
            &[
                "Playout underflows",
                "RTP loss and late packets",
                "RTP jitter",
            ],
        ),
        (
            "Providers",
            &[
                "Provider errors by class",
                "Reconnects",
                "Provider connect time",
            ],
        ),
        ("Shards", &["Calls per shard", "Shard busy ratio"]),
        (
            "Process",
            &["CPU", "Resident memory", "Open file descriptors"],
        ),
    ];
    for (row, panels) in promised {
        let have: Vec<&str> = rows
            .iter()
            .find(|(t, _)| t == row)
            .unwrap()
            .1
            .iter()
            .map(|p| p["title"].as_str().unwrap())
            .collect();
        for p in *panels {
            assert!(have.contains(p), "row {row} lacks panel {p:?}: {have:?}");
        }
    }

    // Ids unique, every panel placed inside the 24-column grid, every query on the
    // imported data source.
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    let mut quantile_families = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(x + w <= 24 && g["h"].as_u64().unwrap() > 0, "gridPos {g}");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}: no query", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}");
            let e = t["expr"].as_str().expect("expr").to_string();
            if e.contains("histogram_quantile") {
                for m in promql_names(&e).metrics {
                    quantile_families.insert(family(&m).unwrap_or("?").to_string());
                }
            }
            exprs.push(e);
        }
    }
    // Template variables query exported metrics too.
    for v in d["templating"]["list"].as_array().unwrap() {
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.split_once(','))
            .map(|(m, _)| m.to_string())
            .expect("label_values(metric, label)");
        exprs.push(inner);
    }
    let used = check_names("voxd-dashboard.json", &exprs);
    for m in [
        "ai_agent_active_calls",
        "ai_agent_calls_total",
        "ai_agent_turn_response_seconds",
        "ai_agent_barge_in_reaction_seconds",
        "ai_agent_stream_underflow_events_total",
        "voxd_rtp_lost_packets_total",
        "voxd_rtp_late_packets_total",
        "voxd_rtp_jitter_seconds",
        "voxd_provider_errors_total",
        "voxd_provider_reconnects_total",
        "voxd_provider_connect_seconds",
        "voxd_shard_calls",
        "voxd_shard_busy_ratio",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(used.contains(m), "the dashboard does not show {m}");
    }
    for h in [
        "ai_agent_turn_response_seconds",
        "ai_agent_barge_in_reaction_seconds",
        "voxd_caller_to_provider_seconds",
    ] {
        assert!(quantile_families.contains(h), "{h}: no percentile panel");
    }

    // Every query is valid PromQL: promtool checks them as recording rules, with
    // Grafana's variables replaced by what they expand to.
    let mut rules = Vec::new();
    for (n, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("${instance}", ".*")
            .replace("$instance", ".*");
        rules.push(serde_json::json!({"record": format!("dashboard:query_{n}"), "expr": e}));
    }
    let file = scratch("dashboard").join("dashboard-queries.yml");
    let doc = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, doc.to_string()).unwrap();
    promtool(&["check", "rules", file.to_str().unwrap()]);
}

// ---------------------------------------------------------------------------
// HAProxy

#[test]
fn haproxy_config_is_valid_and_checks_ready() {
    let out = run_ok(
        "haproxy",
        &["-c", "-f", "deploy/haproxy/haproxy.cfg"],
        "Debian package haproxy",
    );
    assert!(out.contains("valid"), "{out}");
    let cfg = read("deploy/haproxy/haproxy.cfg");
    let lines: Vec<&str> = cfg
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    for want in [
        "balance leastconn",
        "option httpchk GET /ready",
        "http-check expect status 200",
        "mode tcp",
    ] {
        assert!(lines.contains(&want), "haproxy.cfg lacks `{want}`");
    }
    let servers: Vec<&&str> = lines.iter().filter(|l| l.starts_with("server ")).collect();
    assert!(servers.len() >= 2, "several voxd backends");
    for s in servers {
        assert!(
            s.contains(":8090 ") && s.ends_with("check port 15000"),
            "AudioSocket port, checked on the health port: {s}"
        );
    }
    // A server taken out (503 on /ready) keeps its running calls.
    assert!(
        !lines.iter().any(|l| l.contains("shutdown-sessions")),
        "a draining server must keep its running calls"
    );
}

// ---------------------------------------------------------------------------
// voxd configurations shipped under deploy/

/// `voxd check` on `text` with no secrets in the environment but `env`.
fn voxd_check(what: &str, text: &str, env: &[(&str, &str)]) -> String {
    let dir = scratch("check");
    let file = dir.join(format!("{what}.yaml"));
    std::fs::write(&file, text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_voxd"));
    cmd.arg("check").arg("--config").arg(&file);
    for k in [
        "ASTERISK_ARI_USERNAME",
        "ASTERISK_ARI_PASSWORD",
        "OPENAI_API_KEY",
        "DEEPGRAM_API_KEY",
        "LOCAL_AI_AUTH_TOKEN",
        "POD_IP",
        "VOXD_CONFIG",
        "AUDIOSOCKET_HOST",
        "AUDIOSOCKET_PORT",
        "HEALTH_BIND_HOST",
        "HEALTH_BIND_PORT",
        "EXTERNAL_MEDIA_RTP_HOST",
        "EXTERNAL_MEDIA_RTP_PORT",
        "ASTERISK_HOST",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "voxd check rejects {what}:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// `shutdown.drain_seconds` of a voxd.yaml text (after `voxd check`).
fn drain_seconds(effective: &str) -> u64 {
    let v: Value = serde_saphyr::from_str(effective).expect("effective config is YAML");
    v["shutdown"]["drain_seconds"].as_u64().unwrap()
}

fn seconds(s: &str) -> u64 {
    s.strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a duration like 45s: {s}"))
}

#[test]
fn container_files_are_consistent() {
    let effective = voxd_check("container", &read("deploy/voxd.yaml"), &[]);
    let cfg: Value = serde_saphyr::from_str(&effective).unwrap();
    assert_eq!(cfg["health"]["port"], 15000);
    assert_eq!(cfg["audiosocket"]["port"], 8090);
    assert_eq!(cfg["external_media"]["rtp_port"], 18080);
    let drain = drain_seconds(&effective);

    // Dockerfile: multi-stage, locked release build, non-root, health check on
    // /live, the ports, the entrypoint.
    let df = read("deploy/Dockerfile");
    let instr: Vec<String> = df
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_string)
        .collect();
    let froms: Vec<&String> = instr.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "build and runtime stages: {froms:?}");
    assert!(df.contains("ARG RUST_IMAGE=rust:1-bookworm"));
    assert!(df.contains("cargo build --release --locked"));
    let user = instr
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "non-root: {user}"
    );
    assert!(instr.iter().any(|l| l.starts_with("EXPOSE ")
        && l.contains("8090/tcp")
        && l.contains("18080/udp")
        && l.contains("15000/tcp")));
    assert!(instr
        .iter()
        .any(|l| l.starts_with("HEALTHCHECK ") && l.contains("GET /live")));
    assert!(instr.contains(
        &r#"ENTRYPOINT ["/usr/local/bin/voxd", "serve", "--config", "/etc/voxd/voxd.yaml"]"#
            .to_string()
    ));
    // Every COPY source from the context exists and is let through by the
    // Dockerfile's .dockerignore (an allow-list).
    let ignore = read("deploy/Dockerfile.dockerignore");
    let allowed: Vec<&str> = ignore.lines().filter_map(|l| l.strip_prefix('!')).collect();
    for l in instr
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
    {
        let words: Vec<&str> = l
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        for src in &words[1..words.len() - 1] {
            assert!(root().join(src).exists(), "COPY source {src} missing");
            assert!(
                allowed.contains(src),
                "{src} is not in Dockerfile.dockerignore's allow-list"
            );
        }
    }

    // docker-compose.yml: bridge network, loopback-only ports, read-only root,
    // secrets from env_file, health check, grace above the drain.
    let c = yaml("deploy/docker-compose.yml");
    let s = &c["services"]["voxd"];
    assert_eq!(s["read_only"], true);
    assert_eq!(s["cap_drop"][0], "ALL");
    assert_eq!(s["env_file"][0], "voxd.env");
    assert!(root().join("deploy/voxd.env.example").exists());
    assert_eq!(s["volumes"][0], "./voxd.yaml:/etc/voxd/voxd.yaml:ro");
    assert!(s["healthcheck"]["test"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a.as_str().unwrap().contains("GET /live")));
    let ports: Vec<&str> = s["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(ports.len(), 3);
    for p in &ports {
        assert!(p.starts_with("127.0.0.1:"), "loopback only: {p}");
    }
    assert!(ports.contains(&"127.0.0.1:18080:18080/udp"));
    assert_eq!(c["networks"]["voxd"]["driver"], "bridge");
    assert!(seconds(s["stop_grace_period"].as_str().unwrap()) > drain);

    // docker-compose.host.yml: host network, no port mapping, many open files.
    let h = yaml("deploy/docker-compose.host.yml");
    let s = &h["services"]["voxd"];
    assert_eq!(s["network_mode"], "host");
    assert!(s["ports"].is_null(), "no ports: with host networking");
    assert_eq!(s["read_only"], true);
    assert!(s["ulimits"]["nofile"]["soft"].as_u64().unwrap() >= 65536);
    assert!(seconds(s["stop_grace_period"].as_str().unwrap()) > drain);
}

#[test]
fn kubernetes_daemonset_is_consistent() {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&read("deploy/kubernetes/voxd-daemonset.yaml"))
            .expect("valid YAML documents");
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("a {k}"))
    };
    let cm = kind("ConfigMap");
    let ds = kind("DaemonSet");
    assert_eq!(ds["apiVersion"], "apps/v1");

    // The ConfigMap's voxd.yaml is a valid voxd configuration (with the Secret's
    // key and the pod IP it is given at run time).
    let text = cm["data"]["voxd.yaml"].as_str().expect("data.voxd.yaml");
    let effective = voxd_check(
        "configmap",
        text,
        &[("OPENAI_API_KEY", "test-key"), ("POD_IP", "10.0.0.21")],
    );
    let cfg: Value = serde_saphyr::from_str(&effective).unwrap();
    assert_eq!(cfg["health"]["host"], "10.0.0.21");
    let drain = drain_seconds(&effective);

    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"],
        ds["spec"]["template"]["metadata"]["labels"]
    );
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    let c = &spec["containers"][0];
    let probe = |p: &str| {
        (
            c[p]["httpGet"]["path"].as_str().unwrap().to_string(),
            c[p]["httpGet"]["port"].as_u64().unwrap(),
        )
    };
    assert_eq!(probe("livenessProbe"), ("/live".into(), 15000));
    assert_eq!(probe("readinessProbe"), ("/ready".into(), 15000));
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("preStop sleep");
    let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > pre_stop + drain,
        "terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} + drain {drain}"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    // Secrets only through Secret references, never literal values.
    let env = c["env"].as_array().unwrap();
    for key in [
        "ASTERISK_ARI_USERNAME",
        "ASTERISK_ARI_PASSWORD",
        "OPENAI_API_KEY",
    ] {
        let e = env
            .iter()
            .find(|e| e["name"] == key)
            .unwrap_or_else(|| panic!("env {key}"));
        assert!(e["value"].is_null(), "{key} must come from a Secret");
        assert_eq!(e["valueFrom"]["secretKeyRef"]["key"], key);
    }
    let mount = &c["volumeMounts"][0];
    assert_eq!(mount["mountPath"], "/etc/voxd");
    assert_eq!(mount["readOnly"], true);
    assert_eq!(
        spec["volumes"][0]["configMap"]["name"],
        cm["metadata"]["name"]
    );
}

// ---------------------------------------------------------------------------
// Documentation

#[test]
fn monitoring_doc_covers_every_metric_and_alert() {
    let doc = read("docs/monitoring.md");
    for (m, _, _) in EXPORTED_METRICS {
        assert!(doc.contains(&format!("`{m}`")), "docs/monitoring.md: {m}");
    }
    for a in ALERTS {
        assert!(
            doc.contains(&format!("### {a}")),
            "docs/monitoring.md: a section for alert {a}"
        );
    }
    let ops = read("docs/operations.md");
    for port in ["8090/tcp", "18080/udp", "15000/tcp", "443/tcp"] {
        assert!(ops.contains(port), "docs/operations.md firewall: {port}");
    }
}
