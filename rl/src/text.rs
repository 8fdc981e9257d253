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

/// Byte offset of the first occurrence of `tag` in `s`. Tags start with '<', which is rare in
/// prose, so scanning for it with memchr and comparing beats a general substring search (whose
/// setup cost dominates on short needles).
pub(crate) fn find_tag(s: &str, tag: &str) -> Option<usize> {
    let hay = s.as_bytes();
    let needle = tag.as_bytes();
    let (&first, _) = needle.split_first()?;
    let mut from = 0;
    while let Some(off) = memchr::memchr(first, &hay[from..]) {
        let at = from + off;
        if hay[at..].starts_with(needle) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The inside of the first `open … close` pair: the first `open`, then the first `close` after
/// it. `None` when either is missing.
pub(crate) fn first_enclosed<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = find_tag(s, open)? + open.len();
    let len = find_tag(&s[start..], close)?;
    Some(&s[start..start + len])
}
