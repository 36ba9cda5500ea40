//! Prometheus text exposition format (version 0.0.4), written by hand: `# HELP`,
//! `# TYPE`, one sample per line, histograms as cumulative `_bucket{le=..}` series
//! with `_sum` and `_count`.
//!
//! Owns: [`Exposition`], a string builder that writes each metric family once and in
//! the format `promtool check metrics` accepts. Must not: take labels from call data
//! (label values here are fixed sets: shard index, reason, provider name), or
//! allocate per sample beyond the output string.

use std::fmt::Write as _;

/// A metrics page being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

/// Escape a label value (`\`, `"`, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

impl Exposition {
    /// An empty page.
    pub fn new() -> Self {
        Self::default()
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// A counter family with one sample per label set (`name` ends in `_total`).
    pub fn counter<'a, L: AsRef<[(&'a str, &'a str)]>>(
        &mut self,
        name: &str,
        help: &str,
        samples: &[(L, u64)],
    ) {
        self.header(name, help, "counter");
        for (l, v) in samples {
            let _ = writeln!(self.out, "{name}{} {v}", labels(l.as_ref()));
        }
    }

    /// A counter family with one unlabelled float sample (`process_cpu_seconds_total`).
    pub fn counter_f64(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, help, "counter");
        let _ = writeln!(self.out, "{name} {value}");
    }

    /// A gauge family.
    pub fn gauge<'a, L: AsRef<[(&'a str, &'a str)]>>(
        &mut self,
        name: &str,
        help: &str,
        samples: &[(L, f64)],
    ) {
        self.header(name, help, "gauge");
        for (l, v) in samples {
            let _ = writeln!(self.out, "{name}{} {v}", labels(l.as_ref()));
        }
    }

    /// A histogram without labels: `bounds` are the upper bounds (seconds, say),
    /// `counts` the non-cumulative count per bound plus one for "above" (so
    /// `counts.len() == bounds.len() + 1`), `sum` in the same unit as the bounds.
    pub fn histogram(&mut self, name: &str, help: &str, bounds: &[f64], counts: &[u64], sum: f64) {
        self.header(name, help, "histogram");
        let mut cum = 0u64;
        for (b, c) in bounds.iter().zip(counts) {
            cum += c;
            let _ = writeln!(self.out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let total: u64 = counts.iter().sum();
        let _ = writeln!(self.out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(self.out, "{name}_sum {sum}");
        let _ = writeln!(self.out, "{name}_count {total}");
    }

    /// The page.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_in_text_format() {
        let mut e = Exposition::new();
        e.counter(
            "voxd_calls_total",
            "Calls.",
            &[(&[("reason", "a\"b")][..], 3), (&[][..], 1)],
        );
        e.gauge("voxd_up", "Up.", &[(&[], 1.0)]);
        e.histogram("voxd_x_seconds", "X.", &[0.005, 0.01], &[1, 2, 3], 0.5);
        let t = e.finish();
        assert!(t.contains("# TYPE voxd_calls_total counter\n"));
        assert!(t.contains("voxd_calls_total{reason=\"a\\\"b\"} 3\n"));
        assert!(t.contains("voxd_calls_total 1\n"));
        assert!(t.contains("voxd_x_seconds_bucket{le=\"0.01\"} 3\n"));
        assert!(t.contains("voxd_x_seconds_bucket{le=\"+Inf\"} 6\n"));
        assert!(t.contains("voxd_x_seconds_count 6\n"));
    }
}
