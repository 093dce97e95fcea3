//! Usage records on arbitrary bytes: as a queued message and as a file in both formats.
//! Besides not panicking: an accepted record survives its wire form unchanged, its
//! rounded amount is never below the users' rounded split minus one cent per user, and
//! every file error names a line inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use puhuri_approver::usage::UsageRecord;
use puhuri_approver::usage::file::{Format, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = UsageRecord::decode(data) {
        let body = serde_json::to_vec(&record.to_raw()).expect("serializable");
        assert_eq!(UsageRecord::decode(&body).as_ref(), Ok(&record));
        let split: i128 = record.users.values().map(|a| a.cents()).sum();
        assert!(split <= record.amount.cents() + record.users.len() as i128);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let lines = text.lines().count().max(1);
        for format in [Format::Csv, Format::Jsonl] {
            let parsed = parse(text, format);
            for error in &parsed.errors {
                assert!(
                    (1..=lines).contains(&error.line),
                    "line {} of {lines}",
                    error.line
                );
            }
            for (line, _) in &parsed.records {
                assert!((1..=lines).contains(line));
            }
        }
    }
});
