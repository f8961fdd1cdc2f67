//! Every run's outputs are checked before a decoder reads them: shapes that
//! do not fit are errors (never panics), whatever the values.

use std::time::{Duration, Instant};

use super::*;

fn decoder(kind: DecoderKind, declared: Vec<Option<Vec<i64>>>, classes: Option<usize>) -> Decoder {
    Decoder {
        kind,
        params: DecodeParams { conf: 0.25, iou: 0.7, max_det: 300, class_offset: 0, threshold: 0.5, classes },
        labels: vec![],
        declared,
    }
}

fn t(shape: &[i64], data: Vec<f32>) -> Option<OutTensor<'static>> {
    Some(OutTensor { shape: shape.to_vec(), data: Cow::Owned(data) })
}

fn run(d: &Decoder, outs: &[Option<OutTensor<'_>>]) -> Result<Prediction, String> {
    let mut pred = Prediction::default();
    d.decode(outs, (640, 480), &mut DecodeScratch::default(), &mut pred).map(|_| pred)
}

#[test]
fn outputs_too_small_or_inconsistent_for_the_layout_are_errors() {
    let any = |k| decoder(k, vec![None; 4], None);
    let cases: Vec<(DecoderKind, Vec<Option<OutTensor<'static>>>, &str)> = vec![
        // What made `rows - 4` and `cols - 5` wrap.
        (DecoderKind::YoloV8, vec![t(&[1, 3, 64], vec![0.5; 192])], "with at least one class"),
        (DecoderKind::YoloV8, vec![t(&[1, 4, 8], vec![0.5; 32])], "with at least one class"),
        (DecoderKind::YoloV5, vec![t(&[1, 64, 3], vec![0.5; 192])], "with at least one class"),
        (DecoderKind::YoloV8, vec![t(&[1, 6, 10], vec![0.5; 5])], "came with 5 values"),
        (DecoderKind::YoloV8, vec![t(&[1, -6, 10], vec![])], "expected [1, 4+C, N]"),
        (DecoderKind::YoloV8, vec![t(&[2, 6, 10], vec![0.5; 120])], "with at least one class"),
        (DecoderKind::End2End, vec![t(&[1, 5, 5], vec![0.5; 25])], "expected [1, K, 6]"),
        (DecoderKind::Classify, vec![t(&[1, 0], vec![])], "at least one class"),
        (DecoderKind::Classify, vec![t(&[1, 4], vec![0.1, f32::INFINITY, 0.2, 0.3])], "a class score is inf"),
        (DecoderKind::CustomVision, vec![t(&[1, 35, 13, 13], vec![0.0; 100])], "came with 100 values"),
        (DecoderKind::CustomVision, vec![t(&[1, 36, 2, 2], vec![0.0; 144])], "not [1, 5 anchors"),
        (DecoderKind::Anomalib, vec![t(&[1], vec![0.5]), t(&[1, 1, -3, 4], vec![])], "anomaly_map"),
        (
            DecoderKind::Anomalib,
            vec![t(&[1], vec![f32::NAN]), t(&[1, 2, 2], vec![0.0; 4])],
            "pred_score is NaN",
        ),
        (
            DecoderKind::Ssd,
            vec![
                t(&[1, 5, 3], vec![0.0; 15]),
                t(&[1, 5], vec![0.0; 5]),
                t(&[1, 5], vec![0.0; 5]),
                t(&[1], vec![5.0]),
            ],
            "boxes must be [1, K, 4]",
        ),
        (
            DecoderKind::CustomVisionS1,
            vec![t(&[1, 5, 4], vec![0.0; 20]), t(&[1, 2], vec![0.9; 2]), t(&[1, 5], vec![0.0; 5])],
            "expected 5 values",
        ),
    ];
    for (kind, outs, want) in cases {
        let shapes: Vec<_> = outs.iter().map(|o| o.as_ref().map(|o| o.shape.clone())).collect();
        let e = run(&any(kind), &outs).expect_err(&format!("{kind} {shapes:?}"));
        assert!(e.contains(want) && e.starts_with(&format!("{kind} decoder")), "{kind} {shapes:?}: {e}");
    }
}

#[test]
fn a_run_must_keep_the_dimensions_the_model_fixed_but_not_its_batch_or_dynamic_ones() {
    let fixed = decoder(DecoderKind::YoloV8, vec![Some(vec![1, 6, 8400])], None);
    let e = run(&fixed, &[t(&[1, 6, 100], vec![0.0; 600])]).unwrap_err();
    assert!(e.contains("output: the output is [1, 6, 100], but the model declares [1, 6, 8400]"), "{e}");
    let dynamic = decoder(DecoderKind::YoloV8, vec![Some(vec![4, 6, -1])], None);
    assert!(run(&dynamic, &[t(&[1, 6, 100], vec![0.0; 600])]).is_ok());
    assert!(run(&dynamic, &[t(&[1, 6, 100, 1], vec![0.0; 600])]).unwrap_err().contains("declares"));
}

#[test]
fn a_class_count_other_than_the_one_loaded_is_an_error() {
    let two = decoder(DecoderKind::YoloV8, vec![None], Some(2));
    assert!(run(&two, &[t(&[1, 6, 3], vec![0.0; 18])]).is_ok());
    let e = run(&two, &[t(&[1, 7, 3], vec![0.0; 21])]).unwrap_err();
    assert!(e.contains("the output has 3 classes, but the model was loaded with 2"), "{e}");
    let cls = decoder(DecoderKind::Classify, vec![None], Some(4));
    assert!(run(&cls, &[t(&[1, 5], vec![0.0; 5])]).unwrap_err().contains("5 classes"));
}

#[test]
fn boxes_and_scores_that_are_not_finite_never_come_out() {
    #[rustfmt::skip]
    let data = vec![
        10.0, f32::NAN, 30.0, 40.0,            // cx
        10.0, 10.0, f32::INFINITY, 40.0,       // cy
        4.0, 4.0, 4.0, 4.0,                    // w
        4.0, 4.0, 4.0, 4.0,                    // h
        0.9, 0.9, 0.9, f32::INFINITY,          // class 0
    ];
    let pred = run(&decoder(DecoderKind::YoloV8, vec![None], None), &[t(&[1, 5, 4], data)]).expect("decodes");
    assert_eq!(pred.detections.len(), 1, "{:?}", pred.detections);
    assert_eq!(pred.detections[0].bbox.x1, 8.0);
}

#[test]
fn an_empty_output_with_a_huge_class_count_costs_nothing() {
    let big = i64::from(i32::MAX) - 2; // a multiple of 5, with 5 + C per anchor
    let t0 = Instant::now();
    let v8 = decoder(DecoderKind::YoloV8, vec![None], None);
    assert_eq!(run(&v8, &[t(&[1, big, 0], vec![])]).expect("empty").detections, vec![]);
    let cv = decoder(DecoderKind::CustomVision, vec![None], None);
    assert_eq!(run(&cv, &[t(&[1, big, 0, 13], vec![])]).expect("empty").detections, vec![]);
    assert!(t0.elapsed() < Duration::from_millis(100), "took {:?}", t0.elapsed());
    let e = run(&v8, &[t(&[1, i64::from(i32::MAX) + 1, 0], vec![])]).unwrap_err();
    assert!(e.contains("expected [1, 4+C, N]"), "{e}");
}
