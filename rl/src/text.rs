//! String helpers with Python's semantics, so that reward terms agree with the published
//! reference code (which uses `str.strip`, `str.split` and `re` with `\s`).

/// Python's `str.isspace` for one character: Rust's Unicode `White_Space` plus the four ASCII
/// information separators U+001C..U+001F, which Python also treats as whitespace.
pub(crate) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.strip()`.
pub(crate) fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// The inside of the first `open … close` pair: the first `open`, then the first `close` after
/// it. `None` when either is missing.
pub(crate) fn first_enclosed<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = s.find(open)? + open.len();
    let len = s[start..].find(close)?;
    Some(&s[start..start + len])
}
