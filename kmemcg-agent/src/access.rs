//! Who may change what. Reads (usage, status, metrics, the rules and the audit) are open on
//! every listener. Writes (limits: anything that acts on processes) are allowed on the unix
//! socket to root and to the agent's own user (who could change its state files anyway), and
//! on the TCP listener with the configured bearer token; without a token the TCP listener
//! refuses every write. Each allowed write carries a [`Caller`] that
//! the audit records.
use std::path::{Path, PathBuf};

use axum::{
    Json,
    extract::{ConnectInfo, Request, State},
    http::{Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::listener::Peer;

/// Where the agent serves its whole API to root by default.
pub const DEFAULT_SOCKET: &str = "/run/kmemcg/kmemcg.sock";

/// `[api]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiConfig {
    /// The unix socket (None: no socket).
    pub socket: Option<PathBuf>,
    /// The bearer token allowing writes on the TCP listener (None: no writes there).
    pub write_token_file: Option<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            socket: Some(DEFAULT_SOCKET.into()),
            write_token_file: None,
        }
    }
}

/// Tokens shorter than this are refused: they could be guessed.
const MIN_TOKEN_BYTES: usize = 16;

/// Reads a token file: exactly one non-empty line, at least 16 characters, owned by this
/// process's user (or root); refused if other users may read it.
pub fn read_token(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::MetadataExt as _;
    let (text, meta) = crate::files::read_limited_with_metadata(path, 4096)
        .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    crate::files::check_owner(
        path,
        &meta,
        "the token file",
        &[],
        crate::files::Private::NotWritable,
        "Whoever owns a token file can read the token and change limits over TCP: make it \
         this user's (chown) or root's, mode 0600",
    )
    .map_err(|e| e.to_string())?;
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} may be read by other users (mode {:o}): chmod 600 it",
            path.display(),
            meta.mode() & 0o777
        ));
    }
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    if lines != 1 {
        return Err(format!(
            "{} holds {lines} non-empty lines: a token file holds exactly one line, the token",
            path.display()
        ));
    }
    let token = text.trim().to_string();
    if token.len() < MIN_TOKEN_BYTES {
        return Err(format!(
            "the token in {} is shorter than {MIN_TOKEN_BYTES} characters: use e.g. \
             `openssl rand -hex 32`",
            path.display()
        ));
    }
    Ok(token)
}

/// Who made an allowed write, as the audit says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller(pub String);

/// The write rule of one listener.
#[derive(Clone, Debug)]
pub enum WriteAccess {
    /// The unix socket: root, or the agent's own user.
    Socket,
    /// The TCP listener: with this token, or not at all.
    Tcp { token: Option<String> },
}

impl WriteAccess {
    /// The caller allowed to write, or why not (status and message).
    pub fn check(
        &self,
        peer: &Peer,
        authorization: Option<&str>,
    ) -> Result<Caller, (StatusCode, String)> {
        match (self, peer) {
            (WriteAccess::Socket, Peer::Unix { uid, pid }) => {
                // SAFETY: geteuid has no preconditions.
                let agent_uid = unsafe { libc::geteuid() };
                if *uid == 0 || *uid == agent_uid {
                    let pid = pid.map_or_else(String::new, |p| format!(" pid {p}"));
                    Ok(Caller(format!("uid {uid}{pid} (unix socket)")))
                } else {
                    Err((
                        StatusCode::FORBIDDEN,
                        format!(
                            "uid {uid} may not change limits: only root and the agent's own \
                             user (uid {agent_uid}) may (run kmemcg limit as root)"
                        ),
                    ))
                }
            }
            (WriteAccess::Tcp { token: None }, _) => Err((
                StatusCode::FORBIDDEN,
                "changes are not accepted over TCP: run `kmemcg limit` as root on the agent's \
                 host (it uses the agent's unix socket), or configure api.write_token_file"
                    .into(),
            )),
            (WriteAccess::Tcp { token: Some(token) }, peer) => {
                let given = authorization.and_then(|a| a.strip_prefix("Bearer "));
                match given {
                    Some(given)
                        if constant_time_eq::constant_time_eq(
                            given.trim().as_bytes(),
                            token.as_bytes(),
                        ) =>
                    {
                        let from = match peer {
                            Peer::Tcp(addr) => addr.to_string(),
                            Peer::Unix { uid, .. } => format!("uid {uid}"),
                        };
                        Ok(Caller(format!("token from {from}")))
                    }
                    Some(_) => Err((StatusCode::UNAUTHORIZED, "wrong token".into())),
                    None => Err((
                        StatusCode::UNAUTHORIZED,
                        "changes need the write token: `kmemcg limit --token-file FILE`, or \
                         the header `Authorization: Bearer <token>`"
                            .into(),
                    )),
                }
            }
            (WriteAccess::Socket, Peer::Tcp(_)) => {
                Err((StatusCode::FORBIDDEN, "not a unix socket peer".into()))
            }
        }
    }
}

/// Middleware: lets reads through; checks writes and hands the handler its [`Caller`].
pub async fn guard_writes(
    State(access): State<WriteAccess>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    mut request: Request,
    next: Next,
) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match access.check(&peer, authorization) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err((status, message)) => {
            tracing::warn!(peer = %peer, method = %request.method(), path = %request.uri().path(), reason = %message, "write refused");
            let kind = refusal_kind(status);
            (status, Json(json!({"error": message, "kind": kind}))).into_response()
        }
    }
}

/// The JSON `kind` of a refused write: `unauthorized` (401: the token is missing or wrong) or
/// `forbidden` (403: this caller may not write at all).
fn refusal_kind(status: StatusCode) -> &'static str {
    if status == StatusCode::UNAUTHORIZED {
        "unauthorized"
    } else {
        "forbidden"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    #[test]
    fn only_root_writes_on_the_socket() {
        let root = Peer::Unix {
            uid: 0,
            pid: Some(7),
        };
        let nobody = Peer::Unix {
            uid: 65534,
            pid: Some(8),
        };
        let caller = WriteAccess::Socket.check(&root, None).expect("root");
        assert_eq!(caller.0, "uid 0 pid 7 (unix socket)");
        let (status, _) = WriteAccess::Socket
            .check(&nobody, None)
            .expect_err("nobody");
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    #[test]
    fn tcp_writes_need_the_token() {
        let peer = Peer::Tcp("127.0.0.1:5000".parse().expect("addr"));
        let closed = WriteAccess::Tcp { token: None };
        assert_eq!(
            closed
                .check(&peer, Some(&format!("Bearer {TOKEN}")))
                .expect_err("no token")
                .0,
            StatusCode::FORBIDDEN
        );
        let open = WriteAccess::Tcp {
            token: Some(TOKEN.into()),
        };
        assert_eq!(
            open.check(&peer, None).expect_err("none").0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            open.check(&peer, Some("Bearer wrong"))
                .expect_err("wrong")
                .0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(refusal_kind(StatusCode::UNAUTHORIZED), "unauthorized");
        assert_eq!(refusal_kind(StatusCode::FORBIDDEN), "forbidden");
        let caller = open
            .check(&peer, Some(&format!("Bearer {TOKEN}")))
            .expect("right token");
        assert_eq!(caller.0, "token from 127.0.0.1:5000");
    }

    #[test]
    fn token_files_must_be_private_and_long() {
        use std::os::unix::fs::PermissionsExt as _;
        let path = std::env::temp_dir().join(format!("kmemcg-token-{}", std::process::id()));
        std::fs::write(&path, format!("{TOKEN}\n")).expect("written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("mode");
        assert!(
            read_token(&path)
                .expect_err("readable")
                .contains("chmod 600")
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("mode");
        assert_eq!(read_token(&path).as_deref(), Ok(TOKEN));
        std::fs::write(&path, "short\n").expect("written");
        assert!(read_token(&path).expect_err("short").contains("shorter"));
        std::fs::write(&path, format!("{TOKEN}\n{TOKEN}\n")).expect("written");
        assert!(
            read_token(&path)
                .expect_err("two lines")
                .contains("2 non-empty lines")
        );
        std::fs::write(&path, format!("\n{TOKEN}\n\n")).expect("written");
        assert_eq!(
            read_token(&path).as_deref(),
            Ok(TOKEN),
            "blank lines are not lines"
        );
        if crate::files::euid() == 0 {
            std::os::unix::fs::chown(&path, Some(65534), Some(65534)).expect("chown");
            let e = read_token(&path).expect_err("another user's");
            assert!(e.contains("owned by uid 65534"), "{e}");
        }
        let _ = std::fs::remove_file(&path);
    }
}
