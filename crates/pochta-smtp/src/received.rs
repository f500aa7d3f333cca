//! The `Received:` trace header an accepting server prepends (RFC 5321 4.4, RFC 3848).

use chrono::{DateTime, Utc};

use crate::server::Message;

/// Facts about the accepting side.
#[derive(Debug, Clone, Copy)]
pub struct ReceivedBy<'a> {
    pub hostname: &'a str,
    pub client_ip: std::net::IpAddr,
    pub queue_id: &'a str,
    pub date: DateTime<Utc>,
}

/// RFC 3848 "with" values.
pub fn protocol(message: &Message) -> &'static str {
    match (message.esmtp, message.tls, message.authenticated.is_some()) {
        (false, false, _) => "SMTP",
        (false, true, _) => "SMTPS",
        (true, false, false) => "ESMTP",
        (true, true, false) => "ESMTPS",
        (true, false, true) => "ESMTPA",
        (true, true, true) => "ESMTPSA",
    }
}

/// A HELO name as a header may carry it: anything outside a host name or address literal
/// becomes `?`, so a client cannot break the header's structure.
fn sanitize(helo: &str) -> String {
    helo.chars()
        .take(255)
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-:[]_".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The header, folded, ending in CRLF. `for` names the recipient only when there is exactly
/// one, so one recipient's copy does not list the others.
pub fn received_header(message: &Message, by: ReceivedBy<'_>) -> String {
    let ip = match by.client_ip {
        std::net::IpAddr::V4(v4) => format!("[{v4}]"),
        std::net::IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    };
    let mut header = format!(
        "Received: from {} ({ip})\r\n\tby {} (Pochta) with {} id {}",
        sanitize(&message.helo),
        by.hostname,
        protocol(message),
        by.queue_id
    );
    if let [only] = message.recipients.as_slice() {
        header.push_str(&format!("\r\n\tfor <{}>", only.rcpt.recipient));
    }
    header.push_str(&format!("; {}\r\n", by.date.to_rfc2822()));
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{MailFrom, RcptTo};
    use crate::server::AcceptedRecipient;
    use pochta_mail::Mailbox;

    fn message(recipients: usize) -> Message {
        Message {
            helo: "client.example (evil)".into(),
            esmtp: true,
            tls: true,
            authenticated: None,
            mail: MailFrom::default(),
            recipients: (0..recipients)
                .map(|i| AcceptedRecipient {
                    rcpt: RcptTo {
                        recipient: Mailbox {
                            local_part: format!("u{i}"),
                            domain: "example.org".into(),
                        },
                        notify: None,
                        orcpt: None,
                    },
                    disposition: pochta_mail::Disposition::Local,
                })
                .collect(),
            body: Vec::new(),
        }
    }

    #[test]
    fn formats_the_trace_header() {
        let by = ReceivedBy {
            hostname: "mx.example.org",
            client_ip: "192.0.2.7".parse().unwrap(),
            queue_id: "0123456789ABCDEFGHJK",
            date: DateTime::parse_from_rfc3339("2026-11-28T01:02:03Z")
                .unwrap()
                .with_timezone(&Utc),
        };
        assert_eq!(
            received_header(&message(1), by),
            "Received: from client.example??evil? ([192.0.2.7])\r\n\tby mx.example.org (Pochta) with ESMTPS id 0123456789ABCDEFGHJK\r\n\tfor <u0@example.org>; Sat, 28 Nov 2026 01:02:03 +0000\r\n"
        );
        let two = received_header(
            &message(2),
            ReceivedBy {
                client_ip: "2001:db8::1".parse().unwrap(),
                ..by
            },
        );
        assert!(!two.contains("for <"), "{two}");
        assert!(two.contains("([IPv6:2001:db8::1])"), "{two}");
    }

    #[test]
    fn protocol_names() {
        let mut m = message(1);
        assert_eq!(protocol(&m), "ESMTPS");
        m.authenticated = Some("a@example.org".into());
        assert_eq!(protocol(&m), "ESMTPSA");
        m.tls = false;
        assert_eq!(protocol(&m), "ESMTPA");
        m.esmtp = false;
        assert_eq!(protocol(&m), "SMTP");
    }
}
