use super::*;
use proptest::prelude::*;

fn frames(items: &[Item]) -> Vec<Frame> {
    items
        .iter()
        .filter_map(|item| match item {
            Item::Frame(frame) => Some(without_length(frame.clone())),
            Item::HeartBeat => None,
        })
        .collect()
}

fn without_length(mut frame: Frame) -> Frame {
    frame.headers.retain(|(name, _)| name != "content-length");
    frame
}

#[test]
fn a_message_frame_with_escapes_and_a_body() {
    let bytes = b"MESSAGE\r\nsubscription:0\nmessage-id:a\\cb\\\\c\\n\nack:7\ncontent-length:5\n\nhe\0lo\0\n\n";
    let (items, error) = decode_all(bytes, Limits::default());
    assert_eq!(error, None);
    assert_eq!(items.len(), 3);
    let Item::Frame(frame) = &items[0] else {
        panic!("not a frame: {items:?}");
    };
    assert_eq!(frame.command, "MESSAGE");
    assert_eq!(frame.header("message-id"), Some("a:b\\c\n"));
    assert_eq!(frame.header("ack"), Some("7"));
    assert_eq!(frame.body, b"he\0lo");
    assert_eq!(items[1], Item::HeartBeat);
}

#[test]
fn the_first_repeated_header_wins() {
    let (items, _) = decode_all(b"MESSAGE\nfoo:1\nfoo:2\n\n\0", Limits::default());
    let Item::Frame(frame) = &items[0] else {
        panic!("not a frame");
    };
    assert_eq!(frame.header("foo"), Some("1"));
}

#[test]
fn connected_headers_are_not_unescaped() {
    let (items, error) = decode_all(b"CONNECTED\nserver:a\\b\n\n\0", Limits::default());
    assert_eq!(error, None);
    let Item::Frame(frame) = &items[0] else {
        panic!("not a frame");
    };
    assert_eq!(frame.header("server"), Some("a\\b"));
}

#[test]
fn malformed_frames_are_errors() {
    let cases: [(&[u8], DecodeError); 9] = [
        (b"MESSAGE\nfoo\n\n\0", DecodeError::HeaderWithoutColon),
        (b"MESSAGE\nfoo:\\t\n\n\0", DecodeError::BadEscape),
        (
            b"MESSAGE\ncontent-length:x\n\n\0",
            DecodeError::BadContentLength,
        ),
        (
            b"MESSAGE\ncontent-length:1\n\nab\0",
            DecodeError::MissingNul,
        ),
        (b"\rX", DecodeError::NoCommand),
        (b"MESSAGE\nk:\xff\n\n\0", DecodeError::NotUtf8),
        (b"\xff\n\n\0", DecodeError::BadCommand),
        // A command line ending in two CRs: one ends the line, the other is no command's.
        (b"MESSAGE\r\r\n\n\0", DecodeError::BadCommand),
        (b"Message\n\n\0", DecodeError::BadCommand),
    ];
    for (bytes, expected) in cases {
        let (_, error) = decode_all(bytes, Limits::default());
        assert_eq!(
            error,
            Some(expected),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn limits_bound_head_and_body() {
    let limits = Limits {
        max_head: 16,
        max_body: 4,
    };
    let (_, error) = decode_all(b"MESSAGE\nlong-header-name:1\n\n\0", limits);
    assert_eq!(error, Some(DecodeError::HeadTooLong(16)));
    let (_, error) = decode_all(b"MESSAGE\n\n12345", limits);
    assert_eq!(error, Some(DecodeError::BodyTooLong(4)));
    let (_, error) = decode_all(
        b"M\ncontent-length:9\n\n",
        Limits {
            max_head: 64,
            max_body: 4,
        },
    );
    assert_eq!(error, Some(DecodeError::BodyTooLong(4)));
    // No allocation waits for a head that never ends.
    let (_, error) = decode_all(&[b'a'; 40], limits);
    assert_eq!(error, Some(DecodeError::HeadTooLong(16)));
}

#[test]
fn after_an_error_the_decoder_refuses_more() {
    let mut decoder = Decoder::default();
    decoder.push(b"MESSAGE\nfoo\n\n\0");
    assert!(decoder.next_item().is_err());
    decoder.push(b"MESSAGE\n\n\0");
    assert_eq!(decoder.next_item(), Err(DecodeError::Failed));
}

#[test]
fn heart_beats_negotiate_as_the_specification_says() {
    assert_eq!(parse_heart_beat("10000, 5000"), Some((10000, 5000)));
    assert_eq!(parse_heart_beat("x,1"), None);
    assert_eq!(negotiate_heart_beat((10000, 10000), (0, 0)), (0, 0));
    assert_eq!(
        negotiate_heart_beat((10000, 10000), (4000, 20000)),
        (20000, 10000)
    );
    assert_eq!(negotiate_heart_beat((0, 10000), (4000, 20000)), (0, 10000));
}

#[test]
fn the_debug_form_hides_header_values() {
    let frame = Frame::new("CONNECT").with("passcode", "hunter2");
    assert!(!format!("{frame:?}").contains("hunter2"));
}

fn header_text() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-z:\\\\\r\n\u{e9}-]{0,12}").expect("a valid regex")
}

fn frame() -> impl Strategy<Value = Frame> {
    (
        prop_oneof![
            Just("MESSAGE"),
            Just("RECEIPT"),
            Just("ERROR"),
            Just("SEND")
        ],
        proptest::collection::vec((header_text(), header_text()), 0..5),
        proptest::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(command, headers, body)| Frame {
            command: command.to_owned(),
            headers: headers
                .into_iter()
                .filter(|(name, _)| !name.is_empty() && name != "content-length")
                .collect(),
            body,
        })
}

fn stream() -> impl Strategy<Value = (Vec<Frame>, Vec<u8>)> {
    proptest::collection::vec((frame(), 0usize..3, any::<bool>()), 0..5).prop_map(|parts| {
        let mut bytes = Vec::new();
        let mut frames = Vec::new();
        for (frame, beats, crlf) in parts {
            for _ in 0..beats {
                bytes.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            }
            bytes.extend_from_slice(&frame.encode());
            frames.push(frame);
        }
        (frames, bytes)
    })
}

fn split_at_points(bytes: &[u8], mut points: Vec<usize>) -> Vec<&[u8]> {
    points.retain(|&p| p <= bytes.len());
    points.sort_unstable();
    points.dedup();
    let mut chunks = Vec::new();
    let mut start = 0;
    for point in points {
        chunks.push(&bytes[start..point]);
        start = point;
    }
    chunks.push(&bytes[start..]);
    chunks
}

fn decode_chunks(chunks: &[&[u8]]) -> (Vec<Item>, Option<DecodeError>) {
    let mut decoder = Decoder::default();
    let mut items = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        loop {
            match decoder.next_item() {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(error) => return (items, Some(error)),
            }
        }
    }
    (items, None)
}

proptest! {
    #[test]
    fn encoded_frames_decode_to_themselves((frames_in, bytes) in stream()) {
        let (items, error) = decode_all(&bytes, Limits::default());
        prop_assert_eq!(error, None);
        prop_assert_eq!(frames(&items), frames_in);
    }

    #[test]
    fn any_split_of_a_stream_decodes_the_same(
        (_, bytes) in stream(),
        points in proptest::collection::vec(0usize..400, 0..12),
    ) {
        let whole = decode_all(&bytes, Limits::default());
        let chunks = split_at_points(&bytes, points);
        prop_assert_eq!(decode_chunks(&chunks), whole);
    }

    #[test]
    fn any_split_of_arbitrary_bytes_decodes_the_same(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        points in proptest::collection::vec(0usize..300, 0..12),
    ) {
        // No panic on any input, and the same items and error however the bytes arrive.
        let limits = Limits { max_head: 64, max_body: 64 };
        let whole = decode_all(&bytes, limits);
        let chunks = split_at_points(&bytes, points);
        let mut decoder = Decoder::new(limits);
        let mut items = Vec::new();
        let mut error = None;
        'chunks: for chunk in chunks {
            decoder.push(chunk);
            loop {
                match decoder.next_item() {
                    Ok(Some(item)) => items.push(item),
                    Ok(None) => break,
                    Err(e) => { error = Some(e); break 'chunks; }
                }
            }
        }
        prop_assert_eq!((items, error), whole);
    }

    #[test]
    fn whatever_decodes_encodes_to_itself(
        bytes in proptest::collection::vec(
            prop_oneof![
                Just(b'\r'), Just(b'\n'), Just(b':'), Just(b'\\'), Just(0u8),
                b'A'..=b'Z', any::<u8>(),
            ],
            0..200,
        ),
    ) {
        // A frame read from any bytes is one this side writes back unchanged (but for
        // content-length, which encoding sets).
        let (items, _) = decode_all(&bytes, Limits::default());
        for frame in frames(&items) {
            if !frame.escapes() {
                continue;
            }
            let (again, error) = decode_all(&frame.encode(), Limits::default());
            prop_assert_eq!(error, None);
            prop_assert_eq!(frames(&again), vec![frame]);
        }
    }
}
