//! Group-normalised advantages (METHOD §4).

/// Stabiliser added to the group standard deviation.
pub const ADVANTAGE_EPS: f64 = 1e-6;

/// `Âᵢ = (Rᵢ − mean) / (std + 1e-6)` with the unbiased (N − 1) standard deviation; a group of
/// one gets 0. The advantage is per sequence and is broadcast over its tokens by the loss.
pub fn group_advantages(rewards: &[f64]) -> Vec<f64> {
    let n = rewards.len();
    if n < 2 {
        return vec![0.0; n];
    }
    let mean = rewards.iter().sum::<f64>() / n as f64;
    let var = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let std = var.sqrt();
    rewards
        .iter()
        .map(|r| (r - mean) / (std + ADVANTAGE_EPS))
        .collect()
}

/// Population (N) standard deviation: the dynamic-sampling filter statistic (METHOD §5).
pub fn population_std(values: &[f64]) -> f64 {
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_derived_group() {
        // rewards 1, 2, 3: mean 2, unbiased var ((1)+(0)+(1))/2 = 1, std 1.
        // advantages (−1, 0, 1) / (1 + 1e-6).
        let a = group_advantages(&[1.0, 2.0, 3.0]);
        let s = 1.0 / (1.0 + 1e-6);
        assert_eq!(a, vec![-s, 0.0, s]);
    }

    #[test]
    fn singletons_and_uniform_groups_are_zero() {
        assert_eq!(group_advantages(&[5.0]), vec![0.0]);
        assert!(group_advantages(&[]).is_empty());
        assert_eq!(group_advantages(&[2.0; 8]), vec![0.0; 8]);
    }

    #[test]
    fn population_std_hand_derived() {
        // 0, 0, 0, 4: mean 1, squared deviations 1+1+1+9 = 12, /4 = 3.
        assert!((population_std(&[0.0, 0.0, 0.0, 4.0]) - 3f64.sqrt()).abs() < 1e-15);
    }
}
