//! SMTP as sans-IO state machines. The server `Session` turns bytes into replies and into
//! actions the I/O layer performs; the `client` session does the same for the other side.
//! Beside them, the two message-format pieces SMTP servers write: the `Received` header and
//! the delivery status notification (`dsn`). Nothing here touches a socket, a clock or a
//! database.

pub mod client;
pub mod command;
pub mod data;
pub mod dsn;
pub mod received;
pub mod reply;
pub mod server;

pub use command::{MailFrom, RcptTo};
pub use reply::Reply;
pub use server::{
    AcceptedRecipient, Action, AuthResult, ConnectionPolicy, Credentials, EtrnResult, Message,
    Output, RecipientVerdict, SenderVerdict, Session, SessionConfig, StoreResult,
};
