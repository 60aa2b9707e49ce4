//! Lexical checks of paths written in an archive (entry names and hardlink targets). Owns the
//! rule that such a path is relative and has no `..`; it touches no file system (what a path
//! meets on disk is `beneath`'s job).

use crate::error::EscapeReason;

/// Splits an archive path into its components, dropping empty and `.` components (so a
/// leading "./" and doubled slashes vanish). An empty result is the target directory itself.
/// Absolute paths and `..` components are refused, not sanitised.
pub(crate) fn components(path: &[u8]) -> Result<Vec<&[u8]>, EscapeReason> {
    if path.first() == Some(&b'/') {
        return Err(EscapeReason::Absolute);
    }
    let mut out = Vec::with_capacity(8);
    for component in path.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err(EscapeReason::DotDot),
            name => out.push(name),
        }
    }
    Ok(out)
}

/// The components joined with "/", the form used in error messages and in the layer's set of
/// paths.
pub(crate) fn join(components: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(components.iter().map(|c| c.len() + 1).sum());
    for (i, component) in components.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(component);
    }
    out
}

pub(crate) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_harmless_forms() {
        assert_eq!(
            components(b"./a//b/./c/").unwrap(),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert!(components(b"./").unwrap().is_empty());
        assert!(components(b".").unwrap().is_empty());
        assert_eq!(components(b"...").unwrap(), vec![&b"..."[..]]);
    }

    #[test]
    fn refuses_escapes() {
        assert!(matches!(components(b"../x"), Err(EscapeReason::DotDot)));
        assert!(matches!(
            components(b"a/../../x"),
            Err(EscapeReason::DotDot)
        ));
        assert!(matches!(components(b"a/.."), Err(EscapeReason::DotDot)));
        assert!(matches!(components(b"/etc/x"), Err(EscapeReason::Absolute)));
        assert!(matches!(components(b"//x"), Err(EscapeReason::Absolute)));
    }
}
