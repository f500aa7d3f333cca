//! SMTP as a sans-IO state machine. The server `Session` turns bytes into replies and into
//! actions the I/O layer performs; nothing here touches a socket, a clock or a database.

pub mod client;
pub mod command;
pub mod data;
pub mod received;
pub mod reply;
pub mod server;

pub use command::{MailFrom, RcptTo};
pub use reply::Reply;
pub use server::{
    AcceptedRecipient, Action, AuthResult, ConnectionPolicy, Credentials, EtrnResult, Message,
    Output, RecipientVerdict, Session, SessionConfig, StoreResult,
};
