//! Message content as stored: rows of at most `CHUNK` stored octets in `message_chunks`
//! (migrations 0004, 0012, 0020), each inline in its heap page. A row holds its octets as
//! they are (`RAW`), as one zstd frame (`ZSTD`), or as whole base64 lines by the octets they
//! encode (`BASE64_LINES`), of up to `MAX_SPAN` content octets; a message's content is its
//! rows decoded and joined in seq order. Splitting and compressing on the way in, decoding
//! and joining on the way out.

use std::cell::RefCell;
use std::ops::Range;

use base64_simd::{Out, STANDARD_NO_PAD as BASE64};
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
/// `message_chunks.codec`: whole lines of base64 (RFC 2045 6.8), each of the same number of
/// characters and none padded, as the octets they encode. The first octet is the line's
/// length in quadruples of characters; the rest, every line's three octets per quadruple.
/// Read back, each line is encoded again and ends in CRLF. An attachment's lines are stored
/// in three quarters of their octets (zstd: about 0.76) and read twice as fast as zstd's
/// entropy coding is undone (BENCHMARKS.md, twenty-sixth session).
const BASE64_LINES: i16 = 2;

/// Fewest consecutive base64 lines stored as such.
const MIN_BASE64_LINES: usize = 16;

/// Longest base64 line stored as such, in quadruples (RFC 2045 asks for at most 76
/// characters, 19 quadruples; longer lines are met, and the length octet holds up to 63).
const MAX_BASE64_QUADS: usize = 63;

/// Compression of message content on its way into the store (`[store] compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentCompression {
    /// Messages smaller than this are stored as they are: their rows are few, and reading
    /// them stays a copy.
    pub min_size: usize,
    /// zstd's level (1 is its fastest with entropy coding, which base64 needs to shrink).
    pub level: i32,
    /// Runs of base64 lines are stored as the octets they encode (`BASE64_LINES`).
    pub base64_lines: bool,
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
            Some(c) if content.len() >= c.min_size => {
                // Room for it all at once: packed rows are smaller than what they pack (a
                // packed row saves an eighth, base64 rows a quarter), so it never moves.
                rows.packed.reserve(content.len());
                let runs = if c.base64_lines {
                    base64_runs(content)
                } else {
                    Vec::new()
                };
                let mut at = 0;
                for (run, quads) in runs {
                    if zstd_does_better(content, &run, quads, c.level) {
                        continue;
                    }
                    rows.pack(content, at..run.start, c.level);
                    rows.base64(content, run.clone(), quads);
                    at = run.end;
                }
                rows.pack(content, at..content.len(), c.level);
            }
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

    /// `range` of the content, a run of base64 lines of `quads` quadruples each, as rows of
    /// as many whole lines' octets as fit.
    fn base64(&mut self, content: &[u8], range: Range<usize>, quads: usize) {
        let (chars, octets) = (quads * 4, quads * 3);
        let lines_per_row = (CHUNK - 1) / octets;
        let mut at = range.start;
        while at < range.end {
            let lines = ((range.end - at) / (chars + 2)).min(lines_per_row);
            let start = self.packed.len();
            self.packed.push(quads as u8);
            self.packed.resize(start + 1 + lines * octets, 0);
            let mut into = start + 1;
            for line in content[at..at + lines * (chars + 2)].chunks_exact(chars + 2) {
                // base64_runs checked every character: whole quadruples always decode.
                let n = BASE64
                    .decode(
                        &line[..chars],
                        Out::from_slice(&mut self.packed[into..into + octets]),
                    )
                    .map_or(0, |decoded| decoded.len());
                debug_assert_eq!(n, octets);
                into += octets;
            }
            self.push(BASE64_LINES, Piece::Packed(start..self.packed.len()));
            at += lines * (chars + 2);
        }
    }

    /// `range` of the content as rows each holding as much of it as compresses into `CHUNK`
    /// octets, so that compressed rows fill their pages as raw ones do; a stretch that does
    /// not shrink by an eighth is stored as it is.
    fn pack(&mut self, content: &[u8], range: Range<usize>, level: i32) {
        let whole = range.clone();
        let packed = with_packer(level, |compressor| {
            let mut out = Vec::with_capacity(CHUNK);
            // The first guess fits base64 (about three quarters after entropy coding); each
            // row's ratio guesses the next.
            let mut span = CHUNK * 5 / 4;
            let (mut at, mut stored_raw) = (range.start, 0);
            while at < range.end {
                if stored_raw == GIVE_UP_AFTER {
                    return self.raw(at..range.end);
                }
                let mut take = span.min(range.end - at);
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
                        let end = range.end.min(at + CHUNK);
                        self.push(RAW, Piece::Content(at..end));
                        at = end;
                        span = CHUNK;
                        stored_raw += 1;
                    }
                }
            }
        });
        if packed.is_none() {
            self.raw(whole);
        }
    }
}

/// The runs of base64 lines in `content`: each at least `MIN_BASE64_LINES` consecutive
/// lines of the same number of quadruples (at most `MAX_BASE64_QUADS`), every line that many
/// characters of the base64 alphabet, without padding, then CRLF; with the quadruples per
/// line. Any such line decodes to octets that encode back to it exactly.
fn base64_runs(content: &[u8]) -> Vec<(Range<usize>, usize)> {
    let mut runs = Vec::new();
    let mut close = |start: usize, end: usize, quads: usize| {
        if quads > 0 && (end - start) / (quads * 4 + 2) >= MIN_BASE64_LINES {
            runs.push((start..end, quads));
        }
    };
    // The run so far: where it starts and ends, its lines' quadruples (0: none).
    let (mut start, mut end, mut quads) = (0, 0, 0);
    let mut at = 0;
    while let Some(lf) = memchr::memchr(b'\n', &content[at..]) {
        let line = &content[at..at + lf + 1];
        let chars = line.len().saturating_sub(2);
        let q = chars / 4;
        let base64 = chars.is_multiple_of(4)
            && (1..=MAX_BASE64_QUADS).contains(&q)
            && line[chars] == b'\r'
            && BASE64.check(&line[..chars]).is_ok();
        if !(base64 && q == quads && end == at) {
            close(start, end, quads);
            (start, quads) = if base64 { (at, q) } else { (0, 0) };
        }
        at += line.len();
        end = at;
    }
    close(start, end, quads);
    runs
}

/// Would zstd store a run of base64 lines in at least a tenth fewer octets than base64 rows
/// do? So it is for what only looks like base64 to `base64_runs` (hex, a letter repeated)
/// and for base64 of octets that compress: decided on the run's first row of lines.
fn zstd_does_better(content: &[u8], run: &Range<usize>, quads: usize, level: i32) -> bool {
    let line = quads * 4 + 2;
    let lines = ((CHUNK - 1) / (quads * 3)).min(run.len() / line);
    let sample = &content[run.start..run.start + lines * line];
    let as_base64 = 1 + lines * quads * 3;
    with_packer(level, |compressor| {
        compressor
            .compress(sample)
            .is_ok_and(|packed| packed.len() * 10 < as_base64 * 9)
    })
    .unwrap_or(false)
}

/// `f` with this thread's compressor for `level`; None if zstd cannot make one.
fn with_packer<R>(
    level: i32,
    f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> R,
) -> Option<R> {
    PACKER.with_borrow_mut(|packer| {
        let compressor = match packer {
            Some((l, c)) if *l == level => c,
            _ => {
                &mut packer
                    .insert((level, zstd::bulk::Compressor::new(level).ok()?))
                    .1
            }
        };
        Some(f(compressor))
    })
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
        BASE64_LINES => {
            let (quads, octets) = match data.split_first() {
                Some((&q, octets)) if (1..=MAX_BASE64_QUADS).contains(&usize::from(q)) => {
                    (usize::from(q), octets)
                }
                Some((&q, _)) => return Err(damaged(format!("lines of {q} quadruples"))),
                None => return Err(damaged("no line length".into())),
            };
            let (chars, per_line) = (quads * 4, quads * 3);
            if octets.is_empty() || !octets.len().is_multiple_of(per_line) {
                return Err(damaged(format!(
                    "{} octets in lines of {per_line}",
                    octets.len()
                )));
            }
            out.reserve(octets.len() / per_line * (chars + 2));
            // Each line made here and copied on: `out` is not zeroed first (a large piece's
            // zeroing cost as much as the encoding).
            let mut line_out = [0; MAX_BASE64_QUADS * 4 + 2];
            for line in octets.chunks_exact(per_line) {
                // Whole quadruples: never short of room, never padded.
                let _ = BASE64.encode(line, Out::from_slice(&mut line_out[..chars]));
                line_out[chars..chars + 2].copy_from_slice(b"\r\n");
                out.extend_from_slice(&line_out[..chars + 2]);
            }
            Ok(())
        }
        other => Err(damaged(format!("unknown codec {other}"))),
    }
}

/// What a row decodes to, in octets, as far as its header tells (0 if it does not).
fn decoded_len(codec: i16, data: &[u8]) -> usize {
    match codec {
        RAW => data.len(),
        ZSTD => match zstd::zstd_safe::get_frame_content_size(data) {
            Ok(Some(n)) => (n as usize).min(MAX_SPAN),
            _ => 0,
        },
        BASE64_LINES => match data.split_first() {
            Some((&q, octets)) if q > 0 => {
                octets.len() / (usize::from(q) * 3) * (usize::from(q) * 4 + 2)
            }
            _ => 0,
        },
        _ => 0,
    }
}

/// `content` stored as the store stores it with `compression`, and read back: panics unless
/// every row fits its page and decodes to at most `MAX_SPAN`, the rows' sizes as their
/// headers tell them are the sizes they decode to, and together they give `content` back;
/// and `content` read as a row of each codec is refused or decoded, never a panic.
/// For the fuzz harness (`pochta-fuzz`): message content is whatever a sender sends.
#[doc(hidden)]
pub fn check_round_trip(content: &[u8], compression: ContentCompression) {
    let rows = Rows::of(content, Some(compression), false);
    // What `Rows::of` reserves for its packed octets is always enough.
    assert!(
        rows.packed.len() <= content.len(),
        "packed {}",
        rows.packed.len()
    );
    let mut read = Vec::with_capacity(content.len());
    for (codec, data) in rows.codecs.iter().zip(rows.data(content)) {
        assert!(
            !data.is_empty() && data.len() <= CHUNK,
            "a row of {}",
            data.len()
        );
        let at = read.len();
        decode_into(&mut read, 1, *codec, data).expect("a row it made decodes");
        assert!(read.len() - at <= MAX_SPAN);
        assert_eq!(decoded_len(*codec, data), read.len() - at, "codec {codec}");
    }
    assert!(read == content, "content changed");
    // The same octets read as a stored row of each codec, as a damaged row would be: an
    // error or its content, never a panic, and no more than a row may hold.
    for codec in [RAW, ZSTD, BASE64_LINES, 3] {
        let mut out = Vec::new();
        if decode_into(&mut out, 1, codec, content).is_ok() {
            assert!(codec == RAW || out.len() <= MAX_SPAN);
            assert_eq!(decoded_len(codec, content), out.len(), "codec {codec}");
        } else {
            assert!(out.is_empty(), "a failed row appended {}", out.len());
        }
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
    let rows: Vec<(i16, Vec<u8>)> = rows.into_iter().collect();
    let mut out = prefix;
    // Sized once: grown row by row, a large piece was copied again and again.
    out.reserve_exact(rows.iter().map(|(c, d)| decoded_len(*c, d)).sum());
    append_rows(&mut out, message_id, rows)?;
    Ok(out)
}

/// Appends rows (codec and octets, in seq order) decoded to `out`, sized by the caller.
fn append_rows(
    out: &mut Vec<u8>,
    message_id: i64,
    rows: impl IntoIterator<Item = (i16, Vec<u8>)>,
) -> Result<()> {
    for (codec, data) in rows {
        decode_into(out, message_id, codec, &data)?;
    }
    Ok(())
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
    // Sized by the length recorded; the rows' headers are not read for it.
    out.reserve_exact(expected.saturating_sub(out.len()));
    append_rows(&mut out, message_id, rows)?;
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
        base64_lines: true,
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

    /// An attachment as mail carries one: `noise` in base64, 76-character lines, cut to `n`
    /// octets.
    fn base64_lines(n: usize, seed: u64) -> Vec<u8> {
        let mut out = random_lines(76, n.div_ceil(78), seed);
        out.truncate(n);
        out
    }

    /// `count` lines of base64 of `noise`, each `chars` characters (a multiple of four).
    fn random_lines(chars: usize, count: usize, seed: u64) -> Vec<u8> {
        let encoded = BASE64.encode_to_string(noise(chars / 4 * 3 * count, seed));
        let mut out = Vec::with_capacity((chars + 2) * count);
        for line in encoded.as_bytes().chunks(chars) {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
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
                base64_lines: true,
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
        // As the octets the lines encode: three quarters of the characters, less the CRLFs.
        let c = assert_round_trip(&[&attachment], ON);
        let total = c.total();
        assert!(total * 100 < attachment.len() * 74, "{total} stored");
        let rows = c.lens.len();
        assert!(rows * CHUNK * 100 < attachment.len() * 75, "{rows} rows");
        let (last, lines) = c.codecs.split_last().unwrap();
        assert!(lines.iter().all(|&k| k == BASE64_LINES), "{:?}", c.codecs);
        // The last, shorter line is no run of its own.
        assert_eq!(*last, RAW);
        // zstd's entropy coding, where base64 rows are off: about as small, slower to read.
        let zstd = Some(ContentCompression {
            base64_lines: false,
            ..ON.unwrap()
        });
        let c = assert_round_trip(&[&attachment], zstd);
        let total = c.total();
        assert!(total * 100 < attachment.len() * 80, "{total} stored");
        let rows = c.lens.len();
        assert!(rows * CHUNK * 100 < attachment.len() * 82, "{rows} rows");
        assert!(c.codecs.iter().all(|&k| k == ZSTD));
    }

    /// Lines of `chars` characters of the alphabet, then CRLF, `count` times.
    fn uniform_lines(chars: usize, count: usize) -> Vec<u8> {
        let mut line: Vec<u8> = (0..chars).map(|i| b"Zm9vYmFy+/09"[i % 12]).collect();
        line.extend_from_slice(b"\r\n");
        line.repeat(count)
    }

    #[test]
    fn base64_runs_are_whole_unpadded_lines_of_one_length() {
        let run = uniform_lines(76, MIN_BASE64_LINES);
        let runs = |parts: &[&[u8]]| base64_runs(&parts.concat());
        // A run alone, one line short of a run, a run after a text line.
        assert_eq!(runs(&[&run]), [(0..run.len(), 19)]);
        assert_eq!(runs(&[&run[78..]]), []);
        assert_eq!(runs(&[b"text\r\n", &run]), [(6..6 + run.len(), 19)]);
        // A padded last line, a shorter last line, a line without its CR end the run.
        for tail in [&b"QQ==\r\n"[..], b"QUJD\r\n", b"QUJD\n"] {
            assert_eq!(runs(&[&run, tail, &run]).len(), 2, "{tail:?}");
        }
        // A character outside the alphabet, a length that is no multiple of four.
        let mut bad = run.clone();
        bad[78 * 8 + 3] = b'-';
        assert_eq!(runs(&[&bad]), []);
        assert_eq!(runs(&[&uniform_lines(75, 40)]), []);
        // The longest line taken, one quadruple more.
        let long = uniform_lines(4 * MAX_BASE64_QUADS, 20);
        assert_eq!(runs(&[&long]), [(0..long.len(), MAX_BASE64_QUADS)]);
        assert_eq!(runs(&[&uniform_lines(4 * MAX_BASE64_QUADS + 4, 20)]), []);
        // A last line without its LF is not part of the run.
        let open = [&run[..], b"QUJD"].concat();
        assert_eq!(base64_runs(&open), [(0..run.len(), 19)]);
    }

    #[test]
    fn what_only_looks_like_base64_is_left_to_zstd() {
        // A letter repeated (pochta-bench's filler), hex, and base64 of octets that compress.
        let filler = [b'x'; 76].repeat(2000);
        let hex: Vec<u8> = noise(40_000, 5)
            .iter()
            .map(|b| b"0123456789abcdef"[usize::from(b & 15)])
            .collect();
        let text_in_base64 = BASE64.encode_to_string(prose(60_000));
        for looks_like in [filler, hex, text_in_base64.into_bytes()] {
            let lines: Vec<u8> = looks_like
                .chunks(76)
                .filter(|l| l.len() == 76)
                .flat_map(|l| [l, b"\r\n"].concat())
                .collect();
            assert!(!base64_runs(&lines).is_empty());
            let c = assert_round_trip(&[&lines], ON);
            assert!(!c.codecs.contains(&BASE64_LINES), "{:?}", &lines[..80]);
            assert!(c.codecs.contains(&ZSTD));
        }
    }

    #[test]
    fn base64_rows_of_every_line_length_round_trip() {
        for chars in [4, 8, 64, 72, 76, 100, 4 * MAX_BASE64_QUADS] {
            for count in [MIN_BASE64_LINES, 3000] {
                let lines = random_lines(chars, count, chars as u64);
                let content = [&b"Subject: x\r\n\r\n"[..], &lines].concat();
                let c = assert_round_trip(
                    &[&content],
                    Some(ContentCompression {
                        min_size: 0,
                        ..ON.unwrap()
                    }),
                );
                assert!(c.codecs.contains(&BASE64_LINES), "{chars} × {count}");
            }
        }
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
        for codec in [RAW, ZSTD, BASE64_LINES] {
            assert!(c.codecs.contains(&codec), "{codec}: {:?}", c.codecs);
        }
        let low = Some(ContentCompression {
            min_size: 0,
            level: 3,
            base64_lines: true,
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

    /// A content made of stretches that shrink differently (noise, base64 of 76-character
    /// lines, prose, one octet repeated, base64 lines of another length), each of its own
    /// length.
    fn stretches() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let stretch =
            (0u8..5, 0usize..40_000, any::<u64>()).prop_map(|(kind, n, seed)| match kind {
                0 => noise(n, seed | 1),
                1 => base64_lines(n, seed | 1),
                2 => prose(n),
                3 => vec![seed as u8; n],
                _ => uniform_lines(4 * (1 + seed as usize % MAX_BASE64_QUADS), n / 80),
            });
        proptest::collection::vec(stretch, 0..8).prop_map(|s| s.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever the content and level: every row fits its page and decodes to at most
        /// `MAX_SPAN`, and the rows give the content back.
        #[test]
        fn any_content_round_trips(
            content in stretches(),
            level in 1i32..4,
            base64_lines in proptest::bool::ANY,
        ) {
            let compression = Some(ContentCompression { min_size: 0, level, base64_lines });
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
        // base64 rows: no length octet, a length of 0, octets that are no whole lines.
        assert!(undecodable(decode_into(&mut out, 1, BASE64_LINES, b"")));
        assert!(undecodable(decode_into(
            &mut out,
            1,
            BASE64_LINES,
            b"\0abc"
        )));
        assert!(undecodable(decode_into(
            &mut out,
            1,
            BASE64_LINES,
            b"\x01abcd"
        )));
        assert!(undecodable(decode_into(&mut out, 1, BASE64_LINES, b"\x01")));
        // Lines longer than any stored: refused, not encoded past the line buffer.
        let long = [&[MAX_BASE64_QUADS as u8 + 1][..], &[0; 64 * 3]].concat();
        assert!(undecodable(decode_into(&mut out, 1, BASE64_LINES, &long)));
        let longest = [&[255][..], &[0; 255 * 3]].concat();
        assert!(undecodable(decode_into(
            &mut out,
            1,
            BASE64_LINES,
            &longest
        )));
        assert!(out.is_empty(), "nothing appended for a damaged row");
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
