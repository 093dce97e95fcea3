//! Payload parsing of both formats on arbitrary bytes. Besides not panicking: an accepted
//! allocation names at least one uuid, and anything accepted passed the JSON limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use puhuri_approver::config::PayloadFormat;
use puhuri_approver::notification::{Parsed, check_json_limits, parse_payload};

fuzz_target!(|data: &[u8]| {
    let limits = check_json_limits(data);
    for format in [PayloadFormat::Allocation, PayloadFormat::WaldurHook] {
        match parse_payload(format, data) {
            Ok(parsed) => {
                assert!(limits.is_ok(), "accepted a body over the limits");
                assert!(serde_json::from_slice::<serde_json::Value>(data).is_ok());
                if let Parsed::Allocation { hint, .. } = parsed {
                    assert!(hint.order_uuid.is_some() || hint.resource_uuid.is_some());
                }
            }
            Err(error) => {
                // Every refusal has a stable cause and a message.
                assert!(!error.cause().is_empty());
                assert!(!error.to_string().is_empty());
            }
        }
    }
});
