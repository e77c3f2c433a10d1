//! RFC 6238 TOTP: HMAC-SHA-1, 6 digits, 30-second steps (the parameters Google
//! Authenticator and the tru.ID Authenticator app use by default).

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Length of one time step, in seconds.
pub const STEP_SECS: u64 = 30;

/// The 6-digit code of `secret` at `unix_time` (seconds since the epoch).
pub fn code(secret: &[u8], unix_time: u64) -> String {
    code_at_step(secret, unix_time / STEP_SECS)
}

/// The 6-digit code of `secret` for the time step `step` (`unix_time / 30`).
pub fn code_at_step(secret: &[u8], step: u64) -> String {
    format!("{:06}", truncated(secret, step) % 1_000_000)
}

/// RFC 4226 dynamic truncation of HMAC-SHA-1(secret, counter), 31 bits.
fn truncated(secret: &[u8], counter: u64) -> u32 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match <Hmac<Sha1> as Mac>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return 0,
    };
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = (digest[19] & 0x0f) as usize;
    u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ])
}

/// Decodes a base32 secret as found in an `otpauth://` URI (case-insensitive,
/// padding and spaces ignored). `None` when it is not valid base32.
pub fn decode_secret(b32: &str) -> Option<Vec<u8>> {
    let cleaned: String = b32
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=' && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if cleaned.is_empty() {
        return None;
    }
    data_encoding::BASE32_NOPAD.decode(cleaned.as_bytes()).ok()
}

/// Encodes a secret as unpadded upper-case base32, as it appears in `otpauth://` URIs.
pub fn encode_secret(secret: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vectors_six_digits() {
        let secret = b"12345678901234567890";
        // RFC 6238 appendix B (8-digit values; the last 6 digits are the 6-digit code).
        assert_eq!(code(secret, 59), "287082");
        assert_eq!(code(secret, 1_111_111_109), "081804");
        assert_eq!(code(secret, 1_111_111_111), "050471");
        assert_eq!(code(secret, 1_234_567_890), "005924");
        assert_eq!(code(secret, 2_000_000_000), "279037");
    }

    #[test]
    fn base32_round_trip() {
        let s = b"12345678901234567890";
        let enc = encode_secret(s);
        assert_eq!(enc, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(decode_secret(&enc.to_lowercase()).as_deref(), Some(&s[..]));
        assert_eq!(decode_secret("not base32!"), None);
        assert_eq!(decode_secret(""), None);
    }
}
