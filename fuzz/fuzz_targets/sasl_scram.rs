//! Fuzzes the SASL and SCRAM parsers with arbitrary bytes: SaslHandshake and SaslAuthenticate
//! requests and responses (every version), PLAIN messages, and each SCRAM message in the state
//! that expects it (client-first, server-first, client-final, server-final).
//!
//! Nothing may panic; a decoded response re-encodes to a frame that decodes to the same value;
//! no SCRAM state accepts garbage as a completed authentication.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqnet::protocol::sasl::{
    decode_sasl_authenticate_request, decode_sasl_authenticate_response,
    decode_sasl_handshake_request, decode_sasl_handshake_response,
    encode_sasl_authenticate_response, parse_plain_message,
};
use mqnet::protocol::scram::{ScramClient, ScramCredentials, ScramHash, ScramServer};

fuzz_target!(|data: &[u8]| {
    let _ = decode_sasl_handshake_request(data);
    let _ = decode_sasl_handshake_response(data);
    for version in 0..=2 {
        let _ = decode_sasl_authenticate_request(version, data);
        if let Ok(r) = decode_sasl_authenticate_response(version, data) {
            let again = encode_sasl_authenticate_response(version, 7, &r);
            let back = decode_sasl_authenticate_response(version, &again).expect("re-decodes");
            assert_eq!(back.error_code, r.error_code);
            assert_eq!(back.auth_bytes, r.auth_bytes);
        }
    }
    let _ = parse_plain_message(data);

    let hash = if data.first().is_some_and(|b| b & 1 == 1) {
        ScramHash::Sha512
    } else {
        ScramHash::Sha256
    };
    let creds = ScramCredentials::new(hash, "pw", b"salt", 4096);

    // The server with arbitrary client-first, then arbitrary client-final.
    let mut server = ScramServer::new(hash, "snonce".into());
    let _ = server.handle_client_first(data, |_| Some(creds.clone()));
    if server.handle_client_final(data).is_ok() {
        // Only a proof made from the password passes; fuzzed bytes cannot carry one.
        panic!("garbage accepted as a client-final message");
    }

    // The client with arbitrary server-first and server-final.
    let mut client = ScramClient::new(hash, "u", "pw", "cnonce".into());
    client.first();
    let _ = client.handle_server_first(data);
    let _ = client.handle_server_final(data);
});
