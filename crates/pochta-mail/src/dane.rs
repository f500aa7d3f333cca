//! DANE for SMTP (RFC 7672): which TLSA records an SMTP client can use, and whether a
//! certificate matches one. Pure functions over DER bytes: the queue looks the records up
//! (DNSSEC-validated) and calls these from its TLS certificate check.

use ring::digest;

/// One TLSA record (RFC 6698 2.1): certificate usage, selector, matching type, data.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

/// DANE-TA(2): the record names a trust anchor the server's chain must lead to.
pub const DANE_TA: u8 = 2;
/// DANE-EE(3): the record names the server's own certificate or key.
pub const DANE_EE: u8 = 3;

impl Tlsa {
    /// Whether an SMTP client uses this record (RFC 7672 3.1): only DANE-TA and DANE-EE
    /// (PKIX-TA and PKIX-EE would need the WebPKI, which MX hosts do not use), full
    /// certificate or public key, exact or SHA-2 matching, and data of the right length.
    pub fn usable(&self) -> bool {
        let usage_ok = matches!(self.usage, DANE_TA | DANE_EE);
        let length_ok = match self.matching {
            0 => !self.data.is_empty(),
            1 => self.data.len() == 32,
            2 => self.data.len() == 64,
            _ => false,
        };
        usage_ok && self.selector <= 1 && length_ok
    }

    /// Whether `cert` (DER) is the one this record names, by its selector and matching type.
    /// A certificate that cannot be parsed far enough matches nothing.
    pub fn matches(&self, cert: &[u8]) -> bool {
        let selected = match self.selector {
            0 => cert,
            1 => match subject_public_key_info(cert) {
                Some(spki) => spki,
                None => return false,
            },
            _ => return false,
        };
        match self.matching {
            0 => selected == self.data.as_slice(),
            1 => digest::digest(&digest::SHA256, selected).as_ref() == self.data.as_slice(),
            2 => digest::digest(&digest::SHA512, selected).as_ref() == self.data.as_slice(),
            _ => false,
        }
    }

    /// The record in presentation form (`3 1 1 <hex>`), as TLS reports list policies.
    pub fn to_text(&self) -> String {
        let hex: String = self.data.iter().map(|b| format!("{b:02x}")).collect();
        format!("{} {} {} {hex}", self.usage, self.selector, self.matching)
    }
}

/// The DER of a certificate's SubjectPublicKeyInfo (RFC 5280 4.1): the seventh element of
/// the TBSCertificate, or the sixth when the optional version is absent. None when `cert`
/// is not that shape.
pub fn subject_public_key_info(cert: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = der_element(cert)?;
    let (tbs, _) = der_element(der_contents(certificate)?)?;
    let mut rest = der_contents(tbs)?;
    // version [0] EXPLICIT (0xA0) is optional; then serial, signature, issuer, validity,
    // subject, and the key info.
    if rest.first() == Some(&0xA0) {
        rest = der_element(rest)?.1;
    }
    for _ in 0..5 {
        rest = der_element(rest)?.1;
    }
    let (spki, _) = der_element(rest)?;
    (spki.first() == Some(&0x30)).then_some(spki)
}

/// Splits the first DER element (tag, length, contents) off `input`: (the element, the rest).
/// Only single-octet tags and definite lengths, as DER has for certificates.
fn der_element(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (header, length) = der_header(input)?;
    let end = header.checked_add(length)?;
    (end <= input.len()).then(|| input.split_at(end))
}

/// The contents of one DER element.
fn der_contents(element: &[u8]) -> Option<&[u8]> {
    let (header, length) = der_header(element)?;
    element.get(header..header.checked_add(length)?)
}

/// (header length, contents length) of the element at the start of `input`.
fn der_header(input: &[u8]) -> Option<(usize, usize)> {
    let tag = *input.first()?;
    if tag & 0x1F == 0x1F {
        return None;
    }
    let first = *input.get(1)?;
    if first < 0x80 {
        return Some((2, usize::from(first)));
    }
    let octets = usize::from(first & 0x7F);
    if octets == 0 || octets > 4 {
        return None;
    }
    let bytes = input.get(2..2 + octets)?;
    let length = bytes
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    Some((2 + octets, length))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A made-up certificate shape: SEQUENCE { SEQUENCE { [0] v3, serial, algorithm, issuer,
    /// validity, subject, SPKI, ... }, algorithm, signature }.
    fn certificate(with_version: bool, spki: &[u8]) -> Vec<u8> {
        fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            if contents.len() < 0x80 {
                out.push(contents.len() as u8);
            } else {
                out.push(0x82);
                out.extend_from_slice(&(contents.len() as u16).to_be_bytes());
            }
            out.extend_from_slice(contents);
            out
        }
        let mut tbs = Vec::new();
        if with_version {
            tbs.extend(tlv(0xA0, &tlv(0x02, &[2])));
        }
        tbs.extend(tlv(0x02, &[1, 2, 3]));
        tbs.extend(tlv(0x30, &tlv(0x06, &[42])));
        tbs.extend(tlv(0x30, b"issuer"));
        tbs.extend(tlv(0x30, b"validity"));
        tbs.extend(tlv(0x30, &[0u8; 200]));
        tbs.extend_from_slice(spki);
        tbs.extend(tlv(0xA3, b"extensions"));
        let mut body = tlv(0x30, &tbs);
        body.extend(tlv(0x30, &tlv(0x06, &[42])));
        body.extend(tlv(0x03, &[0, 1, 2]));
        tlv(0x30, &body)
    }

    #[test]
    fn the_key_info_is_found_with_and_without_a_version() {
        let spki = [0x30, 3, 0x03, 1, 0];
        for with_version in [true, false] {
            let cert = certificate(with_version, &spki);
            assert_eq!(subject_public_key_info(&cert), Some(&spki[..]));
        }
    }

    #[test]
    fn malformed_certificates_have_no_key_info_and_match_nothing() {
        let spki = [0x30, 3, 0x03, 1, 0];
        let cert = certificate(true, &spki);
        for cut in 0..cert.len() {
            assert_eq!(subject_public_key_info(&cert[..cut]), None, "cut at {cut}");
        }
        assert_eq!(subject_public_key_info(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(subject_public_key_info(&[0x1F, 0]), None);
        let record = Tlsa {
            usage: DANE_EE,
            selector: 1,
            matching: 0,
            data: spki.to_vec(),
        };
        assert!(record.matches(&cert));
        assert!(!record.matches(&cert[..cert.len() - 1]));
    }

    #[test]
    fn matching_types_compare_the_selected_bytes() {
        let spki = [0x30, 3, 0x03, 1, 7];
        let cert = certificate(true, &spki);
        let sha256 = digest::digest(&digest::SHA256, &spki).as_ref().to_vec();
        let sha512 = digest::digest(&digest::SHA512, &cert).as_ref().to_vec();
        let by_key = Tlsa {
            usage: DANE_EE,
            selector: 1,
            matching: 1,
            data: sha256.clone(),
        };
        let by_cert = Tlsa {
            usage: DANE_TA,
            selector: 0,
            matching: 2,
            data: sha512,
        };
        assert!(by_key.usable() && by_key.matches(&cert));
        assert!(by_cert.usable() && by_cert.matches(&cert));
        let other = certificate(true, &[0x30, 3, 0x03, 1, 8]);
        assert!(!by_key.matches(&other) && !by_cert.matches(&other));
        assert_eq!(by_key.to_text(), format!("3 1 1 {}", hex(&sha256)));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn only_dane_usages_with_known_types_and_lengths_are_usable() {
        let record = |usage, selector, matching, len| Tlsa {
            usage,
            selector,
            matching,
            data: vec![1; len],
        };
        assert!(record(3, 1, 1, 32).usable());
        assert!(record(2, 0, 2, 64).usable());
        assert!(record(3, 0, 0, 300).usable());
        assert!(!record(0, 1, 1, 32).usable(), "PKIX-TA");
        assert!(!record(1, 1, 1, 32).usable(), "PKIX-EE");
        assert!(!record(3, 2, 1, 32).usable(), "unknown selector");
        assert!(!record(3, 1, 3, 32).usable(), "unknown matching type");
        assert!(!record(3, 1, 1, 31).usable(), "short SHA-256");
        assert!(!record(3, 1, 0, 0).usable(), "empty");
    }
}
