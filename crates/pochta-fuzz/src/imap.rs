//! IMAP: the server session over imap-next.

use std::collections::HashMap;

use chrono::DateTime;
use pochta_imap::{
    Action, Answer, Changes, Contents, Counts, Failure, Found, LoginResult, MailboxSummary,
    Message, Policy, Request, Session,
};
use pochta_session::{Output, Session as _};

use crate::input::Input;

/// The session fed the input in pieces, its requests answered as the input says. Oracles: no
/// output after `Close`; every message a request names (by entry or UID) is one the session
/// was given; the session finishes what it is fed (polling ends).
pub fn imap_session(data: &[u8]) {
    let mut input = Input::new(data);
    let policy = Policy {
        starttls_available: input.bool(),
        implicit_tls: input.bool(),
        plaintext_auth: input.bool(),
        max_errors: 50,
        max_literal: 4096,
        read_batch_bytes: 1 + u64::from(input.byte()) * 8,
    };
    let messages: Vec<Message> = (0..input.choose(6))
        .map(|i| Message {
            entry_id: 100 + i as i64,
            uid: 1 + 2 * i as u32,
            flags: match input.choose(3) {
                0 => vec![],
                1 => vec!["\\Seen".into()],
                _ => vec!["\\Deleted".into(), "$Work".into()],
            },
            modseq: 1 + u64::from(input.byte()),
            size: u32::from(input.byte()) * 4,
            internal_date: DateTime::UNIX_EPOCH,
        })
        .collect();
    // The messages' UIDs, and 50: a message `Changes` may announce.
    let mut uids: Vec<u32> = messages.iter().map(|m| m.uid).collect();
    let selected = uids.clone();
    uids.push(NEW_UID);
    let entries: Vec<i64> = messages.iter().map(|m| m.entry_id).collect();
    let mailbox = MailboxSummary {
        id: 1,
        name: "INBOX".into(),
        special_use: None,
        subscribed: true,
        uid_validity: 9,
        uid_next: 20,
        highest_modseq: 300,
        counts: Counts {
            messages: 6,
            unseen: 1,
            size: 600,
            ..Counts::default()
        },
    };
    let mut session = Session::new(policy);
    let mut closed = false;
    loop {
        let mut polls = 0;
        while let Some(output) = session.poll() {
            polls += 1;
            assert!(polls < 100_000, "the session does not settle");
            assert!(!closed, "output after Close: {output:?}");
            match output {
                Output::Send(_) => {}
                Output::StartTls => session.tls_established(),
                Output::Close => closed = true,
                Output::Action(Action::Login { .. }) => {
                    session.login_result(match input.choose(8) {
                        0..=3 => LoginResult::Ok,
                        4 => LoginResult::BadCredentials,
                        5 => LoginResult::RateLimited,
                        6 => LoginResult::TooManySessions,
                        _ => LoginResult::TemporaryFailure,
                    })
                }
                Output::Action(Action::Run(request)) => {
                    let answer = answer(
                        &mut input, request, &mailbox, &messages, &selected, &uids, &entries,
                    );
                    session.answer(answer);
                }
                Output::Action(Action::Stream(streamed)) => {
                    // The response around the literal is whole, and announces its length.
                    assert!(entries.contains(&streamed.entry_id), "{streamed:?}");
                    let size = format!("{{{}}}\r\n", streamed.len);
                    assert!(streamed.head.starts_with(b"* "), "{streamed:?}");
                    assert!(streamed.head.ends_with(size.as_bytes()), "{streamed:?}");
                    assert!(streamed.tail.ends_with(b")\r\n"), "{streamed:?}");
                    session.answer(Answer::Streamed(match input.choose(8) {
                        0 => Err(Failure::Temporary),
                        1 => Ok(false),
                        _ => Ok(true),
                    }));
                }
            }
        }
        if input.is_empty() {
            return;
        }
        session.feed(input.piece(64));
    }
}

fn failure(input: &mut Input<'_>) -> Failure {
    match input.choose(3) {
        0 => Failure::NoSuchMailbox,
        1 => Failure::AlreadyExists,
        _ => Failure::Temporary,
    }
}

/// The UID of the message `Changes` may announce as new.
const NEW_UID: u32 = 50;

/// `selected`: the UIDs SELECT answers with; `uids`: every UID a request may name.
#[allow(clippy::too_many_arguments)]
fn answer(
    input: &mut Input<'_>,
    request: Request,
    mailbox: &MailboxSummary,
    messages: &[Message],
    selected: &[u32],
    uids: &[u32],
    entries: &[i64],
) -> Answer {
    let fails = input.choose(8) == 0;
    match request {
        Request::Mailboxes => Answer::Mailboxes(Ok(vec![mailbox.clone()])),
        Request::Select { .. } if fails => Answer::Selected(Err(failure(input))),
        Request::Select { .. } => Answer::Selected(Ok((mailbox.clone(), selected.to_vec()))),
        Request::Messages { uids: asked, .. } => {
            assert!(asked.iter().all(|u| uids.contains(u)), "{asked:?}");
            let known = messages
                .iter()
                .filter(|m| asked.contains(&m.uid) && input.choose(8) != 0)
                .cloned()
                .collect();
            Answer::Messages(Ok(known))
        }
        Request::Status { .. } => Answer::Status(Ok((mailbox.clone(), Counts::default()))),
        Request::Create { .. }
        | Request::Delete { .. }
        | Request::Rename { .. }
        | Request::Subscribe { .. } => {
            Answer::Done(if fails { Err(failure(input)) } else { Ok(()) })
        }
        Request::Append { .. } => Answer::Placed(Ok((9, vec![(0, 21)]))),
        Request::Contents {
            entry_ids,
            next,
            headers_only,
        } => {
            assert!(
                entry_ids.iter().chain(&next).all(|id| entries.contains(id)),
                "{entry_ids:?} {next:?}"
            );
            // A headers-only batch may be cut short (header blocks longer than guessed),
            // even to none: the session must still move on.
            let answered =
                (headers_only && input.bool()).then(|| input.choose(entry_ids.len() + 1));
            let mut contents = HashMap::new();
            for id in entry_ids.into_iter().take(answered.unwrap_or(usize::MAX)) {
                // Some are gone (expunged meanwhile).
                if !input.bool() {
                    contents.insert(id, input.piece(200).to_vec());
                }
            }
            Answer::Contents(Ok(Contents {
                octets: contents,
                answered,
            }))
        }
        Request::StoreFlags { uids: asked, .. } => {
            assert!(asked.iter().all(|u| uids.contains(u)), "{asked:?}");
            let changed = messages
                .iter()
                .filter(|m| asked.contains(&m.uid) && input.bool())
                .cloned()
                .collect();
            let modified = asked.into_iter().filter(|_| input.choose(4) == 0).collect();
            Answer::Flags(Ok((changed, modified)))
        }
        Request::Expunge { uids: asked, .. } => {
            if let Some(asked) = &asked {
                assert!(asked.iter().all(|u| uids.contains(u)), "{asked:?}");
            }
            let gone = uids
                .iter()
                .copied()
                .filter(|_| input.choose(3) == 0)
                .collect();
            Answer::Expunged(Ok(gone))
        }
        Request::Copy { uids: asked, .. } => {
            assert!(asked.iter().all(|u| uids.contains(u)), "{asked:?}");
            let placed = asked.iter().map(|&u| (u, u + 100)).collect();
            Answer::Placed(if fails {
                Err(failure(input))
            } else {
                Ok((9, placed))
            })
        }
        Request::Changes { .. } => {
            let present = uids
                .iter()
                .copied()
                .filter(|_| input.choose(4) != 0)
                .collect();
            let mut changed: Vec<Message> =
                messages.iter().filter(|_| input.bool()).cloned().collect();
            if input.bool() {
                let mut new = messages.first().cloned().unwrap_or_else(|| Message {
                    entry_id: 999,
                    uid: 1,
                    flags: vec![],
                    modseq: 1,
                    size: 1,
                    internal_date: DateTime::UNIX_EPOCH,
                });
                new.uid = NEW_UID;
                changed.push(new);
            }
            Answer::Changes(Ok(Changes {
                mailbox: (!fails).then(|| mailbox.clone()),
                changed,
                present,
            }))
        }
        Request::Search { .. } if fails => Answer::Found(Err(failure(input))),
        // Matches, some perhaps unknown to the view (NEW_UID), some left to the octets.
        Request::Search { .. } => {
            let mut found = Found {
                highest_modseq: u64::from(input.byte()),
                ..Found::default()
            };
            for &uid in uids {
                if input.bool() {
                    if input.bool() {
                        found.matched.push(uid);
                    } else {
                        found.undecided.push(uid);
                    }
                }
            }
            Answer::Found(Ok(found))
        }
        Request::SearchCount { .. } if fails => Answer::Counted(Err(failure(input))),
        Request::SearchCount { .. } => {
            let count = uids.iter().filter(|_| input.bool()).count() as u32;
            Answer::Counted(Ok((count, u64::from(input.byte()))))
        }
    }
}
