//! Passwords: argon2id hashing (RFC 9106) in PHC string form, and verification.
//!
//! Parameters are argon2's defaults (m = 19 MiB, t = 2, p = 1, the OWASP baseline), written into
//! each PHC string, so hashes made with other parameters keep verifying if they ever change.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::Rng;

/// The longest password accepted, in bytes: bounds the work an attacker can cause.
pub const MAX_PASSWORD_LEN: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    #[error("the password is empty")]
    Empty,
    #[error("the password is longer than {MAX_PASSWORD_LEN} bytes")]
    TooLong,
    #[error("the stored hash is not a valid argon2id PHC string")]
    MalformedHash,
    #[error("hashing failed: {0}")]
    Hashing(String),
}

fn argon2id() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default())
}

/// Checks what a new password must satisfy.
pub fn check_new_password(password: &str) -> Result<(), PasswordError> {
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(PasswordError::TooLong);
    }
    Ok(())
}

/// Hashes a new password with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    check_new_password(password)?;
    let salt_bytes: [u8; 16] = rand::rng().random();
    let salt =
        SaltString::encode_b64(&salt_bytes).map_err(|e| PasswordError::Hashing(e.to_string()))?;
    let hash = argon2id()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| PasswordError::Hashing(e.to_string()))?;
    Ok(hash.to_string())
}

/// True when `password` matches `phc`, an argon2id PHC string. A password over the length limit
/// never matches (and is not hashed).
pub fn verify_password(password: &str, phc: &str) -> Result<bool, PasswordError> {
    let parsed = PasswordHash::new(phc).map_err(|_| PasswordError::MalformedHash)?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(PasswordError::MalformedHash);
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Ok(false);
    }
    Ok(argon2id()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_only_its_password() {
        let hash = hash_password("correct horse").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_password("correct horse", &hash).unwrap());
        assert!(!verify_password("correct horsE", &hash).unwrap());
        assert!(!verify_password("", &hash).unwrap());
    }

    #[test]
    fn salts_differ() {
        assert_ne!(hash_password("x").unwrap(), hash_password("x").unwrap());
    }

    #[test]
    fn bad_passwords_and_hashes_are_errors() {
        assert_eq!(hash_password(""), Err(PasswordError::Empty));
        assert_eq!(
            hash_password(&"a".repeat(MAX_PASSWORD_LEN + 1)),
            Err(PasswordError::TooLong)
        );
        assert_eq!(
            verify_password("x", "plaintext"),
            Err(PasswordError::MalformedHash)
        );
        let argon2i = "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$SGVsbG8gd29ybGQ";
        assert_eq!(
            verify_password("x", argon2i),
            Err(PasswordError::MalformedHash)
        );
        let long = "a".repeat(MAX_PASSWORD_LEN + 1);
        assert!(!verify_password(&long, &hash_password("a").unwrap()).unwrap());
    }
}
