//! FETCH (RFC 9051 6.4.5, 7.5.2): the data items of one message, from its metadata and, when
//! an item needs them, its octets. Sections are cut from the stored octets as they are (a
//! client gets back exactly what was delivered); MIME structure comes from `mail-parser`.
//! BINARY (RFC 3516, RFC 9051 6.4.5) is the one item that decodes: a part's
//! Content-Transfer-Encoding undone.

use std::borrow::Cow;
use std::num::NonZeroU32;

use imap_next::imap_types::body::{
    BasicFields, Body, BodyStructure, Disposition, MultiPartExtensionData, SinglePartExtensionData,
    SpecificFields,
};
use imap_next::imap_types::core::{
    AString, IString, Literal, LiteralMode, NString, NString8, Quoted,
};
use imap_next::imap_types::datetime::DateTime;
use imap_next::imap_types::envelope::{Address, Envelope};
use imap_next::imap_types::extensions::binary::Literal8;
use imap_next::imap_types::fetch::{MessageDataItem, MessageDataItemName, Section};
use imap_next::imap_types::flag::{Flag, FlagFetch};
use mail_parser::{HeaderName, HeaderValue, MessageParser, MimeHeaders, PartType};

use crate::view::{Message, nonzero};

/// What of a message's octets a command needs: none, its header block, or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Need {
    Nothing,
    Header,
    Whole,
}

/// What the items need of the message's octets.
pub(crate) fn needs_content(items: &[MessageDataItemName<'_>]) -> Need {
    items
        .iter()
        .map(|i| match i {
            MessageDataItemName::Rfc822Header | MessageDataItemName::Envelope => Need::Header,
            MessageDataItemName::BodyExt {
                section:
                    Some(Section::Header(None))
                    | Some(Section::HeaderFields(None, _))
                    | Some(Section::HeaderFieldsNot(None, _)),
                ..
            } => Need::Header,
            MessageDataItemName::BodyExt { .. }
            | MessageDataItemName::Binary { .. }
            | MessageDataItemName::BinarySize { .. }
            | MessageDataItemName::Rfc822
            | MessageDataItemName::Rfc822Text
            | MessageDataItemName::Body
            | MessageDataItemName::BodyStructure => Need::Whole,
            _ => Need::Nothing,
        })
        .max()
        .unwrap_or(Need::Nothing)
}

/// The octets of a message these items send, when they can go out as the store reads them:
/// one item sends the message as it is (RFC822, BODY[] or BODY.PEEK[], whole or partial) and
/// the others need none of it. The range sent: (first octet, length), within `size`.
pub(crate) fn streamable(items: &[MessageDataItemName<'_>], size: u32) -> Option<(u64, u64)> {
    let size = u64::from(size);
    let mut range = None;
    for name in items {
        let this = match name {
            MessageDataItemName::Rfc822
            | MessageDataItemName::BodyExt {
                section: None,
                partial: None,
                ..
            } => (0, size),
            MessageDataItemName::BodyExt {
                section: None,
                partial: Some((start, len)),
                ..
            } => {
                let start = u64::from(*start).min(size);
                (start, u64::from(len.get()).min(size - start))
            }
            name if needs_content(std::slice::from_ref(name)) == Need::Nothing => continue,
            _ => return None,
        };
        if range.replace(this).is_some() {
            return None;
        }
    }
    range
}

/// Does fetching these items set `\Seen` (RFC 9051 6.4.5: BODY[...] and RFC822 do)?
pub(crate) fn sets_seen(items: &[MessageDataItemName<'_>]) -> bool {
    items.iter().any(|i| {
        matches!(
            i,
            MessageDataItemName::BodyExt { peek: false, .. }
                | MessageDataItemName::Binary { peek: false, .. }
                | MessageDataItemName::Rfc822
                | MessageDataItemName::Rfc822Text
        )
    })
}

/// A Content-Transfer-Encoding BINARY cannot undo (RFC 3516 4.1: the FETCH answers NO
/// [UNKNOWN-CTE]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UnknownCte;

/// FLAGS and UID, as an unsolicited FETCH tells a flag change (with MODSEQ under CONDSTORE).
pub(crate) fn flag_items(m: &Message, with_modseq: bool) -> Vec<MessageDataItem<'static>> {
    let mut items = vec![
        MessageDataItem::Flags(flags(&m.flags)),
        MessageDataItem::Uid(nonzero(m.uid)),
    ];
    if with_modseq && let Some(modseq) = std::num::NonZeroU64::new(m.modseq) {
        items.push(MessageDataItem::ModSeq(modseq));
    }
    items
}

pub(crate) fn flags(list: &[String]) -> Vec<FlagFetch<'static>> {
    list.iter()
        .filter_map(|f| Flag::try_from(f.as_str()).ok())
        .map(|f| FlagFetch::Flag(imap_next::imap_types::IntoStatic::into_static(f)))
        .collect()
}

/// The data items of one message. `content` is its octets when `needs_content` said so; the
/// last item sending them whole (BODY[], RFC822) takes them instead of a copy. A UID FETCH
/// always includes UID (RFC 9051 6.4.9).
pub(crate) fn items(
    m: &Message,
    names: &[MessageDataItemName<'_>],
    content: Option<Vec<u8>>,
    with_uid: bool,
    with_modseq: bool,
) -> Result<Vec<MessageDataItem<'static>>, UnknownCte> {
    let mut content = content.unwrap_or_default();
    let last_reader = names
        .iter()
        .rposition(|name| needs_content(std::slice::from_ref(name)) != Need::Nothing);
    let mut out = Vec::with_capacity(names.len() + 1);
    if with_uid && !names.contains(&MessageDataItemName::Uid) {
        out.push(MessageDataItem::Uid(nonzero(m.uid)));
    }
    if with_modseq
        && !names.contains(&MessageDataItemName::ModSeq)
        && let Some(modseq) = std::num::NonZeroU64::new(m.modseq)
    {
        out.push(MessageDataItem::ModSeq(modseq));
    }
    for (at, name) in names.iter().enumerate() {
        let last = Some(at) == last_reader;
        let item = match name {
            MessageDataItemName::Uid => MessageDataItem::Uid(nonzero(m.uid)),
            MessageDataItemName::Flags => MessageDataItem::Flags(flags(&m.flags)),
            MessageDataItemName::InternalDate => {
                let date = m.internal_date.fixed_offset();
                MessageDataItem::InternalDate(DateTime::unvalidated(date))
            }
            MessageDataItemName::Rfc822Size => MessageDataItem::Rfc822Size(m.size),
            MessageDataItemName::ModSeq => match std::num::NonZeroU64::new(m.modseq) {
                Some(modseq) => MessageDataItem::ModSeq(modseq),
                None => continue,
            },
            MessageDataItemName::Rfc822 => {
                MessageDataItem::Rfc822(nstring(whole(&mut content, last)))
            }
            MessageDataItemName::Rfc822Header => {
                let (header, _) = split(&content);
                MessageDataItem::Rfc822Header(nstring(header.to_vec()))
            }
            MessageDataItemName::Rfc822Text => {
                let (_, text) = split(&content);
                MessageDataItem::Rfc822Text(nstring(text.to_vec()))
            }
            MessageDataItemName::Envelope => MessageDataItem::Envelope(envelope(&content)),
            MessageDataItemName::BodyExt {
                section,
                partial,
                peek: _,
            } => {
                let (origin, data) = match (section, partial) {
                    (None, None) => (None, whole(&mut content, last)),
                    (_, partial) => {
                        let octets = match section {
                            None => Cow::Borrowed(content.as_slice()),
                            Some(section) => Cow::Owned(
                                section_octets(&content, Some(section)).unwrap_or_default(),
                            ),
                        };
                        match partial {
                            Some((start, len)) => {
                                let from = (*start as usize).min(octets.len());
                                let to = from.saturating_add(len.get() as usize).min(octets.len());
                                (Some(*start), octets[from..to].to_vec())
                            }
                            None => (None, octets.into_owned()),
                        }
                    }
                };
                MessageDataItem::BodyExt {
                    section: section
                        .clone()
                        .map(imap_next::imap_types::IntoStatic::into_static),
                    origin,
                    data: nstring(data),
                }
            }
            MessageDataItemName::Body => MessageDataItem::Body(body_structure(&content, false)),
            MessageDataItemName::BodyStructure => {
                MessageDataItem::BodyStructure(body_structure(&content, true))
            }
            MessageDataItemName::Binary {
                section,
                partial,
                peek: _,
            } => {
                let decoded = binary_octets(&content, section)?;
                let data = match partial {
                    Some((start, len)) => {
                        let from = (*start as usize).min(decoded.len());
                        let to = from.saturating_add(len.get() as usize).min(decoded.len());
                        decoded[from..to].to_vec()
                    }
                    None => decoded,
                };
                MessageDataItem::Binary {
                    section: section.clone(),
                    value: nstring8(data),
                }
            }
            MessageDataItemName::BinarySize { section } => MessageDataItem::BinarySize {
                section: section.clone(),
                size: u32::try_from(binary_octets(&content, section)?.len()).unwrap_or(u32::MAX),
            },
        };
        out.push(item);
    }
    Ok(out)
}

/// The whole message for an item: taken by the last item that reads it, copied for the others.
fn whole(content: &mut Vec<u8>, last: bool) -> Vec<u8> {
    if last {
        std::mem::take(content)
    } else {
        content.clone()
    }
}

/// Octets for BINARY: a literal8 (`~{n}`) when they hold a NUL, which only it can carry.
fn nstring8(data: Vec<u8>) -> NString8<'static> {
    if data.contains(&0) {
        NString8::Literal8(Literal8 {
            data: data.into(),
            mode: LiteralMode::Sync,
        })
    } else {
        NString8::NString(nstring(data))
    }
}

/// A section's content with its Content-Transfer-Encoding undone; the empty section is the
/// whole message as stored, and a part the message does not have is empty (as for BODY[]).
pub(crate) fn binary_octets(content: &[u8], section: &[NonZeroU32]) -> Result<Vec<u8>, UnknownCte> {
    if section.is_empty() {
        return Ok(content.to_vec());
    }
    let Some((header, body)) = locate(content, section) else {
        return Ok(Vec::new());
    };
    match transfer_encoding(&header).as_deref() {
        None | Some("7bit" | "8bit" | "binary") => Ok(body),
        Some("base64") => Ok(decode_base64(&body)),
        Some("quoted-printable") => Ok(decode_quoted_printable(&body)),
        Some(_) => Err(UnknownCte),
    }
}

/// The Content-Transfer-Encoding a MIME header names, lower-cased (RFC 2045 6.1).
fn transfer_encoding(header: &[u8]) -> Option<String> {
    let mut value: Option<Vec<u8>> = None;
    for line in header.split_inclusive(|&b| b == b'\n') {
        let text = line.trim_ascii_end();
        match &mut value {
            // A folded continuation of the field found.
            Some(v) if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') => {
                v.extend_from_slice(text)
            }
            Some(_) => break,
            None => {
                let Some(colon) = text.iter().position(|&b| b == b':') else {
                    continue;
                };
                if text[..colon]
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"content-transfer-encoding")
                {
                    value = Some(text[colon + 1..].to_vec());
                }
            }
        }
    }
    let value = String::from_utf8_lossy(&value?).to_ascii_lowercase();
    // The token, without a comment after it.
    let token = value.split(['(', ';']).next().unwrap_or_default().trim();
    Some(token.to_owned())
}

/// base64 (RFC 2045 6.8): characters outside the alphabet are ignored, as are an incomplete
/// last quantum's stray character and padding.
fn decode_base64(body: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireNone),
    );
    let mut letters: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        .collect();
    if letters.len() % 4 == 1 {
        letters.pop();
    }
    LENIENT.decode(&letters).unwrap_or_default()
}

/// quoted-printable (RFC 2045 6.7): `=XX` is an octet, `=` at a line's end joins it to the
/// next, whitespace before a line break is not content; anything else is kept as it is.
fn decode_quoted_printable(body: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(body.len());
    for line in body.split_inclusive(|&b| b == b'\n') {
        let (text, eol) = match line.strip_suffix(b"\r\n") {
            Some(text) => (text, &b"\r\n"[..]),
            None => match line.strip_suffix(b"\n") {
                Some(text) => (text, &b"\n"[..]),
                None => (line, &b""[..]),
            },
        };
        let text = text.trim_ascii_end();
        let mut soft = false;
        let mut i = 0;
        while i < text.len() {
            if text[i] == b'=' {
                if i + 1 == text.len() {
                    soft = true;
                    break;
                }
                if let (Some(hi), Some(lo)) = (
                    text.get(i + 1).and_then(|b| hex(*b)),
                    text.get(i + 2).and_then(|b| hex(*b)),
                ) {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
            }
            out.push(text[i]);
            i += 1;
        }
        if !soft {
            out.extend_from_slice(eol);
        }
    }
    out
}

/// Octets as an IMAP string: a literal (any octet but NUL); NULs, which a literal cannot carry,
/// become spaces rather than failing the whole response.
fn nstring(mut data: Vec<u8>) -> NString<'static> {
    nul_to_space(&mut data);
    // No NUL is left, which is all a literal's validation (CHAR8) checks; checking again
    // byte by byte would cost as much as the loop above did.
    NString(Some(IString::Literal(Literal::unvalidated(data))))
}

/// NULs, which a literal cannot carry, as spaces. Looked for with memchr first: a byte loop
/// over every message sent was a third of a whole-mailbox FETCH's CPU (BENCHMARKS.md).
pub(crate) fn nul_to_space(octets: &mut [u8]) {
    if memchr::memchr(0, octets).is_some() {
        for b in octets.iter_mut().filter(|b| **b == 0) {
            *b = b' ';
        }
    }
}

/// A header block (with its blank line) and the text after it.
fn split(octets: &[u8]) -> (&[u8], &[u8]) {
    if octets.starts_with(b"\r\n") {
        return (&octets[..2], &octets[2..]);
    }
    match memchr::memmem::find(octets, b"\r\n\r\n") {
        Some(at) => octets.split_at(at + 4),
        None => (octets, &[]),
    }
}

/// The header lines (unfolded fields kept as they are) whose names are (or, with `not`, are
/// not) among `names`, then the blank line.
fn header_fields(header: &[u8], names: &[AString<'_>], not: bool) -> Vec<u8> {
    let wanted = |field: &[u8]| {
        let name = field.split(|&b| b == b':').next().unwrap_or_default();
        let name = name.trim_ascii();
        names.iter().any(|n| n.as_ref().eq_ignore_ascii_case(name)) != not
    };
    let mut out = Vec::new();
    let mut field_start = 0;
    let lines: Vec<(usize, usize)> = line_spans(header);
    for (i, &(start, end)) in lines.iter().enumerate() {
        let continues = lines
            .get(i + 1)
            .is_some_and(|&(s, _)| matches!(header.get(s), Some(b' ' | b'\t')));
        if start == end - 2 && end == header.len() {
            break;
        }
        if !matches!(header.get(start), Some(b' ' | b'\t')) {
            field_start = start;
        }
        if !continues {
            let field = &header[field_start..end];
            if !field.trim_ascii().is_empty() && wanted(field) {
                out.extend_from_slice(field);
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Each line's [start, end) including its CRLF.
fn line_spans(octets: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    for at in memchr::memchr_iter(b'\n', octets) {
        spans.push((start, at + 1));
        start = at + 1;
    }
    if start < octets.len() {
        spans.push((start, octets.len()));
    }
    spans
}

/// The octets of a section (RFC 9051 6.4.5); None for a part the message does not have.
fn section_octets(content: &[u8], section: Option<&Section<'_>>) -> Option<Vec<u8>> {
    let Some(section) = section else {
        return Some(content.to_vec());
    };
    let (part, what) = match section {
        Section::Part(part) => (Some(part), What::Body),
        Section::Header(part) => (part.as_ref(), What::Header),
        Section::HeaderFields(part, names) => (part.as_ref(), What::Fields(names.as_ref(), false)),
        Section::HeaderFieldsNot(part, names) => {
            (part.as_ref(), What::Fields(names.as_ref(), true))
        }
        Section::Text(part) => (part.as_ref(), What::Text),
        Section::Mime(part) => (Some(part), What::Mime),
    };
    // The message (or the message/rfc822 part) the header and text sections are of.
    let octets: Cow<'_, [u8]> = match part {
        None => Cow::Borrowed(content),
        Some(part) => {
            let path: Vec<NonZeroU32> = part.0.as_ref().to_vec();
            let (header, body) = locate(content, &path)?;
            match what {
                What::Body => return Some(body),
                What::Mime => return Some(header),
                // HEADER/TEXT of a part: of the message that part holds.
                _ => Cow::Owned(body),
            }
        }
    };
    let (header, text) = split(&octets);
    Some(match what {
        What::Header => header.to_vec(),
        What::Text => text.to_vec(),
        What::Fields(names, not) => header_fields(header, names, not),
        What::Body | What::Mime => octets.into_owned(),
    })
}

enum What<'s, 'a> {
    Body,
    Header,
    Text,
    Fields(&'s [AString<'a>], bool),
    Mime,
}

/// The MIME header and body octets of a part by its IMAP part number (RFC 9051 6.4.5): in a
/// message that is not multipart, part 1 is its body; a message/rfc822 part's parts number
/// on from it.
fn locate(content: &[u8], path: &[NonZeroU32]) -> Option<(Vec<u8>, Vec<u8>)> {
    let message = MessageParser::new().parse(content)?;
    let mut id = 0usize;
    let mut current = &message;
    let mut found: Option<(Vec<u8>, Vec<u8>)> = None;
    for (depth, n) in path.iter().enumerate() {
        let n = n.get() as usize;
        let part = current.parts.get(id)?;
        let child = match &part.body {
            PartType::Multipart(children) => *children.get(n - 1)? as usize,
            // A single-part message (or nested message) has part 1 only: its body.
            _ if n == 1 && (depth == 0 || found.is_some()) => id,
            _ => return None,
        };
        let part = current.parts.get(child)?;
        let raw = current.raw_message.as_ref();
        let (h, b, e) = (
            part.offset_header as usize,
            part.offset_body as usize,
            part.offset_end as usize,
        );
        let header = raw.get(h..b)?.to_vec();
        let body = raw.get(b..e)?.to_vec();
        found = Some((header, body));
        match &part.body {
            PartType::Message(nested) if depth + 1 < path.len() => {
                current = nested;
                id = 0;
            }
            _ => id = child,
        }
    }
    found
}

/// ENVELOPE (RFC 9051 7.5.2): header fields as they are in the message, addresses parsed.
fn envelope(content: &[u8]) -> Envelope<'static> {
    let (header, _) = split(content);
    let parsed = MessageParser::new().parse_headers(header);
    let raw = |name: &str| -> NString<'static> {
        let value = parsed.as_ref().and_then(|m| {
            m.parts.first()?.headers.iter().find_map(|h| {
                h.name
                    .as_str()
                    .eq_ignore_ascii_case(name)
                    .then(|| header.get(h.offset_start as usize..h.offset_end as usize))
                    .flatten()
            })
        });
        match value {
            Some(v) => text(String::from_utf8_lossy(v).trim()),
            None => NString(None),
        }
    };
    let addresses = |name: HeaderName<'static>| -> Vec<Address<'static>> {
        let Some(m) = parsed.as_ref() else {
            return Vec::new();
        };
        let Some(value) = m
            .parts
            .first()
            .and_then(|p| p.headers.iter().find(|h| h.name == name).map(|h| &h.value))
        else {
            return Vec::new();
        };
        let HeaderValue::Address(address) = value else {
            return Vec::new();
        };
        address
            .iter()
            .map(|a| {
                let (mailbox, host) = match a.address.as_deref().and_then(|s| s.rsplit_once('@')) {
                    Some((l, d)) => (text(l), text(d)),
                    None => (
                        text(a.address.as_deref().unwrap_or_default()),
                        NString(None),
                    ),
                };
                Address {
                    name: a.name.as_deref().map_or(NString(None), text),
                    adl: NString(None),
                    mailbox,
                    host,
                }
            })
            .collect()
    };
    let from = addresses(HeaderName::From);
    let or_from = |list: Vec<Address<'static>>| if list.is_empty() { from.clone() } else { list };
    Envelope {
        date: raw("Date"),
        subject: raw("Subject"),
        sender: or_from(addresses(HeaderName::Sender)),
        reply_to: or_from(addresses(HeaderName::ReplyTo)),
        from: from.clone(),
        to: addresses(HeaderName::To),
        cc: addresses(HeaderName::Cc),
        bcc: addresses(HeaderName::Bcc),
        in_reply_to: raw("In-Reply-To"),
        message_id: raw("Message-ID"),
    }
}

/// Nested messages deeper than this are described as opaque parts.
const MAX_NESTING: usize = 16;

/// BODYSTRUCTURE (with `extended`) or BODY (RFC 9051 7.5.2) of a message's octets.
fn body_structure(content: &[u8], extended: bool) -> BodyStructure<'static> {
    match MessageParser::new().parse(content) {
        Some(message) => part_structure(&message, 0, extended, 0),
        // Not even a header: one text/plain part of the whole.
        None => single(
            basic_fields(None, content.len()),
            SpecificFields::Text {
                subtype: istring("PLAIN"),
                number_of_lines: lines(content),
            },
            extended.then_some(SinglePartExtensionData {
                md5: NString(None),
                tail: None,
            }),
        ),
    }
}

fn part_structure(
    message: &mail_parser::Message<'_>,
    id: usize,
    extended: bool,
    depth: usize,
) -> BodyStructure<'static> {
    let Some(part) = message.parts.get(id) else {
        return body_structure(b"", extended);
    };
    let raw = message.raw_message.as_ref();
    let body = raw
        .get(part.offset_body as usize..part.offset_end as usize)
        .unwrap_or_default();
    let content_type = part.content_type();
    let subtype = content_type
        .and_then(|c| c.subtype())
        .unwrap_or(match &part.body {
            PartType::Multipart(_) => "mixed",
            PartType::Html(_) => "html",
            _ => "plain",
        })
        .to_ascii_uppercase();
    let parameters = || -> Vec<(IString<'static>, IString<'static>)> {
        content_type
            .and_then(|c| c.attributes())
            .unwrap_or_default()
            .iter()
            .map(|a| (istring(&a.name.to_ascii_uppercase()), istring(&a.value)))
            .collect()
    };
    let disposition = || -> Option<Disposition<'static>> {
        part.content_disposition().map(|d| Disposition {
            disposition: Some((
                istring(&d.ctype().to_ascii_uppercase()),
                d.attributes()
                    .unwrap_or_default()
                    .iter()
                    .map(|a| (istring(&a.name.to_ascii_uppercase()), istring(&a.value)))
                    .collect(),
            )),
            tail: None,
        })
    };
    if let PartType::Multipart(children) = &part.body
        && depth < MAX_NESTING
    {
        let bodies: Vec<BodyStructure<'static>> = children
            .iter()
            .map(|&child| part_structure(message, child as usize, extended, depth + 1))
            .collect();
        if let Ok(bodies) = bodies.try_into() {
            return BodyStructure::Multi {
                bodies,
                subtype: istring(&subtype),
                extension_data: extended.then(|| MultiPartExtensionData {
                    parameter_list: parameters(),
                    tail: disposition(),
                }),
            };
        }
    }
    let mut basic = basic_fields(Some(part), body.len());
    basic.parameter_list = parameters();
    let kind = content_type.map_or("TEXT".to_owned(), |c| c.ctype().to_ascii_uppercase());
    let specific = match &part.body {
        PartType::Message(nested) if depth < MAX_NESTING => SpecificFields::Message {
            envelope: Box::new(envelope(body)),
            body_structure: Box::new(part_structure(nested, 0, extended, depth + 1)),
            number_of_lines: lines(body),
        },
        _ if kind == "TEXT" => SpecificFields::Text {
            subtype: istring(&subtype),
            number_of_lines: lines(body),
        },
        _ => SpecificFields::Basic {
            r#type: istring(&kind),
            subtype: istring(&subtype),
        },
    };
    let extension = extended.then(|| SinglePartExtensionData {
        md5: NString(None),
        tail: disposition(),
    });
    single(basic, specific, extension)
}

fn single(
    basic: BasicFields<'static>,
    specific: SpecificFields<'static>,
    extension_data: Option<SinglePartExtensionData<'static>>,
) -> BodyStructure<'static> {
    BodyStructure::Single {
        body: Body { basic, specific },
        extension_data,
    }
}

fn basic_fields(part: Option<&mail_parser::MessagePart<'_>>, size: usize) -> BasicFields<'static> {
    let header = |value: Option<&str>| value.map_or(NString(None), |v| text(v.trim()));
    BasicFields {
        parameter_list: Vec::new(),
        id: header(part.and_then(|p| p.content_id())),
        description: header(part.and_then(|p| p.content_description())),
        content_transfer_encoding: istring(
            &part
                .and_then(|p| p.content_transfer_encoding())
                .unwrap_or("7BIT")
                .to_ascii_uppercase(),
        ),
        size: u32::try_from(size).unwrap_or(u32::MAX),
    }
}

fn lines(octets: &[u8]) -> u32 {
    u32::try_from(memchr::memchr_iter(b'\n', octets).count()).unwrap_or(u32::MAX)
}

fn istring(s: &str) -> IString<'static> {
    match text(s).0 {
        Some(string) => string,
        None => IString::Quoted(Quoted::try_from(String::new()).expect("the empty string")),
    }
}

/// A string quoted where it can be, a literal where not.
fn text(s: &str) -> NString<'static> {
    match Quoted::try_from(s.to_owned()) {
        Ok(q) => NString(Some(IString::Quoted(q))),
        Err(_) => nstring(s.as_bytes().to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_next::imap_types::fetch::Part;

    const MAIL: &[u8] = b"Return-Path: <a@example.net>\r\nFrom: Ann <a@example.net>\r\n\
Subject: Hello\r\n there\r\nTo: b@example.org, \"C D\" <c@example.org>\r\n\
Content-Type: multipart/mixed; boundary=XX\r\n\r\npreamble\r\n--XX\r\n\
Content-Type: text/plain\r\n\r\nfirst part\r\n--XX\r\nContent-Type: text/html\r\n\r\n\
<p>second</p>\r\n--XX--\r\n";

    fn names(s: &[&str]) -> Vec<AString<'static>> {
        s.iter()
            .map(|n| AString::try_from(n.to_string()).unwrap())
            .collect()
    }

    fn part(path: &[u32]) -> Part {
        let path: Vec<NonZeroU32> = path.iter().map(|&n| NonZeroU32::new(n).unwrap()).collect();
        Part(path.try_into().unwrap())
    }

    #[test]
    fn header_and_text_split_at_the_first_blank_line() {
        let header = section_octets(MAIL, Some(&Section::Header(None))).unwrap();
        assert!(header.ends_with(b"boundary=XX\r\n\r\n"));
        let text = section_octets(MAIL, Some(&Section::Text(None))).unwrap();
        assert_eq!([header, text].concat(), MAIL);
    }

    #[test]
    fn header_fields_keep_folded_lines_and_match_names_in_any_case() {
        let wanted = names(&["subject", "TO"]);
        let fields = Section::HeaderFields(None, wanted.clone().try_into().unwrap());
        let got = section_octets(MAIL, Some(&fields)).unwrap();
        assert_eq!(
            got,
            b"Subject: Hello\r\n there\r\nTo: b@example.org, \"C D\" <c@example.org>\r\n\r\n"
        );
        let not = Section::HeaderFieldsNot(None, wanted.try_into().unwrap());
        let got = String::from_utf8(section_octets(MAIL, Some(&not)).unwrap()).unwrap();
        assert!(got.starts_with("Return-Path: <a@example.net>\r\nFrom: Ann"));
        assert!(!got.contains("Subject"));
        assert!(got.ends_with("boundary=XX\r\n\r\n"));
    }

    /// Three parts: base64 (folded CTE field, a NUL and 0xFF in the data), quoted-printable
    /// (soft breaks, `=XX`, trailing blanks), and one in an encoding no one knows.
    const ENCODED: &[u8] = b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n\
Content-Type: application/octet-stream\r\nContent-Transfer-Encoding:\r\n Base64 (comment)\r\n\
\r\nAGFi\r\n/3g=\r\n--B\r\nContent-Type: text/plain\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\r\nna=C3=AFve soft=\r\nbreak  \r\nend\r\n\
--B\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n--B--\r\n";

    fn path(p: &[u32]) -> Vec<NonZeroU32> {
        p.iter().map(|&n| NonZeroU32::new(n).unwrap()).collect()
    }

    #[test]
    fn binary_undoes_the_transfer_encoding_of_a_part() {
        assert_eq!(
            binary_octets(ENCODED, &path(&[1])),
            Ok(b"\0ab\xffx".to_vec())
        );
        assert_eq!(
            binary_octets(ENCODED, &path(&[2])),
            Ok("naïve softbreak\r\nend".as_bytes().to_vec())
        );
        assert_eq!(binary_octets(ENCODED, &path(&[3])), Err(UnknownCte));
        // The empty section is the message as stored; a part it does not have is empty.
        assert_eq!(binary_octets(ENCODED, &[]), Ok(ENCODED.to_vec()));
        assert_eq!(binary_octets(ENCODED, &path(&[9])), Ok(Vec::new()));
        // Unencoded parts come as they are.
        assert_eq!(binary_octets(MAIL, &path(&[1])), Ok(b"first part".to_vec()));
        // A NUL needs literal8; without one, an ordinary literal.
        assert!(matches!(nstring8(vec![0, 1]), NString8::Literal8(_)));
        assert!(matches!(nstring8(b"ab".to_vec()), NString8::NString(_)));
    }

    #[test]
    fn parts_are_numbered_as_imap_numbers_them() {
        let first = section_octets(MAIL, Some(&Section::Part(part(&[1])))).unwrap();
        assert_eq!(first, b"first part");
        let second = section_octets(MAIL, Some(&Section::Part(part(&[2])))).unwrap();
        assert_eq!(second, b"<p>second</p>");
        let mime = section_octets(MAIL, Some(&Section::Mime(part(&[2])))).unwrap();
        assert_eq!(mime, b"Content-Type: text/html\r\n\r\n");
        assert_eq!(section_octets(MAIL, Some(&Section::Part(part(&[3])))), None);
        let single = b"Subject: x\r\n\r\nbody\r\n";
        let body = section_octets(single, Some(&Section::Part(part(&[1])))).unwrap();
        assert_eq!(body, b"body\r\n");
    }

    #[test]
    fn bodystructure_describes_each_part() {
        let BodyStructure::Multi {
            bodies, subtype, ..
        } = body_structure(MAIL, true)
        else {
            panic!("multipart");
        };
        assert_eq!(subtype, istring("MIXED"));
        let parts: Vec<BodyStructure<'static>> = bodies.into_inner();
        assert_eq!(parts.len(), 2);
        let BodyStructure::Single { body, .. } = &parts[1] else {
            panic!("single");
        };
        assert_eq!(
            body.specific,
            SpecificFields::Text {
                subtype: istring("HTML"),
                number_of_lines: 0
            }
        );
        assert_eq!(body.basic.size, 13, "<p>second</p>");
        assert_eq!(body.basic.content_transfer_encoding, istring("7BIT"));
        // Not MIME at all: one text/plain part.
        let plain = body_structure(b"Subject: x\r\n\r\nline\r\nline\r\n", false);
        let BodyStructure::Single {
            body,
            extension_data,
        } = plain
        else {
            panic!("single");
        };
        assert_eq!(extension_data, None);
        assert!(matches!(
            body.specific,
            SpecificFields::Text {
                number_of_lines: 2,
                ..
            }
        ));
    }

    #[test]
    fn the_envelope_carries_raw_fields_and_parsed_addresses() {
        let e = envelope(MAIL);
        assert_eq!(e.subject, text("Hello\r\n there"));
        assert_eq!(e.from.len(), 1);
        assert_eq!(e.from[0].name, text("Ann"));
        assert_eq!(e.from[0].mailbox, text("a"));
        assert_eq!(e.from[0].host, text("example.net"));
        assert_eq!(e.sender, e.from, "Sender defaults to From");
        assert_eq!(e.to.len(), 2);
        assert_eq!(e.to[1].name, text("C D"));
        assert_eq!(e.message_id, NString(None));
    }

    /// The octets of an item's literal (NString or BODY[]'s).
    fn literal(item: &MessageDataItem<'_>) -> Vec<u8> {
        let data = match item {
            MessageDataItem::BodyExt { data, .. } | MessageDataItem::Rfc822(data) => data,
            other => panic!("not a literal item: {other:?}"),
        };
        match &data.0 {
            Some(IString::Literal(l)) => l.as_ref().to_vec(),
            other => panic!("not a literal: {other:?}"),
        }
    }

    #[test]
    fn every_item_gets_the_whole_message_whichever_takes_it() {
        let m = Message {
            entry_id: 1,
            uid: 7,
            flags: vec![],
            modseq: 1,
            size: MAIL.len() as u32,
            internal_date: chrono::Utc::now(),
        };
        let body = |section: Option<Section<'static>>| MessageDataItemName::BodyExt {
            section,
            partial: None,
            peek: true,
        };
        // Two whole-message items, then one reading the header after them.
        let asked = [
            body(None),
            MessageDataItemName::Rfc822,
            body(Some(Section::Header(None))),
            MessageDataItemName::Envelope,
        ];
        let got = items(&m, &asked, Some(MAIL.to_vec()), true, false).unwrap();
        assert!(matches!(got[0], MessageDataItem::Uid(_)));
        assert_eq!(literal(&got[1]), MAIL);
        assert_eq!(literal(&got[2]), MAIL);
        let (header, _) = split(MAIL);
        assert_eq!(literal(&got[3]), header);
        assert!(
            matches!(&got[4], MessageDataItem::Envelope(e) if e.subject == text("Hello\r\n there"))
        );
        // The whole message last: it takes the octets; the header before it still has them.
        let asked = [body(Some(Section::Text(None))), body(None)];
        let got = items(&m, &asked, Some(MAIL.to_vec()), false, false).unwrap();
        let (_, text) = split(MAIL);
        assert_eq!(literal(&got[0]), text);
        assert_eq!(literal(&got[1]), MAIL);
        // A partial of the whole message is its slice.
        let asked = [MessageDataItemName::BodyExt {
            section: None,
            partial: Some((5, NonZeroU32::new(6).unwrap())),
            peek: true,
        }];
        let got = items(&m, &asked, Some(MAIL.to_vec()), false, false).unwrap();
        assert_eq!(literal(&got[0]), &MAIL[5..11]);
    }

    #[test]
    fn streamable_only_when_one_item_sends_the_message_as_stored() {
        let whole = |peek| MessageDataItemName::BodyExt {
            section: None,
            partial: None,
            peek,
        };
        let partial = |start, len| MessageDataItemName::BodyExt {
            section: None,
            partial: Some((start, NonZeroU32::new(len).unwrap())),
            peek: true,
        };
        let plain = [
            MessageDataItemName::Uid,
            MessageDataItemName::Flags,
            MessageDataItemName::Rfc822Size,
        ];
        assert_eq!(streamable(&[whole(true)], 100), Some((0, 100)));
        assert_eq!(
            streamable(&[plain[0].clone(), whole(false), plain[1].clone()], 100),
            Some((0, 100))
        );
        assert_eq!(
            streamable(&[MessageDataItemName::Rfc822], 100),
            Some((0, 100))
        );
        // A partial, clipped to the message; one starting past its end sends nothing.
        assert_eq!(streamable(&[partial(90, 50)], 100), Some((90, 10)));
        assert_eq!(streamable(&[partial(150, 50)], 100), Some((100, 0)));
        // Nothing of the octets, two items sending them, or one that parses them: no.
        assert_eq!(streamable(&plain, 100), None);
        assert_eq!(
            streamable(&[whole(true), MessageDataItemName::Rfc822], 100),
            None
        );
        for parsing in [
            MessageDataItemName::Envelope,
            MessageDataItemName::BodyStructure,
            MessageDataItemName::Rfc822Text,
            MessageDataItemName::BodyExt {
                section: Some(Section::Text(None)),
                partial: None,
                peek: true,
            },
            MessageDataItemName::Binary {
                section: vec![],
                partial: None,
                peek: true,
            },
        ] {
            assert_eq!(
                streamable(&[whole(true), parsing.clone()], 100),
                None,
                "{parsing:?}"
            );
        }
    }
}
