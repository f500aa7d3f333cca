//! IMAP4rev2 (RFC 9051, with the IMAP4rev1 commands clients still send) as a sans-IO server
//! session. Commands are parsed and responses serialised by `imap-next` (over `imap-codec`);
//! this crate decides what each command means in each state, keeps the selected mailbox's
//! view (message sequence numbers, UIDs, flags), and asks the world for what it needs through
//! `Action`s, answered with `Session::answer`.

mod extended;
mod fetch;
mod input;
mod names;
mod search;
mod session;
mod uids;
mod view;

pub use names::{
    DELIMITER, from_modified_utf7, mailbox_name, matches as list_matches, to_modified_utf7,
};
pub use session::{
    Action, Answer, Contents, Counts, Failure, FlagChange, Found, LoginResult, Policy, Request,
    Session, Streamed,
};
pub use view::{Changes, MailboxSummary, Message};

pub use imap_next::imap_types;
