//! `text::sanitize`: no control, format (Cf) or line/paragraph separator character survives, quotes are
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
        // Bidi marks, embeddings, overrides and isolates, the Arabic letter mark, zero-width
        // and invisible characters, tags, and the line and paragraph separators.
        !out.chars().any(|c| matches!(
            c,
            '\u{ad}'
                | '\u{61c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{e0001}'
                | '\u{e0020}'..='\u{e007f}'
        )),
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
