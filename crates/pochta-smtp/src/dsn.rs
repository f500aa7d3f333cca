//! Delivery status notifications (RFC 3461, RFC 3464, RFC 6522): a `multipart/report` with a
//! human-readable part, a `message/delivery-status` part and the returned message or its header.

use chrono::{DateTime, Utc};
use pochta_mail::Orcpt;

/// RFC 3464 2.3.3 Action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    Relayed,
    /// Delivered to an alias that forwards it to several addresses (RFC 3464 2.3.3).
    Expanded,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
            Action::Expanded => "expanded",
        }
    }

    fn subject(self) -> &'static str {
        match self {
            Action::Failed => "Undelivered Mail Returned to Sender",
            Action::Delayed => "Delayed Mail (still being retried)",
            Action::Delivered | Action::Relayed | Action::Expanded => {
                "Successful Mail Delivery Report"
            }
        }
    }
}

/// One recipient's part of a report (RFC 3464 2.3).
#[derive(Debug, Clone)]
pub struct RecipientReport {
    pub orcpt: Option<Orcpt>,
    pub final_recipient: String,
    pub action: Action,
    /// Enhanced status code, e.g. `5.1.1`.
    pub status: String,
    pub remote_mta: Option<String>,
    /// The diagnostic, e.g. `550 5.1.1 no such user`.
    pub diagnostic: Option<String>,
    pub last_attempt: Option<DateTime<Utc>>,
    pub will_retry_until: Option<DateTime<Utc>>,
}

/// What the report returns of the original message (RET, RFC 3461 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    Full,
    Headers,
}

pub struct Report<'a> {
    pub reporting_mta: &'a str,
    /// Where the report goes: the original reverse-path.
    pub to: &'a str,
    pub envid: Option<&'a str>,
    pub arrival: DateTime<Utc>,
    pub date: DateTime<Utc>,
    /// Unique per report (the report's own queue id): makes the boundary and Message-ID.
    pub id: &'a str,
    pub recipients: &'a [RecipientReport],
    pub original: &'a [u8],
    pub ret: Return,
}

/// The header section of a message: up to and including the blank line (or all of it).
pub fn header_section(message: &[u8]) -> &[u8] {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &message[..i + 4],
        None => message,
    }
}

/// A value going into a header field or a report line: control characters (CR and LF above
/// all, which would start a field of the value's choosing) become spaces.
fn field(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The MIME boundary (RFC 2046 5.1.1): made of the report's id and the reporting MTA, in the
/// characters a boundary may use, and occurring in none of the `parts` (a diagnostic or a
/// returned message that contained it would break the report's structure; some parsers look
/// for it anywhere, not only at the start of a line).
fn boundary(report: &Report<'_>, parts: &[&[u8]]) -> String {
    let base: String = format!("{}/{}", report.id, report.reporting_mta)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '-'))
        .take(60)
        .collect();
    let base = if base.is_empty() {
        "report".to_owned()
    } else {
        base
    };
    let mut boundary = base.clone();
    let mut n = 0u32;
    let occurs = |b: &str| {
        let delimiter = format!("--{b}");
        parts
            .iter()
            .any(|p| memchr::memmem::find(p, delimiter.as_bytes()).is_some())
    };
    while occurs(&boundary) {
        n += 1;
        boundary = format!("{base}={n}");
    }
    boundary
}

/// The whole report message, CRLF line ends.
pub fn build(report: &Report<'_>) -> Vec<u8> {
    let (content_type, returned) = match report.ret {
        Return::Full => ("message/rfc822", report.original),
        Return::Headers => ("text/rfc822-headers", header_section(report.original)),
    };
    let mut human = String::new();
    human_readable(report, &mut human);
    let mut status = String::new();
    delivery_status(report, &mut status);
    let boundary = boundary(report, &[human.as_bytes(), status.as_bytes(), returned]);
    let (reporting_mta, id) = (field(report.reporting_mta), field(report.id));
    let action = report
        .recipients
        .first()
        .map_or(Action::Failed, |r| r.action);
    let mut out = String::new();
    out.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>\r\n"
    ));
    out.push_str(&format!("To: <{}>\r\n", field(report.to)));
    out.push_str(&format!("Subject: {}\r\n", action.subject()));
    out.push_str(&format!("Date: {}\r\n", report.date.to_rfc2822()));
    out.push_str(&format!("Message-ID: <{id}@{reporting_mta}>\r\n"));
    // RFC 3834: automatic replies must not be answered automatically.
    out.push_str("Auto-Submitted: auto-replied\r\n");
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str(&format!("Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"));
    out.push_str("This is a MIME-encapsulated delivery status notification.\r\n\r\n");
    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ));
    out.push_str(&human);
    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
    ));
    out.push_str(&status);

    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(
        format!("--{boundary}\r\nContent-Type: {content_type}\r\n\r\n").as_bytes(),
    );
    bytes.extend_from_slice(returned);
    if !returned.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    bytes
}

/// The first part: what happened, in words.
fn human_readable(report: &Report<'_>, out: &mut String) {
    out.push_str(&format!(
        "This is the mail system at {}.\r\n\r\n",
        field(report.reporting_mta)
    ));
    for r in report.recipients {
        let what = match r.action {
            Action::Failed => "could not be delivered",
            Action::Delayed => "has not been delivered yet; delivery is being retried",
            Action::Delivered => "was delivered",
            Action::Relayed => "was handed to a server that does not send delivery reports",
            Action::Expanded => "was delivered to an alias that forwards it to several addresses",
        };
        out.push_str(&format!(
            "Your message to <{}> {what}.\r\n",
            field(&r.final_recipient)
        ));
        if let Some(d) = &r.diagnostic {
            out.push_str(&format!("    {}\r\n", field(d)));
        }
        if let Some(until) = r.will_retry_until {
            out.push_str(&format!(
                "    Delivery will be retried until {}.\r\n",
                until.to_rfc2822()
            ));
        }
    }
    out.push_str("\r\n");
}

/// The `message/delivery-status` part (RFC 3464 2): per-message fields, then per recipient.
fn delivery_status(report: &Report<'_>, out: &mut String) {
    out.push_str(&format!(
        "Reporting-MTA: dns; {}\r\n",
        field(report.reporting_mta)
    ));
    if let Some(envid) = report.envid {
        out.push_str(&format!("Original-Envelope-Id: {}\r\n", field(envid)));
    }
    out.push_str(&format!(
        "Arrival-Date: {}\r\n",
        report.arrival.to_rfc2822()
    ));
    for r in report.recipients {
        out.push_str("\r\n");
        if let Some(orcpt) = &r.orcpt {
            out.push_str(&format!(
                "Original-Recipient: {}\r\n",
                field(&orcpt.decoded())
            ));
        }
        out.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\n",
            field(&r.final_recipient)
        ));
        out.push_str(&format!("Action: {}\r\n", r.action.as_str()));
        out.push_str(&format!("Status: {}\r\n", field(&r.status)));
        if let Some(mta) = &r.remote_mta {
            out.push_str(&format!("Remote-MTA: dns; {}\r\n", field(mta)));
        }
        if let Some(d) = &r.diagnostic {
            out.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", field(d)));
        }
        if let Some(at) = r.last_attempt {
            out.push_str(&format!("Last-Attempt-Date: {}\r\n", at.to_rfc2822()));
        }
        if let Some(until) = r.will_retry_until {
            out.push_str(&format!("Will-Retry-Until: {}\r\n", until.to_rfc2822()));
        }
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{MessageParser, MimeHeaders};

    const ORIGINAL: &[u8] =
        b"Received: from x\r\nSubject: hello\r\nFrom: bob@example.org\r\n\r\nbody line\r\n";

    fn report(ret: Return, recipients: &[RecipientReport]) -> Vec<u8> {
        let t = DateTime::parse_from_rfc3339("2026-11-28T01:02:03Z")
            .unwrap()
            .with_timezone(&Utc);
        build(&Report {
            reporting_mta: "mx.example.org",
            to: "bob@example.org",
            envid: Some("ENV-1"),
            arrival: t,
            date: t,
            id: "0123456789ABCDEFGHJK",
            recipients,
            original: ORIGINAL,
            ret,
        })
    }

    fn failed(address: &str) -> RecipientReport {
        RecipientReport {
            orcpt: Some("rfc822;a+2Bb@example.org".parse().unwrap()),
            final_recipient: address.into(),
            action: Action::Failed,
            status: "5.1.1".into(),
            remote_mta: Some("mx.remote.example".into()),
            diagnostic: Some("550 5.1.1 no such user".into()),
            last_attempt: Some(Utc::now()),
            will_retry_until: None,
        }
    }

    #[test]
    fn failure_report_parses_and_carries_the_fields() {
        let bytes = report(
            Return::Full,
            &[failed("gone@example.org"), failed("also@example.org")],
        );
        let message = MessageParser::default().parse(&bytes).expect("parses");
        assert_eq!(
            message.subject(),
            Some("Undelivered Mail Returned to Sender")
        );
        let ct = message.content_type().unwrap();
        assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        assert_eq!(
            message.parts.len(),
            4,
            "root, text, delivery-status, returned message"
        );
        let status_part = &message.parts[2];
        assert_eq!(
            status_part.content_type().unwrap().subtype(),
            Some("delivery-status")
        );
        let status = String::from_utf8_lossy(status_part.contents());
        for needle in [
            "Reporting-MTA: dns; mx.example.org",
            "Original-Envelope-Id: ENV-1",
            "Arrival-Date: Sat, 28 Nov 2026 01:02:03 +0000",
            "Original-Recipient: rfc822;a+b@example.org",
            "Final-Recipient: rfc822; gone@example.org",
            "Final-Recipient: rfc822; also@example.org",
            "Action: failed",
            "Status: 5.1.1",
            "Remote-MTA: dns; mx.remote.example",
            "Diagnostic-Code: smtp; 550 5.1.1 no such user",
            "Last-Attempt-Date: ",
        ] {
            assert!(status.contains(needle), "{needle} missing in\n{status}");
        }
        assert!(
            String::from_utf8_lossy(&bytes)
                .contains("Content-Type: message/rfc822\r\n\r\nReceived: from x\r\nSubject: hello")
        );
        assert!(
            String::from_utf8_lossy(&bytes).contains("body line"),
            "RET=FULL returns the body"
        );
        assert!(String::from_utf8_lossy(&bytes).contains("Auto-Submitted: auto-replied"));
    }

    #[test]
    fn headers_only_and_success_reports() {
        let mut delivered = failed("alice@example.org");
        delivered.action = Action::Delivered;
        delivered.status = "2.0.0".into();
        delivered.will_retry_until = Some(Utc::now());
        let bytes = report(Return::Headers, &[delivered]);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("Content-Type: text/rfc822-headers\r\n\r\nReceived: from x\r\nSubject: hello\r\nFrom: bob@example.org\r\n\r\n--"));
        assert!(
            !text.contains("body line"),
            "RET=HDRS returns only the header"
        );
        assert!(text.contains("Action: delivered") && text.contains("Will-Retry-Until: "));
        assert!(text.contains("Subject: Successful Mail Delivery Report"));
        MessageParser::default().parse(&bytes).expect("parses");
    }

    #[test]
    fn header_section_of_a_message_without_body() {
        assert_eq!(header_section(b"A: b\r\n"), b"A: b\r\n");
        assert_eq!(header_section(b"A: b\r\n\r\nbody"), b"A: b\r\n\r\n");
    }
}
