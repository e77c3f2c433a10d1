//! Making untrusted text (user names, remote hosts, server answers) safe to log or show.

/// Escapes control characters, quotes and backslashes, and cuts the text at `max` characters,
/// so that text from a client or from the server can neither forge a log line nor drive a
/// terminal with escape sequences.
pub fn sanitize(input: &str, max: usize) -> String {
    let mut out = String::with_capacity(input.len().min(max) + 2);
    for (n, c) in input.chars().enumerate() {
        if n == max {
            out.push_str("...");
            break;
        }
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || is_invisible_format(c) => {
                let code = c as u32;
                if code <= 0xff {
                    out.push_str(&format!("\\x{code:02x}"));
                } else {
                    out.push_str(&format!("\\u{{{code:x}}}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Characters that are not control characters but can still break, reorder or hide text on a
/// screen or in a log: every format character (Unicode category Cf: bidi marks, embeddings,
/// overrides and isolates, the Arabic letter mark, zero-width and invisible operators, tags)
/// and the line and paragraph separators (Zl, Zp), which some viewers break lines at.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{600}'..='\u{605}'
            | '\u{61c}'
            | '\u{6dd}'
            | '\u{70f}'
            | '\u{890}'..='\u{891}'
            | '\u{8e2}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{110bd}'
            | '\u{110cd}'
            | '\u{13430}'..='\u{1343f}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0001}'
            | '\u{e0020}'..='\u{e007f}'
    )
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex of random bytes from the operating system.
pub fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    // SystemRandom reads getrandom(2); on the impossible failure the zero bytes still give a
    // well-formed (if not unique) identifier, which only labels a challenge.
    let _ = ring::rand::SystemRandom::new().fill(&mut buf);
    hex(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_could_forge_a_line_or_drive_a_terminal() {
        assert_eq!(sanitize("alice", 64), "alice");
        assert_eq!(sanitize("a\nb\x1b[31m", 64), "a\\x0ab\\x1b[31m");
        assert_eq!(sanitize("say \"hi\" \\o/", 64), "say \\\"hi\\\" \\\\o/");
        assert_eq!(sanitize("x\u{202e}y", 64), "x\\u{202e}y");
        assert_eq!(sanitize("\u{9b}2J", 64), "\\x9b2J");
    }

    #[test]
    fn escapes_separators_and_every_bidi_control() {
        let hostile = [
            0x2028, 0x2029, 0x061c, 0x200e, 0x200f, 0x202a, 0x202b, 0x202c, 0x202d, 0x202e, 0x2066,
            0x2067, 0x2068, 0x2069, 0x200b, 0x2060, 0xfeff, 0xad, 0xe0041,
        ];
        for code in hostile {
            let c = char::from_u32(code).unwrap();
            let expected = if code <= 0xff {
                format!("a\\x{code:02x}b")
            } else {
                format!("a\\u{{{code:x}}}b")
            };
            assert_eq!(sanitize(&format!("a{c}b"), 64), expected, "U+{code:04X}");
        }
        // Letters of other scripts stay as they are.
        assert_eq!(sanitize("Zoë ελένη علي", 64), "Zoë ελένη علي");
    }

    #[test]
    fn cuts_long_text() {
        let long = "a".repeat(10_000);
        let s = sanitize(&long, 16);
        assert_eq!(s, format!("{}...", "a".repeat(16)));
    }

    #[test]
    fn random_hex_is_random_and_hex() {
        let a = random_hex(8);
        let b = random_hex(8);
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
