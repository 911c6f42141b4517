//! Where the broker's control socket lives, and binding it safely (DESIGN.md §4).
//!
//! `$POSTBOX_SOCKET`, else `$XDG_RUNTIME_DIR/postbox/broker.sock`, else
//! `/tmp/postbox-$UID/broker.sock`. The directory is created private (mode 0700); a socket file
//! left by a killed broker is detected (nobody accepts on it) and replaced.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use postbox_transport::{ControlListener, ControlSocket, TransportError};

use crate::BrokerError;

/// The control socket path by the rules above.
#[must_use]
pub fn default_socket_path() -> PathBuf {
    if let Some(path) = std::env::var_os("POSTBOX_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(dir).join("postbox").join("broker.sock");
    }
    let uid = rustix::process::getuid().as_raw();
    PathBuf::from(format!("/tmp/postbox-{uid}")).join("broker.sock")
}

/// Prepares the directory and binds the listener at `path`, replacing a stale socket.
pub(crate) fn bind_listener(path: &Path) -> Result<ControlListener, BrokerError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        prepare_directory(dir)?;
    }
    match ControlListener::bind(path) {
        Ok(listener) => Ok(restrict(path, listener)),
        Err(TransportError::Os { kind: std::io::ErrorKind::AddrInUse, .. }) => {
            if ControlSocket::connect(path).is_ok() {
                return Err(BrokerError::AlreadyRunning(path.to_owned()));
            }
            // Nobody accepts: a socket file left by a broker that died. Replace it.
            let _ = fs::remove_file(path);
            Ok(restrict(path, ControlListener::bind(path)?))
        }
        Err(e) => Err(e.into()),
    }
}

fn restrict(path: &Path, listener: ControlListener) -> ControlListener {
    // Only the owner may connect (the default policy admits only the broker's own user); a
    // failure leaves the directory's 0700 as the protection.
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o600));
    listener
}

fn prepare_directory(dir: &Path) -> Result<(), BrokerError> {
    let err = |e: std::io::Error| BrokerError::Directory { path: dir.to_owned(), kind: e.kind() };
    match fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) => return Err(err(e)),
    }
    let meta = fs::metadata(dir).map_err(err)?;
    let ours = meta.uid() == rustix::process::getuid().as_raw();
    // A shared directory such as /tmp itself is fine when it is sticky; one we would create
    // (postbox-$UID) must be ours and closed to others.
    let sticky = meta.mode() & 0o1000 != 0;
    if !ours && !sticky {
        return Err(BrokerError::UnsafeDirectory(dir.to_owned()));
    }
    if ours && meta.mode() & 0o022 != 0 && !sticky {
        return Err(BrokerError::UnsafeDirectory(dir.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_socket_file_is_replaced_and_a_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("broker.sock");
        let first = bind_listener(&path).unwrap();
        assert!(matches!(bind_listener(&path), Err(BrokerError::AlreadyRunning(_))));
        drop(first); // the file stays behind, as after a kill -9
        assert!(path.exists());
        let _second = bind_listener(&path).unwrap();
        let mode = fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_directory_open_to_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let result = bind_listener(&open.join("broker.sock"));
        assert!(matches!(result, Err(BrokerError::UnsafeDirectory(_))), "{result:?}");
    }
}
