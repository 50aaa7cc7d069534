//! A Linux TAP device opened through `/dev/net/tun` (IFF_TAP | IFF_NO_PI): raw Ethernet frames
//! with no packet-information prefix. The file descriptor stays valid when the interface is
//! moved into another network namespace, which is how the end-to-end tests put a real Linux
//! stack behind it.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `TUNSETIFF` = `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNGETIFF` = `_IOR('T', 210, unsigned int)`.
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
/// Frames the kernel queues for us (the interface's `txqueuelen`) when we make the device.
/// The tun driver's own default is 500: a guest answering a burst of segments from a few
/// hundred connections with an ACK each overflows that while the runner is busy sending,
/// and the ACKs lost this way cost retransmission timeouts. 4096 frames are at most about
/// 6 MiB of kernel memory.
pub const QUEUE_LEN: u32 = 4096;

/// `struct ifreq` with `ifr_qlen` (SIOCSIFTXQLEN).
#[repr(C)]
struct IfReqQlen {
    name: [libc::c_char; libc::IFNAMSIZ],
    qlen: libc::c_int,
    _pad: [u8; 20],
}

/// `struct ifreq` as far as TUNSETIFF uses it: the name and the flags (the union is 24 bytes).
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open, non-blocking TAP device.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

impl Tap {
    /// Creates the TAP interface `name` (or attaches to an existing one of that name).
    pub fn open(name: &str) -> io::Result<Self> {
        if name.is_empty()
            || name.len() >= libc::IFNAMSIZ
            || name.bytes().any(|b| b == 0 || b == b'/')
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid interface name {name:?}"),
            ));
        }
        // SAFETY: a plain open(2) of a constant NUL-terminated path.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly opened descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
            _pad: [0; 22],
        };
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq` lays out (40 bytes).
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel wrote a NUL-terminated name into the IFNAMSIZ buffer.
        let name = unsafe { CStr::from_ptr(req.name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        Ok(Self { fd, name })
    }

    /// The interface name the kernel gave the device.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the interface's transmit queue length (the frames the kernel holds for our reads).
    pub fn set_queue_len(&self, len: u32) -> io::Result<()> {
        let mut req = IfReqQlen {
            name: [0; libc::IFNAMSIZ],
            qlen: libc::c_int::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?,
            _pad: [0; 20],
        };
        for (dst, src) in req.name.iter_mut().zip(self.name.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: a plain socket(2) call; the descriptor is owned right below.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly opened descriptor that nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: SIOCSIFTXQLEN reads a `struct ifreq`, which `IfReqQlen` lays out (40 bytes).
        let rc = unsafe {
            libc::ioctl(
                socket.as_raw_fd(),
                libc::SIOCSIFTXQLEN as _,
                &mut req as *mut IfReqQlen,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the interface still exists. Once it is deleted (`ip link del`, or its network
    /// namespace removed) the descriptor stays open but is dead: reads never become ready and
    /// every call fails with `EBADFD`.
    pub fn is_attached(&self) -> bool {
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        // SAFETY: TUNGETIFF writes a `struct ifreq`, which `IfReq` lays out (40 bytes).
        let rc =
            unsafe { libc::ioctl(self.fd.as_raw_fd(), TUNGETIFF as _, &mut req as *mut IfReq) };
        rc >= 0 || !is_detached(&io::Error::last_os_error())
    }

    /// Reads one frame; `WouldBlock` when none is waiting.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reading into a valid, writable buffer of the given length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one frame; `WouldBlock` when the device queue is full.
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: writing from a valid buffer of the given length.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// Whether `err` says the TAP interface behind a descriptor is gone.
pub fn is_detached(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::EBADFD)
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}
