//! DANE's certificate matching (RFC 7672 3.1) over a certificate a remote server sent.

use pochta_mail::dane::{Tlsa, subject_public_key_info};
use ring::digest;

use crate::input::Input;

/// A TLSA record's fields and a certificate as a remote server may send them. Oracles: the
/// key info found is a whole DER SEQUENCE inside the certificate; a record naming that key
/// (exactly, or by SHA-256 or SHA-512) or the whole certificate matches it; the fuzzed record
/// never panics, and matches only if usable-looking (known selector and matching type).
pub fn dane_certificate(data: &[u8]) {
    let mut input = Input::new(data);
    let (usage, selector, matching) = (input.byte(), input.byte(), input.byte());
    let record_data = input.piece(80).to_vec();
    let cert = input.rest();
    let fuzzed = Tlsa {
        usage,
        selector,
        matching,
        data: record_data,
    };
    let _ = fuzzed.usable();
    if fuzzed.matches(cert) {
        assert!(selector <= 1 && matching <= 2, "{fuzzed:?}");
    }
    let naming = |selector, matching, data: &[u8]| Tlsa {
        usage: 3,
        selector,
        matching,
        data: data.to_vec(),
    };
    assert!(naming(0, 0, cert).matches(cert));
    assert!(naming(0, 1, digest::digest(&digest::SHA256, cert).as_ref()).matches(cert));
    let Some(spki) = subject_public_key_info(cert) else {
        return;
    };
    let offset = spki.as_ptr() as usize - cert.as_ptr() as usize;
    assert!(offset + spki.len() <= cert.len());
    assert_eq!(spki[0], 0x30);
    assert!(naming(1, 0, spki).matches(cert));
    assert!(naming(1, 1, digest::digest(&digest::SHA256, spki).as_ref()).matches(cert));
    assert!(naming(1, 2, digest::digest(&digest::SHA512, spki).as_ref()).matches(cert));
}

#[cfg(test)]
mod tests {
    /// The committed seeds are real certificates: their key info is found.
    #[test]
    fn the_seed_certificates_have_key_info() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fuzz/corpus/dane_certificate"
        );
        for seed in ["seed-ed25519-cert", "seed-rsa2048-cert", "seed-ec-cert"] {
            let data = std::fs::read(format!("{dir}/{seed}")).unwrap();
            let cert = &data[36..];
            assert!(
                pochta_mail::dane::subject_public_key_info(cert).is_some(),
                "{seed}"
            );
        }
    }
}
