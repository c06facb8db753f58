//! Settings that weaken the secret stores, for tests and benchmarks only. Nothing here is
//! ever needed in production; each use is easy to find with a search for `danger`.

use super::KdfParams;

/// Argon2id costs far below the safe floor (1 MiB, 1 pass, 1 lane), so that tests opening
/// many passphrase stores run in milliseconds. A passphrase store written with them is only
/// as strong as its passphrase against an offline guesser: never use them for real secrets.
///
/// ```
/// use portcullis_token::secret::{FileKey, danger::insecure_kdf_params};
///
/// let key = FileKey::passphrase("correct horse").with_kdf_params(insecure_kdf_params());
/// # let _ = key;
/// ```
pub fn insecure_kdf_params() -> KdfParams {
    KdfParams::INSECURE
}
