//! Scoring one group and the gRPC round trip, with the box segmenter.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use platter_data::{BoxSegmenter, Mask, ObjectPrompt, SegmentError, Segmenter};
use platter_proto::v1;
use platter_reward::{
    RewardClient, RewardClientOptions, RewardServerConfig, configs_to_settings, mask_to_rle,
    score_group, serve,
};
use platter_rl::{OverlongConfig, RewardConfig};

/// Counts calls and prompts, delegating to the real box segmenter.
#[derive(Default)]
struct Counting {
    calls: AtomicUsize,
    prompts: AtomicUsize,
}

impl Segmenter for Counting {
    fn name(&self) -> &str {
        "box"
    }
    fn segment(
        &self,
        image: &image::RgbImage,
        prompts: &[ObjectPrompt],
    ) -> Result<Vec<Option<Mask>>, SegmentError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.prompts.fetch_add(prompts.len(), Ordering::SeqCst);
        BoxSegmenter.segment(image, prompts)
    }
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb([200, 100, 50]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A 200 x 100 image, policy space 100: x scales by 2, y by 1. GT object: original box
/// x 20..=59, y 10..=29 -> policy box [10, 10, 30, 29] (x: 20*100/200 = 10, 59*0.5 = 29.5 -> 30).
fn request(responses: &[(&str, u32)]) -> v1::ScoreRequest {
    let gt_mask = Mask::from_fn(200, 100, |x, y| {
        (20..=59).contains(&x) && (10..=29).contains(&y)
    });
    let overlong = OverlongConfig {
        max_response_tokens: 100,
        ..OverlongConfig::default()
    };
    v1::ScoreRequest {
        request_id: "exp/0/3/1".into(),
        image: png(200, 100),
        policy_image_size: 100,
        ground_truth: vec![v1::GroundTruthObject {
            bbox_2d: vec![10.0, 10.0, 30.0, 29.0],
            point_2d: vec![20.0, 20.0],
        }],
        ground_truth_mask: Some(mask_to_rle(&gt_mask)),
        responses: responses
            .iter()
            .map(|(t, n)| v1::ResponseToScore {
                text: (*t).to_owned(),
                num_tokens: *n,
            })
            .collect(),
        settings: Some(configs_to_settings(&RewardConfig::default(), &overlong)),
    }
}

const GOOD: &str = r#"<think>the cake is left.</think><answer>[{"bbox_2d": [10, 10, 29.5, 29], "point_2d": [20, 20]}]</answer>"#;
const TWO: &str = r#"<think>two.</think><answer>[{"bbox_2d": [10, 10, 29.5, 29], "point_2d": [20, 20]}, {"bbox_2d": [60, 50, 80, 70], "point_2d": [70, 60]}]</answer>"#;
const BAD: &str = "no tags at all";

#[test]
fn one_segment_call_per_group_with_all_prompts() {
    let seg = Counting::default();
    let req = request(&[(GOOD, 10), (TWO, 10), (BAD, 10), (GOOD, 90)]);
    let s = score_group(&req, &seg).unwrap();
    assert_eq!(seg.calls.load(Ordering::SeqCst), 1);
    assert_eq!(seg.prompts.load(Ordering::SeqCst), 1 + 2 + 1);
    assert_eq!(s.request_id, "exp/0/3/1");
    assert_eq!(s.segmenter, "box");
    let r = &s.responses;
    // GOOD: think 1 + answer 2 + non-repeat 1 + seg 3 (same box up to 0.5 px, point equal).
    assert_eq!(
        (r[0].think_format, r[0].answer_format, r[0].non_repeat),
        (1.0, 2.0, 1.0)
    );
    assert_eq!(r[0].seg, 3.0);
    assert_eq!(r[0].total, 7.0);
    // Box 10..29.5 maps to original x 20..59 (29.5 * 2 = 59), y 10..29: exactly the GT mask.
    assert_eq!(r[0].mask_iou, Some(1.0));
    assert_eq!(r[0].num_prompts, 1);
    // TWO: one match of two objects: seg hits 3 / max(2, 1) = 1.5.
    assert_eq!(r[1].seg, 1.5);
    assert_eq!(r[1].num_prompts, 2);
    let iou = r[1].mask_iou.unwrap();
    assert!(iou > 0.0 && iou < 1.0, "{iou}");
    // BAD: nothing but non-repeat; empty mask against a non-empty GT: IoU 0.
    assert_eq!(r[2].total, 1.0);
    assert_eq!(r[2].mask_iou, Some(0.0));
    // Overlong: L = 100, buffer 25, 90 tokens -> 0.1 * (75 - 90) / 25 = -0.06, not in `total`.
    assert_eq!(r[3].total, 7.0);
    assert!((r[3].overlong_penalty + 0.06).abs() < 1e-12);
    assert!((r[3].shaped_reward - 6.94).abs() < 1e-12);
    assert_eq!(r[0].overlong_penalty, 0.0);
}

#[test]
fn bad_requests_name_the_field() {
    let mut req = request(&[(GOOD, 1)]);
    req.ground_truth[0].bbox_2d.pop();
    let err = score_group(&req, &BoxSegmenter).unwrap_err().to_string();
    assert!(err.contains("ground_truth[0].bbox_2d"), "{err}");
    let mut req = request(&[(GOOD, 1)]);
    req.image = b"not an image".to_vec();
    assert!(score_group(&req, &BoxSegmenter).is_err());
    let mut req = request(&[(GOOD, 1)]);
    if let Some(s) = req.settings.as_mut() {
        s.iou_threshold = 2.0;
    }
    let err = score_group(&req, &BoxSegmenter).unwrap_err().to_string();
    assert!(err.contains("reward.iou_threshold"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_stream_scores_groups_and_reports_errors_per_group() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        RewardServerConfig::new(Arc::new(BoxSegmenter)),
        listener,
        async move {
            let _ = stop_rx.await;
        },
    ));
    let client =
        RewardClient::new(&format!("http://{addr}"), RewardClientOptions::default()).unwrap();
    let mut handles = Vec::new();
    for i in 0..6 {
        let client = client.clone();
        let mut req = request(&[(GOOD, 5), (BAD, 5)]);
        req.request_id = format!("g{i}");
        if i == 5 {
            req.image.clear();
        }
        handles.push(tokio::spawn(async move { client.score(req).await }));
    }
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.await.unwrap();
        if i == 5 {
            let err = r.unwrap_err().to_string();
            assert!(err.contains("g5"), "{err}");
        } else {
            let s = r.unwrap();
            assert_eq!(s.request_id, format!("g{i}"));
            assert_eq!(s.responses[0].total, 7.0);
            assert!(s.timing.unwrap().total_seconds > 0.0);
        }
    }
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// The real SAM2 predictor (the reduced random-weight SAM2.1 fixture of `models/sam2`, built by
/// `scripts/oracle/sam2/build_fixtures.py`) behind the same scoring path: the reward terms do not
/// depend on the segmenter, the mask IoU does, and it is a proper fraction.
#[test]
fn scoring_with_the_sam2_segmenter() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/sam2/tests/fixtures/micro_256"
    );
    let cfg = platter_sam2::Sam2Config::from_yaml_file(std::path::Path::new(&format!(
        "{fixture}/model_config.yaml"
    )))
    .unwrap();
    let sam = platter_sam2::Sam2::load(
        std::path::Path::new(&format!("{fixture}/weights.safetensors")),
        cfg,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let req = request(&[(GOOD, 10), (TWO, 10), (BAD, 10)]);
    let with_sam = score_group(&req, &sam).unwrap();
    let with_box = score_group(&req, &BoxSegmenter).unwrap();
    assert_eq!(with_sam.segmenter, "sam2");
    for (s, b) in with_sam.responses.iter().zip(&with_box.responses) {
        assert_eq!(
            (s.total, s.seg, s.num_prompts),
            (b.total, b.seg, b.num_prompts)
        );
        let iou = s.mask_iou.expect("mask IoU is reported");
        assert!((0.0..=1.0).contains(&iou), "{iou}");
    }
    // No objects: empty mask against a non-empty GT.
    assert_eq!(with_sam.responses[2].mask_iou, Some(0.0));
}
