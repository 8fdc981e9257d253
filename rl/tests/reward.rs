//! Reward terms (METHOD §3): hand-derived cases with the arithmetic in comments, and parity with
//! the independent Python reference (`scripts/oracle/reward_reference.py make-cases`, 600
//! generated and mutated responses; tolerance 1e-12).

use platter_rl::reward::{
    GroundTruthObject, NonRepeatScope, OverlongConfig, RewardConfig, box_iou_inclusive,
    non_repeat_reward, score_response,
};

fn gt(b: [f64; 4], p: [f64; 2]) -> GroundTruthObject {
    GroundTruthObject {
        bbox_2d: b,
        point_2d: p,
    }
}

fn wrap(think: &str, answer: &str) -> String {
    format!("<think>{think}</think><answer>{answer}</answer>")
}

const CFG: RewardConfig = RewardConfig {
    max_objects: 120,
    dup_threshold: 2,
    non_repeat_scope: NonRepeatScope::Reasoning,
    iou_threshold: 0.5,
    l1_threshold: 10.0,
    point_threshold: 30.0,
    mask_reward_weight: 0.0,
};

#[test]
fn perfect_answer_scores_seven() {
    let g = [gt([10.0, 10.0, 50.0, 50.0], [30.0, 30.0])];
    let r = score_response(
        &wrap(
            "The rice is on the left.",
            r#"[{"bbox_2d":[10,10,50,50],"point_2d":[30,30]}]"#,
        ),
        &g,
        &CFG,
    );
    // 1 (think) + 2 (box and point) + 1 (no repeats) + 3 (all three hits, K = N = 1) = 7.
    assert_eq!(
        (
            r.think_format,
            r.answer_format,
            r.non_repeat,
            r.seg,
            r.total
        ),
        (1.0, 2.0, 1.0, 3.0, 7.0)
    );
    assert_eq!((r.seg_iou, r.seg_l1, r.seg_point), (1.0, 1.0, 1.0));
}

#[test]
fn iou_inclusive_convention() {
    // [0,0,9,9] has area 10·10 = 100 (inclusive +1); [5,0,14,9] overlaps x 5..9 → 5·10 = 50.
    // IoU = 50 / (100 + 100 − 50) = 1/3.
    assert!(
        (box_iou_inclusive(&[0.0, 0.0, 9.0, 9.0], &[5.0, 0.0, 14.0, 9.0]) - 1.0 / 3.0).abs()
            < 1e-15
    );
    // Disjoint boxes: 0. Touching at one pixel column (x = 9): inter 1·10 = 10, union 190.
    assert_eq!(
        box_iou_inclusive(&[0.0, 0.0, 9.0, 9.0], &[20.0, 0.0, 29.0, 9.0]),
        0.0
    );
    assert!(
        (box_iou_inclusive(&[0.0, 0.0, 9.0, 9.0], &[9.0, 0.0, 18.0, 9.0]) - 10.0 / 190.0).abs()
            < 1e-15
    );
}

#[test]
fn k_zero_and_n_zero_give_zero_seg() {
    // K = 0: an empty list also gives answer_format 0 (nothing to average).
    let r = score_response(
        &wrap("a", "[]"),
        &[gt([0.0, 0.0, 5.0, 5.0], [2.0, 2.0])],
        &CFG,
    );
    assert_eq!((r.answer_format, r.seg, r.total), (0.0, 0.0, 2.0));
    // N = 0: seg 0, the format terms still count: 1 + 2 + 1 = 4.
    let r = score_response(
        &wrap("a", r#"[{"bbox_2d":[0,0,5,5],"point_2d":[2,2]}]"#),
        &[],
        &CFG,
    );
    assert_eq!((r.seg, r.total), (0.0, 4.0));
}

#[test]
fn point_outside_its_own_box_misses_the_point_term() {
    // Prediction box [0,0,20,20] equals GT (IoU 1, L1 0); its point (25,10) is 5 px from the GT
    // point (20,10) (< 30) but outside its own box (x 25 > 20): hits = 1 + 1 + 0 = 2.
    let g = [gt([0.0, 0.0, 20.0, 20.0], [20.0, 10.0])];
    let r = score_response(
        &wrap("x", r#"[{"bbox_2d":[0,0,20,20],"point_2d":[25,10]}]"#),
        &g,
        &CFG,
    );
    assert_eq!(
        (r.seg_iou, r.seg_l1, r.seg_point, r.seg),
        (1.0, 1.0, 0.0, 2.0)
    );
    // The border counts as inside: (20,10) on the right edge → 3 hits.
    let r = score_response(
        &wrap("x", r#"[{"bbox_2d":[0,0,20,20],"point_2d":[20,10]}]"#),
        &g,
        &CFG,
    );
    assert_eq!(r.seg, 3.0);
}

#[test]
fn matching_is_hungarian_not_greedy() {
    // GT A = [0,0,100,100] pt (50,50); GT B = [0,0,100,104] pt (50,50) (almost the same box).
    // P1 = [0,0,100,102] pt (50,50): vs A: IoU 101·101/(101·103) > .5, L1 = 2/4 = 0.5 < 10,
    //   point ok → 3; vs B: also 3.
    // P2 = [0,0,100,100] pt (50,90): vs A: IoU 1, L1 0, point dist 40 ≥ 30 → 2; vs B: 2.
    // Any assignment gives 5 hits; over max(K,N) = 2 → seg = 2.5.
    let g = [
        gt([0.0, 0.0, 100.0, 100.0], [50.0, 50.0]),
        gt([0.0, 0.0, 100.0, 104.0], [50.0, 50.0]),
    ];
    let r = score_response(
        &wrap(
            "x",
            r#"[{"bbox_2d":[0,0,100,102],"point_2d":[50,50]},{"bbox_2d":[0,0,100,100],"point_2d":[50,90]}]"#,
        ),
        &g,
        &CFG,
    );
    assert_eq!(r.seg, 2.5);

    // Greedy would pair P1 with GT1 (3 hits, its best) and leave P2 with GT2 (0 hits).
    // GT1 = [0,0,10,10] pt(5,5); GT2 = [200,200,210,210] pt (205,205).
    // P1 = [0,0,10,10] pt (5,5): vs GT1 3 hits, vs GT2 0.
    // P2 = [0,0,12,12] pt (6,6): vs GT1 3 hits (IoU 121/169 > .5, L1 1, dist √2), vs GT2 0.
    // Optimal total is 3 (only one prediction can take GT1): seg = 3 / 2 = 1.5, whichever.
    let g = [
        gt([0.0, 0.0, 10.0, 10.0], [5.0, 5.0]),
        gt([200.0, 200.0, 210.0, 210.0], [205.0, 205.0]),
    ];
    let r = score_response(
        &wrap(
            "x",
            r#"[{"bbox_2d":[0,0,12,12],"point_2d":[6,6]},{"bbox_2d":[0,0,10,10],"point_2d":[5,5]}]"#,
        ),
        &g,
        &CFG,
    );
    assert_eq!(r.seg, 1.5);
}

#[test]
fn ties_in_matching_only_sum_is_defined() {
    // One prediction, two GTs it hits differently: vs GT1 hits (iou, l1) = 2, vs GT2 hits
    // (point only)... the optimum picks GT1: seg = 2 / max(1, 2) = 1.0.
    // P = [0,0,20,20] pt (10,10). GT1 = [0,0,20,21] pt (100,100): IoU 441/462 > .5, L1 .25,
    // point far → 2. GT2 = [0,0,60,60] pt (12,12): IoU 441/3721 < .5, L1 (40+40)/4 = 20, point
    // 2.83 px and inside → 1.
    let g = [
        gt([0.0, 0.0, 20.0, 21.0], [100.0, 100.0]),
        gt([0.0, 0.0, 60.0, 60.0], [12.0, 12.0]),
    ];
    let r = score_response(
        &wrap("x", r#"[{"bbox_2d":[0,0,20,20],"point_2d":[10,10]}]"#),
        &g,
        &CFG,
    );
    assert_eq!(
        (r.seg_iou, r.seg_l1, r.seg_point, r.seg),
        (0.5, 0.5, 0.0, 1.0)
    );
}

#[test]
fn any_invalid_object_zeroes_seg_but_not_format() {
    // Second object's point is a string: R_af = (2 + 1) / 2 = 1.5, R_seg = 0.
    let g = [gt([0.0, 0.0, 10.0, 10.0], [5.0, 5.0])];
    let r = score_response(
        &wrap(
            "x",
            r#"[{"bbox_2d":[0,0,10,10],"point_2d":[5,5]},{"bbox_2d":[0,0,10,10],"point_2d":["5",5]}]"#,
        ),
        &g,
        &CFG,
    );
    assert_eq!((r.answer_format, r.seg), (1.5, 0.0));
    // NaN is a number for the format term, but not finite for the segmentation term.
    let r = score_response(
        &wrap("x", r#"[{"bbox_2d":[NaN,0,10,10],"point_2d":[5,5]}]"#),
        &g,
        &CFG,
    );
    assert_eq!((r.answer_format, r.seg), (2.0, 0.0));
    // Booleans are not numbers.
    let r = score_response(
        &wrap("x", r#"[{"bbox_2d":[0,0,10,true],"point_2d":[5,5]}]"#),
        &g,
        &CFG,
    );
    assert_eq!((r.answer_format, r.seg), (1.0, 0.0));
}

#[test]
fn whitespace_around_tags() {
    // Whitespace between </think> and <answer> is allowed; around the whole response it is not.
    let ok = "<think>a</think>\n\n  <answer>[]</answer>";
    assert_eq!(score_response(ok, &[], &CFG).think_format, 1.0);
    assert_eq!(
        score_response(&format!(" {ok}"), &[], &CFG).think_format,
        0.0
    );
    assert_eq!(
        score_response(&format!("{ok}\n"), &[], &CFG).think_format,
        0.0
    );
    // Whitespace inside the answer tag around the JSON is stripped before parsing.
    let g = [gt([0.0, 0.0, 10.0, 10.0], [5.0, 5.0])];
    let r = score_response(
        "<think>a</think><answer>\n  [{\"bbox_2d\":[0,0,10,10],\"point_2d\":[5,5]}]  \n</answer>",
        &g,
        &CFG,
    );
    assert_eq!(r.total, 7.0);
}

#[test]
fn repeated_sentences() {
    // "a. b. a. c" → sentences a, b, a, c: one repeat < 2 → 1.
    assert_eq!(non_repeat_reward("a. b. a. c", 2), 1.0);
    // "a. a. a" → repeats at 2nd and 3rd: count 2 ≥ 2 → 0.
    assert_eq!(non_repeat_reward("a. a. a", 2), 0.0);
    // Two different sentences each repeated once: count 2 → 0.
    assert_eq!(non_repeat_reward("a. b. a. b", 2), 0.0);
    // Whitespace-only pieces and stripping: " a .a. . " → "a", "a": one repeat → 1.
    assert_eq!(non_repeat_reward(" a .a. . ", 2), 1.0);
    // Threshold 1: any repeat → 0.
    assert_eq!(non_repeat_reward("a. a", 1), 0.0);
    // Scope: repeats only in the answer do not count for the reasoning scope.
    // Whole response split on '.': "<think>x", "y</think><answer>q", "z", "z", "z",
    // "w</answer>": two repeats of "z".
    let resp = "<think>x. y</think><answer>q. z. z. z. w</answer>";
    assert_eq!(score_response(resp, &[], &CFG).non_repeat, 1.0);
    let whole = RewardConfig {
        non_repeat_scope: NonRepeatScope::WholeResponse,
        ..CFG
    };
    assert_eq!(score_response(resp, &[], &whole).non_repeat, 0.0);
    // No think block: the whole response is read.
    assert_eq!(score_response("q. q. q", &[], &CFG).non_repeat, 0.0);
}

#[test]
fn max_objects_cap_is_read_limit() {
    // 150 identical perfect objects for a single GT; only 120 are read: K = 120.
    // R_af = 2; R_seg = 3 hits / max(120, 1) = 0.025.
    let g = [gt([0.0, 0.0, 10.0, 10.0], [5.0, 5.0])];
    let items = vec![r#"{"bbox_2d":[0,0,10,10],"point_2d":[5,5]}"#; 150].join(",");
    let r = score_response(&wrap("x", &format!("[{items}]")), &g, &CFG);
    assert_eq!(r.num_objects, 120);
    assert_eq!(r.answer_format, 2.0);
    assert!((r.seg - 3.0 / 120.0).abs() < 1e-15);
}

#[test]
fn overlong_shaping_hand_derived() {
    // L = 1024, buffer = 256: no penalty up to 768 tokens; linear to −0.1 at 1024.
    let c = OverlongConfig::default();
    assert_eq!(c.shaping(500), 0.0);
    assert_eq!(c.shaping(768), 0.0);
    // 896 tokens: (768 − 896) / 256 = −0.5 → −0.05.
    assert!((c.shaping(896) + 0.05).abs() < 1e-15);
    assert!((c.shaping(1024) + 0.1).abs() < 1e-15);
    // Past L (cannot happen with a hard limit) the floor holds.
    assert!((c.shaping(5000) + 0.1).abs() < 1e-15);
    let off = OverlongConfig {
        enabled: false,
        ..c.clone()
    };
    assert_eq!(off.shaping(1024), 0.0);
    let bad = OverlongConfig {
        overlong_buffer: Some(0),
        ..c
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("overlong_buffer")
    );
}

#[test]
fn mask_reward_is_optional_and_weighted() {
    let r = score_response("nothing", &[], &CFG);
    assert_eq!(r.mask_iou, None);
    let w = r.with_mask_iou(0.5, 2.0);
    assert_eq!((w.mask_iou, w.total), (Some(0.5), r.total + 1.0));
}

#[test]
fn parity_with_python_reference() {
    let text = include_str!("fixtures/reward_cases.jsonl");
    let mut n = 0;
    for (line_no, line) in text.lines().enumerate() {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let resp = case["response"].as_str().unwrap();
        let g: Vec<GroundTruthObject> =
            serde_json::from_value(case["ground_truth"].clone()).unwrap();
        let r = score_response(resp, &g, &RewardConfig::default());
        let e = &case["expected"];
        for (key, got) in [
            ("think_format", r.think_format),
            ("answer_format", r.answer_format),
            ("non_repeat", r.non_repeat),
            ("seg", r.seg),
            ("total", r.total),
        ] {
            let want = e[key].as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-12,
                "case line {}: {key} = {got}, reference {want}\nresponse: {resp}",
                line_no + 1
            );
        }
        n += 1;
    }
    assert_eq!(n, 600);
}
