//! Which names SMB and Windows allow, and the case-folding used for lookups.
//!
//! Shares, volumes and users are case-insensitive and case-preserving: the stored name keeps
//! the case it was created with, and lookups go through [`fold`].

use serde::{Deserialize, Serialize};

/// Longest share name Windows accepts (NetShareAdd, MS-SRVS 2.2.4.23: shi2_netname).
pub const MAX_SHARE_NAME_CHARS: usize = 80;
/// Longest volume name Umbra accepts.
pub const MAX_VOLUME_NAME_CHARS: usize = 64;
/// Longest user name (the SAM account name limit).
pub const MAX_USER_NAME_CHARS: usize = 20;
/// Longest path component (MS-FSCC 2.1.5: 255 UTF-16 code units).
pub const MAX_COMPONENT_UTF16_UNITS: usize = 255;
/// Longest share path inside a volume, in UTF-16 code units.
pub const MAX_PATH_UTF16_UNITS: usize = 1024;

/// Characters Windows refuses in a share name, besides control characters.
const SHARE_FORBIDDEN: &[char] = &['"', '\\', '/', '[', ']', ':', '|', '<', '>', '+', '=', ';', ',', '?', '*'];
/// Characters Windows refuses in a file name (MS-FSCC 2.1.5.2), besides control characters.
const FILE_FORBIDDEN: &[char] = &['"', '\\', '/', ':', '|', '<', '>', '*', '?'];
/// Characters refused in a user name.
const USER_FORBIDDEN: &[char] = &['"', '/', '\\', '[', ']', ':', ';', '|', '=', ',', '+', '*', '?', '<', '>', '@'];
/// Share names the server keeps for itself.
const RESERVED_SHARES: &[&str] = &["ipc$"];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("invalid {kind} name {name:?}: {reason}")]
pub struct NameError {
    pub kind: String,
    pub name: String,
    pub reason: String,
}

fn refuse(kind: &str, name: &str, reason: impl Into<String>) -> NameError {
    NameError { kind: kind.into(), name: shown(name), reason: reason.into() }
}

/// Characters of a name an error repeats at most: a refused answer is remembered (the dedupe
/// table, every snapshot), so it never holds a client's whole input.
pub const MAX_SHOWN_NAME_CHARS: usize = 64;

/// `name` as an error shows it: its first [`MAX_SHOWN_NAME_CHARS`] characters, and "..." when
/// there were more.
pub fn shown(name: &str) -> String {
    match name.char_indices().nth(MAX_SHOWN_NAME_CHARS) {
        Some((cut, _)) => format!("{}...", &name[..cut]),
        None => name.to_string(),
    }
}

/// The key a name is looked up by: Unicode lowercase, so `Share`, `SHARE` and `share` are one.
pub fn fold(name: &str) -> String {
    name.to_lowercase()
}

fn check_common(kind: &str, name: &str, max_chars: usize, forbidden: &[char]) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(refuse(kind, name, "it is empty"));
    }
    let chars = name.chars().count();
    if chars > max_chars {
        return Err(refuse(kind, name, format!("it has {chars} characters, at most {max_chars} allowed")));
    }
    if let Some(c) = name.chars().find(|c| c.is_control() || forbidden.contains(c)) {
        return Err(refuse(kind, name, format!("character {c:?} is not allowed")));
    }
    if name.starts_with(' ') || name.ends_with(' ') || name.ends_with('.') {
        return Err(refuse(kind, name, "it starts with a space or ends with a space or a dot"));
    }
    Ok(())
}

/// A share name as SMB clients can reach it. `@` is kept for exposed snapshot shares
/// (`share@{guid}`), and `IPC$` for the server.
pub fn check_share_name(name: &str) -> Result<(), NameError> {
    check_common("share", name, MAX_SHARE_NAME_CHARS, SHARE_FORBIDDEN)?;
    if name.contains('@') {
        return Err(refuse("share", name, "'@' is reserved for snapshot shares (share@{guid})"));
    }
    if RESERVED_SHARES.contains(&fold(name).as_str()) {
        return Err(refuse("share", name, "the name is reserved by the server"));
    }
    Ok(())
}

/// A volume name: letters, digits, `.`, `_` and `-` (it appears in paths and logs).
pub fn check_volume_name(name: &str) -> Result<(), NameError> {
    check_common("volume", name, MAX_VOLUME_NAME_CHARS, &[])?;
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(refuse("volume", name, format!("character {c:?} is not allowed (letters, digits, '.', '_', '-')")));
    }
    Ok(())
}

/// A user name as NTLM carries it.
pub fn check_user_name(name: &str) -> Result<(), NameError> {
    check_common("user", name, MAX_USER_NAME_CHARS, USER_FORBIDDEN)
}

/// One file or directory name (a path component), as NTFS and SMB allow it.
pub fn check_file_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(refuse("file", name, "it is empty"));
    }
    if name == "." || name == ".." {
        return Err(refuse("file", name, "'.' and '..' are not allowed"));
    }
    let units = name.encode_utf16().count();
    if units > MAX_COMPONENT_UTF16_UNITS {
        return Err(refuse("file", name, format!("it has {units} UTF-16 units, at most {MAX_COMPONENT_UTF16_UNITS}")));
    }
    if let Some(c) = name.chars().find(|c| c.is_control() || FILE_FORBIDDEN.contains(c)) {
        return Err(refuse("file", name, format!("character {c:?} is not allowed")));
    }
    Ok(())
}

/// Normalises a path inside a volume to `/a/b` form (`\` accepted as a separator; empty
/// components dropped), checking every component as a file name.
pub fn normalize_share_path(path: &str) -> Result<String, NameError> {
    let mut out = String::new();
    for component in path.split(['/', '\\']).filter(|c| !c.is_empty()) {
        check_file_name(component).map_err(|e| refuse("path", path, e.reason))?;
        out.push('/');
        out.push_str(component);
    }
    if out.encode_utf16().count() > MAX_PATH_UTF16_UNITS {
        return Err(refuse("path", path, format!("longer than {MAX_PATH_UTF16_UNITS} UTF-16 units")));
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A refused name is repeated in its error only in part: errors are remembered.
    #[test]
    fn an_error_repeats_a_long_name_only_in_part() {
        let long = "x".repeat(100_000);
        let e = check_share_name(&long).unwrap_err();
        assert_eq!(e.name.chars().count(), MAX_SHOWN_NAME_CHARS + 3);
        assert_eq!(shown("short"), "short");
        assert_eq!(shown(&"é".repeat(70)), format!("{}...", "é".repeat(MAX_SHOWN_NAME_CHARS)));
    }

    #[test]
    fn share_names_follow_windows_rules() {
        assert!(check_share_name("Backups").is_ok());
        assert!(check_share_name("hidden$").is_ok());
        assert!(check_share_name("a b").is_ok());
        for bad in ["", "a/b", "a\\b", "a:b", "a*", "a?", "a|b", "a<b", "a>b", "a\"b", "a+b", "a=b", "a;b", "a,b", "[x]", "a\u{1}", " a", "a ", "a.", "IPC$", "ipc$", "s@{x}"] {
            assert!(check_share_name(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(check_share_name(&"x".repeat(80)).is_ok());
        assert!(check_share_name(&"x".repeat(81)).is_err());
    }

    #[test]
    fn paths_normalise_and_refuse_escapes() {
        assert_eq!(normalize_share_path("").unwrap(), "/");
        assert_eq!(normalize_share_path("\\a\\b/").unwrap(), "/a/b");
        assert_eq!(normalize_share_path("a//b").unwrap(), "/a/b");
        assert!(normalize_share_path("/a/../b").is_err());
        assert!(normalize_share_path("/a:b").is_err());
        assert!(normalize_share_path(&format!("/{}", "x".repeat(256))).is_err());
    }

    #[test]
    fn user_and_volume_names() {
        assert!(check_user_name("admin").is_ok());
        assert!(check_user_name("a@b").is_err());
        assert!(check_user_name(&"u".repeat(21)).is_err());
        assert!(check_volume_name("vol-1.a_b").is_ok());
        assert!(check_volume_name("vol 1").is_err());
    }

    proptest! {
        #[test]
        fn validators_never_panic_and_accepted_names_fold_stably(s in "\\PC{0,100}") {
            let _ = check_share_name(&s);
            prop_assert_eq!(fold(&fold(&s)), fold(&s));
            let _ = check_user_name(&s);
            let _ = check_volume_name(&s);
            if let Ok(p) = normalize_share_path(&s) {
                prop_assert_eq!(normalize_share_path(&p).unwrap(), p);
            }
        }
    }
}
