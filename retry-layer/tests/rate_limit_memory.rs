//! A flood of 100,000 unique keys keeps the keyed limiter's memory bounded: the key count
//! never passes the cap, idle keys are evicted, and resident memory stays flat over rounds.
//! (Its own test binary, so no other test allocates while resident memory is measured.)

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use portcullis_retry::rate_limit::{KeyedLimiter, Quota};

const FLOOD: u32 = 100_000;

/// Resident set size in KiB (Linux), if available.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn flood(limiter: &KeyedLimiter<IpAddr>, round: u32) -> usize {
    let mut allowed = 0;
    for i in 0..FLOOD {
        // A distinct address per request and per round: 10.x.y.z then 11.x.y.z ...
        let ip = IpAddr::V4(Ipv4Addr::from(((10 + round) << 24) | i));
        if limiter.check(&ip).is_ok() {
            allowed += 1;
        }
        assert!(
            limiter.len() <= limiter.max_keys(),
            "cap exceeded at key {i}"
        );
    }
    allowed
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn keyed_limiter_under_100000_unique_keys_keeps_memory_bounded() {
    // 5 requests per second per key, burst 5; at most 10,000 keys held.
    let quota = Quota::per_second(NonZeroU32::new(5).unwrap());
    let limiter: KeyedLimiter<IpAddr> = KeyedLimiter::with_bounds(quota, 10_000, None);

    let mut rss = Vec::new();
    for round in 0..4 {
        let allowed = flood(&limiter, round);
        // 10,000 keys get their own bucket; the 90,000 beyond the cap share one overflow
        // bucket (burst 5), so a unique-key flood is throttled as one client.
        // (After round 0 the probe key below holds one of the 10,000 places.)
        let own_buckets = if round == 0 { 10_000 } else { 9_999 };
        assert_eq!(allowed, own_buckets + 5, "round {round}");
        assert_eq!(limiter.len(), 10_000);
        // Once the keys are idle (their bucket refilled), the next check sweeps them.
        tokio::time::advance(Duration::from_secs(2)).await;
        let probe = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        assert!(limiter.check(&probe).is_ok());
        assert_eq!(limiter.len(), 1, "idle keys evicted after round {round}");
        rss.extend(rss_kib());
    }
    eprintln!("rss after each 100,000-key round (KiB): {rss:?}");
    if let (Some(first), Some(last)) = (rss.first(), rss.last()) {
        // Flat: later rounds reuse what the first one allocated (slack for the allocator).
        assert!(
            *last <= first + 4 * 1024,
            "resident memory grew from {first} KiB to {last} KiB over 100,000-key rounds"
        );
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn busy_keys_survive_eviction_and_keep_their_state() {
    let quota = Quota::per_minute(NonZeroU32::new(2).unwrap());
    let limiter: KeyedLimiter<u32> = KeyedLimiter::with_bounds(quota, 100, None);
    assert!(limiter.check(&1).is_ok());
    assert!(limiter.check(&1).is_ok());
    assert!(limiter.check(&1).is_err());
    for k in 2..50 {
        limiter.check(&k).unwrap();
    }
    // 31 s later key 1 is still limited (its bucket is not full again): it must not be
    // evicted, or a sweep would hand it a fresh burst.
    tokio::time::advance(Duration::from_secs(31)).await;
    limiter.evict_idle();
    assert!(limiter.check(&1).is_ok(), "one cell came back after 30 s");
    assert!(
        limiter.check(&1).is_err(),
        "but only one: the state survived the sweep"
    );
}

#[test]
fn a_huge_quota_does_not_panic() {
    // 4 billion per second rounds governor's interval to zero nanoseconds.
    let limiter: KeyedLimiter<u8> = KeyedLimiter::new(Quota::per_second(NonZeroU32::MAX));
    for _ in 0..1000 {
        assert!(limiter.check(&1).is_ok());
    }
}
