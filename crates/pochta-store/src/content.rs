//! Message content as stored: rows of at most `CHUNK` stored octets in `message_chunks`
//! (migrations 0004, 0012), each inline in its heap page. A row holds its octets as they are
//! (`RAW`) or as one zstd frame (`ZSTD`) of up to `MAX_SPAN` content octets; a message's
//! content is its rows decoded and joined in seq order. Splitting and compressing on the way
//! in, decoding and joining on the way out.

use std::cell::RefCell;
use std::ops::Range;

use pochta_mail::header_search::SearchFields;

use crate::{Result, StoreError};

/// Stored octets per chunk row at most, so that a row fits its heap page (STORAGE PLAIN).
/// Fixed by the schema's CHECK.
pub(crate) const CHUNK: usize = 8000;

/// Content octets a compressed row may hold at most: what one row can decode to, so what a
/// reader of a few rows holds at once.
pub(crate) const MAX_SPAN: usize = 64_000;

/// `message_chunks.codec`: the octets as they are.
const RAW: i16 = 0;
/// `message_chunks.codec`: one zstd frame (RFC 8878) that records its content size.
const ZSTD: i16 = 1;

/// Compression of message content on its way into the store (`[store] compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentCompression {
    /// Messages smaller than this are stored as they are: their rows are few, and reading
    /// them stays a copy.
    pub min_size: usize,
    /// zstd's level (1 is its fastest with entropy coding, which base64 needs to shrink).
    pub level: i32,
}

/// A compressed row is kept only if it saves at least an eighth of its octets; otherwise
/// reading it would cost a decompression for little.
fn worth_it(packed: usize, span: usize) -> bool {
    packed <= span - span / 8
}

/// After this many consecutive rows that did not shrink, the rest of a message is stored as
/// it is without trying (content that does not shrink costs a failed compression per row).
const GIVE_UP_AFTER: usize = 4;

/// One message's content as chunk rows: each row's codec and where its octets are (a range
/// of the content, or of the compressed octets kept here); and, for mail bound for a
/// mailbox, the header fields kept for SEARCH (migration 0014). Made apart from the content
/// it describes, so that the work can be done where the content is (`PreparedContent`).
#[derive(Debug, Default)]
pub(crate) struct Rows {
    codecs: Vec<i16>,
    pieces: Vec<Piece>,
    packed: Vec<u8>,
    pub search: Option<SearchFields>,
}

#[derive(Debug)]
enum Piece {
    /// Octets of the content as they are.
    Content(Range<usize>),
    /// Compressed octets in `Rows::packed`.
    Packed(Range<usize>),
}

thread_local! {
    /// A compression context per thread and level, kept between messages (making one
    /// allocates its tables).
    static PACKER: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static UNPACKER: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

impl Rows {
    /// The rows `content` is stored as, with its search fields if it is `for_mailbox`.
    pub fn of(content: &[u8], compression: Option<ContentCompression>, for_mailbox: bool) -> Self {
        let mut rows = Rows {
            codecs: Vec::with_capacity(content.len().div_ceil(CHUNK)),
            pieces: Vec::with_capacity(content.len().div_ceil(CHUNK)),
            packed: Vec::new(),
            search: if for_mailbox {
                SearchFields::of(content)
            } else {
                None
            },
        };
        match compression {
            Some(c) if content.len() >= c.min_size => rows.pack(content, c.level),
            _ => rows.raw(0..content.len()),
        }
        rows
    }

    /// The rows' octets, in seq order, borrowed from `content` (the one `of` was given) and
    /// from the compressed octets kept here.
    fn data<'a>(&'a self, content: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
        self.pieces.iter().map(move |piece| match piece {
            Piece::Content(range) => &content[range.clone()],
            Piece::Packed(range) => &self.packed[range.clone()],
        })
    }

    fn push(&mut self, codec: i16, piece: Piece) {
        self.codecs.push(codec);
        self.pieces.push(piece);
    }

    /// `range` of the content as rows of `CHUNK` octets as they are.
    fn raw(&mut self, range: Range<usize>) {
        let mut at = range.start;
        while at < range.end {
            let end = range.end.min(at + CHUNK);
            self.push(RAW, Piece::Content(at..end));
            at = end;
        }
    }

    /// `content` as rows each holding as much of it as compresses into `CHUNK` octets, so
    /// that compressed rows fill their pages as raw ones do; a stretch that does not shrink
    /// by an eighth is stored as it is.
    fn pack(&mut self, content: &[u8], level: i32) {
        PACKER.with_borrow_mut(|packer| {
            let compressor = match packer {
                Some((l, c)) if *l == level => c,
                _ => match zstd::bulk::Compressor::new(level) {
                    Ok(c) => &mut packer.insert((level, c)).1,
                    Err(_) => return self.raw(0..content.len()),
                },
            };
            let mut out = Vec::with_capacity(CHUNK);
            // The first guess fits base64 (about three quarters after entropy coding); each
            // row's ratio guesses the next.
            let mut span = CHUNK * 5 / 4;
            let (mut at, mut stored_raw) = (0, 0);
            while at < content.len() {
                if stored_raw == GIVE_UP_AFTER {
                    return self.raw(at..content.len());
                }
                let mut take = span.min(content.len() - at);
                let packed = loop {
                    out.clear();
                    match compressor.compress_to_buffer(&content[at..at + take], &mut out) {
                        Ok(n) if worth_it(n, take) => break Some(n),
                        Ok(_) => break None,
                        // Did not fit in a row: a smaller span, down to a raw row's.
                        Err(_) if take > CHUNK => take = (take * 3 / 4).max(CHUNK),
                        Err(_) => break None,
                    }
                };
                match packed {
                    Some(n) => {
                        let start = self.packed.len();
                        self.packed.extend_from_slice(&out);
                        self.push(ZSTD, Piece::Packed(start..start + n));
                        at += take;
                        // Aim a little under a full row, so the next guess rarely overflows.
                        span = (take * (CHUNK - CHUNK / 16) / n.max(1)).clamp(CHUNK, MAX_SPAN);
                        stored_raw = 0;
                    }
                    None => {
                        let end = content.len().min(at + CHUNK);
                        self.push(RAW, Piece::Content(at..end));
                        at = end;
                        span = CHUNK;
                        stored_raw += 1;
                    }
                }
            }
        })
    }
}

/// Message content made ready for the store: cut into chunk rows and compressed as the
/// store's settings say (`Store::prepare`). Preparing is the CPU work of storing; a caller
/// does it where it has CPU to spare (the session that received the message), so that the
/// commit path only sends rows.
#[derive(Debug)]
pub struct PreparedContent {
    text: Vec<u8>,
    rows: Rows,
}

impl PreparedContent {
    pub(crate) fn new(
        text: Vec<u8>,
        compression: Option<ContentCompression>,
        for_mailbox: bool,
    ) -> Self {
        let rows = Rows::of(&text, compression, for_mailbox);
        PreparedContent { text, rows }
    }

    /// The content itself.
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    pub(crate) fn rows(&self) -> &Rows {
        &self.rows
    }
}

/// The chunk rows of a batch of messages, as the arrays a statement unnests: for each row the
/// 1-based place of its message in the batch, its seq, its codec and its octets.
#[derive(Default)]
pub(crate) struct Chunks<'a> {
    pub owners: Vec<i64>,
    pub seqs: Vec<i32>,
    pub codecs: Vec<i16>,
    pub data: Vec<&'a [u8]>,
}

impl<'a> Chunks<'a> {
    /// The rows of each message (its content and the rows made of it), in batch order.
    pub fn of(messages: &[(&'a [u8], &'a Rows)]) -> Self {
        let count = messages.iter().map(|(_, r)| r.pieces.len()).sum();
        let mut chunks = Chunks {
            owners: Vec::with_capacity(count),
            seqs: Vec::with_capacity(count),
            codecs: Vec::with_capacity(count),
            data: Vec::with_capacity(count),
        };
        for (place, (content, rows)) in messages.iter().enumerate() {
            for (seq, data) in rows.data(content).enumerate() {
                chunks.owners.push(place as i64 + 1);
                chunks.seqs.push(seq as i32);
                chunks.codecs.push(rows.codecs[seq]);
                chunks.data.push(data);
            }
        }
        chunks
    }

    /// About the octets the row arrays take as statement parameters (binary array format:
    /// a length before each element), to size the buffer they are encoded into.
    pub fn encoded_len(&self) -> usize {
        let data: usize = self.data.iter().map(|d| d.len()).sum();
        data + self.data.len() * (4 + (4 + 8) + (4 + 4) + (4 + 2)) + 4 * 64
    }
}

/// The search fields of a batch of messages (`Rows::search`), as the arrays a statement
/// unnests: `kept` false (and every field NULL) where a message's fields were not kept.
#[derive(Default)]
pub(crate) struct SearchColumns<'a> {
    pub kept: Vec<bool>,
    pub subject: Vec<Option<&'a str>>,
    pub from: Vec<Option<&'a str>>,
    pub to: Vec<Option<&'a str>>,
    pub cc: Vec<Option<&'a str>>,
    pub bcc: Vec<Option<&'a str>>,
    pub sent_on: Vec<Option<chrono::NaiveDate>>,
}

impl<'a> SearchColumns<'a> {
    pub fn of(messages: impl Iterator<Item = Option<&'a SearchFields>>) -> Self {
        let mut columns = SearchColumns::default();
        for fields in messages {
            let text = |f: fn(&'a SearchFields) -> &'a Option<String>| {
                fields.and_then(|fields| f(fields).as_deref())
            };
            columns.kept.push(fields.is_some());
            columns.subject.push(text(|f| &f.subject));
            columns.from.push(text(|f| &f.from));
            columns.to.push(text(|f| &f.to));
            columns.cc.push(text(|f| &f.cc));
            columns.bcc.push(text(|f| &f.bcc));
            columns.sent_on.push(fields.and_then(|f| f.sent_on));
        }
        columns
    }
}

/// Appends a row's content (its octets decoded as its codec says) to `out`.
pub(crate) fn decode_into(
    out: &mut Vec<u8>,
    message_id: i64,
    codec: i16,
    data: &[u8],
) -> Result<()> {
    let damaged = |reason: String| StoreError::ChunkUndecodable { message_id, reason };
    match codec {
        RAW => {
            out.extend_from_slice(data);
            Ok(())
        }
        ZSTD => {
            let size = match zstd::zstd_safe::get_frame_content_size(data) {
                Ok(Some(n)) if n <= MAX_SPAN as u64 => n as usize,
                Ok(n) => return Err(damaged(format!("frame content size {n:?}"))),
                Err(e) => return Err(damaged(format!("{e:?}"))),
            };
            let at = out.len();
            out.resize(at + size, 0);
            let written = UNPACKER.with_borrow_mut(|unpacker| {
                let d = match unpacker {
                    Some(d) => d,
                    None => unpacker.insert(zstd::bulk::Decompressor::new()?),
                };
                d.decompress_to_buffer(data, &mut out[at..])
            });
            let failed = match written {
                Ok(n) if n == size => return Ok(()),
                Ok(n) => damaged(format!("{n} octets where the frame says {size}")),
                Err(e) => damaged(e.to_string()),
            };
            out.truncate(at);
            Err(failed)
        }
        other => Err(damaged(format!("unknown codec {other}"))),
    }
}

/// Puts chunk rows in order (by `key`: entry, then seq). Done here rather than by ORDER BY:
/// PostgreSQL would sort the rows with their data, copying every chunk (a large message in
/// work_mem or on disk); here only the row handles move, and rows mostly arrive in order.
pub(crate) fn in_chunk_order<R, K: Ord>(rows: &mut [R], key: impl FnMut(&R) -> K) {
    rows.sort_by_key(key);
}

/// `prefix` followed by some rows of a message (codec and octets, in seq order) decoded.
pub(crate) fn decode(
    message_id: i64,
    prefix: Vec<u8>,
    rows: impl IntoIterator<Item = (i16, Vec<u8>)>,
) -> Result<Vec<u8>> {
    let mut out = prefix;
    for (codec, data) in rows {
        decode_into(&mut out, message_id, codec, &data)?;
    }
    Ok(out)
}

/// Joins all of a message's rows (codec and octets, in seq order) after `prefix`, checking
/// the result is the `expected` length the store recorded: a missing or extra chunk is an
/// error, not a silently shortened message.
pub(crate) fn join(
    message_id: i64,
    prefix: Vec<u8>,
    rows: impl IntoIterator<Item = (i16, Vec<u8>)>,
    expected: usize,
) -> Result<Vec<u8>> {
    let mut out = prefix;
    out.reserve_exact(expected.saturating_sub(out.len()));
    let out = decode(message_id, out, rows)?;
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

    const ON: Option<ContentCompression> = Some(ContentCompression {
        min_size: 16 * 1024,
        level: 1,
    });

    /// Octets no compressor shrinks (xorshift).
    fn noise(n: usize, mut seed: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    /// An attachment as mail carries one: `noise` in base64, 76-character lines.
    fn base64_lines(n: usize, seed: u64) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::with_capacity(n);
        for (i, b) in noise(n, seed).into_iter().enumerate() {
            out.push(if i % 78 == 76 {
                b'\r'
            } else if i % 78 == 77 {
                b'\n'
            } else {
                ALPHABET[(b & 63) as usize]
            });
        }
        out
    }

    /// Text that shrinks a lot.
    fn prose(n: usize) -> Vec<u8> {
        let words = ["mail ", "store ", "chunk ", "queue ", "row\r\n", "page "];
        let mut out = Vec::with_capacity(n + 8);
        let mut i = 0usize;
        while out.len() < n {
            out.extend_from_slice(words[(i * 7 + i / 5) % words.len()].as_bytes());
            i += 1;
        }
        out.truncate(n);
        out
    }

    /// What a batch was stored as, row by row.
    struct Stored {
        owners: Vec<i64>,
        seqs: Vec<i32>,
        codecs: Vec<i16>,
        lens: Vec<usize>,
    }

    impl Stored {
        fn total(&self) -> usize {
            self.lens.iter().sum()
        }
    }

    /// Stores a batch as the store would; checks that every row fits its page and decodes
    /// to at most `MAX_SPAN`, that each message reads back as it was, and the seqs.
    fn assert_round_trip(contents: &[&[u8]], compression: Option<ContentCompression>) -> Stored {
        let rows: Vec<Rows> = contents
            .iter()
            .map(|c| Rows::of(c, compression, true))
            .collect();
        let messages: Vec<(&[u8], &Rows)> = contents.iter().copied().zip(&rows).collect();
        let c = Chunks::of(&messages);
        let mut read = vec![Vec::new(); contents.len()];
        for (i, data) in c.data.iter().enumerate() {
            assert!(
                !data.is_empty() && data.len() <= CHUNK,
                "row of {}",
                data.len()
            );
            let mut decoded = Vec::new();
            decode_into(&mut decoded, 1, c.codecs[i], data).unwrap();
            assert!(decoded.len() <= MAX_SPAN);
            read[c.owners[i] as usize - 1].push((c.codecs[i], data.to_vec()));
        }
        for (i, rows) in read.into_iter().enumerate() {
            let joined = join(1, Vec::new(), rows, contents[i].len()).unwrap();
            assert!(joined == contents[i], "message {i} changed");
        }
        for i in 0..c.seqs.len() {
            let first = i == 0 || c.owners[i - 1] != c.owners[i];
            let want = if first { 0 } else { c.seqs[i - 1] + 1 };
            assert_eq!(c.seqs[i], want, "row {i}");
        }
        Stored {
            lens: c.data.iter().map(|d| d.len()).collect(),
            owners: c.owners,
            seqs: c.seqs,
            codecs: c.codecs,
        }
    }

    #[test]
    fn without_compression_rows_are_full_but_the_last_and_keep_their_message() {
        let (a, b, empty) = (prose(2 * CHUNK + 1), prose(CHUNK), Vec::new());
        let contents: [&[u8]; 3] = [&a, &empty, &b];
        for compression in [
            None,
            Some(ContentCompression {
                min_size: 1 << 30,
                level: 1,
            }),
        ] {
            let c = assert_round_trip(&contents, compression);
            assert_eq!(c.owners, [1, 1, 1, 3]);
            assert_eq!(c.seqs, [0, 1, 2, 0]);
            assert_eq!(c.codecs, [RAW; 4]);
            assert_eq!(c.lens, [CHUNK, CHUNK, 1, CHUNK]);
        }
    }

    #[test]
    fn messages_below_the_threshold_stay_as_they_are() {
        let small = prose(16 * 1024 - 1);
        let big = prose(16 * 1024);
        let contents: [&[u8]; 2] = [&small, &big];
        let c = assert_round_trip(&contents, ON);
        let codecs = |owner| -> Vec<i16> {
            let rows = c.owners.iter().zip(&c.codecs);
            rows.filter(|(o, _)| **o == owner)
                .map(|(_, k)| *k)
                .collect()
        };
        assert!(codecs(1).iter().all(|&k| k == RAW));
        assert!(codecs(2).iter().all(|&k| k == ZSTD));
    }

    #[test]
    fn base64_attachments_fill_rows_with_a_quarter_less() {
        let attachment = base64_lines(1 << 20, 7);
        let c = assert_round_trip(&[&attachment], ON);
        let total = c.total();
        assert!(total * 100 < attachment.len() * 80, "{total} stored");
        // Rows come near a page's worth each, so the heap shrinks as the WAL does.
        let rows = c.lens.len();
        assert!(rows * CHUNK * 100 < attachment.len() * 82, "{rows} rows");
        assert!(c.codecs.iter().all(|&k| k == ZSTD));
    }

    #[test]
    fn text_rows_hold_up_to_the_span_bound() {
        let text = prose(1 << 20);
        let c = assert_round_trip(&[&text], ON);
        assert!(c.total() * 10 < text.len());
        assert!(c.lens.len() >= text.len().div_ceil(MAX_SPAN));
    }

    #[test]
    fn content_that_does_not_shrink_is_stored_as_it_is() {
        let binary = noise(200_000, 3);
        let c = assert_round_trip(&[&binary], ON);
        assert_eq!(c.codecs, vec![RAW; binary.len().div_ceil(CHUNK)]);
        assert_eq!(c.total(), binary.len());
    }

    #[test]
    fn mixed_content_and_every_size_round_trips() {
        let mixed = [
            prose(30_000),
            noise(70_000, 9),
            base64_lines(90_000, 5),
            prose(10),
        ]
        .concat();
        let c = assert_round_trip(&[&mixed], ON);
        assert!(c.codecs.contains(&RAW) && c.codecs.contains(&ZSTD));
        let low = Some(ContentCompression {
            min_size: 0,
            level: 3,
        });
        for n in [
            0,
            1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            3 * CHUNK + 17,
            MAX_SPAN + 1,
        ] {
            let text = prose(n);
            let attachment = base64_lines(n, n as u64 + 1);
            assert_round_trip(&[&text, &attachment, &mixed[..n]], low);
        }
    }

    /// A content made of stretches that shrink differently (noise, base64, prose, one octet
    /// repeated), each of its own length.
    fn stretches() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let stretch =
            (0u8..4, 0usize..40_000, any::<u64>()).prop_map(|(kind, n, seed)| match kind {
                0 => noise(n, seed | 1),
                1 => base64_lines(n, seed | 1),
                2 => prose(n),
                _ => vec![seed as u8; n],
            });
        proptest::collection::vec(stretch, 0..8).prop_map(|s| s.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever the content and level: every row fits its page and decodes to at most
        /// `MAX_SPAN`, and the rows give the content back.
        #[test]
        fn any_content_round_trips(content in stretches(), level in 1i32..4) {
            let compression = Some(ContentCompression { min_size: 0, level });
            assert_round_trip(&[&content], compression);
        }
    }

    #[test]
    fn rows_that_cannot_be_decoded_are_errors() {
        let text = prose(40_000);
        let rows = Rows::of(&text, ON, false);
        let frame = rows.data(&text).next().unwrap().to_vec();
        let mut out = Vec::new();
        let undecodable = |r: Result<()>| matches!(r, Err(StoreError::ChunkUndecodable { .. }));
        assert!(undecodable(decode_into(&mut out, 1, 7, &frame)));
        assert!(undecodable(decode_into(
            &mut out,
            1,
            ZSTD,
            &frame[..frame.len() - 3]
        )));
        assert!(undecodable(decode_into(&mut out, 1, ZSTD, b"not a frame")));
        // A frame claiming more than a row may hold is refused before anything is allocated.
        let big = zstd::bulk::compress(&prose(MAX_SPAN + 1), 1).unwrap();
        assert!(undecodable(decode_into(&mut out, 1, ZSTD, &big)));
        decode_into(&mut out, 1, ZSTD, &frame).unwrap();
    }

    #[test]
    fn join_checks_the_recorded_length() {
        let rows = vec![(RAW, prose(CHUNK)), (RAW, prose(3))];
        let joined = join(1, b"P".to_vec(), rows.clone(), 1 + CHUNK + 3).unwrap();
        assert_eq!(joined, [b"P".to_vec(), prose(CHUNK), prose(3)].concat());
        assert!(matches!(
            join(1, Vec::new(), rows[..1].to_vec(), CHUNK + 3),
            Err(StoreError::ContentDamaged { found, .. }) if found == CHUNK
        ));
        assert_eq!(join(2, b"P".to_vec(), Vec::new(), 1).unwrap(), b"P");
    }
}
