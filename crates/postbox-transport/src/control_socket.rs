//! The Unix seqpacket socket between a node and its broker: one control message per packet,
//! link descriptors beside it (`SCM_RIGHTS`), the peer known by `SO_PEERCRED`.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::net::{
    accept_with, bind, connect, listen, recvmsg, sendmsg, socket_with, socketpair, sockopt,
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use crate::wait::{wait_readable, wait_writable};
use crate::{TransportError, Wait};

/// Kernel credentials of the process at the other end of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// Process id.
    pub pid: u32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// The broker's listening socket.
#[derive(Debug)]
pub struct ControlListener {
    fd: OwnedFd,
}

impl ControlListener {
    /// Binds a non-blocking seqpacket listener at `path` (which must not exist).
    ///
    /// # Errors
    /// [`TransportError::Os`]; `AddrInUse` when `path` exists.
    pub fn bind(path: &Path) -> Result<Self, TransportError> {
        let fd = socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(|e| TransportError::os("create control socket", e))?;
        let addr = SocketAddrUnix::new(path).map_err(|e| TransportError::os("socket path", e))?;
        bind(&fd, &addr).map_err(|e| TransportError::os("bind control socket", e))?;
        listen(&fd, 128).map_err(|e| TransportError::os("listen on control socket", e))?;
        Ok(Self { fd })
    }

    /// Accepts one pending client, non-blocking; `Ok(None)` when none is pending.
    ///
    /// # Errors
    /// [`TransportError::Os`] for failures other than "nothing pending".
    pub fn accept(&self) -> Result<Option<ControlSocket>, TransportError> {
        match accept_with(&self.fd, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
            Ok(fd) => Ok(Some(ControlSocket { fd })),
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::CONNABORTED) => Ok(None),
            Err(errno) => Err(TransportError::os("accept control connection", errno)),
        }
    }

    /// The descriptor to poll for pending clients.
    #[must_use]
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// One end of a node ↔ broker control connection.
#[derive(Debug)]
pub struct ControlSocket {
    fd: OwnedFd,
}

impl ControlSocket {
    /// Connects to the broker listening at `path`.
    ///
    /// # Errors
    /// [`TransportError::Os`] (`NotFound` or `ConnectionRefused` when no broker is there).
    pub fn connect(path: &Path) -> Result<Self, TransportError> {
        let fd =
            socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
                .map_err(|e| TransportError::os("create control socket", e))?;
        let addr = SocketAddrUnix::new(path).map_err(|e| TransportError::os("socket path", e))?;
        connect(&fd, &addr).map_err(|e| TransportError::os("connect to broker", e))?;
        Ok(Self { fd })
    }

    /// Two connected ends, for a control connection relayed within this process (a remote
    /// node's tunnel hands one end to the node or broker and pumps the other).
    ///
    /// # Errors
    /// [`TransportError::Os`] when the socketpair cannot be made.
    pub fn pair() -> Result<(Self, Self), TransportError> {
        let (a, b) =
            socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
                .map_err(|e| TransportError::os("create control socketpair", e))?;
        Ok((Self { fd: a }, Self { fd: b }))
    }

    /// The kernel's word on who is at the other end.
    ///
    /// # Errors
    /// [`TransportError::Os`] when the socket cannot be queried.
    pub fn peer_credentials(&self) -> Result<Credentials, TransportError> {
        let cred = sockopt::socket_peercred(&self.fd)
            .map_err(|e| TransportError::os("read peer credentials", e))?;
        Ok(Credentials {
            pid: cred.pid.as_raw_nonzero().get().unsigned_abs(),
            uid: cred.uid.as_raw(),
            gid: cred.gid.as_raw(),
        })
    }

    /// Sends one packet, with `fds` beside it (at most [`MAX_FDS`]).
    ///
    /// # Errors
    /// [`TransportError::WouldBlock`] (for [`Wait::NonBlocking`]), `TimedOut`, `Closed`, `Os`;
    /// `Oversized` for more than [`MAX_FDS`] descriptors.
    pub fn send(
        &self,
        packet: &[u8],
        fds: &[BorrowedFd<'_>],
        wait: Wait,
    ) -> Result<(), TransportError> {
        if fds.len() > MAX_FDS {
            return Err(TransportError::Oversized(MAX_FDS));
        }
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            // The buffer was sized for `MAX_FDS` descriptors, so this push always fits.
            let pushed = control.push(SendAncillaryMessage::ScmRights(fds));
            debug_assert!(pushed, "control buffer sized for MAX_FDS descriptors");
        }
        let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
        loop {
            match sendmsg(&self.fd, &[IoSlice::new(packet)], &mut control, flags) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => match wait {
                    Wait::NonBlocking => return Err(TransportError::WouldBlock),
                    _ => {
                        if !wait_writable(self.fd.as_fd(), wait)? {
                            return Err(TransportError::TimedOut);
                        }
                    }
                },
                Err(errno) => return Err(TransportError::os("send control message", errno)),
            }
        }
    }

    /// Receives one packet into `buf`, and the descriptors beside it.
    ///
    /// Returns the packet length. Descriptors beyond [`MAX_FDS`] are closed.
    ///
    /// # Errors
    /// `Closed` at end of stream, `Oversized` when the packet did not fit in `buf` (it is
    /// discarded), `WouldBlock`, `TimedOut`, `Os`.
    pub fn recv(
        &self,
        buf: &mut [u8],
        wait: Wait,
    ) -> Result<(usize, Vec<OwnedFd>), TransportError> {
        let mut reset = false;
        loop {
            if wait != Wait::Forever && wait != Wait::NonBlocking {
                let ready = wait_readable(&[self.fd.as_fd()], wait)?;
                if ready.is_empty() {
                    return Err(TransportError::TimedOut);
                }
            }
            let mut space =
                [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS + 1))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let mut flags = RecvFlags::CMSG_CLOEXEC;
            if wait != Wait::Forever {
                flags |= RecvFlags::DONTWAIT;
            }
            let result = recvmsg(&self.fd, &mut [IoSliceMut::new(buf)], &mut control, flags);
            let mut received = Vec::new();
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = message {
                    // Descriptors beyond the limit drop here, which closes them.
                    received.extend(fds.take(MAX_FDS.saturating_sub(received.len())));
                }
            }
            match result {
                Ok(msg) if msg.bytes == 0 && !msg.flags.contains(ReturnFlags::TRUNC) => {
                    return Err(TransportError::Closed)
                }
                Ok(msg) if msg.flags.contains(ReturnFlags::TRUNC) => {
                    return Err(TransportError::Oversized(buf.len()))
                }
                Ok(msg) => return Ok((msg.bytes, received)),
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) if wait == Wait::NonBlocking => {
                    return Err(TransportError::WouldBlock)
                }
                Err(rustix::io::Errno::AGAIN) => {}
                // A peer that closed with packets of ours unread makes the first read fail
                // with ECONNRESET; what it sent before closing (a refusal saying why) still
                // comes on the next reads, then the end.
                Err(rustix::io::Errno::CONNRESET) if !reset => reset = true,
                Err(rustix::io::Errno::CONNRESET) => return Err(TransportError::Closed),
                Err(errno) => return Err(TransportError::os("receive control message", errno)),
            }
        }
    }

    /// Shuts both directions down: a thread blocked in [`recv`](Self::recv) returns `Closed`.
    pub fn shutdown(&self) {
        // Failure means the socket is already disconnected, which is the goal.
        let _ = rustix::net::shutdown(&self.fd, rustix::net::Shutdown::Both);
    }

    /// The descriptor to poll.
    #[must_use]
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Most descriptors one control packet carries (a shared-memory link needs three: socket,
/// segment and wake-up socket).
pub const MAX_FDS: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_and_a_descriptor_cross_the_control_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.sock");
        let listener = ControlListener::bind(&path).unwrap();
        let client = ControlSocket::connect(&path).unwrap();
        let server = loop {
            if let Some(s) = listener.accept().unwrap() {
                break s;
            }
        };
        let creds = server.peer_credentials().unwrap();
        assert_eq!(creds.pid, std::process::id());
        let (a, b) = crate::UnixLink::pair().unwrap();
        server.send(b"hello", &[a.as_fd(), b.as_fd(), a.as_fd()], Wait::Forever).unwrap();
        let mut buf = [0u8; 64];
        let (n, fds) = client.recv(&mut buf, Wait::Forever).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 3, "every descriptor arrives, in order");
        let too_many = [a.as_fd(); MAX_FDS + 1];
        assert_eq!(
            server.send(b"x", &too_many, Wait::Forever).unwrap_err(),
            TransportError::Oversized(MAX_FDS)
        );
        let mut small = [0u8; 2];
        server.send(b"too long", &[], Wait::Forever).unwrap();
        assert_eq!(
            client.recv(&mut small, Wait::Forever).unwrap_err(),
            TransportError::Oversized(2)
        );
        assert_eq!(
            client.recv(&mut buf, Wait::NonBlocking).unwrap_err(),
            TransportError::WouldBlock
        );
        drop(server);
        assert_eq!(client.recv(&mut buf, Wait::Forever).unwrap_err(), TransportError::Closed);
    }
}
