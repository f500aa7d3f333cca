//! Domain name syntax, in one place so that the SMTP parser, the store and the configuration
//! agree on what a host name is.

/// True for a DNS host name in ASCII (A-labels), with or without a trailing dot: dot-separated
/// labels of letters, digits and inner hyphens, each 1 to 63 characters, 253 in all
/// (RFC 1035 2.3.4, RFC 1123 2.1, RFC 5321 4.1.2).
pub fn is_domain_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::is_domain_name;

    #[test]
    fn host_names() {
        for good in [
            "example.org",
            "EXAMPLE.org.",
            "a-b.c1.example",
            "localhost",
            "xn--e1afmkfd.xn--p1ai",
        ] {
            assert!(is_domain_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "-a.example",
            "a-.example",
            "a..example",
            "a_b.example",
            "a b",
            &"a".repeat(64),
            &format!("{}.x", "a.".repeat(127)),
        ] {
            assert!(!is_domain_name(bad), "{bad}");
        }
    }
}
