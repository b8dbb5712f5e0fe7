//! Bearer-token authentication. Tokens are read from files at start; a call must carry
//! `authorization: Bearer <token>` matching one of them, compared in constant time. With no
//! token configured every call is refused. Tokens are never logged: callers are named by the
//! file their token came from.

use floodgate_config::Role;
use subtle::ConstantTimeEq;

/// Who made a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// What they may do.
    pub role: Role,
    /// `<role>:<token file name>`, for the audit log.
    pub name: String,
}

/// The configured tokens.
#[derive(Clone, Default)]
pub struct Tokens(Vec<(Vec<u8>, Caller)>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a token.
        f.debug_list()
            .entries(self.0.iter().map(|(_, c)| &c.name))
            .finish()
    }
}

/// A token file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Unreadable.
    #[error("admin token file `{file}` cannot be read: {reason}")]
    Read {
        /// Path.
        file: String,
        /// Why.
        reason: String,
    },
    /// Empty after trimming.
    #[error("admin token file `{file}` is empty; put the token on its first line")]
    Empty {
        /// Path.
        file: String,
    },
}

impl Tokens {
    /// Reads every `(file, role)`; the token is the file's content without surrounding space.
    pub fn load(files: &[(String, Role)]) -> Result<Self, TokenError> {
        let mut out = Vec::new();
        for (file, role) in files {
            let text = std::fs::read_to_string(file).map_err(|e| TokenError::Read {
                file: file.clone(),
                reason: e.to_string(),
            })?;
            let token = text.trim();
            if token.is_empty() {
                return Err(TokenError::Empty { file: file.clone() });
            }
            let base = std::path::Path::new(file)
                .file_name()
                .map_or(file.as_str(), |n| n.to_str().unwrap_or(file.as_str()));
            let role_name = match role {
                Role::Operator => "operator",
                Role::Viewer => "viewer",
            };
            out.push((
                token.as_bytes().to_vec(),
                Caller {
                    role: *role,
                    name: format!("{role_name}:{base}"),
                },
            ));
        }
        Ok(Self(out))
    }

    /// True when no token is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The caller holding `presented`, comparing against every token in constant time.
    pub fn check(&self, presented: &[u8]) -> Option<Caller> {
        let mut found = None;
        for (token, caller) in &self.0 {
            // Compare with every token, not stopping at a match, so timing says nothing.
            if bool::from(token.as_slice().ct_eq(presented)) && found.is_none() {
                found = Some(caller.clone());
            }
        }
        found
    }

    /// The caller of a request, from its metadata.
    pub fn authenticate<T>(&self, req: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
        if self.is_empty() {
            return Err(tonic::Status::unauthenticated(
                "the admin plane has no tokens configured (admin.tokens), so it refuses every call",
            ));
        }
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                tonic::Status::unauthenticated(
                    "missing `authorization: Bearer <token>` (floodgatectl: --token-file or FLOODGATE_TOKEN)",
                )
            })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .unwrap_or("")
            .trim();
        self.check(token.as_bytes())
            .ok_or_else(|| tonic::Status::unauthenticated("the token is not one of admin.tokens"))
    }
}

/// Refuses a change from a viewer.
pub fn require_operator(c: &Caller) -> Result<(), tonic::Status> {
    match c.role {
        Role::Operator => Ok(()),
        Role::Viewer => Err(tonic::Status::permission_denied(format!(
            "`{}` holds a viewer token, which may only read; changes need an operator token",
            c.name
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> (tempfile::TempDir, Tokens) {
        let d = tempfile::tempdir().unwrap();
        let write = |name: &str, content: &str| {
            let p = d.path().join(name);
            std::fs::write(&p, content).unwrap();
            p.to_string_lossy().into_owned()
        };
        let op = write("op.token", "s3cret-op\n");
        let view = write("view.token", "  s3cret-view ");
        let t = Tokens::load(&[(op, Role::Operator), (view, Role::Viewer)]).unwrap();
        (d, t)
    }

    #[test]
    fn tokens_map_to_their_role_and_file() {
        let (_d, t) = tokens();
        assert_eq!(t.check(b"s3cret-op").unwrap().role, Role::Operator);
        let v = t.check(b"s3cret-view").unwrap();
        assert_eq!(
            (v.role, v.name.as_str()),
            (Role::Viewer, "viewer:view.token")
        );
        assert!(t.check(b"s3cret").is_none());
        assert!(t.check(b"").is_none());
        assert!(
            !format!("{t:?}").contains("s3cret"),
            "tokens are never printed"
        );
    }

    #[test]
    fn requests_need_a_bearer_token_and_changes_an_operator() {
        let (_d, t) = tokens();
        let req = |h: Option<&str>| {
            let mut r = tonic::Request::new(());
            if let Some(h) = h {
                r.metadata_mut().insert("authorization", h.parse().unwrap());
            }
            r
        };
        assert_eq!(
            t.authenticate(&req(None)).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            t.authenticate(&req(Some("Bearer nope")))
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
        let viewer = t.authenticate(&req(Some("Bearer s3cret-view"))).unwrap();
        assert_eq!(
            require_operator(&viewer).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let op = t.authenticate(&req(Some("Bearer s3cret-op"))).unwrap();
        assert!(require_operator(&op).is_ok());
        assert_eq!(
            Tokens::default()
                .authenticate(&req(Some("Bearer s3cret-op")))
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
    }
}
