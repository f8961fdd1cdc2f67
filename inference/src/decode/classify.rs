//! Image classifiers: `[1, C]` logits or probabilities.

use std::sync::Arc;

use super::{OutTensor, softmax};
use crate::ClassScore;

/// The `k` most probable classes, best first (lower class id first on a tie).
/// Logits are turned into probabilities with softmax; outputs that already
/// are probabilities (all in 0..1, summing to 1 within 1e-3) are used as they are.
pub(crate) fn top_k(out: &OutTensor<'_>, labels: &[Arc<str>], k: usize) -> Result<Vec<ClassScore>, String> {
    let c = match out.shape.as_slice() {
        [1, c] => *c as usize,
        s => return Err(format!("expected [1, C], got {s:?}")),
    };
    let v = &out.data[..c];
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

    #[test]
    fn applies_softmax_to_logits_but_not_to_probabilities() {
        let labels: Vec<Arc<str>> = vec!["ok".into(), "scratch".into(), "dent".into()];
        let logits = OutTensor { shape: vec![1, 3], data: Cow::Owned(vec![1.0, 3.0, 2.0]) };
        let top = top_k(&logits, &labels, 2).expect("ok");
        assert_eq!(top.iter().map(|c| c.class_id).collect::<Vec<_>>(), vec![1, 2]);
        let e = [1f32.exp(), 3f32.exp(), 2f32.exp()];
        assert!((top[0].score - e[1] / e.iter().sum::<f32>()).abs() < 1e-6);
        let probs = OutTensor { shape: vec![1, 3], data: Cow::Owned(vec![0.2, 0.3, 0.5]) };
        let top = top_k(&probs, &labels, 5).expect("ok");
        assert_eq!((top[0].class_id, top[0].score), (2, 0.5));
        assert_eq!(top.len(), 3);
    }
}
