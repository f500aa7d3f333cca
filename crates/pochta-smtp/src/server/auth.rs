//! AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms: the SASL exchange up to
//! the credentials the I/O layer checks, and its answer.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::{Action, AuthResult, Credentials, Output, Pending, Phase, Session};
use crate::reply::Reply;

impl Session {
    pub(super) fn auth(&mut self, mechanism: &str, initial: Option<String>) {
        if !self.policy.auth_enabled {
            return self.send(Reply::new(502, "5.5.1", "AUTH not available"));
        }
        if !self.greeting.as_ref().is_some_and(|g| g.esmtp) {
            return self.send(Reply::new(503, "5.5.1", "Send EHLO first"));
        }
        if self.user.is_some() {
            return self.send(Reply::new(503, "5.5.1", "Already authenticated"));
        }
        if self.transaction.is_some() {
            return self.send(Reply::new(
                503,
                "5.5.1",
                "AUTH not permitted during a mail transaction",
            ));
        }
        if !self.auth_usable() {
            return self.send(Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            ));
        }
        match (mechanism, initial) {
            ("PLAIN", Some(response)) => self.auth_plain_response(response.as_bytes()),
            ("PLAIN", None) => {
                self.phase = Phase::AuthPlain;
                self.send(Reply::plain(334, ""));
            }
            ("LOGIN", Some(response)) => self.auth_login_user(response.as_bytes()),
            ("LOGIN", None) => {
                self.phase = Phase::AuthLoginUser;
                self.send(Reply::plain(334, BASE64.encode("Username:")));
            }
            _ => self.send(Reply::new(504, "5.5.4", "Unrecognized authentication type")),
        }
    }

    /// Decodes one SASL response line; `*` cancels (RFC 4954 4).
    fn sasl_response(&mut self, line: &[u8]) -> Option<Vec<u8>> {
        if line == b"*" {
            self.send(Reply::new(501, "5.0.0", "Authentication cancelled"));
            return None;
        }
        if line == b"=" {
            return Some(Vec::new());
        }
        match BASE64.decode(line) {
            Ok(bytes) => Some(bytes),
            Err(_) => {
                self.send(Reply::new(
                    501,
                    "5.5.2",
                    "Cannot decode the response (base64)",
                ));
                None
            }
        }
    }

    /// RFC 4616: `authzid NUL authcid NUL passwd`.
    pub(super) fn auth_plain_response(&mut self, line: &[u8]) {
        let Some(bytes) = self.sasl_response(line) else {
            return;
        };
        let parts: Vec<&[u8]> = bytes.split(|&b| b == 0).collect();
        let decoded = match parts.as_slice() {
            [authzid, authcid, passwd] => match (
                std::str::from_utf8(authzid),
                std::str::from_utf8(authcid),
                std::str::from_utf8(passwd),
            ) {
                (Ok(z), Ok(c), Ok(p)) if !c.is_empty() => Some(Credentials {
                    authzid: (!z.is_empty()).then(|| z.to_owned()),
                    username: c.to_owned(),
                    password: p.to_owned(),
                }),
                _ => None,
            },
            _ => None,
        };
        match decoded {
            Some(credentials) => self.authenticate(credentials),
            None => self.send(Reply::new(501, "5.5.2", "Malformed PLAIN response")),
        }
    }

    pub(super) fn auth_login_user(&mut self, line: &[u8]) {
        let Some(bytes) = self.sasl_response(line) else {
            return;
        };
        match String::from_utf8(bytes) {
            Ok(username) if !username.is_empty() => {
                self.phase = Phase::AuthLoginPassword { username };
                self.send(Reply::plain(334, BASE64.encode("Password:")));
            }
            _ => self.send(Reply::new(501, "5.5.2", "Malformed LOGIN user name")),
        }
    }

    pub(super) fn auth_login_password(&mut self, line: &[u8], username: String) {
        let Some(bytes) = self.sasl_response(line) else {
            return;
        };
        match String::from_utf8(bytes) {
            Ok(password) => self.authenticate(Credentials {
                authzid: None,
                username,
                password,
            }),
            Err(_) => self.send(Reply::new(501, "5.5.2", "Malformed LOGIN password")),
        }
    }

    fn authenticate(&mut self, credentials: Credentials) {
        // Acting as another identity is not supported.
        if credentials
            .authzid
            .as_ref()
            .is_some_and(|z| *z != credentials.username)
        {
            return self.send(Reply::new(
                535,
                "5.7.8",
                "Authentication credentials invalid",
            ));
        }
        self.pending = Some(Pending::Auth);
        self.out
            .push_back(Output::Action(Action::Authenticate(credentials)));
    }

    /// The I/O layer checked the credentials (after its failure delay, if they were wrong).
    pub fn auth_result(&mut self, result: AuthResult) {
        if !matches!(self.pending.take(), Some(Pending::Auth)) {
            debug_assert!(false, "no authentication is pending");
            return;
        }
        match result {
            AuthResult::Success { user } => {
                self.user = Some(user);
                self.send(Reply::new(235, "2.7.0", "Authentication successful"));
            }
            AuthResult::Failure => self.send(Reply::new(
                535,
                "5.7.8",
                "Authentication credentials invalid",
            )),
            AuthResult::RateLimited => self.close_with(Reply::new(
                421,
                "4.7.0",
                "Too many failed authentications; try again later",
            )),
            AuthResult::TemporaryFailure => {
                self.send(Reply::new(454, "4.7.0", "Temporary authentication failure"))
            }
        }
    }
}
