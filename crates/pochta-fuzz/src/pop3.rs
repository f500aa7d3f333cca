//! POP3: the server session.

use pochta_pop3::{Action, Entry, LoginResult, Policy, Session};
use pochta_session::{Output, Session as _};

use crate::input::Input;

/// The session fed the input in pieces, its actions answered as the input says. Oracles:
/// every status line is `+OK`, `-ERR` or a SASL continuation; a retrieval or a deletion names
/// only entries of the listing; nothing is output after `Close`.
pub fn pop3_session(data: &[u8]) {
    let mut input = Input::new(data);
    let policy = Policy {
        stls_available: input.bool(),
        implicit_tls: input.bool(),
        plaintext_auth: input.bool(),
        max_errors: 50,
        max_commands: 500,
    };
    let entries: Vec<Entry> = (0..input.choose(6))
        .map(|i| Entry {
            id: 100 + i as i64,
            uid: format!("uid{i}"),
            size: u64::from(input.byte()) * 10,
        })
        .collect();
    let ids: Vec<i64> = entries.iter().map(|e| e.id).collect();
    let mut session = Session::new(policy);
    let mut closed = false;
    loop {
        while let Some(output) = session.poll() {
            assert!(!closed, "output after Close: {output:?}");
            match output {
                Output::Send(bytes) => check_status(&bytes),
                Output::StartTls => session.tls_established(),
                Output::Close => closed = true,
                Output::Action(Action::Login(_)) => session.login_result(match input.choose(5) {
                    0 | 1 => LoginResult::Ok(entries.clone()),
                    2 => LoginResult::BadCredentials,
                    3 => LoginResult::InUse,
                    _ => LoginResult::TemporaryFailure,
                }),
                Output::Action(Action::Retrieve { entry_id, .. }) => {
                    assert!(ids.contains(&entry_id), "retrieving {entry_id}");
                    session.retrieved(input.bool());
                }
                Output::Action(Action::Commit { delete }) => {
                    assert!(delete.iter().all(|id| ids.contains(id)), "{delete:?}");
                    session.committed(if input.bool() { Ok(1) } else { Err(()) });
                }
            }
        }
        if input.is_empty() {
            return;
        }
        session.feed(input.piece(64));
    }
}

/// The first line of each response the session sends is a status line.
fn check_status(bytes: &[u8]) {
    assert!(bytes.ends_with(b"\r\n"), "{bytes:?}");
    let first = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    assert!(
        first.starts_with(b"+OK") || first.starts_with(b"-ERR") || first.starts_with(b"+ "),
        "not a status line: {:?}",
        String::from_utf8_lossy(first)
    );
}
