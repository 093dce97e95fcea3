//! STOMP 1.2 frames (<https://stomp.github.io/stomp-specification-1.2.html>): encoding with
//! header escaping and `content-length`, and [`Decoder`], an incremental parser fed any split
//! of the byte stream. No IO: the caller moves bytes (here, WebSocket messages).
//!
//! The decoder is bounded ([`Limits`]): a head or body larger than the limit is an error, not
//! an allocation. Every error is fatal for the connection, as the specification says of
//! malformed frames; the decoder refuses further input after one.

use std::fmt;

/// One STOMP frame. Header names and values are kept unescaped; the first occurrence of a
/// repeated header is the one [`Frame::header`] returns (STOMP 1.2: "only the first header
/// entry SHOULD be used").
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl fmt::Debug for Frame {
    /// Header values are not printed: a `CONNECT` frame carries the passcode.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Frame")
            .field("command", &self.command)
            .field("headers", &names)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Frame {
    pub fn new(command: impl Into<String>) -> Self {
        Self {
            command: command.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header (builder style).
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `CONNECT` and `CONNECTED` frames carry their headers unescaped (STOMP 1.2).
    fn escapes(&self) -> bool {
        !matches!(self.command.as_str(), "CONNECT" | "CONNECTED")
    }

    /// The frame's bytes: command, headers (escaped unless `CONNECT`/`CONNECTED`), a
    /// `content-length` when the body is not empty and none is given, the body and the NUL.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.body.len());
        out.extend_from_slice(self.command.as_bytes());
        out.push(b'\n');
        let escape = self.escapes();
        for (name, value) in &self.headers {
            if name == "content-length" {
                continue;
            }
            push_header_part(&mut out, name, escape);
            out.push(b':');
            push_header_part(&mut out, value, escape);
            out.push(b'\n');
        }
        if !self.body.is_empty() || self.command == "SEND" || self.command == "MESSAGE" {
            out.extend_from_slice(b"content-length:");
            out.extend_from_slice(self.body.len().to_string().as_bytes());
            out.push(b'\n');
        }
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out.push(0);
        out
    }
}

fn push_header_part(out: &mut Vec<u8>, text: &str, escape: bool) {
    if !escape {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    for byte in text.bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b':' => out.extend_from_slice(b"\\c"),
            other => out.push(other),
        }
    }
}

/// What the decoder found next in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Frame(Frame),
    /// One EOL between frames: a heart-beat.
    HeartBeat,
}

/// Why a stream cannot be read on. Fatal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the frame's head is longer than {0} bytes")]
    HeadTooLong(usize),
    #[error("the frame's body is longer than {0} bytes")]
    BodyTooLong(usize),
    #[error("the frame has no command")]
    NoCommand,
    #[error("the frame's command is not a STOMP command (capital letters A-Z)")]
    BadCommand,
    #[error("the frame's command or a header is not UTF-8")]
    NotUtf8,
    #[error("a header line has no colon")]
    HeaderWithoutColon,
    #[error("a header has an undefined escape sequence")]
    BadEscape,
    #[error("the content-length header is not a number")]
    BadContentLength,
    #[error("the frame's body is not followed by a NUL octet")]
    MissingNul,
    #[error("the stream failed before")]
    Failed,
}

/// Bounds on what one frame may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Command and headers, including their EOLs.
    pub max_head: usize,
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head: 64 * 1024,
            max_body: 4 * 1024 * 1024,
        }
    }
}

/// The incremental decoder: [`Decoder::push`] bytes as they arrive, then take items with
/// [`Decoder::next_item`] until it answers `Ok(None)` (more bytes needed). Any split of the
/// same stream yields the same items.
#[derive(Debug, Default)]
pub struct Decoder {
    buffer: Vec<u8>,
    limits: Limits,
    failed: bool,
}

/// A head that has been parsed, waiting for its body.
struct Head {
    frame: Frame,
    body_start: usize,
    content_length: Option<usize>,
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Self {
            buffer: Vec::new(),
            limits,
            failed: false,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.buffer.extend_from_slice(bytes);
        }
    }

    /// Bytes received and not yet returned as an item.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    pub fn next_item(&mut self) -> Result<Option<Item>, DecodeError> {
        if self.failed {
            return Err(DecodeError::Failed);
        }
        match self.parse() {
            Ok(Some((item, used))) => {
                self.buffer.drain(..used);
                Ok(Some(item))
            }
            Ok(None) => Ok(None),
            Err(error) => {
                self.failed = true;
                self.buffer = Vec::new();
                Err(error)
            }
        }
    }

    fn parse(&self) -> Result<Option<(Item, usize)>, DecodeError> {
        let buf = &self.buffer;
        match buf.first() {
            None => return Ok(None),
            Some(b'\n') => return Ok(Some((Item::HeartBeat, 1))),
            Some(b'\r') => {
                return match buf.get(1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some((Item::HeartBeat, 2))),
                    // A CR not followed by LF cannot start a command line.
                    Some(_) => Err(DecodeError::NoCommand),
                };
            }
            Some(_) => {}
        }
        let Some(head) = self.head()? else {
            return Ok(None);
        };
        let rest = &buf[head.body_start..];
        match head.content_length {
            Some(length) => {
                if length > self.limits.max_body {
                    return Err(DecodeError::BodyTooLong(self.limits.max_body));
                }
                if rest.len() <= length {
                    return Ok(None);
                }
                if rest[length] != 0 {
                    return Err(DecodeError::MissingNul);
                }
                let mut frame = head.frame;
                frame.body = rest[..length].to_vec();
                Ok(Some((Item::Frame(frame), head.body_start + length + 1)))
            }
            None => match rest.iter().position(|&b| b == 0) {
                Some(end) if end > self.limits.max_body => {
                    Err(DecodeError::BodyTooLong(self.limits.max_body))
                }
                Some(end) => {
                    let mut frame = head.frame;
                    frame.body = rest[..end].to_vec();
                    Ok(Some((Item::Frame(frame), head.body_start + end + 1)))
                }
                None if rest.len() > self.limits.max_body => {
                    Err(DecodeError::BodyTooLong(self.limits.max_body))
                }
                None => Ok(None),
            },
        }
    }

    /// The head, once its blank line has arrived.
    fn head(&self) -> Result<Option<Head>, DecodeError> {
        let buf = &self.buffer;
        let mut lines: Vec<&[u8]> = Vec::new();
        let mut start = 0;
        let body_start = loop {
            let Some(offset) = buf[start..].iter().position(|&b| b == b'\n') else {
                if buf.len() > self.limits.max_head {
                    return Err(DecodeError::HeadTooLong(self.limits.max_head));
                }
                return Ok(None);
            };
            let end = start + offset;
            if end + 1 > self.limits.max_head {
                return Err(DecodeError::HeadTooLong(self.limits.max_head));
            }
            let line = buf[start..end]
                .strip_suffix(b"\r")
                .unwrap_or(&buf[start..end]);
            start = end + 1;
            if line.is_empty() {
                break start;
            }
            lines.push(line);
        };
        let Some((command, headers)) = lines.split_first() else {
            return Err(DecodeError::NoCommand);
        };
        // Every STOMP 1.2 command is capital letters; anything else (a stray CR, control
        // bytes) is not a frame this side could encode again.
        if !command.iter().all(u8::is_ascii_uppercase) {
            return Err(DecodeError::BadCommand);
        }
        let command = std::str::from_utf8(command).map_err(|_| DecodeError::NotUtf8)?;
        let mut frame = Frame::new(command);
        let escape = frame.escapes();
        let mut content_length = None;
        for line in headers {
            let colon = line
                .iter()
                .position(|&b| b == b':')
                .ok_or(DecodeError::HeaderWithoutColon)?;
            let name = unescape(&line[..colon], escape)?;
            let value = unescape(&line[colon + 1..], escape)?;
            if name == "content-length" && content_length.is_none() {
                content_length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| DecodeError::BadContentLength)?,
                );
            }
            frame.headers.push((name, value));
        }
        Ok(Some(Head {
            frame,
            body_start,
            content_length,
        }))
    }
}

fn unescape(raw: &[u8], escape: bool) -> Result<String, DecodeError> {
    let text = std::str::from_utf8(raw).map_err(|_| DecodeError::NotUtf8)?;
    if !escape || !text.contains('\\') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('c') => out.push(':'),
            _ => return Err(DecodeError::BadEscape),
        }
    }
    Ok(out)
}

/// Decodes a whole byte string at once: every item up to the first error or the end.
pub fn decode_all(bytes: &[u8], limits: Limits) -> (Vec<Item>, Option<DecodeError>) {
    let mut decoder = Decoder::new(limits);
    decoder.push(bytes);
    let mut items = Vec::new();
    loop {
        match decoder.next_item() {
            Ok(Some(item)) => items.push(item),
            Ok(None) => return (items, None),
            Err(error) => return (items, Some(error)),
        }
    }
}

/// The `heart-beat` header's two numbers (`cx,cy`), milliseconds.
pub fn parse_heart_beat(value: &str) -> Option<(u64, u64)> {
    let (x, y) = value.split_once(',')?;
    Some((x.trim().parse().ok()?, y.trim().parse().ok()?))
}

/// The negotiated intervals in milliseconds (0 = none), from what this side offers
/// (`cx` it can send, `cy` it wants) and what the server answered in `CONNECTED`:
/// `(send, expect)` — how often this side sends a heart-beat, and how often the server will.
pub fn negotiate_heart_beat(offer: (u64, u64), server: (u64, u64)) -> (u64, u64) {
    let (cx, cy) = offer;
    let (sx, sy) = server;
    let send = if cx == 0 || sy == 0 { 0 } else { cx.max(sy) };
    let expect = if sx == 0 || cy == 0 { 0 } else { sx.max(cy) };
    (send, expect)
}

#[cfg(test)]
mod tests;
