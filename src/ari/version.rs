//! Asterisk version strings and the features voxd gates on them.
//!
//! Owns: [`AsteriskVersion`], parsed from the `system.version` text of
//! `GET /ari/asterisk/info` (`20.17.0`, `22.7.0-rc1`, `certified-20.7-cert3`,
//! `GIT-master-abc1234`), and the feature checks that depend on it. Must not: fail
//! (any text parses; what it cannot read is "unknown"), or guess in favour of a
//! feature: an unknown version supports nothing optional, because sending a frame
//! kind an old Asterisk does not know ends the call.

#![forbid(unsafe_code)]

use std::fmt;

/// A parsed Asterisk version. Fields are `None` when the text did not carry them
/// (development builds, unknown formats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsteriskVersion {
    /// The text as Asterisk sent it.
    pub raw: String,
    /// Major version (20, 21, 22, ...).
    pub major: Option<u32>,
    /// Minor version.
    pub minor: Option<u32>,
    /// Patch version (0 when the text has only major.minor, as certified builds do).
    pub patch: Option<u32>,
    /// A certified build (`certified-20.7-cert3` or `20.7-cert3`).
    pub certified: bool,
    /// Certified revision (`3` in `-cert3`).
    pub cert_revision: Option<u32>,
    /// A pre-release tag such as `rc1` or `pre1`.
    pub pre_release: Option<String>,
}

/// First release of each major branch whose AudioSocket carries the slin 12..192 kHz
/// kinds (0x11..0x18): 20.17, 21.12, 22.7, 23.1; every major after 23 has them.
const SLIN_KINDS_SINCE: [(u32, u32); 4] = [(20, 17), (21, 12), (22, 7), (23, 1)];
/// First release of each major branch whose AudioSocket sends DTMF (kind 0x03):
/// 20.14, 21.9, 22.4; every major after 22 has it.
const DTMF_KIND_SINCE: [(u32, u32); 3] = [(20, 14), (21, 9), (22, 4)];

impl AsteriskVersion {
    /// Parses a version text. Never fails: unreadable text gives a version with no
    /// numbers ([`AsteriskVersion::is_known`] false).
    pub fn parse(text: &str) -> Self {
        let raw: String = text.trim().chars().take(128).collect();
        let mut v = AsteriskVersion {
            raw: raw.clone(),
            major: None,
            minor: None,
            patch: None,
            certified: false,
            cert_revision: None,
            pre_release: None,
        };
        let mut rest = raw.as_str();
        if let Some(r) = strip_prefix_ci(rest, "certified-").or(strip_prefix_ci(rest, "certified/"))
        {
            v.certified = true;
            rest = r;
        }
        // Development builds ("GIT-master-abc", "SVN-branch-20-r123"): unknown.
        if !rest.starts_with(|c: char| c.is_ascii_digit()) {
            return v;
        }
        let (numbers, suffix) = match rest.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let mut parts = numbers.split('.');
        let nums: Vec<Option<u32>> = parts.by_ref().take(3).map(|p| p.parse().ok()).collect();
        if parts.next().is_some() || nums.iter().any(Option::is_none) || nums.len() < 2 {
            return v;
        }
        v.major = nums[0];
        v.minor = nums[1];
        v.patch = Some(nums.get(2).copied().flatten().unwrap_or(0));
        for tag in suffix.split(['-', '~', '+']).filter(|t| !t.is_empty()) {
            let lower = tag.to_ascii_lowercase();
            if let Some(n) = lower.strip_prefix("cert") {
                v.certified = true;
                v.cert_revision = n.parse().ok();
            } else if v.pre_release.is_none()
                && ["rc", "pre", "beta", "alpha"]
                    .iter()
                    .any(|p| lower.starts_with(p))
            {
                v.pre_release = Some(tag.to_string());
            }
        }
        v
    }

    /// Whether major and minor were read.
    pub fn is_known(&self) -> bool {
        self.major.is_some() && self.minor.is_some()
    }

    /// Whether this Asterisk's AudioSocket knows the slin kinds 0x11..0x18 (12 to
    /// 192 kHz): 20.17+, 21.12+, 22.7+, 23.1+ within each major, and any major above
    /// 23. Unknown versions and majors below 20 give `false`. A release candidate of
    /// a qualifying release counts (Asterisk freezes features at rc1); certified
    /// builds count by the release they are cut from.
    pub fn supports_slin16_audiosocket_kinds(&self) -> bool {
        self.at_least_in_branch(&SLIN_KINDS_SINCE)
    }

    /// Whether this Asterisk's AudioSocket sends DTMF as kind 0x03: 20.14+, 21.9+,
    /// 22.4+, any major above 22. Unknown gives `false`.
    pub fn supports_audiosocket_dtmf(&self) -> bool {
        self.at_least_in_branch(&DTMF_KIND_SINCE)
    }

    fn at_least_in_branch(&self, since: &[(u32, u32)]) -> bool {
        let (Some(major), Some(minor)) = (self.major, self.minor) else {
            return false;
        };
        let Some(&(last_major, _)) = since.last() else {
            return false;
        };
        if major > last_major {
            return true;
        }
        since
            .iter()
            .find(|(m, _)| *m == major)
            .is_some_and(|&(_, min_minor)| minor >= min_minor)
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

impl fmt::Display for AsteriskVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let v = AsteriskVersion::parse("20.17.0");
        assert_eq!((v.major, v.minor, v.patch), (Some(20), Some(17), Some(0)));
        assert!(!v.certified && v.pre_release.is_none() && v.is_known());

        let v = AsteriskVersion::parse("22.7.0-rc1");
        assert_eq!((v.major, v.minor, v.patch), (Some(22), Some(7), Some(0)));
        assert_eq!(v.pre_release.as_deref(), Some("rc1"));

        let v = AsteriskVersion::parse("certified-20.7-cert3");
        assert_eq!((v.major, v.minor, v.patch), (Some(20), Some(7), Some(0)));
        assert!(v.certified);
        assert_eq!(v.cert_revision, Some(3));

        let v = AsteriskVersion::parse("18.20-cert2");
        assert!(v.certified);
        assert_eq!(
            (v.major, v.minor, v.cert_revision),
            (Some(18), Some(20), Some(2))
        );

        for unknown in [
            "GIT-master-abc1234",
            "SVN-branch-20-r1",
            "",
            "20",
            "x.y.z",
            "1.2.3.4",
            "20.99999999999.1",
            "certified-",
        ] {
            let v = AsteriskVersion::parse(unknown);
            assert!(!v.is_known(), "{unknown}");
            assert!(!v.supports_slin16_audiosocket_kinds(), "{unknown}");
            assert!(!v.supports_audiosocket_dtmf(), "{unknown}");
        }
        assert_eq!(AsteriskVersion::parse(" 21.4.1 ").to_string(), "21.4.1");
    }

    #[test]
    fn slin_kinds_gate() {
        for (text, want) in [
            ("20.16.9", false),
            ("20.17.0", true),
            ("20.18.2", true),
            ("21.11.0", false),
            ("21.12.0", true),
            ("22.6.0", false),
            ("22.7.0", true),
            ("22.7.0-rc1", true),
            ("23.0.0", false),
            ("23.1.0", true),
            ("24.0.0", true),
            ("30.1.2", true),
            ("19.99.0", false),
            ("18.26.0", false),
            ("16.30.0", false),
            ("certified-20.7-cert3", false),
            ("certified-22.8-cert1", true),
        ] {
            assert_eq!(
                AsteriskVersion::parse(text).supports_slin16_audiosocket_kinds(),
                want,
                "{text}"
            );
        }
    }

    #[test]
    fn dtmf_gate() {
        for (text, want) in [
            ("20.13.0", false),
            ("20.14.0", true),
            ("21.9.0", true),
            ("21.8.5", false),
            ("22.4.0", true),
            ("23.0.0", true),
            ("19.8.0", false),
        ] {
            assert_eq!(
                AsteriskVersion::parse(text).supports_audiosocket_dtmf(),
                want,
                "{text}"
            );
        }
    }

    #[test]
    fn never_panics_on_odd_text() {
        for t in [
            "é",
            "1.é",
            "certified-é",
            "20.17.0-",
            "20..1",
            "CERTIFIED-21.12",
            "9".repeat(400).as_str(),
        ] {
            let _ = AsteriskVersion::parse(t).supports_slin16_audiosocket_kinds();
        }
        assert!(AsteriskVersion::parse("CERTIFIED-21.12").supports_slin16_audiosocket_kinds());
    }
}
