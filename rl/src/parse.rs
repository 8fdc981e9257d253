//! Response parsing (METHOD §1 and §3): the `<think>`/`<answer>` structure and the answer JSON.
//!
//! Everything here is total: any string (truncated, nested tags, wrong types, NaN, huge numbers,
//! thousands of objects) parses to a [`ParsedResponse`] without panicking. Callers holding raw
//! bytes that may end inside a UTF-8 sequence use [`ParsedResponse::from_bytes`].

use crate::json::{self, AnswerList};
use crate::text::{find_tag, first_enclosed, is_py_space, py_strip};

/// One object of the answer list, as read. A field is `Some` only when it has the right arity
/// and every entry is a JSON number (booleans and strings are not numbers).
#[derive(Debug, Clone, PartialEq)]
pub struct PredictedObject {
    /// `bbox_2d` = `[x1, y1, x2, y2]` in the policy's input pixels, when it is 4 numbers.
    pub bbox_2d: Option<[f64; 4]>,
    /// `point_2d` = `[x, y]` in the policy's input pixels, when it is 2 numbers.
    pub point_2d: Option<[f64; 2]>,
}

impl PredictedObject {
    /// Both fields present and every coordinate finite: usable as a SAM2 prompt and for
    /// the segmentation reward.
    pub fn is_valid(&self) -> bool {
        matches!((&self.bbox_2d, &self.point_2d), (Some(b), Some(p))
            if b.iter().chain(p.iter()).all(|v| v.is_finite()))
    }

    /// The answer-format credit of this object: +1 for a 4-number box, +1 for a 2-number point.
    pub fn format_score(&self) -> f64 {
        f64::from(u8::from(self.bbox_2d.is_some()) + u8::from(self.point_2d.is_some()))
    }
}

/// What the answer tag held.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// No `<answer>…</answer>` pair in the response.
    Missing,
    /// The answer text is not JSON (Python `json.loads` semantics), with the reason.
    NotJson(String),
    /// Valid JSON that is not a list.
    NotAList,
    /// A list; `objects` holds at most `max_objects` entries, `total_items` counts all of them.
    /// Entries that are not JSON objects are kept as objects with neither field.
    Objects {
        objects: Vec<PredictedObject>,
        total_items: usize,
    },
}

/// A response split into its parts.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedResponse {
    /// The whole response matches `<think>.*?</think>\s*<answer>.*?</answer>` (full match,
    /// dot matches newline).
    pub think_format_ok: bool,
    /// Inside of the first `<think>…</think>`, if the response has one.
    pub reasoning: Option<String>,
    /// The parsed first `<answer>…</answer>`.
    pub answer: Answer,
}

impl ParsedResponse {
    /// Parses a response, reading at most `max_objects` answer objects.
    pub fn parse(response: &str, max_objects: usize) -> Self {
        let reasoning = first_enclosed(response, "<think>", "</think>").map(str::to_owned);
        let answer = match first_enclosed(response, "<answer>", "</answer>") {
            None => Answer::Missing,
            Some(inner) => parse_answer_json(py_strip(inner), max_objects),
        };
        Self {
            think_format_ok: think_format_matches(response),
            reasoning,
            answer,
        }
    }

    /// Parses raw bytes; invalid UTF-8 (e.g. a sequence cut by a token boundary) becomes U+FFFD.
    pub fn from_bytes(response: &[u8], max_objects: usize) -> Self {
        Self::parse(&String::from_utf8_lossy(response), max_objects)
    }

    /// The objects read from the answer (empty unless the answer is a list).
    pub fn objects(&self) -> &[PredictedObject] {
        match &self.answer {
            Answer::Objects { objects, .. } => objects,
            _ => &[],
        }
    }

    /// The answer parsed as a JSON list (possibly empty).
    pub fn answer_parsed(&self) -> bool {
        matches!(self.answer, Answer::Objects { .. })
    }
}

/// Full match of `<think>.*?</think>\s*<answer>.*?</answer>` with DOTALL, where `\s` is Python's
/// Unicode whitespace. Written by hand: lazy and greedy quantifiers agree on whether a full
/// match exists, so it suffices to find one `</think>` (after the opening tag) that is followed
/// by whitespace and an `<answer>` whose content ends at the final `</answer>`.
pub fn think_format_matches(s: &str) -> bool {
    const OPEN: &str = "<think>";
    const CLOSE: &str = "</think>";
    const A_OPEN: &str = "<answer>";
    const A_CLOSE: &str = "</answer>";
    if !s.starts_with(OPEN) || !s.ends_with(A_CLOSE) {
        return false;
    }
    let Some(answer_end) = s.len().checked_sub(A_CLOSE.len()) else {
        return false;
    };
    let mut from = OPEN.len();
    while let Some(off) = s.get(from..).and_then(|rest| find_tag(rest, CLOSE)) {
        let close_at = from + off;
        let after = &s[close_at + CLOSE.len()..];
        let trimmed = after.trim_start_matches(is_py_space);
        let answer_at = s.len() - trimmed.len();
        if trimmed.starts_with(A_OPEN) && answer_at + A_OPEN.len() <= answer_end {
            return true;
        }
        from = close_at + 1;
    }
    false
}

fn parse_answer_json(text: &str, max_objects: usize) -> Answer {
    match json::parse_answer_list(text, max_objects) {
        AnswerList::NotJson(e) => Answer::NotJson(e.to_string()),
        AnswerList::NotAList => Answer::NotAList,
        AnswerList::List {
            objects,
            total_items,
        } => Answer::Objects {
            total_items,
            objects: objects
                .into_iter()
                .map(|(bbox_2d, point_2d)| PredictedObject { bbox_2d, point_2d })
                .collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn think_format_cases() {
        let ok = [
            "<think>a</think><answer>b</answer>",
            "<think></think><answer></answer>",
            "<think>x\ny</think> \n\t<answer>[1]\n</answer>",
            // A second closing tag inside the reasoning: the lazy pattern still matches.
            "<think>a</think>b</think><answer>c</answer>",
            // `</answer>` inside the answer: `.*?` can still reach the last one.
            "<think>a</think><answer>x</answer>y</answer>",
            // Python's \s includes U+001F.
            "<think>a</think>\u{1f}<answer>b</answer>",
        ];
        for s in ok {
            assert!(think_format_matches(s), "{s:?}");
        }
        let bad = [
            " <think>a</think><answer>b</answer>",
            "<think>a</think><answer>b</answer> ",
            "<think>a</think>x<answer>b</answer>",
            "<think>a<answer>b</answer>",
            "<think>a</think><answer>b",
            "<think></answer>",
            "<think><answer></answer>",
            "",
        ];
        for s in bad {
            assert!(!think_format_matches(s), "{s:?}");
        }
    }

    #[test]
    fn answer_is_first_pair_and_trimmed() {
        let r = ParsedResponse::parse(
            "<think>t</think><answer> \n[{\"bbox_2d\":[1,2,3,4],\"point_2d\":[2,3]}]\n </answer><answer>[]</answer>",
            120,
        );
        assert_eq!(r.reasoning.as_deref(), Some("t"));
        assert_eq!(
            r.objects(),
            &[PredictedObject {
                bbox_2d: Some([1.0, 2.0, 3.0, 4.0]),
                point_2d: Some([2.0, 3.0])
            }]
        );
    }

    #[test]
    fn wrong_types_are_fields_missing() {
        let r = ParsedResponse::parse(
            r#"<answer>[{"bbox_2d":[1,2,"3",4],"point_2d":[true,3]}, 5, {"bbox_2d":[1,2,3]}]</answer>"#,
            120,
        );
        let objs = r.objects();
        assert_eq!(objs.len(), 3);
        assert!(
            objs.iter()
                .all(|o| o.bbox_2d.is_none() && o.point_2d.is_none())
        );
        assert!(r.reasoning.is_none());
        assert!(!r.think_format_ok);
    }

    #[test]
    fn max_objects_caps_reading() {
        let items: Vec<String> = (0..10_000)
            .map(|i| format!("{{\"bbox_2d\":[{i},0,1,1],\"point_2d\":[0,0]}}"))
            .collect();
        let r = ParsedResponse::parse(&format!("<answer>[{}]</answer>", items.join(",")), 120);
        match &r.answer {
            Answer::Objects {
                objects,
                total_items,
            } => {
                assert_eq!(objects.len(), 120);
                assert_eq!(*total_items, 10_000);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let mut bytes = b"<think>caf".to_vec();
        bytes.extend_from_slice(&[0xC3]); // first byte of 'é', cut
        bytes.extend_from_slice(b"</think><answer>[]</answer>");
        let r = ParsedResponse::from_bytes(&bytes, 120);
        assert!(r.think_format_ok);
        assert_eq!(r.reasoning.as_deref(), Some("caf\u{FFFD}"));
        assert!(r.answer_parsed());
    }
}
