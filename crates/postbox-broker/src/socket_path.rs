//! Where the broker's control socket lives, and binding it safely (DESIGN.md §4).
//!
//! `$POSTBOX_SOCKET`, else `$XDG_RUNTIME_DIR/postbox/broker.sock`, else
//! `/tmp/postbox-$UID/broker.sock`. The directory is created private (mode 0700) and the socket
//! is the owner's alone (0600); a policy that names a socket group opens both to that group
//! (0710 and 0660), never to everyone. A socket file left by a killed broker is detected
//! (nobody accepts on it) and replaced.

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

/// Prepares the directory and binds the listener at `path`, replacing a stale socket; with
/// `group`, the directory and socket are opened to that group.
pub(crate) fn bind_listener(
    path: &Path,
    group: Option<u32>,
) -> Result<ControlListener, BrokerError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        prepare_directory(dir, group)?;
    }
    match ControlListener::bind(path) {
        Ok(listener) => restrict(path, listener, group),
        Err(TransportError::Os { kind: std::io::ErrorKind::AddrInUse, .. }) => {
            if ControlSocket::connect(path).is_ok() {
                return Err(BrokerError::AlreadyRunning(path.to_owned()));
            }
            // Nobody accepts: a socket file left by a broker that died. Replace it.
            let _ = fs::remove_file(path);
            restrict(path, ControlListener::bind(path)?, group)
        }
        Err(e) => Err(e.into()),
    }
}

fn restrict(
    path: &Path,
    listener: ControlListener,
    group: Option<u32>,
) -> Result<ControlListener, BrokerError> {
    // Only the owner may connect (the default policy admits only the broker's own user), or
    // the socket group's members, whom the policy then tells apart.
    let err = |e: std::io::Error| BrokerError::Directory { path: path.to_owned(), kind: e.kind() };
    if let Some(group) = group {
        std::os::unix::fs::chown(path, None, Some(group)).map_err(err)?;
    }
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}

fn prepare_directory(dir: &Path, group: Option<u32>) -> Result<(), BrokerError> {
    let err = |e: std::io::Error| BrokerError::Directory { path: dir.to_owned(), kind: e.kind() };
    match fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) => return Err(err(e)),
    }
    // The socket's own directory must be ours, a real directory (not a link to elsewhere),
    // and writable by nobody else: whoever can write it could replace the socket, or swap it
    // for a link before its mode is set. A shared directory such as /tmp is refused.
    let meta = fs::symlink_metadata(dir).map_err(err)?;
    let ours = meta.uid() == rustix::process::getuid().as_raw();
    if !meta.is_dir() || !ours || meta.mode() & 0o022 != 0 {
        return Err(BrokerError::UnsafeDirectory(dir.to_owned()));
    }
    if let Some(group) = group {
        // The group may reach the socket (search), not list or change the directory.
        std::os::unix::fs::chown(dir, None, Some(group)).map_err(err)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o710)).map_err(err)?;
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
        let first = bind_listener(&path, None).unwrap();
        assert!(matches!(bind_listener(&path, None), Err(BrokerError::AlreadyRunning(_))));
        drop(first); // the file stays behind, as after a kill -9
        assert!(path.exists());
        let _second = bind_listener(&path, None).unwrap();
        let mode = fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_socket_group_opens_the_socket_to_that_group_and_nobody_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("broker.sock");
        let gid = rustix::process::getgid().as_raw();
        let _listener = bind_listener(&path, Some(gid)).unwrap();
        let socket = fs::metadata(&path).unwrap();
        assert_eq!((socket.mode() & 0o777, socket.gid()), (0o660, gid));
        let parent = fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!((parent.mode() & 0o777, parent.gid()), (0o710, gid));
    }

    #[test]
    fn a_shared_sticky_directory_or_a_link_to_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        let result = bind_listener(&shared.join("broker.sock"), None);
        assert!(matches!(result, Err(BrokerError::UnsafeDirectory(_))), "{result:?}");
        let private = dir.path().join("private");
        fs::create_dir(&private).unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&private, &link).unwrap();
        let result = bind_listener(&link.join("broker.sock"), None);
        assert!(matches!(result, Err(BrokerError::UnsafeDirectory(_))), "{result:?}");
    }

    #[test]
    fn a_directory_open_to_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let result = bind_listener(&open.join("broker.sock"), None);
        assert!(matches!(result, Err(BrokerError::UnsafeDirectory(_))), "{result:?}");
    }
}
