//! What a POP3 session asks of the world, for one connection: log in and lock the maildrop
//! (`login`), send a message (`retrieve`, streamed from the store in pieces, small ones read
//! ahead several at a time), and QUIT's deletions (`commit`).

use std::sync::atomic::Ordering;

use pochta_pop3::{DotStuffer, Entry, LoginResult};
use pochta_service::drive::Io;
use pochta_service::login::LoginOutcome;
use pochta_service::spawn::spawn_beside;
use tracing::Instrument;

use crate::lock::LockKeeper;
use crate::server::{Connection, Server};

/// The maildrop this session has locked.
pub struct Locked {
    pub account_id: i64,
    pub owner: String,
    /// Renews the lock while the session lives.
    pub keeper: LockKeeper,
    /// The maildrop as listed at login: entry ids and RETR sizes, in order.
    listing: Vec<(i64, u64)>,
    /// Messages read ahead and not yet sent.
    ahead: std::collections::HashMap<i64, Vec<u8>>,
    /// The batches after `ahead`, in listing order, being read while `ahead` is sent.
    next: std::collections::VecDeque<Prefetch>,
}

/// An entry id and what RETR sends for it.
type Whole = (i64, Vec<u8>);

/// A read-ahead batch being read in the background; aborted when dropped.
struct Prefetch {
    /// Where the batch starts in the listing, and how many entries it holds.
    at: usize,
    len: usize,
    task: tokio::task::JoinHandle<pochta_store::Result<Vec<Whole>>>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Read-ahead batches read in the background at once, beyond the one being sent.
const PREFETCH_DEPTH: usize = 2;

/// Pending output beyond this is written before the next message is added.
const FLUSH_BYTES: usize = 256 * 1024;

impl Connection {
    /// Checks the credentials, takes the maildrop lock and lists the maildrop.
    pub async fn login(&mut self, username: &str, password: String) -> LoginResult {
        let server = &self.server;
        let account = match server.logins.login(username, password, self.client).await {
            LoginOutcome::Success(account) => account,
            LoginOutcome::Failure => return LoginResult::BadCredentials,
            LoginOutcome::RateLimited => return LoginResult::RateLimited,
            LoginOutcome::TemporaryFailure => return LoginResult::TemporaryFailure,
        };
        let n = server.sessions_started.fetch_add(1, Ordering::Relaxed);
        let owner = format!("{}:{n}", server.owner_prefix);
        match server
            .store
            .lock_maildrop(account.id, &owner, server.lock_ttl)
            .await
        {
            Ok(true) => {}
            Ok(false) => return LoginResult::InUse,
            Err(e) => {
                tracing::error!("locking the maildrop failed: {e}");
                return LoginResult::TemporaryFailure;
            }
        }
        tracing::Span::current()
            .record("user", format!("{}@{}", account.local_part, account.domain));
        let listed = server.store.maildrop_entries(account.id).await;
        self.locked = Some(Locked {
            account_id: account.id,
            keeper: LockKeeper::start(
                server.store.clone(),
                account.id,
                owner.clone(),
                server.lock_ttl,
            ),
            owner,
            listing: listed.as_ref().map_or_else(
                |_| Vec::new(),
                |entries| entries.iter().map(|e| (e.id, e.pop3_size as u64)).collect(),
            ),
            ahead: Default::default(),
            next: Default::default(),
        });
        match listed {
            Ok(entries) => LoginResult::Ok(
                entries
                    .into_iter()
                    .map(|e| Entry {
                        id: e.id,
                        uid: e.uid,
                        size: e.pop3_size as u64,
                    })
                    .collect(),
            ),
            Err(e) => {
                tracing::error!("listing the maildrop failed: {e}");
                LoginResult::TemporaryFailure
            }
        }
    }

    /// Sends `+OK` and the message in pieces read from the store, dot-stuffed. Returns false
    /// (and sends nothing) if the message is gone. A small message comes from the read-ahead,
    /// and its text joins the pending output (written when it grows large or input is
    /// awaited), so pipelined RETRs go out in few writes.
    pub async fn retrieve(
        &mut self,
        io: &mut Io,
        entry_id: i64,
        size: u64,
        top_lines: Option<u64>,
    ) -> anyhow::Result<bool> {
        let Connection { server, locked, .. } = self;
        let Some(l) = locked.as_mut() else {
            return Ok(false);
        };
        let mut stuffer = match top_lines {
            Some(n) => DotStuffer::top(n),
            None => DotStuffer::whole(),
        };
        if let Some(whole) = server.read_ahead(l, entry_id).await? {
            if io.out().len() >= FLUSH_BYTES {
                io.flush().await?;
            }
            let out = io.out();
            out.extend_from_slice(&pochta_pop3::session::retrieve_ok(size));
            stuffer.push(&whole, out);
            stuffer.finish(out);
            return Ok(true);
        }
        let account_id = l.account_id;
        let first = server
            .store
            .maildrop_entry_part(account_id, entry_id, 0, server.chunk)
            .await?;
        let Some(mut part) = first else {
            return Ok(false);
        };
        io.out()
            .extend_from_slice(&pochta_pop3::session::retrieve_ok(size));
        loop {
            stuffer.push(&part.octets, io.out());
            io.flush().await?;
            let next = match part.next {
                Some(next) if !stuffer.is_done() => next,
                _ => break,
            };
            part = server
                .store
                .maildrop_entry_part(account_id, entry_id, next, server.chunk)
                .await?
                .unwrap_or_default();
        }
        stuffer.finish(io.out());
        Ok(true)
    }

    /// QUIT in TRANSACTION: deletes the marked entries and unlocks, in one statement.
    pub async fn commit(&mut self, delete: &[i64]) -> Result<u64, ()> {
        let Some(l) = self.locked.as_ref() else {
            return Err(());
        };
        let store = &self.server.store;
        match store
            .delete_maildrop_entries_and_unlock(l.account_id, &l.owner, delete)
            .await
        {
            Ok(n) => {
                tracing::info!(deleted = n, "maildrop updated");
                self.locked = None;
                Ok(n)
            }
            Err(e) => {
                tracing::error!("QUIT could not delete: {e}");
                Err(())
            }
        }
    }
}

impl Server {
    /// `entry_id`'s whole text if it is small enough to read ahead: from what was read with an
    /// earlier message, or read now together with the small messages listed after it (up to
    /// `read_ahead_bytes`). None: read it in pieces (or it is gone). Whenever a batch is taken,
    /// the ones after it are read in the background, so a client does not wait for the store
    /// between batches.
    async fn read_ahead(&self, l: &mut Locked, entry_id: i64) -> anyhow::Result<Option<Vec<u8>>> {
        if let Some(whole) = l.ahead.remove(&entry_id) {
            return Ok(Some(whole));
        }
        let Some(at) = l.listing.iter().position(|(id, _)| *id == entry_id) else {
            return Ok(None);
        };
        let (batch, len) = match l.next.pop_front() {
            Some(mut next) if next.at == at => ((&mut next.task).await??, next.len),
            _ => {
                // A jump (or the first RETR): what was being read is for elsewhere.
                l.next.clear();
                let ids = self.batch_at(l, at);
                if ids.is_empty() {
                    return Ok(None);
                }
                let batch = self
                    .store
                    .maildrop_entries_whole(l.account_id, &ids)
                    .await?;
                (batch, ids.len())
            }
        };
        l.ahead.clear();
        l.ahead.extend(batch);
        // The listing is fixed at login and only this session deletes (at QUIT), so the
        // batches after this one can be read now, PREFETCH_DEPTH of them at once (on their
        // own connections), so reading overlaps both sending and each other.
        let mut from = l.next.back().map_or(at + len, |p| p.at + p.len);
        while l.next.len() < PREFETCH_DEPTH {
            let ids = self.batch_at(l, from);
            if ids.is_empty() {
                break;
            }
            let (store, account_id, len) = (self.store.clone(), l.account_id, ids.len());
            let read = async move { store.maildrop_entries_whole(account_id, &ids).await };
            l.next.push_back(Prefetch {
                at: from,
                len,
                task: spawn_beside(read.in_current_span()).await,
            });
            from += len;
        }
        Ok(l.ahead.remove(&entry_id))
    }

    /// The ids of the read-ahead batch that starts at listing position `at`: the small
    /// messages from there, up to `read_ahead_bytes` in all (none if the first is not small).
    fn batch_at(&self, l: &Locked, at: usize) -> Vec<i64> {
        let small = |size: u64| size < self.chunk as u64 && size <= self.read_ahead;
        let mut ids = Vec::new();
        let mut budget = self.read_ahead;
        for (id, size) in l.listing.get(at..).unwrap_or_default() {
            if !small(*size) || *size > budget || ids.len() >= 256 {
                break;
            }
            budget -= size;
            ids.push(*id);
        }
        ids
    }
}
