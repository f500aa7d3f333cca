//! MTA-STS (RFC 8461): the `_mta-sts` TXT record, the policy file, and which MX hosts a
//! policy allows. Parsing only; fetching and caching live in the queue and the store.

/// What a policy asks of senders (RFC 8461 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StsMode {
    /// Deliver only to a listed MX host over TLS with a valid certificate; else defer.
    Enforce,
    /// Report failures but deliver as without a policy.
    Testing,
    /// The domain withdrew its policy.
    None,
}

impl StsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StsMode::Enforce => "enforce",
            StsMode::Testing => "testing",
            StsMode::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "enforce" => Some(StsMode::Enforce),
            "testing" => Some(StsMode::Testing),
            "none" => Some(StsMode::None),
            _ => None,
        }
    }
}

/// A domain's policy (RFC 8461 3.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StsPolicy {
    pub mode: StsMode,
    /// MX host patterns: a name, or `*.` and a name for any one label under it.
    pub mx: Vec<String>,
    /// Seconds the policy may be cached (at most a year).
    pub max_age: u64,
}

/// The longest `max_age` a policy may give (RFC 8461 3.2: 31557600).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// The policy id of a `_mta-sts` TXT record (RFC 8461 3.1: `v=STSv1; id=...`, the id 1 to 32
/// letters and digits), or None if it is not one.
pub fn record_id(txt: &str) -> Option<String> {
    let mut fields = txt.split(';').map(str::trim).filter(|f| !f.is_empty());
    if fields.next()? != "v=STSv1" {
        return None;
    }
    let mut id = None;
    for field in fields {
        let (key, value) = field.split_once('=')?;
        if key.trim() == "id" {
            let value = value.trim();
            if value.is_empty()
                || value.len() > 32
                || !value.bytes().all(|b| b.is_ascii_alphanumeric())
                || id.is_some()
            {
                return None;
            }
            id = Some(value.to_owned());
        }
    }
    id
}

/// Parses a policy file (RFC 8461 3.2): `key: value` lines, CRLF or LF; `version: STSv1`,
/// `mode` and `max_age` required, at least one `mx` unless the mode is none; unknown keys
/// are ignored.
pub fn parse_policy(text: &str) -> Result<StsPolicy, String> {
    let (mut version, mut mode, mut max_age, mut mx) = (None, None, None, Vec::new());
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(format!("not a key: value line: {line:?}"));
        };
        let value = value.trim();
        match key.trim() {
            "version" => version = Some(value.to_owned()),
            "mode" => {
                mode = Some(StsMode::parse(value).ok_or_else(|| format!("unknown mode {value:?}"))?)
            }
            "max_age" => {
                let age = value
                    .parse::<u64>()
                    .ok()
                    .filter(|a| value.len() <= 10 && *a <= MAX_AGE_LIMIT)
                    .ok_or_else(|| format!("max_age {value:?} is not 0 to {MAX_AGE_LIMIT}"))?;
                max_age = Some(age);
            }
            "mx" => {
                // Compared as host names are: without case or a final dot.
                let pattern = value.trim_end_matches('.').to_ascii_lowercase();
                let name = pattern.strip_prefix("*.").unwrap_or(&pattern);
                if !crate::is_domain_name(name) {
                    return Err(format!("mx {value:?} is not a host name pattern"));
                }
                mx.push(pattern);
            }
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err("version is not STSv1".into());
    }
    let mode = mode.ok_or("no mode")?;
    let max_age = max_age.ok_or("no max_age")?;
    if mx.is_empty() && mode != StsMode::None {
        return Err("no mx".into());
    }
    Ok(StsPolicy { mode, mx, max_age })
}

impl StsPolicy {
    /// The policy as its file's lines (what a TLS report quotes as its policy-string).
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![
            "version: STSv1".to_owned(),
            format!("mode: {}", self.mode.as_str()),
        ];
        lines.extend(self.mx.iter().map(|mx| format!("mx: {mx}")));
        lines.push(format!("max_age: {}", self.max_age));
        lines
    }

    /// Whether `host` (an MX host name) is one the policy lists (RFC 8461 4.1): equal, or
    /// for `*.name`, `name` with exactly one more label in front. Case and a final dot do
    /// not matter.
    pub fn allows_mx(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => *pattern == host,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_names_its_id() {
        assert_eq!(
            record_id("v=STSv1; id=20160831085700Z;").as_deref(),
            Some("20160831085700Z")
        );
        assert_eq!(record_id("v=STSv1;id=abc").as_deref(), Some("abc"));
        assert_eq!(record_id("v=STSv1; id=abc; ext=1").as_deref(), Some("abc"));
        for bad in [
            "v=STSv2; id=abc",
            "id=abc; v=STSv1",
            "v=STSv1",
            "v=STSv1; id=",
            "v=STSv1; id=a-b",
            "v=STSv1; id=a; id=b",
            &format!("v=STSv1; id={}", "a".repeat(33)),
            "v=spf1 -all",
        ] {
            assert_eq!(record_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn policies_parse_as_rfc_8461_writes_them() {
        let policy = parse_policy(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.net\r\n\
             mx: backupmx.example.com\r\nmax_age: 604800\r\nextension: ignored\r\n",
        )
        .unwrap();
        assert_eq!(policy.mode, StsMode::Enforce);
        assert_eq!(policy.max_age, 604_800);
        assert_eq!(
            policy.mx,
            ["mail.example.com", "*.example.net", "backupmx.example.com"]
        );
        let none = parse_policy("version: STSv1\nmode: none\nmax_age: 0\n").unwrap();
        assert_eq!((none.mode, none.mx.len()), (StsMode::None, 0));
        for (bad, why) in [
            ("mode: enforce\nmx: a.example\nmax_age: 1\n", "version"),
            (
                "version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n",
                "unknown mode",
            ),
            ("version: STSv1\nmode: testing\nmax_age: 1\n", "no mx"),
            (
                "version: STSv1\nmode: testing\nmx: a.example\n",
                "no max_age",
            ),
            (
                "version: STSv1\nmode: testing\nmx: a.example\nmax_age: 31557601\n",
                "max_age",
            ),
            (
                "version: STSv1\nmode: testing\nmx: a.example\nmax_age: -1\n",
                "max_age",
            ),
            (
                "version: STSv1\nmode: testing\nmx: a b\nmax_age: 1\n",
                "host name pattern",
            ),
            ("<html>", "key: value"),
        ] {
            let err = parse_policy(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn wildcards_stand_for_exactly_one_label() {
        let policy = StsPolicy {
            mode: StsMode::Enforce,
            mx: vec!["mail.example.com".into(), "*.example.net".into()],
            max_age: 1,
        };
        assert!(policy.allows_mx("mail.example.com"));
        assert!(policy.allows_mx("MAIL.Example.com."));
        assert!(policy.allows_mx("mx1.example.net"));
        let dotted =
            parse_policy("version: STSv1\nmode: enforce\nmx: Mail.Example.com.\nmax_age: 1\n");
        assert!(dotted.unwrap().allows_mx("mail.example.com"));
        assert!(!policy.allows_mx("example.net"));
        assert!(!policy.allows_mx("a.b.example.net"));
        assert!(!policy.allows_mx("other.example.com"));
        assert!(!policy.allows_mx(".example.net"));
    }
}
