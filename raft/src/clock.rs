//! Wall-clock time for leader stamps (design.md section 2: time enters the state machine only
//! as a leader stamp). The system clock in production; the simulation installs its virtual
//! clock, so a run is fixed by its seed.

use std::sync::OnceLock;

static CLOCK: OnceLock<fn() -> u64> = OnceLock::new();

/// Installs the process's clock (ms since the Unix epoch), once; false if one was installed.
pub fn install(now_ms: fn() -> u64) -> bool {
    CLOCK.set(now_ms).is_ok()
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    match CLOCK.get() {
        Some(f) => f(),
        None => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
    }
}
