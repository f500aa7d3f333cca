//! The selected mailbox as one session sees it (RFC 9051 2.3.1): messages in UID order, their
//! sequence numbers being their places, and how changes made elsewhere are told to the client.

use std::num::NonZeroU32;

use chrono::{DateTime, Utc};
use imap_next::imap_types::fetch::MessageDataItem;
use imap_next::imap_types::response::Data;
use imap_next::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

use crate::fetch::flag_items;
use crate::session::Counts;
use crate::uids::Uids;

/// One message, without its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// What the world reads its content by.
    pub entry_id: i64,
    pub uid: u32,
    /// System flags (`\Seen`, ...) and keywords.
    pub flags: Vec<String>,
    pub modseq: u64,
    /// RFC822.SIZE.
    pub size: u32,
    pub internal_date: DateTime<Utc>,
}

impl Message {
    pub fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
    }
}

/// A mailbox of the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxSummary {
    pub id: i64,
    pub name: String,
    pub special_use: Option<String>,
    pub subscribed: bool,
    pub uid_validity: u32,
    pub uid_next: u32,
    pub highest_modseq: u64,
    /// Its messages, their size and the unseen as the mailbox's row keeps them (what STATUS
    /// tells but for the \Deleted counts).
    pub counts: Counts,
}

/// What the world found changed in the selected mailbox since the view last looked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// The mailbox now (None: it was deleted).
    pub mailbox: Option<MailboxSummary>,
    /// Messages with a mod-sequence above the view's: new ones, or ones with new flags.
    pub changed: Vec<Message>,
    /// The UIDs present now, up to the highest the view knows; any other it knows is gone.
    pub present: Vec<u32>,
}

/// The selected mailbox: its UIDs only, as runs of consecutive UIDs. Flags, sizes and dates
/// are asked of the world when a command needs them, so an idle session on a large mailbox
/// holds little.
#[derive(Debug, Clone)]
pub struct View {
    pub mailbox: MailboxSummary,
    pub read_only: bool,
    /// Ascending; a message's sequence number is its place here plus one.
    pub uids: Uids,
    /// The last saved SEARCH result (`$`, RFC 5182), by UID; emptied with each SELECT.
    /// Expunged messages stay here and are skipped where `$` is used.
    pub saved: Uids,
}

/// A sequence set that names messages that do not exist (RFC 9051 6.4.4: a BAD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfRange;

impl View {
    pub fn highest_uid(&self) -> u32 {
        self.uids.last().unwrap_or(0)
    }

    pub fn index_of_uid(&self, uid: u32) -> Option<usize> {
        self.uids.position(uid)
    }

    /// The places of the messages a sequence set names, ascending, each once. UID sets name
    /// what exists within them (`*` is the highest UID); message sequence numbers must exist.
    /// Ranges are never walked number by number, so `1:4294967295` costs what the mailbox
    /// holds.
    pub fn resolve(&self, set: &SequenceSet, uid: bool) -> Result<Vec<usize>, OutOfRange> {
        let count = self.uids.len();
        let mut places = Vec::new();
        for sequence in set.0.as_ref() {
            let (a, b) = match sequence {
                Sequence::Single(v) => (v, v),
                Sequence::Range(a, b) => (a, b),
            };
            if uid {
                let value = |v: &SeqOrUid| match v {
                    SeqOrUid::Value(n) => n.get(),
                    SeqOrUid::Asterisk => self.highest_uid(),
                };
                let (lo, hi) = (value(a).min(value(b)), value(a).max(value(b)));
                let from = self.uids.count_below(lo);
                let to = self.uids.count_up_to(hi);
                places.extend(from..to);
                // RFC 9051 6.4.9: "n:*" names the highest message even when n is above it.
                if let (SeqOrUid::Value(_), SeqOrUid::Asterisk) | (SeqOrUid::Asterisk, _) = (a, b)
                    && from == to
                    && count > 0
                {
                    places.push(count - 1);
                }
            } else {
                let value = |v: &SeqOrUid| match v {
                    SeqOrUid::Value(n) => n.get() as usize,
                    SeqOrUid::Asterisk => count,
                };
                let (lo, hi) = (value(a).min(value(b)), value(a).max(value(b)));
                if lo == 0 || hi > count {
                    return Err(OutOfRange);
                }
                places.extend(lo - 1..hi);
            }
        }
        places.sort_unstable();
        places.dedup();
        Ok(places)
    }

    /// The UIDs a UID set names that are not in the mailbox, as ascending ranges, up to the
    /// highest UID it has had (UIDNEXT - 1); `*` is the highest UID here. Costs what the
    /// mailbox holds within the set, never the width of its ranges.
    pub fn missing(&self, set: &SequenceSet) -> Vec<(u32, u32)> {
        let top = self
            .mailbox
            .uid_next
            .saturating_sub(1)
            .max(self.highest_uid());
        let mut wanted: Vec<(u32, u32)> = set
            .0
            .as_ref()
            .iter()
            .map(|sequence| {
                let value = |v: &SeqOrUid| match v {
                    SeqOrUid::Value(n) => n.get(),
                    SeqOrUid::Asterisk => self.highest_uid().max(1),
                };
                let (a, b) = match sequence {
                    Sequence::Single(v) => (value(v), value(v)),
                    Sequence::Range(a, b) => (value(a), value(b)),
                };
                (a.min(b), a.max(b).min(top))
            })
            .filter(|(lo, hi)| lo <= hi)
            .collect();
        wanted.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::new();
        for (lo, hi) in wanted {
            match merged.last_mut() {
                Some((_, end)) if lo <= end.saturating_add(1) => *end = (*end).max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        merged
            .into_iter()
            .flat_map(|(lo, hi)| self.uids.gaps(lo, hi))
            .collect()
    }

    /// The UIDs at these places.
    pub fn uids_at(&self, places: &[usize]) -> Vec<u32> {
        places.iter().map(|&p| self.uids.get(p)).collect()
    }

    /// The session's own change (a STORE, or \Seen set by a FETCH) took `modseq`. If that is the
    /// next mod-sequence after the last the view knows, nothing else changed in between (the
    /// store hands them out one at a time, under the mailbox row's lock) and the session
    /// tells its client about this change itself: the view knows it too, and the next look
    /// for changes does not report the change back to the session that made it.
    pub fn took_own_change(&mut self, modseq: u64) {
        if self.mailbox.highest_modseq.checked_add(1) == Some(modseq) {
            self.mailbox.highest_modseq = modseq;
        }
    }

    /// Takes in changes and says what the client must be told (RFC 9051 7.4.1, 7.3.1, 7.5.2):
    /// EXPUNGE for each message gone (highest number first, so each number is right when
    /// sent; with `vanished`, one VANISHED naming their UIDs, RFC 7162 3.2.10), FETCH FLAGS
    /// for each message whose flags (or mod-sequence) changed, EXISTS when messages arrived.
    pub fn apply(
        &mut self,
        changes: Changes,
        with_modseq: bool,
        vanished: bool,
    ) -> Vec<Data<'static>> {
        let mut out = Vec::new();
        let known_max = self.highest_uid();
        let present = changes.present;
        let mut gone = Vec::new();
        let mut place = self.uids.len();
        while place > 0 {
            place -= 1;
            let uid = self.uids.get(place);
            if uid <= known_max && present.binary_search(&uid).is_err() {
                self.uids.remove(place);
                gone.push(uid);
                if !vanished {
                    out.push(Data::Expunge(nonzero(place as u32 + 1)));
                }
            }
        }
        if vanished && let Some(known_uids) = crate::session::uid_set(&gone) {
            out.push(Data::Vanished {
                earlier: false,
                known_uids,
            });
        }
        let before = self.uids.len();
        let mut arrived = Vec::new();
        for message in changes.changed {
            match self.index_of_uid(message.uid) {
                Some(i) => out.push(fetch_data(i, flag_items(&message, with_modseq))),
                None if message.uid > known_max => arrived.push(message.uid),
                // Gone again before this look, or expunged above: nothing to tell.
                None => {}
            }
        }
        arrived.sort_unstable();
        arrived.dedup();
        for uid in arrived {
            self.uids.push(uid);
        }
        if self.uids.len() != before {
            out.push(Data::Exists(self.uids.len() as u32));
        }
        if let Some(mailbox) = changes.mailbox {
            self.mailbox = mailbox;
        }
        out
    }
}

pub(crate) fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// An untagged FETCH for the message at `place`.
pub(crate) fn fetch_data(place: usize, items: Vec<MessageDataItem<'static>>) -> Data<'static> {
    Data::Fetch {
        seq: nonzero(place as u32 + 1),
        items: items.try_into().unwrap_or_else(|_| {
            vec![MessageDataItem::Flags(Vec::new())]
                .try_into()
                .expect("one item")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(uid: u32, flags: &[&str]) -> Message {
        Message {
            entry_id: uid as i64 * 10,
            uid,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            modseq: 1,
            size: 100,
            internal_date: DateTime::UNIX_EPOCH,
        }
    }

    fn view(uids: &[u32]) -> View {
        View {
            mailbox: MailboxSummary {
                id: 1,
                name: "INBOX".into(),
                special_use: None,
                subscribed: true,
                uid_validity: 7,
                uid_next: uids.last().map_or(1, |u| u.saturating_add(1)),
                highest_modseq: 1,
                counts: Counts::default(),
            },
            read_only: false,
            uids: Uids::new(uids.to_vec()),
            saved: Uids::default(),
        }
    }

    fn set(s: &str) -> SequenceSet {
        SequenceSet::try_from(s).unwrap()
    }

    #[test]
    fn sequence_sets_resolve_to_places_without_walking_ranges() {
        let v = view(&[3, 5, 9, 20]);
        assert_eq!(v.resolve(&set("2:3"), false), Ok(vec![1, 2]));
        assert_eq!(v.resolve(&set("*"), false), Ok(vec![3]));
        assert_eq!(v.resolve(&set("4,1,1"), false), Ok(vec![0, 3]));
        assert_eq!(v.resolve(&set("5"), false), Err(OutOfRange));
        assert_eq!(v.resolve(&set("5:9"), true), Ok(vec![1, 2]));
        assert_eq!(v.resolve(&set("1:4294967295"), true), Ok(vec![0, 1, 2, 3]));
        assert_eq!(v.resolve(&set("6:8"), true), Ok(vec![]));
        // "n:*" with n above every UID still names the last message (RFC 9051 6.4.9).
        assert_eq!(v.resolve(&set("100:*"), true), Ok(vec![3]));
        assert_eq!(view(&[]).resolve(&set("1:*"), true), Ok(vec![]));
        assert_eq!(view(&[]).resolve(&set("1:*"), false), Err(OutOfRange));
    }

    #[test]
    fn missing_uids_are_the_gaps_of_the_set_below_uidnext() {
        let mut v = view(&[3, 5, 9, 20]);
        v.mailbox.uid_next = 25;
        assert_eq!(
            v.missing(&set("1:*")),
            vec![(1, 2), (4, 4), (6, 8), (10, 19)]
        );
        // Never above UIDNEXT - 1, overlapping ranges merged, whatever their width.
        assert_eq!(
            v.missing(&set("4:6,5:4294967295")),
            vec![(4, 4), (6, 8), (10, 19), (21, 24)]
        );
        assert_eq!(v.missing(&set("3,5")), vec![]);
        let mut top = view(&[4294967295]);
        top.mailbox.uid_next = 4294967295;
        assert_eq!(
            top.missing(&set("4294967290:*")),
            vec![(4294967290, 4294967294)]
        );
        assert_eq!(view(&[]).missing(&set("1:*")), vec![]);
    }

    #[test]
    fn with_qresync_expunges_are_one_vanished_of_uids() {
        let mut v = view(&[1, 2, 3, 4]);
        let changes = Changes {
            mailbox: None,
            changed: vec![],
            present: vec![1, 3],
        };
        let out = v.apply(changes, true, true);
        assert_eq!(v.uids.iter().collect::<Vec<_>>(), [1, 3]);
        assert_eq!(
            out,
            vec![Data::Vanished {
                earlier: false,
                known_uids: set("2,4")
            }]
        );
    }

    #[test]
    fn changes_become_expunge_fetch_and_exists_in_that_order() {
        let mut v = view(&[1, 2, 3, 4]);
        let mut flagged = message(3, &["\\Flagged"]);
        flagged.modseq = 5;
        let changes = Changes {
            mailbox: None,
            changed: vec![flagged, message(6, &[]), message(7, &[])],
            present: vec![1, 3],
        };
        let out = v.apply(changes, false, false);
        assert_eq!(v.uids.iter().collect::<Vec<_>>(), [1, 3, 6, 7]);
        assert_eq!(out.len(), 4);
        assert_eq!(out[0], Data::Expunge(nonzero(4)));
        assert_eq!(out[1], Data::Expunge(nonzero(2)));
        assert!(matches!(&out[2], Data::Fetch { seq, .. } if seq.get() == 2));
        assert_eq!(out[3], Data::Exists(4));
        // The same changes again tell nothing.
        let again = Changes {
            mailbox: None,
            changed: vec![],
            present: vec![1, 3, 6, 7],
        };
        assert!(v.apply(again, false, false).is_empty());
    }
}
