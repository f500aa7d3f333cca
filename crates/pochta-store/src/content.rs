//! Message content as stored: rows of at most `CHUNK` octets in `message_chunks` (migration
//! 0004), each inline in its heap page. Splitting on the way in and joining on the way out.

use crate::{Result, StoreError};

/// Octets per chunk row. Every chunk but a message's last is full, so the chunk holding an
/// offset is `offset / CHUNK`. Fixed by the schema's CHECK and by the rows already stored:
/// changing it needs a migration.
pub(crate) const CHUNK: usize = 8000;

/// The chunk rows of a batch of messages, as the arrays a statement unnests: for each row the
/// 1-based place of its message in the batch, its seq, its octets.
#[derive(Default)]
pub(crate) struct Chunks<'a> {
    pub owners: Vec<i64>,
    pub seqs: Vec<i32>,
    pub data: Vec<&'a [u8]>,
}

impl<'a> Chunks<'a> {
    pub fn of(contents: &[&'a [u8]]) -> Self {
        let rows = contents.iter().map(|c| c.len().div_ceil(CHUNK)).sum();
        let mut chunks = Chunks {
            owners: Vec::with_capacity(rows),
            seqs: Vec::with_capacity(rows),
            data: Vec::with_capacity(rows),
        };
        for (place, content) in contents.iter().enumerate() {
            for (seq, data) in content.chunks(CHUNK).enumerate() {
                chunks.owners.push(place as i64 + 1);
                chunks.seqs.push(seq as i32);
                chunks.data.push(data);
            }
        }
        chunks
    }

    /// About the octets the three arrays take as statement parameters (binary array format:
    /// a length before each element), to size the buffer they are encoded into.
    pub fn encoded_len(&self) -> usize {
        let data: usize = self.data.iter().map(|d| d.len()).sum();
        data + self.data.len() * (4 + (4 + 8) + (4 + 4)) + 3 * 64
    }
}

/// Octets `[from, from + len)` of `prefix` followed by a content of which `chunks` (seq and
/// octets, in seq order) are some; chunks outside the range are skipped.
pub(crate) fn slice(
    prefix: &[u8],
    chunks: impl IntoIterator<Item = (i32, Vec<u8>)>,
    from: usize,
    len: usize,
) -> Vec<u8> {
    let to = from.saturating_add(len);
    let mut out = Vec::with_capacity(len.min(prefix.len() + 4 * CHUNK));
    if from < prefix.len() {
        out.extend_from_slice(&prefix[from..to.min(prefix.len())]);
    }
    for (seq, data) in chunks {
        let start = prefix.len() + seq as usize * CHUNK;
        let (a, b) = (from.max(start), to.min(start + data.len()));
        if a < b {
            out.extend_from_slice(&data[a - start..b - start]);
        }
    }
    out
}

/// Puts chunk rows in order (by `key`: entry, then seq). Done here rather than by ORDER BY:
/// PostgreSQL would sort the rows with their data, copying every chunk (a large message in
/// work_mem or on disk); here only the row handles move, and rows mostly arrive in order.
pub(crate) fn in_chunk_order<R, K: Ord>(rows: &mut [R], key: impl FnMut(&R) -> K) {
    rows.sort_by_key(key);
}

/// Joins a message's chunks (in seq order) after `prefix`, checking the result is the
/// `expected` length the store recorded: a missing or extra chunk is an error, not a
/// silently shortened message.
pub(crate) fn join(
    message_id: i64,
    prefix: Vec<u8>,
    chunks: impl IntoIterator<Item = Vec<u8>>,
    expected: usize,
) -> Result<Vec<u8>> {
    let mut out = prefix;
    out.reserve_exact(expected.saturating_sub(out.len()));
    for data in chunks {
        out.extend_from_slice(&data);
    }
    if out.len() == expected {
        Ok(out)
    } else {
        Err(StoreError::ContentDamaged {
            message_id,
            expected,
            found: out.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn chunks_are_full_but_the_last_and_keep_their_message() {
        let (a, b, empty) = (text(2 * CHUNK + 1), text(CHUNK), Vec::new());
        let c = Chunks::of(&[&a, &empty, &b]);
        assert_eq!(c.owners, [1, 1, 1, 3]);
        assert_eq!(c.seqs, [0, 1, 2, 0]);
        assert_eq!(
            c.data.iter().map(|d| d.len()).collect::<Vec<_>>(),
            [CHUNK, CHUNK, 1, CHUNK]
        );
        assert_eq!(c.data[..3].concat(), a);
    }

    #[test]
    fn any_slice_of_prefix_and_chunks_is_the_slice_of_the_whole() {
        let prefix = b"Return-Path: <a@b>\r\n".to_vec();
        let content = text(3 * CHUNK - 5);
        let whole = [&prefix[..], &content].concat();
        let rows = || {
            content
                .chunks(CHUNK)
                .enumerate()
                .map(|(s, d)| (s as i32, d.to_vec()))
        };
        // Around the prefix's end and each chunk boundary.
        let p = prefix.len();
        let mut edges = vec![0, 1, p - 1, p, p + 1];
        for k in 1..3 {
            edges.extend([p + k * CHUNK - 1, p + k * CHUNK, p + k * CHUNK + 1]);
        }
        edges.extend([whole.len() - 1, whole.len(), whole.len() + 9]);
        for from in edges {
            for len in [0, 1, 7, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK] {
                let want = &whole[from.min(whole.len())..(from + len).min(whole.len())];
                assert_eq!(slice(&prefix, rows(), from, len), want, "{from}+{len}");
                // Only the chunks the range touches, as the query picks them: the same.
                let touched = rows().filter(|(s, d)| {
                    let start = prefix.len() + *s as usize * CHUNK;
                    start < from + len && start + d.len() > from
                });
                assert_eq!(slice(&prefix, touched, from, len), want, "{from}+{len}");
            }
        }
    }

    #[test]
    fn join_checks_the_recorded_length() {
        let chunks = vec![text(CHUNK), text(3)];
        let joined = join(1, b"P".to_vec(), chunks.clone(), 1 + CHUNK + 3).unwrap();
        assert_eq!(joined, [b"P".to_vec(), text(CHUNK), text(3)].concat());
        assert!(matches!(
            join(1, Vec::new(), chunks[..1].to_vec(), CHUNK + 3),
            Err(StoreError::ContentDamaged { found, .. }) if found == CHUNK
        ));
        assert_eq!(join(2, b"P".to_vec(), Vec::new(), 1).unwrap(), b"P");
    }
}
