//! The header section of a message (RFC 5322 2.2): its fields, taking out the
//! Authentication-Results fields that claim to come from us (RFC 8601 5), and the sender's
//! `TLS-Required: No` (RFC 8689 5).

/// The byte ranges of the header fields of `message`, each with its folded continuation
/// lines and line end. Ends at the empty line that ends the section, or at the end.
pub fn header_fields(message: &[u8]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let rest = message.get(at..)?;
        if rest.is_empty() || rest.starts_with(b"\r\n") || rest.starts_with(b"\n") {
            return None;
        }
        let start = at;
        let mut end = start;
        loop {
            match memchr::memchr(b'\n', &message[end..]) {
                Some(i) => end += i + 1,
                None => end = message.len(),
            }
            // A line that starts with white space continues the field (folding, 2.2.3).
            if !matches!(message.get(end), Some(b' ' | b'\t')) {
                break;
            }
        }
        at = end;
        Some(start..end)
    })
}

/// The values of the header fields named `name` (in any case, white space around the name
/// allowed, RFC 5322 4.5.3), in order: what follows the colon, folds and line end included.
pub fn field_values<'a>(message: &'a [u8], name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
    header_fields(message).filter_map(move |range| {
        let field = &message[range];
        let colon = memchr::memchr(b':', field)?;
        field[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(name)
            .then(|| &field[colon + 1..])
    })
}

/// Whether the message carries `TLS-Required: No` (RFC 8689 5): its sender asks that the
/// recipient domain's TLS policies (MTA-STS, DANE) not stop its delivery.
pub fn tls_required_no(message: &[u8]) -> bool {
    header_fields(message).any(|range| {
        let field = &message[range];
        let Some(colon) = memchr::memchr(b':', field) else {
            return false;
        };
        let (name, value) = (&field[..colon], &field[colon + 1..]);
        name.eq_ignore_ascii_case(b"TLS-Required") && value.trim_ascii().eq_ignore_ascii_case(b"No")
    })
}

/// The authserv-id an Authentication-Results field names (RFC 8601 2.2), if `field` is one.
pub fn authserv_id(field: &[u8]) -> Option<&[u8]> {
    const NAME: &[u8] = b"authentication-results";
    let colon = memchr::memchr(b':', field)?;
    if !field[..colon].trim_ascii_end().eq_ignore_ascii_case(NAME) {
        return None;
    }
    let value = skip_cfws(&field[colon + 1..]);
    let (id, _) = match value.first() {
        Some(b'"') => {
            let end = memchr::memchr(b'"', &value[1..])?;
            value[1..].split_at(end)
        }
        _ => {
            let end = value
                .iter()
                .position(|b| matches!(b, b';' | b'(' | b' ' | b'\t' | b'\r' | b'\n'))
                .unwrap_or(value.len());
            value.split_at(end)
        }
    };
    Some(id)
}

/// `text` without its leading white space and comments (RFC 5322 3.2.2; comments nest).
fn skip_cfws(mut text: &[u8]) -> &[u8] {
    loop {
        text = text.trim_ascii_start();
        if text.first() != Some(&b'(') {
            return text;
        }
        let mut depth = 0usize;
        let mut i = 0;
        while i < text.len() {
            match text[i] {
                b'\\' => i += 1,
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        text = text.get(i + 1..).unwrap_or_default();
    }
}

/// `message` without the Authentication-Results fields naming `authserv_id` (compared
/// without case), which a receiver must remove before adding its own (RFC 8601 5): only we
/// may claim to have checked. None when there are none, so nothing is copied.
pub fn remove_authentication_results(message: &[u8], authserv_id_of_ours: &str) -> Option<Vec<u8>> {
    let claims = |range: &std::ops::Range<usize>| {
        authserv_id(&message[range.clone()])
            .is_some_and(|id| id.eq_ignore_ascii_case(authserv_id_of_ours.as_bytes()))
    };
    let forged: Vec<_> = header_fields(message).filter(claims).collect();
    if forged.is_empty() {
        return None;
    }
    let mut kept = Vec::with_capacity(message.len());
    let mut at = 0;
    for range in forged {
        kept.extend_from_slice(&message[at..range.start]);
        at = range.end;
    }
    kept.extend_from_slice(&message[at..]);
    Some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_required_no_is_found_in_the_header_only() {
        assert!(tls_required_no(
            b"Subject: a\r\nTLS-Required: No\r\n\r\nbody\r\n"
        ));
        assert!(tls_required_no(b"tls-required:\r\n  no  \r\n\r\n"));
        assert!(!tls_required_no(b"TLS-Required: Yes\r\n\r\n"));
        assert!(!tls_required_no(b"X-TLS-Required: No\r\n\r\n"));
        assert!(!tls_required_no(b"Subject: a\r\n\r\nTLS-Required: No\r\n"));
    }

    const MESSAGE: &[u8] = b"Received: from a\r\n\tby b\r\n\
        Authentication-Results: mx.example.org; spf=pass\r\n\
        authentication-results :  (forged, (nested))\r\n MX.Example.Org;\r\n dkim=pass\r\n\
        Authentication-Results: \"mx.example.org\"; dmarc=pass\r\n\
        Authentication-Results: other.example; spf=fail\r\n\
        Subject: Authentication-Results: mx.example.org\r\n\
        \r\n\
        Authentication-Results: mx.example.org; in the body\r\n";

    #[test]
    fn fields_end_at_the_empty_line_and_keep_their_folds() {
        let fields: Vec<&[u8]> = header_fields(MESSAGE).map(|r| &MESSAGE[r]).collect();
        assert_eq!(fields.len(), 6);
        assert_eq!(fields[0], b"Received: from a\r\n\tby b\r\n");
        assert_eq!(
            fields[2],
            b"authentication-results :  (forged, (nested))\r\n MX.Example.Org;\r\n dkim=pass\r\n"
        );
        assert_eq!(header_fields(b"\r\nbody").count(), 0);
        assert_eq!(
            header_fields(b"A: b").map(|r| r.end).collect::<Vec<_>>(),
            [4]
        );
    }

    #[test]
    fn only_our_claims_are_removed() {
        let kept = remove_authentication_results(MESSAGE, "mx.example.org").unwrap();
        assert_eq!(
            kept,
            b"Received: from a\r\n\tby b\r\n\
              Authentication-Results: other.example; spf=fail\r\n\
              Subject: Authentication-Results: mx.example.org\r\n\
              \r\n\
              Authentication-Results: mx.example.org; in the body\r\n"
        );
        assert_eq!(remove_authentication_results(MESSAGE, "example.org"), None);
        assert_eq!(remove_authentication_results(b"", "mx"), None);
    }

    #[test]
    fn the_authserv_id_is_read_past_comments_and_quotes() {
        assert_eq!(
            authserv_id(b"Authentication-Results: a.b; none"),
            Some(&b"a.b"[..])
        );
        assert_eq!(
            authserv_id(b"Authentication-Results:(x\\)y) a 1; none"),
            Some(&b"a"[..])
        );
        assert_eq!(
            authserv_id(b"Authentication-Results: \"q\"; none"),
            Some(&b"q"[..])
        );
        assert_eq!(
            authserv_id(b"Authentication-Results: (unclosed"),
            Some(&b""[..])
        );
        assert_eq!(authserv_id(b"X-Authentication-Results: a; none"), None);
        assert_eq!(authserv_id(b"no colon"), None);
    }
}
