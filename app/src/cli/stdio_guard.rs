//! `lattice stdio-guard -- COMMAND ARGS...` (hidden): the process the
//! gateway starts for each stdio MCP server, which runs the server and
//! makes sure nothing it started outlives the gateway — after a SIGTERM
//! (the gateway kills the guard's process group) and after a SIGKILL of the
//! gateway, which nothing in the gateway can react to: the kernel tells the
//! guard (`PR_SET_PDEATHSIG`), and the guard kills every process below it.
//! Being a child subreaper (`PR_SET_CHILD_SUBREAPER`), it also inherits the
//! server's orphans, so a grandchild that left the process group (`setsid`,
//! a daemonizing launcher) is still found and killed.
//!
//! The server inherits the guard's stdin, stdout and stderr: the gateway
//! talks to it directly, the guard reads nothing.
//!
//! The server runs with the machine's transparent huge pages setting, not
//! the gateway's (which turns them off for itself, and children inherit
//! that).
//!
//! Must never: exit while a process it started (or inherited) still runs,
//! or run a server after the gateway is gone.

use nix::sys::prctl;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getpid, getppid, Pid};
use std::process::ExitCode;

/// Every process below the guard, read from `/proc` (as a subreaper, the
/// guard is the parent of every orphan below it, so none is out of reach).
fn descendants() -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    // `pid (comm) state ppid ...`: the command may hold spaces and
    // parentheses, so read after the last `)`.
    let parent_of = |pid: i32| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 1..];
        rest.split_whitespace().nth(1)?.parse().ok()
    };
    let table: Vec<(i32, i32)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, parent_of(pid)?)))
        .collect();
    let mut out = Vec::new();
    let mut todo = vec![getpid().as_raw()];
    while let Some(parent) = todo.pop() {
        for (pid, ppid) in &table {
            if *ppid == parent {
                out.push(Pid::from_raw(*pid));
                todo.push(*pid);
            }
        }
    }
    out
}

/// Reaps every child that ended; the server's exit code if it was one.
fn reap(server: Pid) -> Option<i32> {
    let mut code = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, c)) if pid == server => code = Some(c),
            Ok(WaitStatus::Signaled(pid, ..)) if pid == server => code = Some(1),
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => {}
            _ => return code,
        }
    }
}

/// Kills everything below the guard until nothing is left.
fn kill_all(server: Pid) {
    for _ in 0..200 {
        let below = descendants();
        if below.is_empty() {
            return;
        }
        for pid in below {
            let _ = kill(pid, Signal::SIGKILL);
        }
        reap(server);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The server gets SIGKILL if the guard itself is killed (by SIGKILL,
/// which the guard cannot act on), so its pipes close and the gateway
/// restarts it.
#[allow(unsafe_code)]
fn server_dies_with_guard(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let guard = getpid();
    // SAFETY: the closure runs in the forked child before `exec` and calls
    // only `prctl` and `getppid`, both async-signal-safe; it allocates
    // nothing and touches no lock.
    unsafe {
        command.pre_exec(move || {
            prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            if getppid() != guard {
                return Err(std::io::Error::from(nix::errno::Errno::ESRCH));
            }
            Ok(())
        });
    }
}

pub fn run(command: &str, args: &[String]) -> anyhow::Result<ExitCode> {
    let gateway = getppid();
    let signals: SigSet = [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ]
    .into_iter()
    .collect();
    // Blocked here, waited for below; the server starts with an empty mask
    // (the standard library resets it in the child).
    signals.thread_block()?;
    prctl::set_pdeathsig(Signal::SIGTERM)?;
    prctl::set_child_subreaper(true)?;
    if getppid() != gateway {
        return Ok(ExitCode::FAILURE); // the gateway died before we could ask to be told
    }
    // The gateway runs without transparent huge pages (`serve`), a setting
    // that children keep across exec: the server gets the machine's own.
    prctl::set_thp_disable(false)?;
    let mut server = std::process::Command::new(command);
    server.args(args);
    server_dies_with_guard(&mut server);
    let server = server.spawn()?;
    let pid = Pid::from_raw(server.id() as i32);
    loop {
        match signals.wait()? {
            Signal::SIGCHLD => {
                if let Some(code) = reap(pid) {
                    kill_all(pid);
                    return Ok(ExitCode::from(code.clamp(0, 255) as u8));
                }
            }
            _ => {
                kill_all(pid);
                return Ok(ExitCode::FAILURE);
            }
        }
    }
}
