//! How a service's allocator gives memory back to the system.
//!
//! glibc's malloc serves a large block from a fresh mapping, returned when it is freed, but
//! after the first such free it raises that threshold to the block's size (up to 32 MiB), and
//! from then on keeps blocks of that size in its per-thread arenas, which it rarely shrinks.
//! Each argon2id verification takes a 19 MiB block on whichever blocking thread runs it, so
//! every thread that ever checked a password kept up to three of them: pop3-access held
//! 531 MiB after 26 logins. A fixed threshold keeps such blocks in their own mappings.

/// Blocks of at least this many octets get a mapping of their own, unmapped when freed.
pub const OWN_MAPPING_BYTES: usize = 4 * 1024 * 1024;

/// Fixes the allocator's threshold at `OWN_MAPPING_BYTES` (glibc only; elsewhere nothing to
/// do). Call before other threads start. False if the allocator refused.
#[allow(unsafe_code)]
pub fn return_large_blocks() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets an allocator parameter; no memory is touched.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_MAPPING_BYTES as libc::c_int) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        true
    }
}
