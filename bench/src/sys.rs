//! Process-level settings: file-descriptor limit, CPU affinity, parent-death signal, core count.

use std::io;

/// CPUs this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (as far as the OS allows) and returns the new
/// soft limit.
///
/// # Errors
/// The OS error of `getrlimit`/`setrlimit`.
pub fn raise_nofile() -> io::Result<libc::rlim_t> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `want` is a valid rlimit struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim = want;
    }
    Ok(lim.rlim_cur)
}

/// Sets `SO_LINGER` to zero seconds: closing the socket sends a reset and leaves no TIME_WAIT.
///
/// # Errors
/// The OS error of `setsockopt`.
pub fn set_linger_zero(s: &std::net::TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the fd is open for the lifetime of `s`; `linger` is a valid struct of the size
    // passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Pins the calling thread (and every thread it creates afterwards) to `cpu`, like
/// `taskset -c CPU`.
///
/// # Errors
/// The OS error of `sched_setaffinity` (no such CPU, not allowed).
#[cfg(target_os = "linux")]
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "CPU index too large",
        ));
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it (index checked
    // above); sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The lowest CPU this process may run on (0 when it cannot be told).
pub fn first_cpu() -> usize {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills at most its size; CPU_ISSET
        // reads inside it for indices below CPU_SETSIZE.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
                for cpu in 0..libc::CPU_SETSIZE as usize {
                    if libc::CPU_ISSET(cpu, &set) {
                        return cpu;
                    }
                }
            }
        }
    }
    0
}

/// Pinning is Linux-only.
///
/// # Errors
/// Always `Unsupported`.
#[cfg(not(target_os = "linux"))]
pub fn pin_to_cpu(_cpu: usize) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Environment variable through which the harness tells a child its PID.
pub const PARENT_ENV: &str = "MQNET_BENCH_PARENT";

/// Asks the kernel to kill this process when its parent dies, so a child of the harness never
/// outlives it; exits at once if the parent named in [`PARENT_ENV`] is already gone.
pub fn die_with_parent() {
    #[cfg(target_os = "linux")]
    {
        let expected: Option<i32> = std::env::var(PARENT_ENV).ok().and_then(|v| v.parse().ok());
        // SAFETY: plain syscalls with integer arguments.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if expected.is_some_and(|pid| libc::getppid() != pid) {
                std::process::exit(3);
            }
        }
    }
}
