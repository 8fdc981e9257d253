//! The in-process collective: sums, broadcasts, many rounds in a row, and the failure modes
//! (a dead peer times out naming the missing rank; mismatched calls are errors, not hangs).

use std::thread;
use std::time::Duration;

use platter_learner::{Collective, Error, InProcessGroup};

fn run_ranks<T: Send + 'static>(
    world: usize,
    timeout: Duration,
    f: impl Fn(InProcessGroup) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let handles: Vec<_> = InProcessGroup::new(world, timeout)
        .into_iter()
        .map(|g| {
            let f = f.clone();
            thread::spawn(move || f(g))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("rank thread"))
        .collect()
}

#[test]
fn all_reduce_and_broadcast_over_many_rounds() {
    let results = run_ranks(4, Duration::from_secs(10), |g| {
        let mut out = Vec::new();
        for round in 0..200 {
            // Rank r contributes (r + round, 1): sums are (0+1+2+3 + 4·round, 4).
            let mut buf = [(g.rank() + round) as f32, 1.0];
            g.all_reduce_sum(&mut buf).unwrap();
            assert_eq!(buf, [(6 + 4 * round) as f32, 4.0]);
            let mut b = [g.rank() as f32; 3];
            g.broadcast(&mut b, round % 4).unwrap();
            assert_eq!(b, [(round % 4) as f32; 3]);
            let mut c = [0.5f64];
            g.all_reduce_sum_f64(&mut c).unwrap();
            out.push(c[0]);
        }
        g.barrier().unwrap();
        out
    });
    for r in results {
        assert!(r.iter().all(|&v| v == 2.0));
    }
}

#[test]
fn dead_peer_times_out_naming_it() {
    let groups = InProcessGroup::new(2, Duration::from_millis(200));
    let g0 = groups[0].clone();
    drop(groups); // rank 1 never calls
    let err = g0.all_reduce_sum(&mut [1.0]).unwrap_err();
    match err {
        Error::CollectiveTimeout {
            op, rank, missing, ..
        } => {
            assert_eq!((op, rank), ("all_reduce_sum", 0));
            assert_eq!(missing, vec![1]);
        }
        other => panic!("expected a timeout, got {other}"),
    }
}

#[test]
fn mismatched_lengths_fail_every_rank() {
    let results = run_ranks(2, Duration::from_secs(5), |g| {
        let mut buf = vec![1.0f32; 1 + g.rank()];
        g.all_reduce_sum(&mut buf).map_err(|e| e.to_string())
    });
    assert!(results.iter().all(|r| r.is_err()), "{results:?}");
    assert!(
        results
            .iter()
            .any(|r| r.as_ref().unwrap_err().contains("mismatch"))
    );
}

#[test]
fn bad_root_is_an_error() {
    let g = InProcessGroup::new(1, Duration::from_secs(1));
    assert!(matches!(
        g[0].broadcast(&mut [0.0], 3),
        Err(Error::BadRank { rank: 3, world: 1 })
    ));
}
