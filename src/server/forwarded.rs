//! Which address a request comes from: the socket's peer, unless the peer is a proxy the
//! configuration trusts, whose `X-Forwarded-For` then names the client.

use std::net::IpAddr;

use ipnet::IpNet;

/// The client of a request that reached us from `peer` with these `X-Forwarded-For` values
/// (in header order). Each proxy appends the address it received from, so the list is read from
/// the right: the first address that is not a trusted proxy is the client. An entry that does not
/// parse stops the walk (whoever wrote it is not to be believed further), and the last trusted
/// hop is the client.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: IpAddr| {
        let ip = ip.to_canonical();
        trusted.iter().any(|net| net.contains(&ip))
    };
    if !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for
        .into_iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            return client;
        };
        client = ip;
        if !is_trusted(ip) {
            return ip;
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Ok(addr) = hop.parse::<std::net::SocketAddr>() {
        return Some(addr.ip());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let claimed = ["198.51.100.1"];
        assert_eq!(
            client_ip(ip("203.0.113.9"), claimed, &[]),
            ip("203.0.113.9")
        );
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), claimed, &trusted),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client_from_the_right() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        // The client forged a first entry; the proxies appended the real ones.
        let header = ["1.1.1.1, 198.51.100.7, 10.0.0.2"];
        assert_eq!(
            client_ip(ip("127.0.0.1"), header, &trusted),
            ip("198.51.100.7")
        );
        // Several header lines read as one list.
        let lines = ["1.1.1.1", "198.51.100.7:5555", "10.0.0.2"];
        assert_eq!(
            client_ip(ip("10.0.0.3"), lines, &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), ["[2001:db8::5]:443"], &trusted),
            ip("2001:db8::5")
        );
    }

    #[test]
    fn no_header_or_garbage_leaves_the_last_trusted_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        let none: [&str; 0] = [];
        assert_eq!(client_ip(ip("10.0.0.1"), none, &trusted), ip("10.0.0.1"));
        assert_eq!(
            client_ip(ip("10.0.0.1"), ["1.1.1.1, junk, 10.0.0.4"], &trusted),
            ip("10.0.0.4")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), ["10.0.0.7, 10.0.0.4"], &trusted),
            ip("10.0.0.7")
        );
    }
}
