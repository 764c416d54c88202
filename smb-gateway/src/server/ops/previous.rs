//! Previous Versions: FSCTL_SRV_ENUM_SNAPS lists a base share's committed shadow copies as
//! `@GMT-YYYY.MM.DD-HH.MM.SS` tokens (MS-SMB2 2.2.32.2), and a CREATE names one either with an
//! `@GMT-...` path component or the TWrp create context (MS-SMB2 2.2.13.2.7); the open then
//! reads the share as of that snapshot, read-only. Such an open's share is `base@GMT-...`
//! (base share names never contain `@`), which the storage layer resolves to the snapshot.

use super::u64_at;

use crate::wire::UNIX_EPOCH_AS_FILETIME;
/// Characters in a token, without its NUL.
const TOKEN_CHARS: usize = 24;

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) to days since 1970-01-01.
fn days_of(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `@GMT-YYYY.MM.DD-HH.MM.SS` for a time in Unix seconds.
pub fn token(unix_secs: u64) -> String {
    let (days, rest) = ((unix_secs / 86_400) as i64, unix_secs % 86_400);
    let (y, m, d) = civil(days);
    format!("@GMT-{y:04}.{m:02}.{d:02}-{:02}.{:02}.{:02}", rest / 3600, rest / 60 % 60, rest % 60)
}

/// The Unix seconds a token names, if it is one.
pub fn parse_token(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != TOKEN_CHARS || !s.starts_with("@GMT-") {
        return None;
    }
    let num = |at: usize, n: usize| -> Option<u32> { s.get(at..at + n).filter(|t| t.bytes().all(|c| c.is_ascii_digit()))?.parse().ok() };
    let seps = [(9, b'.'), (12, b'.'), (15, b'-'), (18, b'.'), (21, b'.')];
    if seps.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (num(5, 4)?, num(10, 2)?, num(13, 2)?, num(16, 2)?, num(19, 2)?, num(22, 2)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 59 || y < 1970 {
        return None;
    }
    let days = days_of(i64::from(y), mo, d);
    let secs = days as u64 * 86_400 + u64::from(h) * 3600 + u64::from(mi) * 60 + u64::from(sec);
    // A day the month does not have (2026.02.31) names no time.
    (token(secs) == s).then_some(secs)
}

/// Takes an `@GMT-...` component out of a path: (the path without it, the time it names).
pub fn strip_token(path: &str) -> (String, Option<u64>) {
    let mut at = None;
    let parts: Vec<&str> = path
        .split('\\')
        .filter(|p| match parse_token(p) {
            Some(t) if at.is_none() => {
                at = Some(t);
                false
            }
            _ => true,
        })
        .collect();
    (parts.join("\\"), at)
}

/// The TWrp create context's time (Unix seconds), from a CREATE request body `b` (after the
/// SMB2 header) within `message` (offsets count from the header): `Ok(None)` without one,
/// `Err(())` for one that names no time this server can have (not 8 bytes, before 1970), so
/// that the CREATE fails rather than open the live file.
pub fn timewarp(b: &[u8], message: &[u8]) -> Result<Option<u64>, ()> {
    match timewarp_context(b, message) {
        None => Ok(None),
        Some(None) => Err(()),
        Some(Some(t)) => Ok(Some(t)),
    }
}

/// The TWrp context's data as a time: None without a context, Some(None) for one unusable.
fn timewarp_context(b: &[u8], message: &[u8]) -> Option<Option<u64>> {
    let data = super::create::create_context(b, message, b"TWrp")?;
    let ft = data.filter(|d| d.len() == 8).and_then(|d| u64_at(d, 0));
    Some(ft.and_then(|ft| ft.checked_sub(UNIX_EPOCH_AS_FILETIME)).map(|t| t / 10_000_000))
}

/// The SRV_SNAPSHOT_ARRAY for `times` (Unix seconds), newest first, fitted to `max_out`:
/// when the tokens do not fit, only the counts and the size needed.
pub fn snapshot_array(times: &[u64], max_out: usize) -> Option<Vec<u8>> {
    const HEADER: usize = 12;
    if max_out < 16 {
        return None;
    }
    let mut sorted = times.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    let mut multi = Vec::new();
    for t in &sorted {
        for u in token(*t).encode_utf16().chain([0]) {
            multi.extend_from_slice(&u.to_le_bytes());
        }
    }
    multi.extend_from_slice(&[0, 0]);
    let fits = HEADER + multi.len() <= max_out;
    let mut out = Vec::with_capacity(HEADER + multi.len());
    out.extend_from_slice(&(sorted.len() as u32).to_le_bytes());
    out.extend_from_slice(&(if fits { sorted.len() as u32 } else { 0 }).to_le_bytes());
    out.extend_from_slice(&(multi.len() as u32).to_le_bytes());
    if fits {
        out.extend_from_slice(&multi);
    } else {
        out.extend_from_slice(&[0; 4]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::u32_at;

    #[test]
    fn tokens_round_trip_and_match_known_dates() {
        assert_eq!(token(0), "@GMT-1970.01.01-00.00.00");
        assert_eq!(token(1_795_000_000), "@GMT-2026.11.18-11.06.40");
        assert_eq!(token(951_782_400), "@GMT-2000.02.29-00.00.00");
        for t in [0, 59, 86_399, 951_782_400, 1_795_000_000, 4_102_444_800] {
            assert_eq!(parse_token(&token(t)), Some(t));
        }
        for bad in ["@GMT-2026.13.01-00.00.00", "@GMT-2026.11.18-24.00.00", "@GMT-2026.11.18 11.06.40", "@GMT-2026.11.18-11.06.4", "GMT-2026.11.18-11.06.400", "@GMT-20x6.11.18-11.06.40"] {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_token_component_comes_out_of_the_path() {
        assert_eq!(strip_token(r"@GMT-2026.11.18-11.06.40\dir\f.txt"), (r"dir\f.txt".to_string(), Some(1_795_000_000)));
        assert_eq!(strip_token(r"dir\@GMT-2026.11.18-11.06.40\f.txt"), (r"dir\f.txt".to_string(), Some(1_795_000_000)));
        assert_eq!(strip_token(r"dir\f.txt"), (r"dir\f.txt".to_string(), None));
    }

    #[test]
    fn the_snapshot_array_lists_newest_first_or_only_the_size_needed() {
        let full = snapshot_array(&[100, 200], 1024).unwrap();
        assert_eq!(u32_at(&full, 0), Some(2));
        assert_eq!(u32_at(&full, 4), Some(2));
        assert_eq!(u32_at(&full, 8), Some(2 * 50 + 2));
        let first: Vec<u16> = full[12..12 + 48].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        assert_eq!(String::from_utf16(&first).unwrap(), token(200));
        let small = snapshot_array(&[100, 200], 16).unwrap();
        assert_eq!((u32_at(&small, 0), u32_at(&small, 4), u32_at(&small, 8), small.len()), (Some(2), Some(0), Some(102), 16));
        assert!(snapshot_array(&[1], 15).is_none());
        let none = snapshot_array(&[], 16).unwrap();
        assert_eq!((u32_at(&none, 0), u32_at(&none, 8)), (Some(0), Some(2)));
    }

    #[test]
    fn a_timewarp_context_gives_its_time_and_bad_contexts_give_none_or_an_error() {
        // A CREATE body with one TWrp context at offset 120 of the message.
        let mut message = vec![0u8; 64 + 56];
        let ft = UNIX_EPOCH_AS_FILETIME + 1_795_000_000 * 10_000_000;
        let mut ctx = Vec::new();
        ctx.extend_from_slice(&0u32.to_le_bytes());
        ctx.extend_from_slice(&16u16.to_le_bytes());
        ctx.extend_from_slice(&4u16.to_le_bytes());
        ctx.extend_from_slice(&0u16.to_le_bytes());
        ctx.extend_from_slice(&24u16.to_le_bytes());
        ctx.extend_from_slice(&8u32.to_le_bytes());
        ctx.extend_from_slice(b"TWrp\0\0\0\0");
        ctx.extend_from_slice(&ft.to_le_bytes());
        let offset = message.len() as u32;
        message.extend_from_slice(&ctx);
        message[64 + 48..64 + 52].copy_from_slice(&offset.to_le_bytes());
        message[64 + 52..64 + 56].copy_from_slice(&(ctx.len() as u32).to_le_bytes());
        assert_eq!(timewarp(&message[64..], &message), Ok(Some(1_795_000_000)));
        let mut bad = message.clone();
        bad[64 + 52..64 + 56].copy_from_slice(&10_000u32.to_le_bytes());
        assert_eq!(timewarp(&bad[64..], &bad), Ok(None), "a context beyond the message");
        let mut other = message.clone();
        other[offset as usize + 16..offset as usize + 20].copy_from_slice(b"Nope");
        assert_eq!(timewarp(&other[64..], &other), Ok(None), "another context");
        // A TWrp that names no time this server can have fails the CREATE (it must not open
        // the live file instead).
        let mut early = message.clone();
        early[offset as usize + 24..offset as usize + 32].copy_from_slice(&1000u64.to_le_bytes());
        assert_eq!(timewarp(&early[64..], &early), Err(()), "before 1970");
        let mut short = message.clone();
        short[offset as usize + 12..offset as usize + 16].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(timewarp(&short[64..], &short), Err(()), "not 8 bytes");
    }

    #[test]
    fn a_token_for_a_day_the_month_does_not_have_names_nothing() {
        assert_eq!(parse_token("@GMT-2026.02.31-10.00.00"), None);
        assert_eq!(parse_token("@GMT-2024.02.29-10.00.00").map(token).as_deref(), Some("@GMT-2024.02.29-10.00.00"), "a leap day");
        assert_eq!(parse_token("@GMT-2026.04.31-00.00.00"), None);
    }
}
