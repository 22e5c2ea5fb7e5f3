//! How many UDP answers mailroom's DNS server sends to one source network. A UDP
//! question's source address can be forged, and an answer (a DKIM key) is several times
//! the size of the question: without a limit the server would amplify a flood at whoever
//! the forged address names. Over TCP the handshake proves the source, so TCP is not
//! limited, and a client told to retry there still gets its answer.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Networks tracked before the idle ones are forgotten.
const TRACKED: usize = 10_000;

/// A token bucket per source network: `per_second` answers a second, as a burst too.
pub struct RateLimit {
    per_second: u64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// `per_second` 0 means no limit.
    pub fn new(per_second: u64) -> RateLimit {
        RateLimit {
            per_second,
            buckets: Mutex::default(),
        }
    }

    /// Whether one more answer may go to `source` now (and counts it when it may).
    pub fn allow(&self, source: IpAddr) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let rate = self.per_second as f64;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= TRACKED {
            // A bucket untouched for a second is full again: the same as no bucket.
            buckets.retain(|_, bucket| now.duration_since(bucket.at) < Duration::from_secs(1));
            // Still full: a flood of (likely spoofed) sources. New ones are told to come
            // back over TCP, and the sources already counted keep their counts.
            if buckets.len() >= TRACKED && !buckets.contains_key(&network(source)) {
                return false;
            }
        }
        let bucket = buckets.entry(network(source)).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(rate);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The network an address counts in: its /24 (IPv4) or /56 (IPv6), since one attacker
/// commonly holds a whole such block.
fn network(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(v4.to_bits() & !0xff)),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !((1u128 << 72) - 1))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_gets_its_rate_and_no_more() {
        let limit = RateLimit::new(3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let neighbour: IpAddr = "192.0.2.200".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(limit.allow(a));
        assert!(limit.allow(neighbour));
        assert!(limit.allow(a));
        assert!(!limit.allow(neighbour), "the same /24");
        assert!(limit.allow(other));
        std::thread::sleep(Duration::from_millis(400));
        assert!(limit.allow(a), "refilled at 3 a second");

        let open = RateLimit::new(0);
        assert!((0..1000).all(|_| open.allow(a)));
    }

    #[test]
    fn a_flood_of_new_sources_cannot_reset_a_counted_one() {
        let limit = RateLimit::new(1);
        let victim: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limit.allow(victim));
        assert!(!limit.allow(victim));
        for n in 0..TRACKED as u32 {
            limit.allow(IpAddr::from((0x0a00_0000 + (n << 8)).to_be_bytes()));
        }
        assert!(
            !limit.allow(victim),
            "the victim's count survives the flood"
        );
        assert!(
            !limit.allow("198.51.100.1".parse().unwrap()),
            "a new source is sent to TCP while the table is full"
        );
    }

    #[test]
    fn networks_are_24s_and_56s() {
        let n = |a: &str| network(a.parse().unwrap()).to_string();
        assert_eq!(n("203.0.113.77"), "203.0.113.0");
        assert_eq!(n("::ffff:203.0.113.77"), "203.0.113.0");
        assert_eq!(n("2001:db8:1:2ff:1:2:3:4"), "2001:db8:1:200::");
    }
}
