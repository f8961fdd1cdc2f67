//! Image classifiers: `[1, C]` logits or probabilities.

use std::sync::Arc;

use super::{DecodeParams, OutTensor, classes, dims, softmax};
use crate::ClassScore;

/// The `k` most probable classes, best first (lower class id first on a tie).
/// Logits are turned into probabilities with softmax; outputs that already
/// are probabilities (all in 0..1, summing to 1 within 1e-3) are used as they are.
pub(crate) fn top_k(
    out: &OutTensor<'_>,
    params: &DecodeParams,
    labels: &[Arc<str>],
    k: usize,
) -> Result<Vec<ClassScore>, String> {
    let c = match dims(out, "[1, C]")? {
        [1, c] if c >= 1 => classes(c, params)?,
        _ => return Err(format!("expected [1, C] with at least one class, got {:?}", out.shape)),
    };
    let v = &out.data[..c];
    // Softmax of an infinity is NaN everywhere: no class could be told apart.
    if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
        return Err(format!("a class score is {bad}"));
    }
    let sum: f64 = v.iter().map(|&x| f64::from(x)).sum();
    let is_prob = v.iter().all(|&x| (0.0..=1.0).contains(&x)) && (sum - 1.0).abs() <= 1e-3;
    let probs = if is_prob { v.to_vec() } else { softmax(v) };
    let mut idx: Vec<usize> = (0..c).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    Ok(idx
        .into_iter()
        .take(k)
        .map(|i| ClassScore {
            class_id: i as u32,
            label: labels.get(i).cloned().unwrap_or_else(|| Arc::from(format!("class{i}"))),
            score: probs[i],
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    const PARAMS: DecodeParams =
        DecodeParams { conf: 0.25, iou: 0.7, max_det: 300, class_offset: 0, threshold: 0.5, classes: None };

    #[test]
    fn applies_softmax_to_logits_but_not_to_probabilities() {
        let labels: Vec<Arc<str>> = vec!["ok".into(), "scratch".into(), "dent".into()];
        let logits = OutTensor { shape: vec![1, 3], data: Cow::Owned(vec![1.0, 3.0, 2.0]) };
        let top = top_k(&logits, &PARAMS, &labels, 2).expect("ok");
        assert_eq!(top.iter().map(|c| c.class_id).collect::<Vec<_>>(), vec![1, 2]);
        let e = [1f32.exp(), 3f32.exp(), 2f32.exp()];
        assert!((top[0].score - e[1] / e.iter().sum::<f32>()).abs() < 1e-6);
        let probs = OutTensor { shape: vec![1, 3], data: Cow::Owned(vec![0.2, 0.3, 0.5]) };
        let top = top_k(&probs, &PARAMS, &labels, 5).expect("ok");
        assert_eq!((top[0].class_id, top[0].score), (2, 0.5));
        assert_eq!(top.len(), 3);
    }
}
