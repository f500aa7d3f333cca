//! Commands of extensions the pinned parser (imap-codec 2.0.0-alpha.10) has no grammar for:
//! ESEARCH's `SEARCH RETURN (...)` (RFC 4731) and LIST-EXTENDED's selection options, several
//! patterns and return options (RFC 5258, with RFC 5819's STATUS and RFC 6154's SPECIAL-USE).
//!
//! imap-next hands such a command back whole (literals included) as malformed. Only the
//! extension's own clause is read here. Everything else (the tag, search keys, mailbox names,
//! patterns, status items) is given to imap-codec in the plain command it stands for, so the
//! grammar of strings, literals and search keys stays the parser's.

use imap_codec::CommandCodec;
use imap_codec::decode::Decoder;
use imap_next::imap_types::IntoStatic;
use imap_next::imap_types::command::{Command, CommandBody};
use imap_next::imap_types::core::{Charset, Tag, Vec1};
use imap_next::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_next::imap_types::search::SearchKey;
use imap_next::imap_types::status::StatusDataItemName;

/// What ESEARCH's RETURN asked for (RFC 4731 3.1). `RETURN ()` is ALL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchReturn {
    pub min: bool,
    pub max: bool,
    pub all: bool,
    pub count: bool,
    /// SEARCHRES (RFC 5182): kept as `$`; alone, no ESEARCH response.
    pub save: bool,
}

/// LIST's selection options (RFC 5258 3.1, RFC 6154 3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListSelect {
    pub subscribed: bool,
    pub recursive_match: bool,
    pub special_use: bool,
}

/// A LIST with the extension's syntax.
#[derive(Debug, Clone, PartialEq)]
pub struct ListExtended {
    pub tag: Tag<'static>,
    pub reference: Mailbox<'static>,
    pub patterns: Vec<ListMailbox<'static>>,
    pub select: ListSelect,
    /// RETURN (STATUS (...)), RFC 5819: a STATUS response after each selectable mailbox.
    pub status: Option<Vec<StatusDataItemName>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Extended {
    /// A SEARCH, its RETURN clause taken out and `$` written as the messages it names;
    /// `returns` None: a SEARCH response, as without RETURN.
    Search {
        tag: Tag<'static>,
        uid: bool,
        charset: Option<Charset<'static>>,
        criteria: Vec1<SearchKey<'static>>,
        returns: Option<SearchReturn>,
    },
    List(ListExtended),
    /// FETCH, STORE, COPY, MOVE or UID EXPUNGE of `$` (RFC 5182), its messages written in.
    Saved(Command<'static>),
    /// The same when `$` names no message: done, doing nothing (RFC 9051 6.4.4.1).
    Nothing {
        tag: Tag<'static>,
        what: &'static str,
    },
}

/// The last saved SEARCH result (`$`) as a sequence set, by UID (true) or by message
/// number; None when it names no message now.
pub type SavedSet<'a> = &'a dyn Fn(bool) -> Option<String>;

/// A UID no message has (UIDs are below 2^32 - 1 in practice): `$` when it is empty.
const NO_UID: &str = "4294967295";

/// At most this many `$` in one SEARCH: which of them are search keys (and which strings)
/// is found by trying, 2^n parses at most.
const MAX_SAVED_REFERENCES: usize = 3;

/// The longest command read here. It is copied (and a SEARCH with `$` parsed up to eight
/// times), so a command of a literal's size is refused; these commands are a line or two.
pub const MAX_COMMAND: usize = 64 * 1024;

/// Reads a command imap-codec refused. None: not one of these extensions' commands (the
/// caller answers BAD as for any bad syntax); Err: one of them, wrongly written, with the
/// text of the BAD.
pub fn parse(command: &[u8], saved: SavedSet<'_>) -> Option<Result<Extended, &'static str>> {
    let mut words = Tokens::new(command);
    let (_, tag_range) = words.next()?;
    let tag_bytes = &command[tag_range];
    let tag = Tag::try_from(tag_bytes).ok()?.into_static();
    let (word, _) = words.next()?;
    let mut uid = false;
    let verb = if word.is(b"UID") {
        uid = true;
        words.next()?.0
    } else {
        word
    };
    let verb_end = words.at;
    let ours = [
        "SEARCH", "LIST", "FETCH", "STORE", "COPY", "MOVE", "EXPUNGE",
    ];
    if command.len() > MAX_COMMAND && ours.iter().any(|name| verb.is(name.as_bytes())) {
        return Some(Err("Command too long"));
    }
    if verb.is(b"SEARCH") {
        search(command, tag_bytes, uid, verb_end, words, saved)
    } else if verb.is(b"LIST") && !uid {
        Some(list(command, tag, tag_bytes, words))
    } else {
        let what = [
            ("FETCH", b"FETCH".as_slice()),
            ("STORE", b"STORE"),
            ("COPY", b"COPY"),
            ("MOVE", b"MOVE"),
            ("EXPUNGE", b"EXPUNGE"),
        ]
        .into_iter()
        .find(|(_, name)| verb.is(name) && (uid || *name != b"EXPUNGE"))?
        .0;
        let (Token::Word(b"$"), at) = words.next()? else {
            return None;
        };
        let set = saved(uid);
        let mut plain = command[..at.start].to_vec();
        plain.extend_from_slice(set.as_deref().unwrap_or("1").as_bytes());
        plain.extend_from_slice(&command[at.end..]);
        Some(match (decode(&plain), set) {
            (Some(command), Some(_)) => Ok(Extended::Saved(command)),
            (Some(_), None) => Ok(Extended::Nothing { tag, what }),
            (None, _) => Err("Syntax error"),
        })
    }
}

/// SEARCH with RETURN options (RFC 4731), `$` (RFC 5182), or both; None: neither.
fn search(
    command: &[u8],
    tag: &[u8],
    uid: bool,
    verb_end: usize,
    mut words: Tokens<'_>,
    saved: SavedSet<'_>,
) -> Option<Result<Extended, &'static str>> {
    let mut rest = verb_end;
    let mut returns = None;
    if let Some((word, _)) = words.next()
        && word.is(b"RETURN")
    {
        match search_returns(&mut words) {
            Ok((options, end)) => (returns, rest) = (Some(options), end),
            Err(why) => return Some(Err(why)),
        }
    }
    let mut plain = Vec::with_capacity(command.len());
    plain.extend_from_slice(tag);
    plain.extend_from_slice(if uid { b" UID SEARCH" } else { b" SEARCH" });
    let keys_at = plain.len();
    plain.extend_from_slice(&command[rest..]);
    let references: Vec<std::ops::Range<usize>> = {
        let mut words = Tokens::new(&plain);
        words.at = keys_at;
        std::iter::from_fn(|| words.next())
            .filter(|(token, _)| *token == Token::Word(b"$"))
            .map(|(_, range)| range)
            .collect()
    };
    if returns.is_none() && references.is_empty() {
        return None;
    }
    if references.len() > MAX_SAVED_REFERENCES {
        return Some(Err("Too many $ in one SEARCH"));
    }
    let uids = saved(true);
    let uids = uids.as_deref().unwrap_or(NO_UID);
    // Each `$` that is a search key becomes `UID <its UIDs>` (or its UIDs after the UID
    // key); one that is a string stays. The fewest replacements that parse are right: a
    // key left as `$` never parses, a string replaced still does.
    let mut masks: Vec<u32> = (0u32..1 << references.len()).collect();
    masks.sort_by_key(|mask| mask.count_ones());
    for mask in masks {
        if mask == 0 && returns.is_none() {
            // imap-codec has refused it as it is.
            continue;
        }
        let mut bytes = Vec::with_capacity(plain.len() + references.len() * uids.len());
        let mut from = 0;
        for (i, range) in references.iter().enumerate() {
            if mask & (1 << i) == 0 {
                continue;
            }
            bytes.extend_from_slice(&plain[from..range.start]);
            let after_uid_key = plain[..range.start]
                .strip_suffix(b" ")
                .is_some_and(|before| {
                    before.len() >= keys_at + 3
                        && before[before.len() - 3..].eq_ignore_ascii_case(b"UID")
                        && matches!(before[before.len() - 4], b' ' | b'(')
                });
            if !after_uid_key {
                bytes.extend_from_slice(b"UID ");
            }
            bytes.extend_from_slice(uids.as_bytes());
            from = range.end;
        }
        bytes.extend_from_slice(&plain[from..]);
        if let Some(Command {
            tag,
            body:
                CommandBody::Search {
                    charset,
                    criteria,
                    uid,
                },
        }) = decode(&bytes)
        {
            return Some(Ok(Extended::Search {
                tag,
                uid,
                charset,
                criteria,
                returns,
            }));
        }
    }
    Some(Err("Syntax error in SEARCH keys"))
}

/// RETURN's options, the words after RETURN; with where they end.
fn search_returns(words: &mut Tokens<'_>) -> Result<(SearchReturn, usize), &'static str> {
    const BAD: &str = "Invalid SEARCH RETURN options";
    if words.next().map(|(t, _)| t) != Some(Token::Open) {
        return Err(BAD);
    }
    let mut returns = SearchReturn::default();
    let mut any = false;
    let end = loop {
        match words.next().ok_or(BAD)? {
            (Token::Close, range) => break range.end,
            (Token::Word(option), _) => {
                any = true;
                match option.to_ascii_uppercase().as_slice() {
                    b"MIN" => returns.min = true,
                    b"MAX" => returns.max = true,
                    b"ALL" => returns.all = true,
                    b"COUNT" => returns.count = true,
                    b"SAVE" => returns.save = true,
                    _ => return Err("Unsupported SEARCH RETURN option"),
                }
            }
            _ => return Err(BAD),
        }
    };
    if !any {
        returns.all = true;
    }
    Ok((returns, end))
}

fn list(
    command: &[u8],
    tag: Tag<'static>,
    tag_bytes: &[u8],
    mut words: Tokens<'_>,
) -> Result<Extended, &'static str> {
    const BAD: &str = "Invalid LIST arguments";
    let mut select = ListSelect::default();
    let mut next = words.next().ok_or(BAD)?;
    if next.0 == Token::Open {
        loop {
            match words.next().ok_or(BAD)?.0 {
                Token::Close => break,
                Token::Word(option) => match option.to_ascii_uppercase().as_slice() {
                    b"SUBSCRIBED" => select.subscribed = true,
                    b"RECURSIVEMATCH" => select.recursive_match = true,
                    b"SPECIAL-USE" => select.special_use = true,
                    // Mailboxes on other servers (RFC 5258 3.1): there are none.
                    b"REMOTE" => {}
                    _ => return Err("Unsupported LIST selection option"),
                },
                Token::Open => return Err(BAD),
            }
        }
        next = words.next().ok_or(BAD)?;
    }
    // RFC 5258 3.1: RECURSIVEMATCH only modifies another selection option.
    if select.recursive_match && !select.subscribed {
        return Err("RECURSIVEMATCH needs another selection option");
    }
    let Token::Word(_) = next.0 else {
        return Err(BAD);
    };
    let reference = next.1;
    let mut patterns = Vec::new();
    match words.next().ok_or(BAD)? {
        (Token::Word(_), range) => patterns.push(range),
        (Token::Open, _) => loop {
            match words.next().ok_or(BAD)? {
                (Token::Word(_), range) => patterns.push(range),
                (Token::Close, _) if !patterns.is_empty() => break,
                _ => return Err(BAD),
            }
        },
        _ => return Err(BAD),
    }
    let mut status = None;
    if let Some((word, _)) = words.next() {
        if !word.is(b"RETURN") || words.next().map(|(t, _)| t) != Some(Token::Open) {
            return Err(BAD);
        }
        loop {
            match words.next().ok_or(BAD)?.0 {
                Token::Close => break,
                Token::Word(option) => match option.to_ascii_uppercase().as_slice() {
                    // Always told (RFC 5258 4: a server may return them unasked).
                    b"SUBSCRIBED" | b"CHILDREN" | b"SPECIAL-USE" => {}
                    b"STATUS" => {
                        let (Token::Open, open) = words.next().ok_or(BAD)? else {
                            return Err(BAD);
                        };
                        let close = loop {
                            match words.next().ok_or(BAD)? {
                                (Token::Close, range) => break range.end,
                                (Token::Word(_), _) => {}
                                _ => return Err(BAD),
                            }
                        };
                        let mut plain = tag_bytes.to_vec();
                        plain.extend_from_slice(b" STATUS INBOX ");
                        plain.extend_from_slice(&command[open.start..close]);
                        plain.extend_from_slice(b"\r\n");
                        match decode(&plain) {
                            Some(Command {
                                body: CommandBody::Status { item_names, .. },
                                ..
                            }) => status = Some(item_names.into_owned()),
                            _ => return Err("Invalid STATUS items"),
                        }
                    }
                    _ => return Err("Unsupported LIST return option"),
                },
                Token::Open => return Err(BAD),
            }
        }
        if words.next().is_some() {
            return Err(BAD);
        }
    }
    // Each (reference, pattern) pair as the plain LIST imap-codec reads.
    let mut reference_name = None;
    let mut names = Vec::with_capacity(patterns.len());
    for pattern in patterns {
        let mut plain = tag_bytes.to_vec();
        plain.extend_from_slice(b" LIST ");
        plain.extend_from_slice(&command[reference.clone()]);
        plain.push(b' ');
        plain.extend_from_slice(&command[pattern]);
        plain.extend_from_slice(b"\r\n");
        match decode(&plain) {
            Some(Command {
                body:
                    CommandBody::List {
                        reference,
                        mailbox_wildcard,
                    },
                ..
            }) => {
                reference_name.get_or_insert(reference);
                names.push(mailbox_wildcard);
            }
            _ => return Err("Invalid mailbox name or pattern"),
        }
    }
    Ok(Extended::List(ListExtended {
        tag,
        reference: reference_name.ok_or(BAD)?,
        patterns: names,
        select,
        status,
    }))
}

/// A whole command, as imap-codec reads it; None unless it reads all of it.
fn decode(bytes: &[u8]) -> Option<Command<'static>> {
    match CommandCodec::default().decode(bytes) {
        Ok(([], command)) => Some(command.into_static()),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    Open,
    Close,
    /// An atom, a quoted string or a literal, as written (the caller hands it to imap-codec).
    Word(&'a [u8]),
}

impl Token<'_> {
    fn is(&self, word: &[u8]) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(word))
    }
}

/// A command's words and parentheses, with where each is in it; ends at the line's end or
/// at anything it cannot tell the end of.
struct Tokens<'a> {
    input: &'a [u8],
    at: usize,
}

impl<'a> Tokens<'a> {
    fn new(input: &'a [u8]) -> Self {
        Tokens { input, at: 0 }
    }

    fn next(&mut self) -> Option<(Token<'a>, std::ops::Range<usize>)> {
        let input = self.input;
        if self.at > 0 && input.get(self.at) == Some(&b' ') {
            self.at += 1;
        }
        let start = self.at;
        let end = match *input.get(start)? {
            b'(' | b')' => start + 1,
            b'"' => {
                let mut i = start + 1;
                loop {
                    match *input.get(i)? {
                        b'\\' => i += 2,
                        b'"' => break i + 1,
                        b'\r' | b'\n' => return None,
                        _ => i += 1,
                    }
                }
            }
            b'{' => {
                let close = start + input[start..].iter().position(|&b| b == b'}')?;
                let digits = input[start + 1..close]
                    .strip_suffix(b"+")
                    .or_else(|| input[start + 1..close].strip_suffix(b"-"))
                    .unwrap_or(&input[start + 1..close]);
                if digits.is_empty() || digits.len() > 10 {
                    return None;
                }
                let length: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
                let data = if input[close + 1..].starts_with(b"\r\n") {
                    close + 3
                } else if input[close + 1..].starts_with(b"\n") {
                    close + 2
                } else {
                    return None;
                };
                let end = data.checked_add(length)?;
                if end > input.len() {
                    return None;
                }
                end
            }
            b' ' | b'\r' | b'\n' => return None,
            _ => {
                start
                    + input[start..]
                        .iter()
                        .position(|&b| matches!(b, b' ' | b'(' | b')' | b'\r' | b'\n'))
                        .unwrap_or(input.len() - start)
            }
        };
        self.at = end;
        let token = match input[start] {
            b'(' => Token::Open,
            b')' => Token::Close,
            _ => Token::Word(&input[start..end]),
        };
        Some((token, start..end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imap_next::imap_types::sequence::SequenceSet;

    /// Parsed with `$` naming UIDs 3 and 5, messages 2 and 3.
    fn parse_(command: &[u8]) -> Option<Result<Extended, &'static str>> {
        parse(command, &|uid| {
            Some(if uid { "3,5" } else { "2:3" }.to_owned())
        })
    }

    struct Searched {
        tag: Tag<'static>,
        uid: bool,
        charset: Option<Charset<'static>>,
        criteria: Vec1<SearchKey<'static>>,
        returns: Option<SearchReturn>,
    }

    fn search_of(line: &[u8]) -> Searched {
        match parse_(line) {
            Some(Ok(Extended::Search {
                tag,
                uid,
                charset,
                criteria,
                returns,
            })) => Searched {
                tag,
                uid,
                charset,
                criteria,
                returns,
            },
            other => panic!("not a search: {other:?}"),
        }
    }

    fn list_of(line: &[u8]) -> ListExtended {
        match parse_(line) {
            Some(Ok(Extended::List(list))) => list,
            other => panic!("not a list: {other:?}"),
        }
    }

    #[test]
    fn search_return_options_are_read_and_the_keys_left_to_the_parser() {
        let search = search_of(b"A1 UID SEARCH RETURN (MIN count) UNSEEN\r\n");
        assert_eq!(search.tag.as_ref(), "A1");
        assert_eq!(
            search.returns,
            Some(SearchReturn {
                min: true,
                count: true,
                ..SearchReturn::default()
            })
        );
        assert!(search.uid);
        assert_eq!(search.criteria.as_ref(), &[SearchKey::Unseen]);

        // RETURN () is ALL (RFC 4731 3.1); keys may carry literals and parentheses.
        let search =
            search_of(b"b search return () CHARSET UTF-8 (OR SUBJECT {4}\r\n(hi) FROM x)\r\n");
        assert_eq!(
            search.returns,
            Some(SearchReturn {
                all: true,
                ..SearchReturn::default()
            })
        );
        assert!(!search.uid);
        assert!(search.charset.is_some());
        assert_eq!(search.criteria.as_ref().len(), 1);
    }

    #[test]
    fn bad_search_returns_are_told_apart_from_other_commands() {
        assert_eq!(
            parse_(b"A SEARCH RETURN (PARTIAL 1:10) ALL\r\n"),
            Some(Err("Unsupported SEARCH RETURN option"))
        );
        assert_eq!(
            parse_(b"A SEARCH RETURN (MIN ALL\r\n"),
            Some(Err("Invalid SEARCH RETURN options"))
        );
        assert_eq!(
            parse_(b"A SEARCH RETURN (MIN) NOSUCHKEY\r\n"),
            Some(Err("Syntax error in SEARCH keys"))
        );
        assert_eq!(
            parse_(b"A SEARCH RETURN (MIN)\r\n"),
            Some(Err("Syntax error in SEARCH keys"))
        );
        // Not these extensions: the caller's plain BAD.
        assert_eq!(parse_(b"A SEARCH NOSUCHKEY\r\n"), None);
        assert_eq!(parse_(b"A FETCH x\r\n"), None);
        assert_eq!(parse_(b"\r\n"), None);
        assert_eq!(parse_(b"+ SEARCH RETURN () ALL\r\n"), None);
    }

    #[test]
    fn list_extended_options_patterns_and_status_items() {
        let list = list_of(
            b"L1 LIST (SUBSCRIBED RECURSIVEMATCH remote) \"\" (\"INBOX\" %/ {3}\r\na*b) RETURN (CHILDREN STATUS (MESSAGES UNSEEN SIZE))\r\n",
        );
        assert_eq!(list.tag.as_ref(), "L1");
        assert_eq!(
            list.select,
            ListSelect {
                subscribed: true,
                recursive_match: true,
                special_use: false,
            }
        );
        let patterns: Vec<Vec<u8>> = list.patterns.iter().map(crate::names::list_text).collect();
        assert_eq!(
            patterns,
            vec![b"INBOX".to_vec(), b"%/".to_vec(), b"a*b".to_vec()]
        );
        assert_eq!(
            list.status,
            Some(vec![
                StatusDataItemName::Messages,
                StatusDataItemName::Unseen,
                StatusDataItemName::Size,
            ])
        );

        let list = list_of(b"L2 LIST (SPECIAL-USE) \"\" *\r\n");
        assert!(list.select.special_use);
        assert_eq!(list.status, None);
        let list = list_of(b"L3 LIST \"\" % RETURN (SPECIAL-USE)\r\n");
        assert_eq!(list.select, ListSelect::default());
    }

    #[test]
    fn bad_list_extended_commands_get_their_reason() {
        for (line, why) in [
            (
                &b"L LIST (RECURSIVEMATCH) \"\" *\r\n"[..],
                "RECURSIVEMATCH needs another selection option",
            ),
            (
                b"L LIST (NOSUCH) \"\" *\r\n",
                "Unsupported LIST selection option",
            ),
            (
                b"L LIST \"\" * RETURN (NOSUCH)\r\n",
                "Unsupported LIST return option",
            ),
            (
                b"L LIST \"\" * RETURN (STATUS (NOSUCH))\r\n",
                "Invalid STATUS items",
            ),
            (b"L LIST \"\" () \r\n", "Invalid LIST arguments"),
            (b"L LIST \"\" * extra\r\n", "Invalid LIST arguments"),
            (
                b"L LIST \"\" * RETURN (CHILDREN) x\r\n",
                "Invalid LIST arguments",
            ),
            (
                b"L LIST () \"\" {99}\r\nshort\r\n",
                "Invalid LIST arguments",
            ),
            (b"L LIST \"\" \"a\r\n", "Invalid LIST arguments"),
        ] {
            assert_eq!(
                parse_(line),
                Some(Err(why)),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(parse_(b"L UID LIST \"\" *\r\n"), None);
        // A literal's worth of command is not copied and parsed again.
        let mut long = b"L SEARCH RETURN (MIN) TEXT {70000}\r\n".to_vec();
        long.resize(long.len() + 70_000, b'x');
        long.extend_from_slice(b"\r\n");
        assert_eq!(parse_(&long), Some(Err("Command too long")));
    }

    #[test]
    fn saved_results_are_written_in_where_a_set_or_a_key_goes() {
        let uid_set = |text: &str| SequenceSet::try_from(text).unwrap();
        // FETCH, STORE, COPY, MOVE, UID EXPUNGE: by message number or by UID.
        for (line, expected) in [
            (&b"f FETCH $ (FLAGS)\r\n"[..], "2:3"),
            (b"f UID FETCH $ (FLAGS)\r\n", "3,5"),
            (b"f STORE $ +FLAGS (\\Seen)\r\n", "2:3"),
            (b"f UID COPY $ Archive\r\n", "3,5"),
            (b"f MOVE $ $\r\n", "2:3"),
            (b"f UID EXPUNGE $\r\n", "3,5"),
        ] {
            let Some(Ok(Extended::Saved(command))) = parse_(line) else {
                panic!("{}", String::from_utf8_lossy(line));
            };
            let set = match command.body {
                CommandBody::Fetch { sequence_set, .. }
                | CommandBody::Store { sequence_set, .. }
                | CommandBody::Copy { sequence_set, .. }
                | CommandBody::ExpungeUid { sequence_set } => sequence_set,
                CommandBody::Move {
                    sequence_set,
                    mailbox,
                    ..
                } => {
                    // The second `$` is the mailbox's name.
                    assert_eq!(mailbox, Mailbox::try_from("$").unwrap());
                    sequence_set
                }
                other => panic!("{other:?}"),
            };
            assert_eq!(set, uid_set(expected));
        }
        // An empty `$` does nothing, once the rest is known to be right.
        let nothing = |line: &[u8]| parse(line, &|_| None);
        assert_eq!(
            nothing(b"n FETCH $ FLAGS\r\n"),
            Some(Ok(Extended::Nothing {
                tag: Tag::try_from("n").unwrap(),
                what: "FETCH"
            }))
        );
        assert_eq!(
            nothing(b"n FETCH $ (NOSUCH)\r\n"),
            Some(Err("Syntax error"))
        );
        assert_eq!(parse_(b"n EXPUNGE $\r\n"), None);
        assert_eq!(parse_(b"n FETCH 1 $\r\n"), None);

        // In SEARCH, `$` as a key is `UID <set>`, after the UID key its set; as a string it
        // stays.
        let key = |line: &[u8]| search_of(line).criteria.into_inner();
        assert_eq!(key(b"s SEARCH $\r\n"), vec![SearchKey::Uid(uid_set("3,5"))]);
        assert_eq!(
            key(b"s SEARCH UID $ SUBJECT $ OR $ (SEEN)\r\n"),
            vec![
                SearchKey::Uid(uid_set("3,5")),
                SearchKey::Subject("$".try_into().unwrap()),
                SearchKey::Or(
                    Box::new(SearchKey::Uid(uid_set("3,5"))),
                    Box::new(SearchKey::And(vec![SearchKey::Seen].try_into().unwrap()))
                ),
            ]
        );
        let search = search_of(b"s UID SEARCH RETURN (SAVE MIN) $ TEXT \"$\"\r\n");
        assert!(search.returns.is_some_and(|r| r.save && r.min));
        let criteria = search.criteria.into_inner();
        assert_eq!(criteria[0], SearchKey::Uid(uid_set("3,5")));
        assert!(
            matches!(&criteria[1], SearchKey::Text(text) if text.as_ref() == b"$"),
            "{criteria:?}"
        );
        // Empty: a UID no message has.
        let Some(Ok(Extended::Search { criteria, .. })) = parse(b"s SEARCH $\r\n", &|_| None)
        else {
            panic!()
        };
        assert_eq!(criteria.into_inner(), vec![SearchKey::Uid(uid_set(NO_UID))]);
        assert_eq!(
            parse_(b"s SEARCH $ $ $ $\r\n"),
            Some(Err("Too many $ in one SEARCH"))
        );
        assert_eq!(
            parse_(b"s SEARCH $ NOSUCH\r\n"),
            Some(Err("Syntax error in SEARCH keys"))
        );
    }
}
