//! What the load sent and what arrived, per message (a token in its header), and the counts
//! the fault suite reports and judges.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// Where a message goes: Alice's maildrop here, the remote sink, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Local,
    Remote,
    Both,
}

impl Route {
    pub fn of(token: u64) -> Route {
        match token % 5 {
            0 => Route::Both,
            1 | 3 => Route::Remote,
            _ => Route::Local,
        }
    }

    pub fn local(self) -> bool {
        self != Route::Remote
    }

    pub fn remote(self) -> bool {
        self != Route::Local
    }
}

#[derive(Debug, Default, Clone)]
struct Sent {
    /// Attempts answered 250 after the message text (at most one: the sender stops there).
    acks: u32,
    /// Attempts whose end of data got no answer at all (the connection died): stored or not,
    /// nobody can say; the sender does not try again.
    unanswered: u32,
    /// Attempts refused with a 4xx/5xx after the message text.
    refused: u32,
}

#[derive(Debug, Default)]
struct Inner {
    sent: BTreeMap<u64, Sent>,
    /// Maildrop entries (POP3 UIDs) seen holding each token.
    local: BTreeMap<u64, BTreeSet<String>>,
    /// Deliveries to the remote sink per token.
    remote: BTreeMap<u64, u32>,
}

/// Shared by the senders, the sink and the POP3 reader.
#[derive(Debug, Clone, Default)]
pub struct Ledger(Arc<Mutex<Inner>>);

impl Ledger {
    pub fn acknowledged(&self, token: u64) {
        self.count(token, |sent| &mut sent.acks);
    }

    pub fn unanswered(&self, token: u64) {
        self.count(token, |sent| &mut sent.unanswered);
    }

    pub fn refused(&self, token: u64) {
        self.count(token, |sent| &mut sent.refused);
    }

    /// One more of what `counter` picks out of the message's attempts.
    fn count(&self, token: u64, counter: fn(&mut Sent) -> &mut u32) {
        *counter(self.0.lock().unwrap().sent.entry(token).or_default()) += 1;
    }

    pub fn delivered_locally(&self, token: u64, uid: &str) {
        let mut inner = self.0.lock().unwrap();
        inner.local.entry(token).or_default().insert(uid.to_owned());
    }

    pub fn delivered_remotely(&self, token: u64) {
        *self.0.lock().unwrap().remote.entry(token).or_default() += 1;
    }

    /// Messages acknowledged so far.
    pub fn acknowledged_count(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .sent
            .values()
            .filter(|s| s.acks > 0)
            .count()
    }

    /// The counts, over `messages` tokens.
    pub fn report(&self, messages: u64) -> Report {
        let inner = self.0.lock().unwrap();
        let mut r = Report {
            messages,
            ..Report::default()
        };
        for token in 0..messages {
            let sent = inner.sent.get(&token).cloned().unwrap_or_default();
            let route = Route::of(token);
            let local = inner.local.get(&token).map_or(0, |uids| uids.len() as u32);
            let remote = inner.remote.get(&token).copied().unwrap_or(0);
            r.acknowledged += u64::from(sent.acks > 0);
            r.unanswered += u64::from(sent.unanswered);
            r.refused += u64::from(sent.refused);
            r.delivered_local += u64::from(local);
            r.delivered_remote += u64::from(remote);
            if sent.acks > 0 {
                r.lost += u64::from(route.local() && local == 0);
                r.lost += u64::from(route.remote() && remote == 0);
            } else if local + remote > 0 {
                // Stored although no 250 reached the sender: only possible for an attempt
                // whose answer was lost with its connection.
                if sent.unanswered > 0 {
                    r.stored_unanswered += 1;
                } else {
                    r.appeared_unacknowledged += 1;
                }
            }
            // The sender stops after a 250 or an unanswered attempt, and a refused attempt
            // is not stored: at most one copy per destination may exist.
            r.duplicates_local += u64::from(local.saturating_sub(1));
            r.duplicates_remote += u64::from(remote.saturating_sub(1));
        }
        r
    }
}

/// What a fault run counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct Report {
    pub messages: u64,
    pub acknowledged: u64,
    pub refused: u64,
    pub unanswered: u64,
    pub delivered_local: u64,
    pub delivered_remote: u64,
    /// Acknowledged messages missing at a destination.
    pub lost: u64,
    /// Extra copies in a maildrop.
    pub duplicates_local: u64,
    /// Extra copies at the remote server (a queue killed between the remote's 250 and
    /// recording it delivers again: SMTP is at-least-once between servers).
    pub duplicates_remote: u64,
    /// Unacknowledged messages that were stored, each after an attempt whose answer was lost.
    pub stored_unanswered: u64,
    /// Messages that appeared with no 250 and no lost answer (a refused attempt stored):
    /// must be none.
    pub appeared_unacknowledged: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "messages {} | acknowledged {} | refused attempts {} | unanswered attempts {} | \
             delivered: local {} remote {} | lost {} | duplicates: local {} remote {} | \
             stored without an answer {} | appeared unacknowledged {}",
            self.messages,
            self.acknowledged,
            self.refused,
            self.unanswered,
            self.delivered_local,
            self.delivered_remote,
            self.lost,
            self.duplicates_local,
            self.duplicates_remote,
            self.stored_unanswered,
            self.appeared_unacknowledged
        )
    }
}
