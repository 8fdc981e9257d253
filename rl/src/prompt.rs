//! The user prompt of METHOD §1.

/// The fixed two-object example shown in the prompt. Without it the reference reports a
/// 4-point drop because the model stops reasoning.
pub const DEFAULT_ANSWER_EXAMPLE: &str = r#"[{"bbox_2d": [10,100,200,210], "point_2d": [30,110]}, {"bbox_2d": [225,296,706,786], "point_2d": [302,410]}]"#;

/// The system message of the chat.
pub const SYSTEM_MESSAGE: &str = "You are a helpful assistant.";

/// The question as the prompt shows it: lower-cased, trailing `.`, `"`, `?`, `!` (and
/// whitespace) removed.
pub fn normalize_question(question: &str) -> String {
    question
        .trim()
        .trim_end_matches(|c: char| matches!(c, '.' | '"' | '?' | '!') || c.is_whitespace())
        .to_lowercase()
}

/// The one-line user prompt (the parts are concatenated without separators, as the reference
/// template's adjacent string literals are).
pub fn user_prompt(question: &str, answer_example: &str) -> String {
    format!(
        "Please find \"{}\" with bboxs and points.\
         Compare the difference between object(s) and find the most closely matched object(s).\
         Output the thinking process in <think> </think> and final answer in <answer> </answer> tags.\
         Output the bbox(es) and point(s) inside the interested object(s) in JSON format.\
         i.e., <think> thinking process here </think><answer>{}</answer>",
        normalize_question(question),
        answer_example
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_is_normalized() {
        assert_eq!(
            normalize_question("  Which item is the Dessert?!\" "),
            "which item is the dessert"
        );
        assert_eq!(normalize_question("Find the rice."), "find the rice");
    }

    #[test]
    fn prompt_is_one_line_with_example() {
        let p = user_prompt("What is Fried?", DEFAULT_ANSWER_EXAMPLE);
        assert!(!p.contains('\n'));
        assert!(p.starts_with("Please find \"what is fried\" with bboxs and points.Compare"));
        assert!(p.ends_with(&format!("<answer>{DEFAULT_ANSWER_EXAMPLE}</answer>")));
    }
}
