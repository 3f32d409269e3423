//! Unpredictable bytes for what an attacker must not guess (SCRAM nonces and salts, cancel
//! keys), from the operating system's generator.

/// `N` bytes from the operating system's cryptographically secure generator.
///
/// # Errors
/// When the generator cannot be read (the caller refuses what needed them).
pub fn secure_bytes<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)?;
    Ok(bytes)
}
