//! Failed-login throttling, kept in PostgreSQL (`login_failures`, migration 0002) so every
//! instance on one database shares it and a restart forgets nothing.
//!
//! An attempt is counted against the account it names (the user's id, so every spelling the
//! lookup accepts, case variants and the email included, counts against one user; a name no user
//! has counts under its lower-cased self, so the answers reveal nothing), from the client's
//! address. Three limits: one account from one address (low: a guesser at one place), one
//! account from every address (higher: a stranger from a few places cannot lock a player out
//! cheaply), and one address against every account (a sprayer). Past a limit the attempts are
//! not refused for good: each must wait twice as long as the one before.

use std::net::IpAddr;

use serde::Deserialize;

/// `[login_throttle]` in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleSettings {
    /// Off means every attempt checks its password (only for tests of hashing cost).
    pub enabled: bool,
    /// How long failures are remembered: an account's counter from one address is forgotten
    /// after this long without a failure; the wider counters count per window of this length.
    pub window_secs: u32,
    /// Failures one address may make against one account before delays start.
    pub per_account_address: u32,
    /// Failures against one account from all addresses together before delays start.
    pub per_account: u32,
    /// Failures from one address against all accounts together before delays start.
    pub per_address: u32,
    /// The longest wait between attempts once a limit is reached.
    pub max_delay_secs: u32,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            enabled: true,
            window_secs: 15 * 60,
            per_account_address: 10,
            per_account: 100,
            per_address: 300,
            max_delay_secs: 15 * 60,
        }
    }
}

const LOCAL: &str = "local";

/// Where a login attempt comes from, as the throttle counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddress(String);

impl ClientAddress {
    /// A client's IP address. An IPv6 client is counted by its /64 (one subscriber's network:
    /// a client holding one has billions of addresses to rotate through).
    pub fn from_ip(ip: IpAddr) -> Self {
        let ip = ip.to_canonical();
        ClientAddress(match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", std::net::Ipv6Addr::from(prefix))
            }
        })
    }

    /// Code on this server with no client behind it (a `coronium run` script, a job): the
    /// operator's own code, which the throttle does not hold back.
    pub fn local() -> Self {
        ClientAddress(LOCAL.into())
    }

    /// The wider network an address belongs to, counted with a higher limit: an IPv6 client's
    /// /48 (a site's allocation, which holds 65,536 /64s). IPv4 has none: many players share
    /// one IPv4 address already, and a /24 is often many unrelated subscribers.
    pub fn network(&self) -> Option<String> {
        let (prefix, _) = self.0.split_once("/64")?;
        let v6: std::net::Ipv6Addr = prefix.parse().ok()?;
        let network = u128::from(v6) & !((1u128 << 80) - 1);
        Some(format!("{}/48", std::net::Ipv6Addr::from(network)))
    }

    pub fn is_local(&self) -> bool {
        self.0 == LOCAL
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<Option<IpAddr>> for ClientAddress {
    fn from(ip: Option<IpAddr>) -> Self {
        ip.map_or_else(ClientAddress::local, ClientAddress::from_ip)
    }
}

/// Whole seconds a throttled client is told to wait (never 0: it was refused).
pub fn wait_secs(wait: f64) -> u64 {
    (wait.ceil() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_counted_by_ipv4_or_ipv6_prefix() {
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(ClientAddress::from_ip(v4).as_str(), "203.0.113.7");
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(ClientAddress::from_ip(mapped), ClientAddress::from_ip(v4));
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ClientAddress::from_ip(a).as_str(), "2001:db8:1:2::/64");
        assert_eq!(ClientAddress::from_ip(a), ClientAddress::from_ip(b));
        assert_ne!(ClientAddress::from_ip(a), ClientAddress::from_ip(other));
        assert_eq!(ClientAddress::from(None).as_str(), "local");
        assert_eq!(
            ClientAddress::from_ip(a).network().as_deref(),
            Some("2001:db8:1::/48")
        );
        assert_eq!(
            ClientAddress::from_ip(other).network(),
            ClientAddress::from_ip(a).network()
        );
        assert_eq!(ClientAddress::from_ip(v4).network(), None);
    }

    #[test]
    fn waits_round_up() {
        assert_eq!(wait_secs(0.2), 1);
        assert_eq!(wait_secs(1.5), 2);
        assert_eq!(wait_secs(900.0), 900);
    }
}
