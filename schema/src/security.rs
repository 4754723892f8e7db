//! Password hashing for `security/accounts.toml`: Argon2id in PHC format.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// Hashes a password with Argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| HashError::Hash(e.to_string()))
}

/// Whether `password` matches a stored PHC hash. A malformed hash matches nothing.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(crate::values::check_password_hash(&h).is_ok());
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("other", &h));
        assert!(!verify_password("s3cret", "not a hash"));
    }
}

#[cfg(test)]
mod example_tests {
    /// The example domain documents `admin`/`admin`; its stored hash must really be that.
    #[test]
    fn example_admin_password_is_admin() {
        let text = include_str!("../../examples/domain1/security/accounts.toml");
        let accounts: crate::model::AccountsFile = toml::from_str(text).unwrap();
        assert!(super::verify_password(
            "admin",
            &accounts.users["admin"].password
        ));
    }
}
