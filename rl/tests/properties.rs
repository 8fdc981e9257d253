//! Property tests: the parser and the reward are total over anything a sampled policy can emit
//! (several hundred thousand generated and mutated responses per CI run), reward bounds hold,
//! matching is invariant to the order of predictions and ground truth, advantages have mean 0.

use platter_rl::parse::ParsedResponse;
use platter_rl::reward::{GroundTruthObject, RewardConfig, score_response};
use platter_rl::{group_advantages, json};
use proptest::prelude::*;

/// Pieces a policy emits: tags (whole, partial, nested), JSON punctuation, keys, numbers
/// (including NaN, Infinity, huge, negative, exponents), prose and multi-byte text.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("<think>".to_string()),
        Just("</think>".to_string()),
        Just("<answer>".to_string()),
        Just("</answer>".to_string()),
        Just("<ans".to_string()),
        Just("</thi".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just(",".to_string()),
        Just(":".to_string()),
        Just("\"bbox_2d\"".to_string()),
        Just("\"point_2d\"".to_string()),
        Just("NaN".to_string()),
        Just("Infinity".to_string()),
        Just("-Infinity".to_string()),
        Just("1e400".to_string()),
        Just("123456789012345678901234567890".to_string()),
        Just("true".to_string()),
        Just("null".to_string()),
        Just(". ".to_string()),
        Just(" \n\t".to_string()),
        Just("\u{1f}é漢🍣".to_string()),
        (-2000i64..2000).prop_map(|v| v.to_string()),
        (-1e6f64..1e6).prop_map(|v| format!("{v}")),
        "[a-z ]{0,12}",
        "\\PC{0,6}",
    ]
}

fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..40).prop_map(|v| v.concat())
}

fn object_json() -> impl Strategy<Value = String> {
    (
        prop::array::uniform4(-50i32..900),
        prop::array::uniform2(-50i32..900),
    )
        .prop_map(|(b, p)| {
            format!(
                "{{\"bbox_2d\": [{}, {}, {}, {}], \"point_2d\": [{}, {}]}}",
                b[0], b[1], b[2], b[3], p[0], p[1]
            )
        })
}

/// A well-formed response that is then damaged by byte-level edits.
fn mutated_response() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(object_json(), 0..6),
        "[A-Za-z .]{0,60}",
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 0..8),
        prop::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(|(objs, think, edits, cut)| {
            let mut s = format!(
                "<think>{think}</think><answer>[{}]</answer>",
                objs.join(", ")
            )
            .into_bytes();
            for (at, byte, kind) in edits {
                if s.is_empty() {
                    break;
                }
                let i = at.index(s.len());
                match kind {
                    0 => s[i] = byte,
                    1 => s.insert(i, byte),
                    2 => {
                        s.remove(i);
                    }
                    _ => {
                        let j = (i + 7).min(s.len());
                        let dup = s[i..j].to_vec();
                        s.splice(i..i, dup);
                    }
                }
            }
            if let Some(c) = cut {
                let n = c.index(s.len() + 1);
                s.truncate(n);
            }
            s
        })
}

fn gt_objects() -> impl Strategy<Value = Vec<GroundTruthObject>> {
    prop::collection::vec(
        (0.0f64..800.0, 0.0f64..800.0, 1.0f64..120.0, 1.0f64..120.0).prop_map(|(x, y, w, h)| {
            GroundTruthObject {
                bbox_2d: [x, y, x + w, y + h],
                point_2d: [x + w / 2.0, y + h / 2.0],
            }
        }),
        0..5,
    )
}

/// The answer list read through the general JSON tree, as the reference semantics define it.
fn via_tree(text: &str, max_objects: usize) -> json::AnswerList {
    use json::Json;
    fn nums<const N: usize>(v: Option<&Json>) -> Option<[f64; N]> {
        let Some(Json::Array(items)) = v else {
            return None;
        };
        if items.len() != N {
            return None;
        }
        let mut out = [0.0; N];
        for (o, it) in out.iter_mut().zip(items) {
            *o = it.as_number()?;
        }
        Some(out)
    }
    match json::parse(text) {
        Err(e) => json::AnswerList::NotJson(e),
        Ok(Json::Array(items)) => json::AnswerList::List {
            total_items: items.len(),
            objects: items
                .iter()
                .take(max_objects)
                .map(|it| (nums::<4>(it.get("bbox_2d")), nums::<2>(it.get("point_2d"))))
                .collect(),
        },
        Ok(_) => json::AnswerList::NotAList,
    }
}

fn same_answer(a: &json::AnswerList, b: &json::AnswerList) -> bool {
    use json::AnswerList::*;
    // NaN != NaN: compare bit patterns.
    let bits4 = |x: &Option<[f64; 4]>| x.map(|v| v.map(f64::to_bits));
    let bits2 = |x: &Option<[f64; 2]>| x.map(|v| v.map(f64::to_bits));
    match (a, b) {
        (NotJson(_), NotJson(_)) | (NotAList, NotAList) => true,
        (
            List {
                objects: oa,
                total_items: ta,
            },
            List {
                objects: ob,
                total_items: tb,
            },
        ) => {
            ta == tb
                && oa.len() == ob.len()
                && oa
                    .iter()
                    .zip(ob)
                    .all(|(x, y)| bits4(&x.0) == bits4(&y.0) && bits2(&x.1) == bits2(&y.1))
        }
        _ => false,
    }
}

fn check_bounds(resp: &str, g: &[GroundTruthObject]) {
    let r = score_response(resp, g, &RewardConfig::default());
    assert!(r.think_format == 0.0 || r.think_format == 1.0);
    assert!((0.0..=2.0).contains(&r.answer_format));
    assert!(r.non_repeat == 0.0 || r.non_repeat == 1.0);
    for t in [r.seg_iou, r.seg_l1, r.seg_point] {
        assert!((0.0..=1.0).contains(&t));
    }
    assert!((0.0..=3.0).contains(&r.seg));
    assert!((r.seg - (r.seg_iou + r.seg_l1 + r.seg_point)).abs() < 1e-12);
    assert!(
        (0.0..=7.0).contains(&r.total),
        "total {} for {resp:?}",
        r.total
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 120_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn reward_is_total_and_bounded_on_token_soup(s in soup(), g in gt_objects()) {
        check_bounds(&s, &g);
        let streamed = json::parse_answer_list(&s, 3);
        prop_assert!(same_answer(&streamed, &via_tree(&s, 3)), "{:?}", s);
    }

    #[test]
    fn streaming_answer_reader_matches_the_tree(
        items in prop::collection::vec(prop_oneof![object_json(), soup(), Just("{\"bbox_2d\": [1,2,3,4], \"bbox_2d\": [1,\"2\",3,4]}".to_string())], 0..5),
        sep in prop_oneof![Just(","), Just(", "), Just(",,"), Just(" ")],
    ) {
        let text = format!("[{}]", items.join(sep));
        let streamed = json::parse_answer_list(&text, 3);
        prop_assert!(same_answer(&streamed, &via_tree(&text, 3)), "{:?}", text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 120_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn parser_is_total_on_mutated_bytes(bytes in mutated_response(), g in gt_objects()) {
        let p = ParsedResponse::from_bytes(&bytes, 120);
        prop_assert!(p.objects().len() <= 120);
        check_bounds(&String::from_utf8_lossy(&bytes), &g);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn matching_is_invariant_to_permutations(
        objs in prop::collection::vec(object_json(), 1..7),
        g in gt_objects(),
        seed in any::<u64>(),
    ) {
        let cfg = RewardConfig::default();
        let resp = |o: &[String]| format!("<think>x</think><answer>[{}]</answer>", o.join(","));
        let base = score_response(&resp(&objs), &g, &cfg);
        // Deterministic shuffles driven by the seed (Fisher–Yates with an LCG).
        let mut state = seed | 1;
        let mut next = |n: usize| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as usize) % n
        };
        let mut po = objs.clone();
        for i in (1..po.len()).rev() { let j = next(i + 1); po.swap(i, j); }
        let mut pg = g.clone();
        for i in (1..pg.len()).rev() { let j = next(i + 1); pg.swap(i, j); }
        let shuffled = score_response(&resp(&po), &pg, &cfg);
        prop_assert!((base.seg - shuffled.seg).abs() < 1e-12);
        prop_assert!((base.total - shuffled.total).abs() < 1e-12);
    }

    #[test]
    fn advantages_have_mean_zero(rewards in prop::collection::vec(-10.0f64..10.0, 1..32)) {
        let a = group_advantages(&rewards);
        prop_assert_eq!(a.len(), rewards.len());
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        prop_assert!(mean.abs() < 1e-9, "mean {}", mean);
        prop_assert!(a.iter().all(|v| v.is_finite()));
        if rewards.len() > 1 {
            // Unbiased std of the advantages is std/(std+eps) ≤ 1.
            let var = a.iter().map(|v| v * v).sum::<f64>() / (a.len() - 1) as f64;
            prop_assert!(var.sqrt() <= 1.0 + 1e-9);
        }
    }
}
