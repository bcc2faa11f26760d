//! What the process needs from the kernel before any shard starts: locked memory
//! for io_uring, a working io_uring, and the CPUs it may run on.
//!
//! Data flow: `runtime::start` calls [`prepare`] first, on the main thread, so that
//! a container's seccomp profile or a low `ulimit -l` ends the process with one
//! clear line instead of a panic from inside glommio's reactor. Owns nothing after
//! that: the limits are process-wide and stay as raised.

use std::io;

use thiserror::Error;
use tracing::{debug, info, warn};

/// glommio refuses to build a reactor under this much locked memory
/// (`MIN_MEMLOCK_LIMIT` in glommio 0.9 `sys/uring.rs`).
pub const GLOMMIO_MIN_MEMLOCK: u64 = 512 * 1024;

/// Registered io_uring buffer memory per shard. We do no storage IO; glommio
/// only uses this pool for datagram bounce buffers (one 64 KiB SIP receive in
/// flight, a few sends), so 1 MiB is plenty and keeps `ulimit -l` needs small.
pub const IO_MEMORY_PER_SHARD: usize = 1 << 20;

/// Locked memory one shard needs: its registered buffers plus its three rings
/// (kernels before 5.12 charge ring memory to RLIMIT_MEMLOCK as well).
pub const MEMLOCK_PER_SHARD: u64 = 2 << 20;

/// As root we lift the hard limit to this if `RLIM_INFINITY` is refused.
const ROOT_MEMLOCK_TARGET: u64 = 512 << 20;

#[derive(Debug, Error)]
pub enum SystemError {
    #[error(
        "io_uring is not available: the kernel has no io_uring_setup (ENOSYS); \
         switchboard needs Linux 5.8 or later built with CONFIG_IO_URING"
    )]
    UringMissing,
    #[error(
        "io_uring is disabled by the kernel.io_uring_disabled sysctl (value {0}); \
         set it to 0 (sysctl -w kernel.io_uring_disabled=0), or to 1 and run \
         switchboard in the io_uring_group"
    )]
    UringDisabledSysctl(u8),
    #[error(
        "io_uring_setup was refused (EPERM): a seccomp profile blocks io_uring, as \
         Docker's and containerd's default profiles do; run the container with \
         --security-opt seccomp=<profile allowing io_uring_setup, io_uring_enter, \
         io_uring_register> (or seccomp=unconfined to test)"
    )]
    UringDenied,
    #[error(
        "io_uring_setup failed for lack of locked memory (ENOMEM, RLIMIT_MEMLOCK \
         soft {soft} bytes): raise it with LimitMEMLOCK=infinity in the systemd \
         unit, `ulimit -l unlimited`, or docker --ulimit memlock=-1"
    )]
    UringNoMemory { soft: u64 },
    #[error("io_uring_setup failed: {0}")]
    UringOther(io::Error),
    #[error(
        "locked memory limit (RLIMIT_MEMLOCK) is {have} bytes and cannot be raised; \
         glommio needs at least {need}: set LimitMEMLOCK=infinity in the systemd \
         unit, `ulimit -l unlimited`, or docker --ulimit memlock=-1"
    )]
    MemlockTooLow { have: u64, need: u64 },
    #[error("cannot read RLIMIT_MEMLOCK: {0}")]
    Rlimit(io::Error),
    #[error("no CPU is available to this process (sched_getaffinity returned none)")]
    NoCpus,
}

/// What [`raise_memlock`] ended with, in bytes (`u64::MAX` = unlimited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memlock {
    pub soft: u64,
    pub hard: u64,
}

fn to_bytes(r: libc::rlim_t) -> u64 {
    if r == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        r
    }
}

fn get_memlock() -> Result<Memlock, SystemError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid, exclusive pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc != 0 {
        return Err(SystemError::Rlimit(io::Error::last_os_error()));
    }
    Ok(Memlock {
        soft: to_bytes(lim.rlim_cur),
        hard: to_bytes(lim.rlim_max),
    })
}

fn set_memlock(soft: libc::rlim_t, hard: libc::rlim_t) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads the `rlimit` we pass by reference.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raise RLIMIT_MEMLOCK: soft to hard always; with CAP_SYS_RESOURCE (root) the
/// hard limit too, to unlimited or else 512 MiB. Never lowers.
pub fn raise_memlock() -> Result<Memlock, SystemError> {
    let before = get_memlock()?;
    if before.soft == u64::MAX {
        return Ok(before);
    }
    // Try the privileged raise first; an unprivileged process gets EPERM and
    // falls through to soft = hard, which needs no privilege.
    if set_memlock(libc::RLIM_INFINITY, libc::RLIM_INFINITY).is_err()
        && before.hard < ROOT_MEMLOCK_TARGET
    {
        let _ = set_memlock(ROOT_MEMLOCK_TARGET, ROOT_MEMLOCK_TARGET);
    }
    let now = get_memlock()?;
    if now.soft < now.hard {
        let hard = if now.hard == u64::MAX {
            libc::RLIM_INFINITY
        } else {
            now.hard
        };
        if let Err(e) = set_memlock(hard, hard) {
            debug!(error = %e, "could not raise RLIMIT_MEMLOCK soft limit to hard");
        }
    }
    let after = get_memlock()?;
    if after != before {
        info!(
            soft = after.soft,
            hard = after.hard,
            was = before.soft,
            "raised RLIMIT_MEMLOCK"
        );
    }
    Ok(after)
}

/// Map an `io_uring_setup` errno to the advice an operator needs.
/// `disabled_sysctl` is the value of /proc/sys/kernel/io_uring_disabled if known.
pub fn uring_error(errno: i32, disabled_sysctl: Option<u8>, soft_memlock: u64) -> SystemError {
    match errno {
        libc::ENOSYS => SystemError::UringMissing,
        libc::EPERM | libc::EACCES => match disabled_sysctl {
            Some(v) if v > 0 => SystemError::UringDisabledSysctl(v),
            _ => SystemError::UringDenied,
        },
        libc::ENOMEM => SystemError::UringNoMemory { soft: soft_memlock },
        e => SystemError::UringOther(io::Error::from_raw_os_error(e)),
    }
}

fn read_uring_disabled() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Create and close one tiny io_uring, the way glommio will, to learn early
/// whether the kernel, seccomp and the memlock limit allow it.
pub fn probe_io_uring() -> Result<(), SystemError> {
    // struct io_uring_params is 120 bytes on every ABI (include/uapi/linux/io_uring.h);
    // the kernel rejects nonzero reserved fields, so we pass zeros and a bit of slack.
    let mut params = [0u64; 32];
    // SAFETY: io_uring_setup(entries, params) reads and writes at most
    // sizeof(io_uring_params) = 120 bytes at `params`, which holds 256 zeroed bytes
    // that we own; it returns a new fd that we own and close below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            4 as libc::c_uint,
            params.as_mut_ptr() as *mut libc::c_void,
        )
    };
    if fd < 0 {
        let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        let soft = get_memlock().map(|m| m.soft).unwrap_or(0);
        return Err(uring_error(errno, read_uring_disabled(), soft));
    }
    // SAFETY: `fd` came from io_uring_setup above and nothing else holds it.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// The CPUs this process may run on (sched_getaffinity: honours taskset,
/// cgroup cpusets and systemd's CPUAffinity=).
pub fn allowed_cpus() -> Vec<usize> {
    core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .unwrap_or_default()
}

/// Everything that must hold before the first executor starts, in order:
/// memlock raised (and enough for glommio), io_uring usable, CPUs known.
/// Returns the CPUs to pin shards to.
pub fn prepare(shards: usize) -> Result<Vec<usize>, SystemError> {
    let mem = raise_memlock()?;
    if mem.soft < GLOMMIO_MIN_MEMLOCK {
        return Err(SystemError::MemlockTooLow {
            have: mem.soft,
            need: GLOMMIO_MIN_MEMLOCK,
        });
    }
    let want = MEMLOCK_PER_SHARD.saturating_mul(shards as u64);
    if mem.soft < want {
        // Not fatal: glommio runs without registered buffers (slower), and
        // kernels >= 5.12 charge rings to the memory cgroup instead.
        warn!(
            memlock = mem.soft,
            wanted = want,
            shards,
            "RLIMIT_MEMLOCK is low for this many shards; set LimitMEMLOCK=infinity"
        );
    }
    probe_io_uring()?;
    let cpus = allowed_cpus();
    if cpus.is_empty() {
        return Err(SystemError::NoCpus);
    }
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_maps_to_advice() {
        assert!(matches!(
            uring_error(libc::ENOSYS, None, 0),
            SystemError::UringMissing
        ));
        assert!(matches!(
            uring_error(libc::EPERM, Some(0), 0),
            SystemError::UringDenied
        ));
        assert!(matches!(
            uring_error(libc::EPERM, Some(2), 0),
            SystemError::UringDisabledSysctl(2)
        ));
        let e = uring_error(libc::ENOMEM, None, 65536);
        assert!(matches!(e, SystemError::UringNoMemory { soft: 65536 }));
        assert!(e.to_string().contains("LimitMEMLOCK=infinity"));
        let denied = uring_error(libc::EPERM, None, 0).to_string();
        assert!(denied.contains("--security-opt seccomp="), "{denied}");
        assert!(matches!(
            uring_error(libc::EINVAL, None, 0),
            SystemError::UringOther(_)
        ));
    }

    #[test]
    fn memlock_is_never_lowered() {
        let before = get_memlock().unwrap();
        let after = raise_memlock().unwrap();
        assert!(after.soft >= before.soft);
        assert!(after.hard >= before.hard);
        assert!(after.soft <= after.hard);
    }

    #[test]
    fn cpus_are_listed() {
        assert!(!allowed_cpus().is_empty());
    }

    #[test]
    fn probe_gives_ok_or_a_clear_error() {
        // The test machine may or may not allow io_uring; either way no panic,
        // and an error must carry advice.
        if let Err(e) = probe_io_uring() {
            assert!(!e.to_string().is_empty());
        }
    }
}

/// The host's first non-loopback IPv4 address that is up, for Contact and SDP
/// when `sip.bind` is the wildcard and `sip.external_ip` is not set. A local
/// query (getifaddrs(3)); nothing is sent.
pub fn host_ipv4() -> Option<std::net::Ipv4Addr> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `head` on success (returns 0);
    // the list is freed below with freeifaddrs and not used after.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive until
        // freeifaddrs; `ifa_addr` may be null, which is checked.
        let ifa = unsafe { &*cur };
        let up = ifa.ifa_flags & (libc::IFF_UP as libc::c_uint) != 0;
        let loopback = ifa.ifa_flags & (libc::IFF_LOOPBACK as libc::c_uint) != 0;
        if up && !loopback && !ifa.ifa_addr.is_null() {
            // SAFETY: non-null, and sa_family says which sockaddr it is; an
            // AF_INET address is a sockaddr_in.
            let family = unsafe { (*ifa.ifa_addr).sa_family };
            if i32::from(family) == libc::AF_INET {
                // SAFETY: as above: AF_INET means the storage is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() && !ip.is_unspecified() {
                    found = Some(ip);
                    break;
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

#[cfg(test)]
mod host_ip_tests {
    #[test]
    fn host_ipv4_is_a_usable_address_when_found() {
        // This VM has a non-loopback interface; a box without one gets None.
        if let Some(ip) = super::host_ipv4() {
            assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
        }
    }
}
