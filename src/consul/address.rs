//! Which address the service is registered with, when the user does not give one.
//!
//! Owns: the default address (the IPv4 address of `--service-interface`, else of the interface holding the
//! default route, else of the first non-loopback interface), and parsing tagged addresses (`lan`, `wan`).
//! Does not own: an address the user gives (`--service-address`, the service file's `address`): that one is
//! registered as is, which is how a host address and a published port are advertised (README: bridge
//! networking with published ports).
//!
//! Why the default route and not the first interface: with several networks Docker creates the interfaces in
//! its own order, not the order they were given, while the default route goes through the network the
//! container was created on (the first `--network`), the one other hosts route to.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

/// /proc/net/route's RTF_UP flag.
const RTF_UP: u32 = 0x1;

/// The IPv4 address to register: of `interface` when named (an error if it has none), else the default
/// route's interface, else the first non-loopback one. `Ok(None)` when the container has no IPv4 at all.
pub fn select(interface: Option<&str>) -> Result<Option<String>, String> {
    let addrs = ipv4_interfaces();
    let of = |name: &str| {
        addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.to_string())
    };
    if let Some(name) = interface {
        return of(name).map(Some).ok_or_else(|| {
            let known: Vec<&str> = addrs.iter().map(|(n, _)| n.as_str()).collect();
            format!(
                "MICROINIT_SERVICE_INTERFACE={name}: no IPv4 address on an interface of that name \
                 (interfaces with one: {})",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            )
        });
    }
    let by_route = std::fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|t| default_route_interface(&t))
        .and_then(|name| of(&name));
    Ok(by_route.or_else(|| {
        addrs
            .iter()
            .find(|(_, a)| !a.is_loopback())
            .map(|(_, a)| a.to_string())
    }))
}

/// Every (interface, IPv4 address) pair, in the kernel's order.
fn ipv4_interfaces() -> Vec<(String, Ipv4Addr)> {
    let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    ifaddrs
        .filter_map(|ifa| {
            let ip = ifa.address?.as_sockaddr_in()?.ip();
            (!ip.is_unspecified()).then_some((ifa.interface_name, ip))
        })
        .collect()
}

/// The interface of the up default route with the lowest metric. /proc/net/route: a header line, then
/// `Iface Destination Gateway Flags RefCnt Use Metric Mask …` with addresses in hex.
fn default_route_interface(route: &str) -> Option<String> {
    route
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            let metric: u32 = f.get(6)?.parse().ok()?;
            (*f.get(1)? == "00000000" && *f.get(7)? == "00000000" && flags & RTF_UP != 0)
                .then(|| (metric, f[0].to_string()))
        })
        .min()
        .map(|(_, name)| name)
}

/// A tagged address `ADDR[:PORT]` (IPv6 in brackets) as Consul's service `TaggedAddresses` entry; the port
/// defaults to the service's. `key` names the option in errors.
pub fn tagged(key: &str, value: &str, service_port: Option<u16>) -> Result<Value, String> {
    let bad = || format!("{key}={value}: use ADDR or ADDR:PORT (IPv6 as [ADDR]:PORT)");
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (h, tail) = rest.split_once(']').ok_or_else(bad)?;
        match tail {
            "" => (h, None),
            t => (h, Some(t.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match value.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (value, None),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?),
        None => service_port,
    };
    Ok(match port {
        Some(p) => json!({ "Address": host, "Port": p }),
        None => json!({ "Address": host }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_route_decides_not_the_interface_order() {
        // eth0 is listed first but the default route goes through eth1 (the network the container was
        // created on); a second default route with a higher metric loses.
        let route =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0000120A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
                     eth2\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                     eth1\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth1\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        assert_eq!(default_route_interface(route).as_deref(), Some("eth1"));
        // A route that is down does not count; none at all gives None.
        let down = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                    eth3\t00000000\t010011AC\t0002\t0\t0\t0\t00000000\n";
        assert_eq!(default_route_interface(down), None);
        assert_eq!(default_route_interface(""), None);
    }

    #[test]
    fn a_named_interface_without_ipv4_is_an_error_naming_it() {
        let e = select(Some("no-such-if0")).expect_err("unknown interface");
        assert!(e.contains("MICROINIT_SERVICE_INTERFACE=no-such-if0"), "{e}");
        // Loopback always exists and has 127.0.0.1.
        assert_eq!(select(Some("lo")), Ok(Some("127.0.0.1".into())));
    }

    #[test]
    fn tagged_addresses_take_the_service_port_unless_given() {
        let k = "MICROINIT_SERVICE_WAN_ADDRESS";
        assert_eq!(
            tagged(k, "203.0.113.7", Some(8080)),
            Ok(json!({"Address": "203.0.113.7", "Port": 8080}))
        );
        assert_eq!(
            tagged(k, "203.0.113.7:30080", Some(8080)),
            Ok(json!({"Address": "203.0.113.7", "Port": 30080}))
        );
        assert_eq!(
            tagged(k, "[2001:db8::1]:443", None),
            Ok(json!({"Address": "2001:db8::1", "Port": 443}))
        );
        assert_eq!(
            tagged(k, "host.lan", None),
            Ok(json!({"Address": "host.lan"}))
        );
        for bad in ["", ":80", "h:0", "h:port", "[::1", "[::1]x"] {
            assert!(tagged(k, bad, None).is_err(), "{bad:?}");
        }
    }
}
