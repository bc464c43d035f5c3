//! sendmmsg(2) of several datagrams, where consecutive ones of one size to one
//! destination may leave as one UDP GSO message (`UDP_SEGMENT`, Linux 4.18+): the kernel
//! routes, builds and (over loopback) delivers one packet for them, and cuts it back into
//! the datagrams at the device or at the receiving socket, so a peer receives each
//! datagram as it was sent, in order.

use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::libc;

use super::SockAddr;

/// The most datagrams one call takes (its headers live on the stack).
pub(crate) const SEND_BATCH: usize = 32;
/// linux/udp.h's socket option and control message (libc does not name it).
const UDP_SEGMENT: libc::c_int = 103;
/// The most segments one GSO message carries (the kernel's UDP_MAX_SEGMENTS was 64
/// before Linux 6.x raised it to 128).
const MAX_SEGMENTS: usize = 64;
/// The most UDP payload one IPv4 packet carries (65535 - 20 - 8); a GSO message's total
/// is held to it too.
const MAX_PAYLOAD: usize = 65507;

/// Whether the kernel segments UDP for this socket. A kernel before 4.18 refuses the
/// option here; it would ignore the control message, and send a group as one datagram.
pub(crate) fn gso_supported(fd: RawFd) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` is writable for `len` bytes, which the kernel updates.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    r == 0
}

/// What one call came to.
pub(crate) enum Outcome {
    /// This many datagrams, from the first, were sent (at least one).
    Sent(usize),
    /// The first message was not sent: the errno, and how many datagrams it carried
    /// (more than one: a GSO message).
    Failed(Errno, usize),
}

/// A message of the call: its datagrams (`count` iovecs from `first`), their size (the
/// last may be shorter), its destination.
#[derive(Clone, Copy)]
struct Group<'a> {
    first: usize,
    count: usize,
    size: usize,
    total: usize,
    /// A shorter datagram ended it.
    closed: bool,
    addr: Option<&'a SockAddr>,
}

impl Group<'_> {
    fn takes(&self, len: usize, addr: Option<&SockAddr>) -> bool {
        let same_peer = match (self.addr, addr) {
            (None, None) => true,
            (Some(a), Some(b)) => a.as_bytes() == b.as_bytes(),
            _ => false,
        };
        !self.closed
            && same_peer
            && len > 0
            && len <= self.size
            && self.count < MAX_SEGMENTS
            && self.total + len <= MAX_PAYLOAD
    }
}

/// One sendmmsg(2), without blocking, of the first `SEND_BATCH` of `msgs`, each to its
/// address (None: the socket's peer); with `gso`, consecutive datagrams to one
/// destination, all of one size but the last, go as one GSO message. An error after the
/// first message ends the call early; the next call, from the message that failed,
/// reports it.
pub(crate) fn send_batch<'a>(
    fd: RawFd,
    msgs: impl IntoIterator<Item = (&'a [u8], Option<&'a SockAddr>)>,
    gso: bool,
) -> Outcome {
    let mut iovs = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; SEND_BATCH];
    let mut groups: [Option<Group<'a>>; SEND_BATCH] = [None; SEND_BATCH];
    let mut ngroups: usize = 0;
    for (i, (data, addr)) in msgs.into_iter().take(SEND_BATCH).enumerate() {
        // The kernel only reads through iov_base for a send.
        iovs[i] = libc::iovec {
            iov_base: data.as_ptr().cast_mut().cast(),
            iov_len: data.len(),
        };
        let len = data.len();
        let last = ngroups.checked_sub(1).and_then(|g| groups[g].as_mut());
        match last {
            Some(g) if gso && g.takes(len, addr) => {
                g.count += 1;
                g.total += len;
                g.closed = len < g.size;
            }
            _ => {
                groups[ngroups] = Some(Group {
                    first: i,
                    count: 1,
                    size: len,
                    total: len,
                    closed: len == 0,
                    addr,
                });
                ngroups += 1;
            }
        }
    }
    if ngroups == 0 {
        return Outcome::Sent(0);
    }
    // SAFETY: mmsghdr is plain old data; all zeroes is a valid empty header.
    let mut hdrs: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
    // One control message per header: a cmsghdr and the u16 segment size, 8-aligned.
    let mut controls = [[0u64; 4]; SEND_BATCH];
    let data_len = std::mem::size_of::<u16>() as libc::c_uint;
    // SAFETY: CMSG_SPACE and CMSG_LEN only compute sizes.
    let (cmsg_space, cmsg_len) = unsafe { (libc::CMSG_SPACE(data_len), libc::CMSG_LEN(data_len)) };
    let iov_base = iovs.as_mut_ptr();
    let parts = groups.iter().zip(hdrs.iter_mut()).zip(controls.iter_mut());
    for ((group, hdr), control) in parts.take(ngroups) {
        let Some(g) = group else { break };
        // SAFETY: `first` is below the number of iovecs filled (SEND_BATCH at most).
        hdr.msg_hdr.msg_iov = unsafe { iov_base.add(g.first) };
        hdr.msg_hdr.msg_iovlen = g.count as _;
        if let Some(a) = g.addr {
            hdr.msg_hdr.msg_name = a.as_ptr().cast_mut().cast();
            hdr.msg_hdr.msg_namelen = a.len;
        }
        if g.count > 1 {
            let cmsg = control.as_mut_ptr().cast::<libc::cmsghdr>();
            let size = u16::try_from(g.size).unwrap_or(u16::MAX);
            // SAFETY: `control` is 32 bytes, 8-aligned: room for one cmsghdr (16 bytes)
            // and its 2 bytes of data at CMSG_DATA (CMSG_SPACE(2) = 24).
            unsafe {
                (*cmsg).cmsg_len = cmsg_len as _;
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = UDP_SEGMENT;
                libc::CMSG_DATA(cmsg).cast::<u16>().write_unaligned(size);
            }
            hdr.msg_hdr.msg_control = control.as_mut_ptr().cast();
            hdr.msg_hdr.msg_controllen = cmsg_space as _;
        }
    }
    // SAFETY: the first `ngroups` headers each name `count` iovecs over live slices of
    // `msgs` (borrowed for 'a, beyond this call), a live address of `len` bytes when
    // given, and a control message in `controls` when they carry several datagrams; the
    // kernel only reads them and writes `msg_len`.
    let r = unsafe {
        libc::sendmmsg(
            fd,
            hdrs.as_mut_ptr(),
            ngroups as libc::c_uint,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    let err = Errno::last();
    let count = |g: &Option<Group<'_>>| g.map_or(0, |g| g.count);
    match usize::try_from(r) {
        Ok(n) => Outcome::Sent(groups.iter().take(n).map(count).sum()),
        Err(_) => Outcome::Failed(err, count(&groups[0])),
    }
}
