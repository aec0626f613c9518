//! OIDC tokens for outgoing requests (SEMANTICS.md §11): a sender (Trigger, Subscription,
//! source) sends `Authorization: Bearer <token>` for its identity and the destination's
//! audience whenever the destination has one ([`Endpoint::audience`]).
//!
//! Where tokens come from is a [`TokenSource`]: embedded mode reads one token file
//! ([`TokenFile`]: any OIDC token the receiving ingress accepts), Kubernetes mode asks the
//! API server's TokenRequest API for the sender's ServiceAccount (in `sluice-controller`).
//!
//! [`Endpoint::audience`]: sluice_core::delivery::Endpoint::audience

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Who is sending: the ServiceAccount whose tokens a sender uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub namespace: String,
    pub service_account: String,
}

/// Gives tokens for an identity and an audience. Implementations cache: this is called for
/// every request to a destination with an audience.
#[async_trait::async_trait]
pub trait TokenSource: Send + Sync + std::fmt::Debug {
    async fn token(&self, identity: &Identity, audience: &str) -> Result<Arc<str>, String>;
}

/// How often [`TokenFile`] looks whether its file changed.
pub const TOKEN_FILE_CHECK: Duration = Duration::from_secs(1);

/// One token from a file, for every identity and audience (embedded mode: the token of
/// whatever identity this Sluice sends as). The file is read again when its modification
/// time changes (checked at most every [`TOKEN_FILE_CHECK`]), so a token refreshed on disk
/// by another tool is picked up.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    cached: Mutex<Option<Cached>>,
}

#[derive(Debug)]
struct Cached {
    token: Arc<str>,
    modified: Option<SystemTime>,
    checked: tokio::time::Instant,
}

impl TokenFile {
    /// Reads the file once now, so a missing or empty one is reported at start-up.
    pub fn new(path: PathBuf) -> Result<Self, String> {
        let f = TokenFile {
            path,
            cached: Mutex::new(None),
        };
        f.read()?;
        Ok(f)
    }

    fn read(&self) -> Result<Arc<str>, String> {
        let what = || format!("the OIDC token file {}", self.path.display());
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut cached = self.cached.lock().expect("not poisoned");
        if let Some(c) = cached.as_mut() {
            if c.modified == modified && modified.is_some() {
                c.checked = tokio::time::Instant::now();
                return Ok(c.token.clone());
            }
        }
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", what()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(format!("{} is empty; write a token into it", what()));
        }
        let token: Arc<str> = token.into();
        *cached = Some(Cached {
            token: token.clone(),
            modified,
            checked: tokio::time::Instant::now(),
        });
        Ok(token)
    }
}

#[async_trait::async_trait]
impl TokenSource for TokenFile {
    async fn token(&self, _identity: &Identity, _audience: &str) -> Result<Arc<str>, String> {
        {
            let cached = self.cached.lock().expect("not poisoned");
            if let Some(c) = cached.as_ref() {
                if c.checked.elapsed() < TOKEN_FILE_CHECK {
                    return Ok(c.token.clone());
                }
            }
        }
        self.read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_token_file_is_read_again_once_it_changes() {
        let dir = std::env::temp_dir().join(format!("sluice-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        assert!(TokenFile::new(dir.join("missing"))
            .unwrap_err()
            .contains("missing"));
        std::fs::write(&path, "  \n").unwrap();
        assert!(TokenFile::new(path.clone()).unwrap_err().contains("empty"));
        std::fs::write(&path, "one\n").unwrap();
        let f = TokenFile::new(path.clone()).unwrap();
        let id = Identity {
            namespace: "ns".into(),
            service_account: "sa".into(),
        };
        assert_eq!(&*f.token(&id, "aud").await.unwrap(), "one");
        std::fs::write(&path, "two").unwrap();
        // Make sure the modification time differs even on coarse-grained file systems.
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        // Within the check interval the cached token is used.
        assert_eq!(&*f.token(&id, "aud").await.unwrap(), "one");
        tokio::time::advance(TOKEN_FILE_CHECK).await;
        assert_eq!(&*f.token(&id, "aud").await.unwrap(), "two");
    }
}
