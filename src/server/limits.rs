//! Connection limits beyond what hyper enforces: open connections per client address, and the
//! idle time of a connection with no request under way.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Open connections per client address, across every worker.
pub(crate) struct AddressCounts {
    /// 0: no cap.
    cap: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl AddressCounts {
    pub(crate) fn new(cap: usize) -> Self {
        AddressCounts {
            cap,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one more connection from `address`, or `None` when it holds its cap.
    pub(crate) fn admit(self: &Arc<Self>, address: IpAddr) -> Option<AddressSlot> {
        if self.cap == 0 {
            return Some(AddressSlot {
                counts: None,
                address,
            });
        }
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(address).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            counts: Some(self.clone()),
            address,
        })
    }
}

/// One admitted connection; its address's count goes down when it is dropped.
pub(crate) struct AddressSlot {
    counts: Option<Arc<AddressCounts>>,
    address: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let Some(counts) = &self.counts else {
            return;
        };
        let mut map = counts.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = map.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.address);
            }
        }
    }
}

/// What a connection is doing: requests under way, and how many it has served (counted rather
/// than timed: no clock read per request).
pub(crate) struct Activity {
    in_flight: Cell<usize>,
    served: Cell<u64>,
}

impl Activity {
    pub(crate) fn new() -> Rc<Self> {
        Rc::new(Activity {
            in_flight: Cell::new(0),
            served: Cell::new(0),
        })
    }

    /// Marks a request under way until the guard is dropped.
    pub(crate) fn begin(self: &Rc<Self>) -> RequestGuard {
        self.in_flight.set(self.in_flight.get() + 1);
        RequestGuard(self.clone())
    }

    /// Returns once the connection has had no request under way and started none for a whole
    /// `limit` (so between one and two `limit`s after its last request ended).
    pub(crate) async fn idle(&self, limit: Duration) {
        loop {
            let served = self.served.get();
            tokio::time::sleep(limit).await;
            if self.in_flight.get() == 0 && self.served.get() == served {
                return;
            }
        }
    }
}

pub(crate) struct RequestGuard(Rc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.in_flight.set(activity.in_flight.get() - 1);
        activity.served.set(activity.served.get() + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_cap() {
        let counts = Arc::new(AddressCounts::new(2));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = counts.admit(a).unwrap();
        let _second = counts.admit(a).unwrap();
        assert!(counts.admit(a).is_none());
        assert!(
            counts.admit(b).is_some(),
            "another address has its own count"
        );
        drop(first);
        assert!(
            counts.admit(a).is_some(),
            "a closed connection frees its slot"
        );
    }
}

/// Requests per client address per minute on the mail-link pages (`/_confirmation`,
/// `/_resetpassword`), across every worker: their code is the only credential, so guessing
/// gets a budget. IPv6 clients count by their /64 (one subscriber's network).
pub(crate) struct PageRate(crate::rate::PerMinute);

impl PageRate {
    pub(crate) fn new(per_minute: u32) -> Self {
        PageRate(crate::rate::PerMinute::new(per_minute))
    }

    /// Whether `address` may have one more page now.
    pub(crate) fn allow(&self, address: IpAddr) -> bool {
        let key = match address {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::from(octets)
            }
            other => other,
        };
        self.0.allow(key)
    }
}

#[cfg(test)]
mod page_rate_tests {
    use super::*;

    #[test]
    fn an_ipv6_network_shares_one_budget() {
        let rate = PageRate::new(2);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:1234".parse().unwrap();
        let elsewhere: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert!(rate.allow(a) && rate.allow(b));
        assert!(!rate.allow(a), "the same /64");
        assert!(rate.allow(elsewhere));
        let v4 = IpAddr::from([192, 0, 2, 1]);
        assert!(rate.allow(v4) && rate.allow(v4) && !rate.allow(v4));
    }
}
