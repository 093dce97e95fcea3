//! The STOMP frame decoder on arbitrary bytes. Besides not panicking: the input split in two at
//! a point taken from its first byte decodes to the same items and error as the whole, and
//! every decoded frame encodes to bytes that decode to it again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use puhuri_stomp::{Decoder, Item, Limits, decode_all};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_head: 1024,
        max_body: 4096,
    };
    let whole = decode_all(data, limits);
    let split = data.first().map_or(0, |&b| usize::from(b) % (data.len() + 1));
    let mut decoder = Decoder::new(limits);
    let mut items = Vec::new();
    let mut error = None;
    'chunks: for chunk in [&data[..split], &data[split..]] {
        decoder.push(chunk);
        loop {
            match decoder.next_item() {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break 'chunks;
                }
            }
        }
    }
    assert_eq!((items, error), whole);
    for item in whole.0 {
        if let Item::Frame(frame) = item {
            if matches!(frame.command.as_str(), "CONNECT" | "CONNECTED") {
                continue;
            }
            // Escaping at most doubles a header's bytes, and encoding adds content-length.
            let room = Limits {
                max_head: 2 * limits.max_head + 64,
                ..limits
            };
            let (again, error) = decode_all(&frame.encode(), room);
            assert_eq!(error, None);
            let Some(Item::Frame(decoded)) = again.into_iter().next() else {
                panic!("an encoded frame did not decode");
            };
            let strip = |f: &puhuri_stomp::Frame| {
                let mut f = f.clone();
                f.headers.retain(|(n, _)| n != "content-length");
                f
            };
            assert_eq!(strip(&decoded), strip(&frame));
        }
    }
});
