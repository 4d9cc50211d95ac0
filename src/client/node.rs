//! Node identity and address resolution.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

/// A broker's id. Bootstrap nodes conventionally use negative ids (Kafka: -1, -2, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub i32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.0)
    }
}

/// Turns a host name into the addresses to try. Injectable so that tests control DNS.
pub trait Resolver {
    /// All addresses of `host:port`, in the order to try them.
    ///
    /// # Errors
    /// The resolution error; the connection attempt then fails and backs off.
    fn resolve(&mut self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

/// The system resolver (`getaddrinfo`, blocking), keeping every address (Kafka's
/// `client.dns.lookup=use_all_dns_ips`). A literal IP resolves without a lookup.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&mut self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host}: no addresses"),
            ));
        }
        Ok(addrs)
    }
}

/// Splits `host:port` (or `[v6]:port`).
///
/// # Errors
/// [`io::ErrorKind::InvalidInput`] when there is no port or it does not parse.
pub fn split_host_port(addr: &str) -> io::Result<(String, u16)> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{addr}` is not host:port"),
        )
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse::<u16>().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("localhost:9092").unwrap(),
            ("localhost".into(), 9092)
        );
        assert_eq!(split_host_port("[::1]:9092").unwrap(), ("::1".into(), 9092));
        assert!(split_host_port("localhost").is_err());
        assert!(split_host_port(":9092").is_err());
        assert!(split_host_port("h:99999").is_err());
    }

    #[test]
    fn literal_ip_needs_no_lookup() {
        let addrs = SystemResolver.resolve("127.0.0.1", 1).unwrap();
        assert_eq!(addrs, vec!["127.0.0.1:1".parse().unwrap()]);
    }
}
