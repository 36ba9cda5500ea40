//! Loader tests: whole-pipeline behaviour of `parse_str` / `parse_str_with_env`.

use super::*;

const VOXD_YAML: &str = include_str!("../../config/voxd.yaml");
const REFERENCE_YAML: &str = include_str!("../../config/ai-agent.example.yaml");

fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |k| {
        pairs
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    }
}

fn issues_of(yaml: &str) -> Vec<ConfigIssue> {
    match parse_str(yaml) {
        Ok(loaded) => panic!("expected errors, got {:?}", loaded.config),
        Err(ConfigError::Invalid(issues)) => issues,
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn paths_of(yaml: &str) -> Vec<String> {
    issues_of(yaml).into_iter().map(|i| i.path).collect()
}

#[test]
fn voxd_yaml_loads_with_zero_warnings_and_equals_defaults() {
    let loaded = parse_str(VOXD_YAML).expect("config/voxd.yaml must load");
    assert_eq!(loaded.warnings, Vec::<String>::new());
    assert_eq!(
        loaded.config.to_masked_yaml(),
        Config::default().to_masked_yaml(),
        "config/voxd.yaml must list the defaults"
    );
}

#[test]
fn voxd_yaml_lists_every_key() {
    // Every leaf key of the schema appears in the documented file (secrets aside).
    fn walk(map: &serde_json::Map<String, Value>, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in map {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                Value::Object(inner) => walk(inner, &path, out),
                _ => out.push(path),
            }
        }
    }
    let mut leaves = Vec::new();
    walk(&compat::schema_tree(), "", &mut leaves);
    let file: Value = serde_saphyr::from_str(VOXD_YAML).unwrap();
    for leaf in leaves {
        let (block, key) = leaf.rsplit_once('.').unwrap_or(("", &leaf));
        if SECRET_KEYS.iter().any(|(b, k, _)| *b == block && *k == key) {
            continue;
        }
        let mut cur = &file;
        for part in leaf.split('.') {
            cur = cur
                .get(part)
                .unwrap_or_else(|| panic!("config/voxd.yaml does not list {leaf}"));
        }
    }
}

#[test]
fn reference_example_loads_with_warnings_only() {
    let loaded = parse_str(REFERENCE_YAML).expect("reference example must load");
    let c = &loaded.config;
    assert_eq!(c.audio_transport, AudioTransport::Externalmedia);
    assert_eq!(c.audiosocket.format, AudioSocketFormat::Slin);
    assert_eq!(c.audiosocket.format.sample_rate_hz(), 8000);
    assert_eq!(c.external_media.port_range_bounds(), Some((18080, 18099)));
    assert_eq!(c.default_provider, ProviderName::Local);
    assert_eq!(
        c.providers.local.chunk_ms, 320,
        "${{LOCAL_WS_CHUNK_MS:=320}} expands to 320"
    );
    assert_eq!(c.providers.local.base_url, "ws://127.0.0.1:8765");
    assert_eq!(
        c.providers.deepgram.listen_model, "nova-2",
        "reference `model` is listen_model"
    );
    assert_eq!(
        c.providers
            .openai_realtime
            .turn_detection
            .silence_duration_ms,
        1000
    );

    let w = loaded.warnings.join("\n");
    for expected in [
        "contexts: top-level key not used by voxd; ignored",
        "pipelines: top-level key",
        "profiles: top-level key",
        "tools: top-level key",
        "vad: top-level key",
        "llm: top-level key",
        "config_version: top-level key",
        "providers.google_live: provider not supported",
        "providers.elevenlabs_agent: provider not supported",
        "providers.local_stt: provider not supported",
        "asterisk.password: ignored; secrets are never read",
        "ASTERISK_ARI_PASSWORD",
        "streaming: ignoring reference-engine keys voxd does not use: chunk_size_ms",
        "diag_enable_taps",
        "external_media: ignoring reference-engine keys voxd does not use: direction, format, sample_rate",
        "providers.openai_realtime: ignoring reference-engine keys",
        "providers.deepgram.model: read as providers.deepgram.listen_model",
        "retired beta (preview) model",
    ] {
        assert!(w.contains(expected), "missing warning {expected:?} in:\n{w}");
    }
    // One warning per unknown top-level block.
    assert_eq!(
        loaded
            .warnings
            .iter()
            .filter(|w| w.starts_with("contexts:"))
            .count(),
        1
    );
}

#[test]
fn reference_example_reads_env_references() {
    let env = env_of(&[
        ("LOCAL_WS_CHUNK_MS", "160"),
        ("LOCAL_WS_URL", "wss://ai.example:9000/ws"),
    ]);
    let loaded = parse_str_with_env(REFERENCE_YAML, &env).unwrap();
    assert_eq!(loaded.config.providers.local.chunk_ms, 160);
    assert_eq!(
        loaded.config.providers.local.base_url,
        "wss://ai.example:9000/ws"
    );
}

#[test]
fn unknown_key_in_own_block_is_an_error_with_path() {
    let issues = issues_of("streaming:\n  min_start: 100\n");
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].path, "streaming.min_start");
    assert!(
        issues[0].message.starts_with("unknown key; known keys: "),
        "{}",
        issues[0]
    );
    assert!(issues[0].message.contains("min_start_ms"));

    let issues =
        issues_of("providers:\n  openai_realtime:\n    turn_detection:\n      eagerness_x: 1\n");
    assert_eq!(
        issues[0].path,
        "providers.openai_realtime.turn_detection.eagerness_x"
    );
}

#[test]
fn reference_only_key_gives_a_warning() {
    let loaded =
        parse_str("streaming:\n  diag_out_dir: /tmp/x\n  jitter_buffer_ms: 500\n").unwrap();
    assert_eq!(
        loaded.warnings,
        ["streaming: ignoring reference-engine keys voxd does not use: diag_out_dir"]
    );
    assert_eq!(loaded.config.streaming.jitter_buffer_ms, 500);
}

#[test]
fn unknown_top_level_blocks_give_one_warning_each() {
    let loaded =
        parse_str("contexts:\n  a: {b: 1}\n  c: 2\ntools: [x]\nsomething_else: 1\n").unwrap();
    assert_eq!(loaded.warnings.len(), 3, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].starts_with("contexts:"));
}

#[test]
fn env_reference_expansion_in_own_keys() {
    let yaml =
        "health:\n  host: ${H:-0.0.0.0}\n  port: ${P:=16000}\nlogging:\n  pii: ${PII:-false}\n";
    let loaded = parse_str(yaml).unwrap();
    assert_eq!(loaded.config.health.host, "0.0.0.0");
    assert_eq!(loaded.config.health.port, 16000);
    let env = env_of(&[("P", "17000"), ("PII", "true")]);
    let loaded = parse_str_with_env(yaml, &env).unwrap();
    assert_eq!(loaded.config.health.port, 17000);
    assert!(loaded.config.logging.pii);
}

#[test]
fn env_overrides_apply_after_yaml() {
    let env = env_of(&[
        ("HEALTH_BIND_HOST", "0.0.0.0"),
        ("HEALTH_BIND_PORT", "9100"),
        ("AUDIOSOCKET_PORT", "9090"),
        ("EXTERNAL_MEDIA_RTP_HOST", "10.0.0.5"),
        ("ASTERISK_HOST", "pbx.example.com"),
        ("ASTERISK_ARI_USERNAME", "ari"),
        ("ASTERISK_ARI_PASSWORD", "hunter2"),
    ]);
    let loaded = parse_str_with_env("health:\n  port: 15001\n", &env).unwrap();
    let c = &loaded.config;
    assert_eq!((c.health.host.as_str(), c.health.port), ("0.0.0.0", 9100));
    assert_eq!(c.audiosocket.port, 9090);
    assert_eq!(c.external_media.rtp_host, "10.0.0.5");
    assert_eq!(c.asterisk.host, "pbx.example.com");
    assert_eq!(c.asterisk.username.expose(), Some("ari"));
    assert_eq!(c.asterisk.password.expose(), Some("hunter2"));
}

#[test]
fn bad_env_override_is_an_issue_with_env_path() {
    let env = env_of(&[("HEALTH_BIND_PORT", "abc")]);
    match parse_str_with_env("", &env) {
        Err(ConfigError::Invalid(issues)) => {
            assert_eq!(issues.len(), 1);
            assert_eq!(issues[0].path, "env HEALTH_BIND_PORT");
        }
        other => panic!("expected env issue, got {other:?}"),
    }
}

#[test]
fn enabled_cloud_provider_needs_its_key_from_env() {
    let yaml =
        "default_provider: openai_realtime\nproviders:\n  openai_realtime:\n    enabled: true\n";
    let issues = issues_of(yaml);
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].path, "providers.openai_realtime.api_key");
    assert!(issues[0].message.contains("OPENAI_API_KEY"));

    let env = env_of(&[("OPENAI_API_KEY", "sk-test-secret")]);
    let loaded = parse_str_with_env(yaml, &env).unwrap();
    assert!(loaded.config.providers.openai_realtime.api_key.is_set());
}

#[test]
fn secrets_in_yaml_are_ignored_and_never_echoed() {
    let yaml =
        "asterisk:\n  password: yaml-pass-123\nproviders:\n  deepgram:\n    api_key: dg-yaml-456\n";
    let loaded = parse_str(yaml).unwrap();
    assert!(!loaded.config.asterisk.password.is_set());
    assert!(!loaded.config.providers.deepgram.api_key.is_set());
    let all = format!("{:?} {:?}", loaded.warnings, loaded.config);
    assert!(
        !all.contains("yaml-pass-123") && !all.contains("dg-yaml-456"),
        "{all}"
    );
    assert!(loaded
        .warnings
        .iter()
        .any(|w| w.contains("DEEPGRAM_API_KEY")));
}

#[test]
fn secrets_are_masked_in_debug_and_masked_yaml() {
    let env = env_of(&[
        ("OPENAI_API_KEY", "sk-test-secret"),
        ("ASTERISK_ARI_PASSWORD", "hunter2"),
    ]);
    let loaded =
        parse_str_with_env("providers:\n  openai_realtime:\n    enabled: true\n", &env).unwrap();
    let debug = format!("{:?}", loaded.config);
    let yaml = loaded.config.to_masked_yaml();
    let display = loaded.config.asterisk.password.to_string();
    for text in [&debug, &yaml, &display] {
        assert!(
            !text.contains("sk-test-secret") && !text.contains("hunter2"),
            "{text}"
        );
    }
    assert!(
        yaml.contains("api_key: '***'") || yaml.contains("api_key: \"***\""),
        "{yaml}"
    );
    assert!(
        yaml.contains("(unset)"),
        "unset secrets print (unset): {yaml}"
    );
    // The masked output reads back (secrets dropped) with no warnings.
    let back = parse_str_with_env(&yaml, &env).expect("masked yaml reads back");
    assert_eq!(back.config.to_masked_yaml(), yaml);
}

#[test]
fn several_problems_are_all_reported() {
    let yaml = "\
audiosocket:
  port: 70000
  max_frame_bytes: lots
  bogus: 1
streaming:
  min_start_ms: 5000
audio_transport: carrier_pigeon
limits:
  max_calls: 0
health:
  typo_port: 1
";
    let issues = issues_of(yaml);
    let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    for expected in [
        "audiosocket.bogus",
        "health.typo_port",
        "audio_transport",
        "audiosocket.port",
        "audiosocket.max_frame_bytes",
        "streaming.min_start_ms",
        "limits.max_calls",
    ] {
        assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
    }
    assert_eq!(issues.len(), 7, "{issues:?}");
    let port = issues
        .iter()
        .find(|i| i.path == "audiosocket.port")
        .unwrap();
    assert!(port.message.contains("1..=65535"), "{port}");
    let transport = issues.iter().find(|i| i.path == "audio_transport").unwrap();
    assert!(transport.message.contains("externalmedia"), "{transport}");
    // Display: one issue per line.
    let text = ConfigError::Invalid(issues.clone()).to_string();
    assert_eq!(text.lines().count(), 7);
    assert!(text
        .lines()
        .any(|l| l.starts_with("streaming.min_start_ms: 5000 is above jitter_buffer_ms (950)")));
}

#[test]
fn nulls_mean_default() {
    let loaded = parse_str("streaming:\nhealth:\n  port: ~\n  host: 0.0.0.0\n").unwrap();
    assert_eq!(loaded.config.health.port, 15000);
    assert_eq!(loaded.config.streaming.jitter_buffer_ms, 950);
}

#[test]
fn empty_and_comment_only_documents_are_defaults() {
    for text in ["", "\n\n", "# nothing\n", "---\n"] {
        let loaded = parse_str(text).unwrap();
        assert!(loaded.warnings.is_empty());
        assert!(loaded.config.validate().is_empty());
    }
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let deep = "[".repeat(10_000);
    let big = "a: ".to_string() + &"x".repeat(MAX_CONFIG_BYTES + 1);
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
                e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n";
    for text in [
        "::: [",
        "- a\n- b\n",
        "42",
        "\"just a string\"",
        "a: 1\na: 2\n",
        "streaming: [1, 2]\n",
        "{1: 2}",
        "? [a, b]\n: c\n",
        "a: !!binary zzz\n",
        "---\na: 1\n---\nb: 2\n",
        deep.as_str(),
        big.as_str(),
        bomb,
    ] {
        let result = parse_str(text);
        assert!(
            matches!(result, Err(ConfigError::Invalid(ref issues)) if !issues.is_empty())
                || result.is_ok(),
            "{text:.40}: {result:?}"
        );
    }
    assert!(parse_str(&deep).is_err());
    assert!(parse_str(&big).is_err());
    assert_eq!(paths_of("- a\n- b\n"), ["yaml"]);
}

#[test]
fn wrong_block_type_is_reported_with_block_path() {
    let issues = issues_of("streaming: [1, 2]\nbarge_in: 5\n");
    let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(paths, ["streaming", "barge_in"]);
}

#[test]
fn config_error_io_display_names_the_file() {
    let err = load(Some(std::path::Path::new("/nonexistent/voxd.yaml"))).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/voxd.yaml"));
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn parse_str_never_panics_on_any_string(s in "\\PC{0,200}") {
            let _ = parse_str(&s);
        }

        #[test]
        fn parse_str_never_panics_on_yamlish_text(
            lines in proptest::collection::vec(
                (
                    prop_oneof![
                        Just("streaming"), Just("  jitter_buffer_ms"), Just("  min_start_ms"),
                        Just("audiosocket"), Just("  port"), Just("providers"), Just("  local"),
                        Just("    chunk_ms"), Just("contexts"), Just("- "), Just("  x"),
                    ],
                    prop_oneof![
                        Just(""), Just(" 1"), Just(" -5"), Just(" ${X:-9}"), Just(" [a, b]"),
                        Just(" {a: 1}"), Just(" ~"), Just(" &a 1"), Just(" *a"), Just(" \"${Y}\""),
                        Just(" 99999999999999999999"), Just(" 1.5e400"), Just(" .nan"),
                    ],
                ),
                0..20,
            )
        ) {
            let text: String = lines.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
            let _ = parse_str(&text);
        }
    }
}

#[test]
fn echo_is_a_built_in_provider() {
    let loaded = parse_str("default_provider: echo\n").expect("echo needs no provider block");
    assert_eq!(loaded.config.default_provider, ProviderName::Echo);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert!(parse_str("default_provider: nonesuch\n").is_err());
}

#[test]
fn control_workers_default_to_one_per_four_shards() {
    let mut e = EngineConfig::default();
    assert_eq!(e.control_workers(1), 1);
    assert_eq!(e.control_workers(2), 1);
    assert_eq!(e.control_workers(8), 2);
    assert_eq!(e.control_workers(16), 4);
    e.control_threads = 3;
    assert_eq!(e.control_workers(16), 3);
}

#[test]
fn agents_and_provider_failure_blocks_load_and_validate() {
    let yaml = "
providers:
  sim: {enabled: true}
agents:
  support: {provider: echo, prompt: 'Be brief.', greeting: Hello, voice: alloy}
  sales: {}
provider_failure: {reconnect: false, on_provider_failure: dialplan_redirect, context: operators, extension: '0'}
";
    let cfg = parse_str(yaml).unwrap().config;
    assert_eq!(cfg.agents.len(), 2);
    let a = &cfg.agents["support"];
    assert_eq!(a.provider, Some(ProviderName::Echo));
    assert_eq!(a.prompt.as_deref(), Some("Be brief."));
    assert!(!cfg.provider_failure.reconnect);
    assert_eq!(
        cfg.provider_failure.on_provider_failure,
        OnProviderFailure::DialplanRedirect
    );
    assert_eq!(cfg.provider_failure.context.as_deref(), Some("operators"));

    // An unknown key inside an agent, a disabled provider, a redirect with no
    // context anywhere: each is an issue naming its key.
    let bad = "
agents:
  support: {provider: deepgram, promt: typo}
provider_failure: {on_provider_failure: dialplan_redirect}
";
    let err = parse_str(bad).unwrap_err().to_string();
    assert!(err.contains("agents"), "{err}");
    assert!(err.contains("promt"), "{err}");
    let bad = "
agents:
  support: {provider: deepgram}
provider_failure: {on_provider_failure: dialplan_redirect}
";
    let err = parse_str(bad).unwrap_err().to_string();
    assert!(err.contains("agents.support.provider"), "{err}");
    assert!(err.contains("provider_failure.context"), "{err}");
}
