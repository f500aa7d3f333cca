//! Parsing SMTP command lines (RFC 5321 4.1) and their ESMTP parameters: SIZE (RFC 1870),
//! BODY (RFC 6152), SMTPUTF8 (RFC 6531), RET/ENVID/NOTIFY/ORCPT (RFC 3461), AUTH (RFC 4954).

use pochta_mail::{Body, Mailbox, Notify, Orcpt, Ret, is_domain_name, xtext_decode};

use crate::reply::Reply;

/// MAIL FROM and its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailFrom {
    /// None for the null reverse-path `<>`.
    pub sender: Option<Mailbox>,
    pub size: Option<u64>,
    pub body: Option<Body>,
    pub smtputf8: bool,
    /// REQUIRETLS (RFC 8689): the message must travel over verified TLS on every hop.
    pub requiretls: bool,
    pub ret: Option<Ret>,
    /// ENVID, decoded from xtext.
    pub envid: Option<String>,
}

/// RCPT TO and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptTo {
    pub recipient: Mailbox,
    pub notify: Option<Notify>,
    pub orcpt: Option<Orcpt>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail(MailFrom),
    Rcpt(RcptTo),
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth {
        mechanism: String,
        initial_response: Option<String>,
    },
    Etrn {
        domain: String,
        subdomains: bool,
    },
    /// RFC 3030: `BDAT size [LAST]`; `size` octets of message text follow the command line.
    Bdat {
        size: u64,
        last: bool,
    },
    /// Known but unsupported verbs.
    NotImplemented(String),
}

fn syntax(text: &str) -> Reply {
    Reply::new(501, "5.5.4", text)
}

/// What `parse` needs to know about the session.
#[derive(Debug, Clone, Copy)]
pub struct ParseContext<'a> {
    /// ESMTP parameters are allowed only after EHLO.
    pub esmtp: bool,
    /// The `<postmaster>` recipient (RFC 5321 4.5.1) is this domain's postmaster, if any.
    pub postmaster_domain: Option<&'a str>,
}

/// Parses one command line (without its line end).
pub fn parse(line: &[u8], ctx: ParseContext<'_>) -> Result<Command, Reply> {
    let line = std::str::from_utf8(line)
        .map_err(|_| Reply::new(500, "5.5.2", "Syntax error: invalid UTF-8"))?;
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(Reply::new(
            500,
            "5.5.2",
            "Syntax error: control character in command",
        ));
    }
    let (verb, rest) = match line.split_once(' ') {
        Some((v, r)) => (v, r),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let arg = rest.trim();
    let no_arg = |command: Command| {
        if arg.is_empty() {
            Ok(command)
        } else {
            Err(syntax("Syntax error: no parameters allowed"))
        }
    };
    match verb.as_str() {
        "EHLO" | "HELO" => {
            if arg.is_empty() || arg.contains(' ') {
                return Err(syntax(
                    "Syntax error: EHLO/HELO needs a domain or address literal",
                ));
            }
            Ok(if verb == "EHLO" {
                Command::Ehlo(arg.to_owned())
            } else {
                Command::Helo(arg.to_owned())
            })
        }
        "MAIL" => parse_mail(rest, ctx).map(Command::Mail),
        "RCPT" => parse_rcpt(rest, ctx).map(Command::Rcpt),
        "DATA" => no_arg(Command::Data),
        "RSET" => no_arg(Command::Rset),
        "QUIT" => no_arg(Command::Quit),
        "STARTTLS" => no_arg(Command::StartTls),
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "VRFY" if !arg.is_empty() => Ok(Command::Vrfy),
        "VRFY" => Err(syntax("Syntax error: VRFY needs an argument")),
        "EXPN" => Ok(Command::Expn),
        "AUTH" => {
            let mut parts = arg.split(' ');
            let mechanism = parts.next().unwrap_or("").to_ascii_uppercase();
            let initial_response = parts.next().map(str::to_owned);
            if mechanism.is_empty() || parts.next().is_some() {
                return Err(syntax("Syntax error: AUTH mechanism [initial-response]"));
            }
            Ok(Command::Auth {
                mechanism,
                initial_response,
            })
        }
        "ETRN" => parse_etrn(arg),
        "BDAT" => parse_bdat(arg),
        "BURL" | "ATRN" | "TURN" | "SEND" | "SOML" | "SAML" => Ok(Command::NotImplemented(verb)),
        _ => Err(Reply::new(
            500,
            "5.5.2",
            "Syntax error: command unrecognized",
        )),
    }
}

/// `BDAT chunk-size [LAST]` (RFC 3030 2: chunk-size is 1*DIGIT).
fn parse_bdat(arg: &str) -> Result<Command, Reply> {
    let bad = || syntax("Syntax error: BDAT <size> [LAST]");
    let mut words = arg.split(' ');
    let size = words.next().unwrap_or_default();
    if size.is_empty() || size.len() > 19 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let size = size.parse().map_err(|_| bad())?;
    let last = match words.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(bad()),
    };
    if words.next().is_some() {
        return Err(bad());
    }
    Ok(Command::Bdat { size, last })
}

/// `ETRN domain`, `ETRN @domain` (subdomains too); `#queue` names are not supported (RFC 1985).
fn parse_etrn(arg: &str) -> Result<Command, Reply> {
    if arg.is_empty() || arg.contains(' ') {
        return Err(syntax("Syntax error: ETRN needs one domain"));
    }
    if arg.starts_with('#') {
        return Err(Reply::new(
            458,
            "4.3.0",
            format!("Unable to queue messages for node {arg}: queue names are not supported"),
        ));
    }
    let (domain, subdomains) = match arg.strip_prefix('@') {
        Some(d) => (d, true),
        None => (arg, false),
    };
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if !is_domain_name(&domain) {
        return Err(syntax("Syntax error: ETRN needs a valid domain"));
    }
    Ok(Command::Etrn { domain, subdomains })
}

/// Splits `FROM:<path> params` after the keyword; tolerates one space after the colon.
fn split_path<'a>(rest: &'a str, keyword: &str) -> Result<(&'a str, &'a str), Reply> {
    let rest = rest.trim_start();
    // `get` rather than indexing: the text after the verb may have a multi-byte character
    // where the keyword would end.
    let Some(rest) = rest
        .get(..keyword.len())
        .filter(|head| head.eq_ignore_ascii_case(keyword))
        .and_then(|_| rest.get(keyword.len()..))
    else {
        return Err(syntax(&format!(
            "Syntax error: expected {keyword}<address>"
        )));
    };
    let rest = rest.trim_start_matches(' ');
    if !rest.starts_with('<') {
        return Err(syntax(
            "Syntax error: the address must be in angle brackets",
        ));
    }
    let close =
        find_path_end(rest).ok_or_else(|| syntax("Syntax error: unterminated <address>"))?;
    let path = &rest[1..close];
    let params = &rest[close + 1..];
    if !params.is_empty() && !params.starts_with(' ') {
        return Err(syntax("Syntax error: junk after the address"));
    }
    Ok((path, params.trim()))
}

/// Index of the `>` closing the path, skipping `>` inside a quoted local part.
fn find_path_end(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        if escaped {
            escaped = false;
        } else if c == '\\' && quoted {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == '>' && !quoted {
            return Some(i);
        }
    }
    None
}

/// Parses `keyword[=value]` parameters, refusing duplicates.
fn parameters(params: &str) -> Result<Vec<(String, Option<&str>)>, Reply> {
    let mut seen: Vec<(String, Option<&str>)> = Vec::new();
    for param in params.split(' ').filter(|p| !p.is_empty()) {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        let key = key.to_ascii_uppercase();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(syntax("Syntax error in parameters"));
        }
        if seen.iter().any(|(k, _)| *k == key) {
            return Err(syntax(&format!("Syntax error: duplicate {key} parameter")));
        }
        seen.push((key, value));
    }
    Ok(seen)
}

fn unknown_param(key: &str) -> Reply {
    Reply::new(555, "5.5.4", format!("Unsupported parameter {key}"))
}

fn parse_mail<'a>(rest: &'a str, ctx: ParseContext<'_>) -> Result<MailFrom, Reply> {
    let (path, params) = split_path(rest, "FROM:")?;
    let mut mail = MailFrom::default();
    let params = parameters(params)?;
    if !params.is_empty() && !ctx.esmtp {
        return Err(unknown_param("(ESMTP parameters need EHLO)"));
    }
    for (key, value) in params {
        let value_of = |v: Option<&'a str>| -> Result<&'a str, Reply> {
            v.filter(|v| !v.is_empty())
                .ok_or_else(|| syntax(&format!("Syntax error: {key} needs a value")))
        };
        match key.as_str() {
            "SIZE" => {
                let v = value_of(value)?;
                mail.size = Some(
                    v.parse()
                        .map_err(|_| syntax("Syntax error: SIZE=<number>"))?,
                );
            }
            "BODY" => {
                // BINARYMIME needs CHUNKING (RFC 3030 3), which is not offered.
                mail.body = match value_of(value)?.parse() {
                    Ok(body @ (Body::SevenBit | Body::EightBitMime)) => Some(body),
                    _ => return Err(unknown_param("BODY value (7BIT or 8BITMIME)")),
                };
            }
            "SMTPUTF8" => {
                if value.is_some() {
                    return Err(syntax("Syntax error: SMTPUTF8 takes no value"));
                }
                mail.smtputf8 = true;
            }
            "REQUIRETLS" => {
                if value.is_some() {
                    return Err(syntax("Syntax error: REQUIRETLS takes no value"));
                }
                mail.requiretls = true;
            }
            "RET" => {
                mail.ret = Some(
                    value_of(value)?
                        .parse::<Ret>()
                        .map_err(|_| syntax("Syntax error: RET=FULL or RET=HDRS"))?,
                );
            }
            "ENVID" => {
                let v = value_of(value)?;
                let decoded = xtext_decode(v)
                    .ok_or_else(|| syntax("Syntax error: ENVID is not valid xtext"))?;
                if decoded.len() > 100 {
                    return Err(syntax("Syntax error: ENVID longer than 100 characters"));
                }
                mail.envid = Some(decoded);
            }
            // RFC 4954 5: accepted; we do not trust an AUTH= identity from a client.
            "AUTH" => {
                value_of(value)?;
            }
            other => return Err(unknown_param(other)),
        }
    }
    mail.sender = if path.is_empty() {
        None
    } else {
        Some(
            parse_mailbox(strip_source_route(path), mail.smtputf8)
                .ok_or_else(|| Reply::new(501, "5.1.7", "Bad sender address syntax"))?,
        )
    };
    Ok(mail)
}

fn parse_rcpt(rest: &str, ctx: ParseContext<'_>) -> Result<RcptTo, Reply> {
    let (path, params) = split_path(rest, "TO:")?;
    let params = parameters(params)?;
    if !params.is_empty() && !ctx.esmtp {
        return Err(unknown_param("(ESMTP parameters need EHLO)"));
    }
    let mut notify = None;
    let mut orcpt = None;
    for (key, value) in params {
        match key.as_str() {
            "NOTIFY" => notify = Some(parse_notify(value.unwrap_or(""))?),
            "ORCPT" => {
                orcpt = Some(
                    value
                        .unwrap_or("")
                        .parse::<Orcpt>()
                        .map_err(|_| syntax("Syntax error: ORCPT=addr-type;xtext"))?,
                );
            }
            other => return Err(unknown_param(other)),
        }
    }
    let recipient = if path.eq_ignore_ascii_case("postmaster") {
        // RFC 5321 4.5.1: <Postmaster> without a domain must be accepted.
        match ctx.postmaster_domain {
            Some(domain) => Mailbox {
                local_part: "postmaster".into(),
                domain: domain.to_owned(),
            },
            None => {
                return Err(Reply::new(
                    550,
                    "5.1.1",
                    "No postmaster mailbox is configured here",
                ));
            }
        }
    } else {
        parse_mailbox(strip_source_route(path), true)
            .ok_or_else(|| Reply::new(501, "5.1.3", "Bad recipient address syntax"))?
    };
    Ok(RcptTo {
        recipient,
        notify,
        orcpt,
    })
}

/// NOTIFY=NEVER or a list of SUCCESS, FAILURE, DELAY; NEVER is exclusive (RFC 3461 4.1).
fn parse_notify(value: &str) -> Result<Notify, Reply> {
    value
        .parse()
        .map_err(|_| syntax("Syntax error: NOTIFY=NEVER or SUCCESS,FAILURE,DELAY"))
}

/// Drops an obsolete source route `@a,@b:` (RFC 5321 4.1.2: MUST accept, SHOULD ignore).
fn strip_source_route(path: &str) -> &str {
    if path.starts_with('@')
        && let Some(colon) = path.find(':')
    {
        return &path[colon + 1..];
    }
    path
}

/// RFC 5321 4.1.2 Mailbox; UTF-8 only with SMTPUTF8 (RFC 6531 3.3).
fn parse_mailbox(s: &str, utf8: bool) -> Option<Mailbox> {
    if !utf8 && !s.is_ascii() {
        return None;
    }
    Mailbox::parse(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: ParseContext<'static> = ParseContext {
        esmtp: true,
        postmaster_domain: Some("example.org"),
    };

    fn cmd(line: &str) -> Result<Command, Reply> {
        parse(line.as_bytes(), CTX)
    }

    fn code(line: &str) -> (u16, Option<&'static str>) {
        let r = cmd(line).unwrap_err();
        (r.code, r.enhanced)
    }

    fn mailbox(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local_part: local.into(),
            domain: domain.into(),
        }
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            cmd("ehlo client.example").unwrap(),
            Command::Ehlo("client.example".into())
        );
        assert_eq!(cmd("HeLo c").unwrap(), Command::Helo("c".into()));
        assert_eq!(cmd("data").unwrap(), Command::Data);
        assert_eq!(cmd("QUIT").unwrap(), Command::Quit);
        assert_eq!(cmd("noop whatever").unwrap(), Command::Noop);
    }

    #[test]
    fn unknown_and_malformed_commands() {
        assert_eq!(code("FOO"), (500, Some("5.5.2")));
        assert_eq!(code("EHLO"), (501, Some("5.5.4")));
        assert_eq!(code("EHLO a b"), (501, Some("5.5.4")));
        assert_eq!(code("DATA now"), (501, Some("5.5.4")));
        assert_eq!(code("STARTTLS x"), (501, Some("5.5.4")));
        assert_eq!(code("VRFY"), (501, Some("5.5.4")));
        assert_eq!(parse(b"NOOP \xff", CTX).unwrap_err().code, 500);
        assert_eq!(code("NOOP \u{1}"), (500, Some("5.5.2")));
        assert_eq!(
            cmd("BDAT 10 LAST").unwrap(),
            Command::Bdat {
                size: 10,
                last: true
            }
        );
    }

    #[test]
    fn mail_from_with_all_parameters() {
        let Command::Mail(m) = cmd("MAIL FROM:<a.b@Example.NET> SIZE=1000 BODY=8bitmime RET=hdrs ENVID=QQ+2Bx SMTPUTF8 AUTH=<>").unwrap() else {
            panic!()
        };
        assert_eq!(m.sender, Some(mailbox("a.b", "example.net")));
        assert_eq!(m.size, Some(1000));
        assert_eq!(m.body, Some(Body::EightBitMime));
        assert_eq!(m.ret, Some(Ret::Hdrs));
        assert_eq!(m.envid.as_deref(), Some("QQ+x"));
        assert!(m.smtputf8);
    }

    #[test]
    fn mail_from_null_sender_and_leniencies() {
        let Command::Mail(m) = cmd("MAIL FROM:<>").unwrap() else {
            panic!()
        };
        assert_eq!(m.sender, None);
        // A space after the colon and a source route are tolerated.
        let Command::Mail(m) = cmd("mail from: <@relay.example:u@example.org>").unwrap() else {
            panic!()
        };
        assert_eq!(m.sender, Some(mailbox("u", "example.org")));
        let Command::Mail(m) = cmd("MAIL FROM:<\"john doe\"@example.org>").unwrap() else {
            panic!()
        };
        assert_eq!(m.sender.unwrap().local_part, "\"john doe\"");
    }

    #[test]
    fn a_multi_byte_character_where_a_keyword_ends_is_refused_not_panicked_on() {
        for line in [
            "MAIL FROMé:<a@b.example>",
            "MAIL FRé:<a@b.example>",
            "MAIL é",
            "MAIL FROM:é",
            "RCPT TOé:<a@b.example>",
            "RCPT Té",
            "RCPT TO:<é",
        ] {
            assert_eq!(code(line), (501, Some("5.5.4")), "{line}");
        }
    }

    #[test]
    fn envid_and_orcpt_may_not_decode_to_control_characters() {
        assert_eq!(
            code("MAIL FROM:<u@example.org> ENVID=+00"),
            (501, Some("5.5.4"))
        );
        assert_eq!(
            code("MAIL FROM:<u@example.org> ENVID=a+0D+0Ab"),
            (501, Some("5.5.4"))
        );
        assert_eq!(
            code("RCPT TO:<b@example.org> ORCPT=rfc822;b+00@example.org"),
            (501, Some("5.5.4"))
        );
    }

    #[test]
    fn mail_from_errors() {
        assert_eq!(code("MAIL FROM:u@example.org"), (501, Some("5.5.4")));
        assert_eq!(code("MAIL TO:<u@example.org>"), (501, Some("5.5.4")));
        assert_eq!(code("MAIL FROM:<u@example.org"), (501, Some("5.5.4")));
        assert_eq!(code("MAIL FROM:<u@example.org>junk"), (501, Some("5.5.4")));
        assert_eq!(code("MAIL FROM:<not an address>"), (501, Some("5.1.7")));
        assert_eq!(code("MAIL FROM:<u@-bad-.example>"), (501, Some("5.1.7")));
        assert_eq!(
            code("MAIL FROM:<u@example.org> SIZE=big"),
            (501, Some("5.5.4"))
        );
        assert_eq!(
            code("MAIL FROM:<u@example.org> SIZE=1 SIZE=2"),
            (501, Some("5.5.4"))
        );
        assert_eq!(
            code("MAIL FROM:<u@example.org> BODY=BINARYMIME"),
            (555, Some("5.5.4"))
        );
        assert_eq!(
            code("MAIL FROM:<u@example.org> FROB=1"),
            (555, Some("5.5.4"))
        );
        assert_eq!(
            code("MAIL FROM:<u@example.org> RET=ALL"),
            (501, Some("5.5.4"))
        );
        assert_eq!(
            code("MAIL FROM:<u@example.org> ENVID=a=b"),
            (501, Some("5.5.4"))
        );
        assert_eq!(
            code("MAIL FROM:<u@example.org> ENVID=+ZZ"),
            (501, Some("5.5.4"))
        );
        // UTF-8 needs SMTPUTF8.
        assert_eq!(
            code("MAIL FROM:<пользователь@example.org>"),
            (501, Some("5.1.7"))
        );
        assert!(cmd("MAIL FROM:<пользователь@пример.рф> SMTPUTF8").is_ok());
        // ESMTP parameters need EHLO.
        let helo = ParseContext {
            esmtp: false,
            ..CTX
        };
        assert_eq!(
            parse(b"MAIL FROM:<u@example.org> SIZE=1", helo)
                .unwrap_err()
                .code,
            555
        );
    }

    #[test]
    fn rcpt_to_with_dsn_parameters() {
        let Command::Rcpt(r) =
            cmd("RCPT TO:<Bob@Example.org> NOTIFY=success,DELAY ORCPT=rfc822;bob+2Bx@example.org")
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(r.recipient, mailbox("Bob", "example.org"));
        assert_eq!(
            r.notify,
            Some(Notify {
                success: true,
                failure: false,
                delay: true
            })
        );
        assert_eq!(r.orcpt.unwrap().as_str(), "rfc822;bob+2Bx@example.org");
        let Command::Rcpt(r) = cmd("RCPT TO:<b@example.org> NOTIFY=NEVER").unwrap() else {
            panic!()
        };
        assert_eq!(r.notify.unwrap().to_string(), "NEVER");
        let Command::Rcpt(r) = cmd("RCPT TO:<Postmaster>").unwrap() else {
            panic!()
        };
        assert_eq!(r.recipient, mailbox("postmaster", "example.org"));
    }

    #[test]
    fn rcpt_to_errors() {
        assert_eq!(
            code("RCPT TO:<b@example.org> NOTIFY=NEVER,SUCCESS"),
            (501, Some("5.5.4"))
        );
        assert_eq!(
            code("RCPT TO:<b@example.org> NOTIFY=SUCCESS,SUCCESS"),
            (501, Some("5.5.4"))
        );
        assert_eq!(
            code("RCPT TO:<b@example.org> NOTIFY="),
            (501, Some("5.5.4"))
        );
        assert_eq!(
            code("RCPT TO:<b@example.org> ORCPT=rfc822"),
            (501, Some("5.5.4"))
        );
        assert_eq!(
            code("RCPT TO:<b@example.org> ORCPT=;x"),
            (501, Some("5.5.4"))
        );
        assert_eq!(code("RCPT TO:<b@example.org> SIZE=1"), (555, Some("5.5.4")));
        assert_eq!(code("RCPT TO:<nobody>"), (501, Some("5.1.3")));
        assert_eq!(code("RCPT TO:<>"), (501, Some("5.1.3")));
        let no_pm = ParseContext {
            postmaster_domain: None,
            ..CTX
        };
        assert_eq!(parse(b"RCPT TO:<postmaster>", no_pm).unwrap_err().code, 550);
    }

    #[test]
    fn auth_and_etrn() {
        assert_eq!(
            cmd("AUTH plain AGEAYg==").unwrap(),
            Command::Auth {
                mechanism: "PLAIN".into(),
                initial_response: Some("AGEAYg==".into())
            }
        );
        assert_eq!(
            cmd("AUTH LOGIN").unwrap(),
            Command::Auth {
                mechanism: "LOGIN".into(),
                initial_response: None
            }
        );
        assert_eq!(code("AUTH"), (501, Some("5.5.4")));
        assert_eq!(code("AUTH PLAIN a b"), (501, Some("5.5.4")));
        assert_eq!(
            cmd("ETRN Backup.Example").unwrap(),
            Command::Etrn {
                domain: "backup.example".into(),
                subdomains: false
            }
        );
        assert_eq!(
            cmd("ETRN @backup.example").unwrap(),
            Command::Etrn {
                domain: "backup.example".into(),
                subdomains: true
            }
        );
        assert_eq!(code("ETRN"), (501, Some("5.5.4")));
        assert_eq!(code("ETRN not_a domain"), (501, Some("5.5.4")));
        assert_eq!(code("ETRN #queue"), (458, Some("4.3.0")));
    }
}
