//! Untrusted text made safe for a terminal.
//!
//! Owns: the one escaping rule for text that comes from children (health command output), files the user
//! names, or the Consul agent, before it reaches a log line or a table on the operator's terminal. Does not
//! own: JSON output (serde_json escapes control characters itself and only ever sees valid UTF-8, because
//! every byte source is decoded with `String::from_utf8_lossy` first).
//!
//! A raw ESC can move the cursor, recolour or retitle the operator's terminal, a CR or LF can forge a log
//! line, and the C1 range (U+0080–U+009F) holds 8-bit twins of ESC and CSI that some terminals obey. The
//! bidi controls reorder what is shown without changing what is stored ("Trojan Source"). All of them are
//! written as `\n`, `\r`, `\t`, `\xNN` or `\uNNNN` (the forms bash's `$'…'` reads back; every unsafe
//! character is below U+10000), so the result is one line of printable text. `control::render` (the status
//! table) and every log line with agent or child text use these functions.

use std::borrow::Cow;
use std::fmt::Write;

/// True for a character that must not reach a terminal as is.
pub fn unsafe_char(c: char) -> bool {
    c.is_control() // C0, DEL and C1
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every control character (C0, DEL, C1, bidi controls) escaped; borrowed when nothing needs it.
pub fn for_terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

/// `c`, or its escape when it is unsafe.
pub fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if unsafe_char(c) && (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if unsafe_char(c) => {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
        c => out.push(c),
    }
}

/// Bytes from an untrusted source as valid UTF-8 (invalid sequences become U+FFFD), escaped for a terminal.
pub fn bytes_for_terminal(b: &[u8]) -> String {
    for_terminal(&String::from_utf8_lossy(b)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        assert!(matches!(
            for_terminal("web-1 passing: ok (200) é"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn escapes_terminal_controls_newlines_c1_and_bidi() {
        assert_eq!(
            for_terminal("a\x1b[2Jb\nc\r\td\x7f\u{9b}e\u{202e}f"),
            "a\\x1b[2Jb\\nc\\r\\td\\x7f\\u009be\\u202ef"
        );
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        assert_eq!(bytes_for_terminal(b"ok\xff\x1b"), "ok\u{fffd}\\x1b");
    }
}
