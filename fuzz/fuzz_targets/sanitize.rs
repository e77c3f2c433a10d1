//! `text::sanitize`: no control or invisible formatting character survives, quotes are
//! escaped, and the length is bounded by `max`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&max, rest)) = data.split_first() else {
        return;
    };
    let input = String::from_utf8_lossy(rest);
    let max = usize::from(max);
    let out = pam_truid::text::sanitize(&input, max);
    assert!(!out.chars().any(char::is_control), "{out:?}");
    assert!(
        !out.chars().any(|c| matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')),
        "{out:?}"
    );
    // Every quote is escaped: after removing escaped pairs, no bare quote is left.
    let mut chars = out.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '"' => panic!("bare quote in {out:?}"),
            _ => {}
        }
    }
    // At most `max` input characters, each at most 10 output characters ("\u{10ffff}"),
    // plus "...".
    assert!(out.chars().count() <= max * 10 + 3, "{}", out.len());
    if input.chars().count() <= max && input.chars().all(|c| c.is_ascii_alphanumeric()) {
        assert_eq!(out, input);
    }
});
