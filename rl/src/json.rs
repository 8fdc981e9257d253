//! A small JSON reader with the semantics of Python's `json.loads`, used for the policy's answer.
//!
//! Why not serde_json: the reference reward code parses answers with Python's `json`, which
//! accepts `NaN`, `Infinity` and `-Infinity`, turns numbers that overflow into `inf`, and keeps
//! the last of duplicate keys. A sampled policy emits all of these, and the reward must treat
//! them the same way. This reader is total: any input gives `Ok` or `Err`, never a panic, and
//! nesting deeper than [`MAX_DEPTH`] is an error rather than a stack overflow.

use std::borrow::Cow;
use std::fmt;

/// Deepest nesting accepted (Python fails with `RecursionError` around 1000).
pub const MAX_DEPTH: usize = 256;

/// A parsed JSON value. Objects keep their members in order; lookups take the last duplicate.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    /// Every JSON number as f64, as Python's float would hold it (integers past 2^53 round;
    /// overflow is ±inf; `NaN`/`Infinity` literals included).
    Number(f64),
    /// Borrowed from the input unless it holds escapes.
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// The value of `key` in an object (last duplicate wins, as in a Python dict).
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Object(members) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The number, if this is a JSON number (booleans are not numbers here).
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Json::Number(n) => Some(*n),
            _ => None,
        }
    }
}

/// Why a text is not JSON, with the byte offset where reading stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    pub offset: usize,
    pub reason: &'static str,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.reason, self.offset)
    }
}

impl std::error::Error for JsonError {}

/// Parses one JSON document (surrounding JSON whitespace allowed, nothing else after it).
pub fn parse(text: &str) -> Result<Json<'_>, JsonError> {
    let mut p = Parser {
        text,
        s: text.as_bytes(),
        i: 0,
    };
    p.skip_ws();
    let v = p.value(0)?;
    p.skip_ws();
    if p.i != p.s.len() {
        return Err(p.err("extra data after the JSON value"));
    }
    Ok(v)
}

/// `(bbox_2d, point_2d)` of one answer item, each `Some` when it is 4 (2) JSON numbers.
pub type AnswerFields = (Option<[f64; 4]>, Option<[f64; 2]>);

/// The answer list read straight into objects (no tree is built): the same result as
/// [`parse`] followed by reading `bbox_2d` / `point_2d` of the first `max_objects` items, and
/// the same errors (the whole document is still validated).
#[derive(Debug, Clone, PartialEq)]
pub enum AnswerList {
    NotJson(JsonError),
    NotAList,
    List {
        /// `(bbox_2d, point_2d)` of each of the first `max_objects` items; a field is `Some`
        /// only for an array of exactly 4 (2) JSON numbers. Non-object items have neither.
        objects: Vec<AnswerFields>,
        total_items: usize,
    },
}

/// Reads an answer list; see [`AnswerList`].
pub fn parse_answer_list(text: &str, max_objects: usize) -> AnswerList {
    let mut p = Parser {
        text,
        s: text.as_bytes(),
        i: 0,
    };
    match p.answer_list(max_objects) {
        Ok(list) => list,
        Err(e) => AnswerList::NotJson(e),
    }
}

struct Parser<'a> {
    text: &'a str,
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, reason: &'static str) -> JsonError {
        JsonError {
            offset: self.i,
            reason,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, lit: &[u8]) -> bool {
        if self.s[self.i..].starts_with(lit) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json<'a>, JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        match self.peek() {
            None => Err(self.err("expected a value, found end of text")),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(Json::String),
            Some(b'n') if self.eat(b"null") => Ok(Json::Null),
            Some(b't') if self.eat(b"true") => Ok(Json::Bool(true)),
            Some(b'f') if self.eat(b"false") => Ok(Json::Bool(false)),
            Some(b'N') if self.eat(b"NaN") => Ok(Json::Number(f64::NAN)),
            Some(b'I') if self.eat(b"Infinity") => Ok(Json::Number(f64::INFINITY)),
            Some(b'-') if self.s[self.i..].starts_with(b"-Infinity") => {
                self.i += b"-Infinity".len();
                Ok(Json::Number(f64::NEG_INFINITY))
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("expected a value")),
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json<'a>, JsonError> {
        self.i += 1; // '['
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(Json::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(self.err("expected ',' or ']' in array")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json<'a>, JsonError> {
        self.i += 1; // '{'
        let mut members = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Json::Object(members));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a string key in object"));
            }
            let key = self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.err("expected ':' after object key"));
            }
            self.i += 1;
            self.skip_ws();
            let v = self.value(depth + 1)?;
            members.push((key, v));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Json::Object(members));
                }
                _ => return Err(self.err("expected ',' or '}' in object")),
            }
        }
    }

    fn answer_list(&mut self, max_objects: usize) -> Result<AnswerList, JsonError> {
        self.skip_ws();
        if self.peek() != Some(b'[') {
            self.value(0)?;
            self.skip_ws();
            if self.i != self.s.len() {
                return Err(self.err("extra data after the JSON value"));
            }
            return Ok(AnswerList::NotAList);
        }
        self.i += 1;
        let mut objects = Vec::new();
        let mut total = 0usize;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.i += 1;
        } else {
            loop {
                self.skip_ws();
                if total < max_objects && self.peek() == Some(b'{') {
                    objects.push(self.answer_object()?);
                } else {
                    self.value(1)?;
                    if total < max_objects {
                        objects.push((None, None));
                    }
                }
                total += 1;
                self.skip_ws();
                match self.peek() {
                    Some(b',') => self.i += 1,
                    Some(b']') => {
                        self.i += 1;
                        break;
                    }
                    _ => return Err(self.err("expected ',' or ']' in array")),
                }
            }
        }
        self.skip_ws();
        if self.i != self.s.len() {
            return Err(self.err("extra data after the JSON value"));
        }
        Ok(AnswerList::List {
            objects,
            total_items: total,
        })
    }

    fn answer_object(&mut self) -> Result<AnswerFields, JsonError> {
        self.i += 1; // '{'
        let (mut bbox, mut point) = (None, None);
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok((bbox, point));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a string key in object"));
            }
            let key = self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.err("expected ':' after object key"));
            }
            self.i += 1;
            self.skip_ws();
            // Last duplicate wins, as in a Python dict.
            match key.as_ref() {
                "bbox_2d" => bbox = self.number_array::<4>()?,
                "point_2d" => point = self.number_array::<2>()?,
                _ => {
                    self.value(2)?;
                }
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok((bbox, point));
                }
                _ => return Err(self.err("expected ',' or '}' in object")),
            }
        }
    }

    /// Any value; `Some` when it is an array of exactly `N` numbers.
    fn number_array<const N: usize>(&mut self) -> Result<Option<[f64; N]>, JsonError> {
        if self.peek() != Some(b'[') {
            self.value(2)?;
            return Ok(None);
        }
        self.i += 1;
        let mut out = [0f64; N];
        let mut count = 0usize;
        let mut all_numbers = true;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(if N == 0 { Some(out) } else { None });
        }
        loop {
            self.skip_ws();
            match self.value(3)? {
                Json::Number(n) if count < N => out[count] = n,
                Json::Number(_) => {}
                _ => all_numbers = false,
            }
            count += 1;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    break;
                }
                _ => return Err(self.err("expected ',' or ']' in array")),
            }
        }
        Ok((all_numbers && count == N).then_some(out))
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?`, read as Python's float would.
    fn number(&mut self) -> Result<Json<'a>, JsonError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("expected digits in number")),
        }
        // Python's scanner only takes a fraction or exponent when digits follow; otherwise the
        // number ends there and the leftover is "extra data" (an error either way).
        if self.peek() == Some(b'.') && matches!(self.s.get(self.i + 1), Some(b'0'..=b'9')) {
            self.i += 1;
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            let save = self.i;
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                self.i = save;
            }
        }
        // The slice is ASCII by construction.
        let lit =
            std::str::from_utf8(&self.s[start..self.i]).map_err(|_| self.err("bad number"))?;
        lit.parse::<f64>()
            .map(Json::Number)
            .map_err(|_| self.err("bad number"))
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return Err(self.err("invalid \\u escape")),
            };
            v = v * 16 + u32::from(d);
            self.i += 1;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<Cow<'a, str>, JsonError> {
        self.i += 1; // opening quote
        // Fast path: no escape before the closing quote → borrow from the input.
        let start = self.i;
        let mut j = start;
        while let Some(&c) = self.s.get(j) {
            if c == b'"' {
                if let Some(t) = self.text.get(start..j) {
                    self.i = j + 1;
                    return Ok(Cow::Borrowed(t));
                }
                break;
            }
            if c == b'\\' || c < 0x20 {
                break;
            }
            j += 1;
        }
        let mut out = String::new();
        loop {
            // Copy the run of plain bytes at once (the input is valid UTF-8 and quotes,
            // backslashes and control bytes never occur inside a multi-byte sequence).
            let run_start = self.i;
            while let Some(c) = self.peek() {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.i += 1;
            }
            if self.i > run_start {
                out.push_str(&String::from_utf8_lossy(&self.s[run_start..self.i]));
            }
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(Cow::Owned(out));
                }
                Some(b'\\') => {
                    self.i += 1;
                    let esc = self.peek().ok_or_else(|| self.err("unterminated escape"))?;
                    self.i += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi)
                                && self.s[self.i..].starts_with(b"\\u")
                            {
                                let save = self.i;
                                self.i += 2;
                                let lo = self.hex4()?;
                                if (0xDC00..0xE000).contains(&lo) {
                                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                                } else {
                                    self.i = save;
                                    hi
                                }
                            } else {
                                hi
                            };
                            // Python keeps lone surrogates; a Rust string cannot, so they become
                            // U+FFFD (only keys and strings are affected, never numbers).
                            out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
                        }
                        _ => {
                            self.i -= 1;
                            return Err(self.err("invalid escape"));
                        }
                    }
                }
                Some(_) => return Err(self.err("control character in string")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_extensions_and_overflow() {
        let v = parse(" [NaN, Infinity, -Infinity, 1e400, -0, 12345678901234567890123] ").unwrap();
        let Json::Array(items) = v else { panic!() };
        assert!(items[0].as_number().unwrap().is_nan());
        assert_eq!(items[1].as_number(), Some(f64::INFINITY));
        assert_eq!(items[2].as_number(), Some(f64::NEG_INFINITY));
        assert_eq!(items[3].as_number(), Some(f64::INFINITY));
        assert_eq!(items[4].as_number(), Some(0.0));
        assert_eq!(items[5].as_number(), Some(1.2345678901234568e22));
    }

    #[test]
    fn duplicates_last_wins_and_strings() {
        let v = parse(r#"{"a": 1, "a": 2, "s": "x\u00e9\ud83d\ude00\n"}"#).unwrap();
        assert_eq!(v.get("a"), Some(&Json::Number(2.0)));
        assert_eq!(v.get("s"), Some(&Json::String("xé😀\n".into())));
        assert!(matches!(
            parse("\"plain\"").unwrap(),
            Json::String(Cow::Borrowed("plain"))
        ));
    }

    #[test]
    fn rejects_what_python_rejects() {
        for bad in [
            "",
            "[1,]",
            "{\"a\":1,}",
            "01",
            "1.",
            ".5",
            "[1 2]",
            "\"a\nb\"",
            "tru",
            "[",
            "{",
            "\"\\x\"",
            "[1]x",
            "+1",
            "nan",
            "{1:2}",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        assert!(parse(&deep).is_err());
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
    }
}
