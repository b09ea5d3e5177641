//! cgroup paths as users write them (`kubepods.slice/foo/`): the one place that normalises
//! and checks them.

/// Longest path accepted: the kernel's PATH_MAX.
pub const MAX_PATH_BYTES: usize = 4096;

/// Bidirectional and invisible formatting characters: a path holding one shows as another
/// (U+202E reverses what follows), in logs, tables and the audit.
fn disguises(c: char) -> bool {
    matches!(c,
        '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// `foo/bar/` -> `/foo/bar`. Refuses empty paths, `.` and `..`, control characters (a newline
/// would forge log lines), bidirectional and invisible formatting characters (U+202E would show
/// the path as another) and paths longer than [`MAX_PATH_BYTES`].
pub fn normalize(path: &str) -> Result<String, String> {
    if path.len() > MAX_PATH_BYTES {
        return Err(format!(
            "a cgroup path of {} bytes is longer than the kernel allows ({MAX_PATH_BYTES})",
            path.len()
        ));
    }
    if let Some(c) = path.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{path:?}: control characters ({c:?}) are not allowed in a cgroup path"
        ));
    }
    if let Some(c) = path.chars().find(|c| disguises(*c)) {
        return Err(format!(
            "{path:?}: U+{:04X} (a bidirectional or invisible formatting character, which makes \
             a path show as another) is not allowed in a cgroup path",
            c as u32
        ));
    }
    let trimmed = path.trim();
    if trimmed.is_empty() {
        return Err(
            "empty cgroup path: write it from the cgroup root, e.g. /system.slice/foo.service"
                .into(),
        );
    }
    let parts: Vec<&str> = trimmed.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(format!(
            "`{path}`: `.` and `..` are not allowed in a cgroup path"
        ));
    }
    Ok(format!("/{}", parts.join("/")))
}

/// `/a/b` -> `/a`, `/a` -> `/`, `/` -> `/`.
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// `/a/b`, `/a`, `/`: a normalised path and its ancestors, nearest first.
pub fn self_and_ancestors(path: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(path), |p| (*p != "/").then(|| parent(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_and_ancestors() {
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/"), "/");
        let all: Vec<&str> = self_and_ancestors("/a/b").collect();
        assert_eq!(all, ["/a/b", "/a", "/"]);
        assert_eq!(self_and_ancestors("/").collect::<Vec<_>>(), ["/"]);
    }

    #[test]
    fn normalises_and_refuses() {
        assert_eq!(normalize("kmemcg-x/").as_deref(), Ok("/kmemcg-x"));
        assert_eq!(normalize("/a//b/").as_deref(), Ok("/a/b"));
        assert_eq!(normalize("/").as_deref(), Ok("/"));
        assert!(normalize(" ").expect_err("empty").contains("cgroup root"));
        assert!(normalize("/a/../b").expect_err("dots").contains(".."));
        assert!(
            normalize("/a\nforged")
                .expect_err("newline")
                .contains("control")
        );
        assert!(normalize("/a\0b").expect_err("nul").contains("control"));
        for c in [
            '\u{202E}', '\u{2066}', '\u{200B}', '\u{200F}', '\u{FEFF}', '\u{061C}',
        ] {
            let e = normalize(&format!("/kmemcg-test-{c}gpj.exe")).expect_err("bidi");
            assert!(e.contains(&format!("U+{:04X}", c as u32)), "{e}");
            assert!(
                !e.contains(c),
                "the message shows the character escaped: {e}"
            );
        }
        assert_eq!(normalize("/caf\u{e9}").as_deref(), Ok("/caf\u{e9}"));
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        assert!(normalize(&long).expect_err("long").contains("longer"));
    }
}
