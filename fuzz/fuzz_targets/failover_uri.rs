//! Fuzzes `FailoverUri::parse` over arbitrary text.
//!
//! Nothing may panic. A rejected URI lists at least one problem and its message is not empty; an
//! accepted one has at least one server, every server re-parses from its own `Display` to an equal
//! address, and options stay in their documented ranges.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqnet::failover::{FailoverUri, ServerUri};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match FailoverUri::parse(text) {
        Ok(uri) => {
            assert!(!uri.servers.is_empty());
            for s in &uri.servers {
                assert!(s.port > 0);
                assert!(!s.host.is_empty());
                let again = ServerUri::parse(&format!("tcp://{}", s.address()))
                    .expect("a parsed server's address re-parses");
                assert_eq!((again.host.as_str(), again.port), (s.host.as_str(), s.port));
            }
            let o = &uri.options;
            assert!(o.reconnect_delay_exponent >= 1.0 && o.reconnect_delay_exponent.is_finite());
            assert!(o.backup_pool_size <= 1024);
        }
        Err(e) => {
            assert!(!e.problems.is_empty());
            assert!(!e.to_string().is_empty());
        }
    }
});
