//! Why a change to the limits was not made (or was made only in part).
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// The rule itself is malformed.
    #[error("{0}")]
    Invalid(String),
    #[error(
        "refusing a limit on {path}: {reason}. kmemcg never acts on protected cgroups (the root, \
         the agent's own cgroup and its ancestors, /init.scope, /system.slice and the \
         [limits] protected list)"
    )]
    Protected { path: String, reason: String },
    #[error("{path} has a rule in the config file: change it there (and reload with SIGHUP)")]
    FromConfig { path: String },
    #[error("no limit on {path}; `kmemcg limit list` shows them")]
    NotFound { path: String },
    /// `count`: the rules there would be (the config file's, when it alone has too many).
    #[error("{}", too_many(*.count))]
    TooMany { count: usize },
    /// Saving the runtime rules failed. A new rule is then rolled back (what is in force is what
    /// a restart restores); a removal stays done, and the answer says it will come back.
    #[error("{}", not_saved(.path, .file, *.applied, .reason))]
    NotSaved {
        path: String,
        file: String,
        applied: bool,
        reason: String,
    },
}

fn too_many(count: usize) -> String {
    let most = thousands(super::MAX_RULES);
    if count > super::MAX_RULES {
        format!(
            "the config file has {} rules and kmemcg keeps at most {most}: remove some",
            thousands(count)
        )
    } else {
        format!(
            "kmemcg keeps at most {most} rules (config file and runtime together): remove some \
             before adding more"
        )
    }
}

/// `1000` -> `1,000`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

fn not_saved(path: &str, file: &str, applied: bool, reason: &str) -> String {
    if applied {
        format!(
            "the limit on {path} is removed, but saving the rules to {file} failed ({reason}): \
             it comes back at the agent's next start unless {file} can be written"
        )
    } else {
        format!(
            "the limit on {path} was not applied: saving it to {file} failed ({reason}). Make \
             that directory writable for the agent, or unset limits.state_file to keep runtime \
             limits in memory only"
        )
    }
}

impl Error {
    /// The HTTP status that says it.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::Invalid(_) => 400,
            Error::Protected { .. } => 403,
            Error::NotFound { .. } => 404,
            Error::FromConfig { .. } | Error::TooMany { .. } => 409,
            Error::NotSaved { applied: true, .. } => 200,
            Error::NotSaved { applied: false, .. } => 500,
        }
    }

    /// A short word for the JSON answer's `kind`, for clients that branch on it.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid",
            Error::Protected { .. } => "protected",
            Error::FromConfig { .. } => "from-config",
            Error::NotFound { .. } => "not-found",
            Error::TooMany { .. } => "too-many",
            Error::NotSaved { .. } => "not-saved",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_says_the_limit() {
        let e = Error::TooMany { count: 1001 }.to_string();
        assert!(
            e.contains("1,001 rules") && e.contains("at most 1,000"),
            "{e}"
        );
        let e = Error::TooMany { count: 1000 }.to_string();
        assert!(e.contains("at most 1,000 rules"), "{e}");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
