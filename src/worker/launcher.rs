//! The peon launcher: one small single-threaded process per worker that forks its peons.
//!
//! Exec'ing this binary for every task costs about 5 ms of CPU before the task even starts
//! (mapping and relocating a 25 MB binary, the linked C++ code's static initialisers, a fresh
//! allocator), and a worker running many short tasks spends most of its CPU there. So the
//! worker starts one launcher (`raftlord peon-launcher`, talking over a socket pair on its
//! standard input and output) and asks it for each task. The launcher writes the task's
//! directory (`task.json`, the `log` file) and forks a child that runs the peon code directly: a
//! separate process like any peon, in its own process group, output to the task log, its
//! `peon.pid` written by itself. The launcher reaps its children and tells the worker how each
//! ended, so the worker applies Druid's exit-code rule exactly as for an exec'd peon.
//!
//! The launcher is single-threaded, so forking it is safe. It exits when the worker closes the
//! socket (or dies); peons it started keep running, and the next worker process adopts them
//! through `peon.pid` like any peon left behind. A worker that loses its launcher watches the
//! peons it had through `/proc` and starts a new launcher for the next task.
//!
//! Protocol: one JSON object per line. Worker → launcher: `{"id", "dir", "task"}`. Launcher →
//! worker: `{"started": {"id", "pid"}}`, `{"refused": {"id", "error"}}` (the directory could not
//! be written), `{"exited": {"pid", "code"}}` or `{"exited": {"pid", "signal"}}`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::oneshot;
use tracing::warn;

use super::runner::{write_atomic, write_pid_file};

#[derive(Debug, Serialize, Deserialize)]
struct Launch {
    id: String,
    dir: PathBuf,
    task: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Event {
    Started {
        id: String,
        pid: i32,
    },
    Refused {
        id: String,
        error: String,
    },
    Exited {
        pid: i32,
        code: Option<i32>,
        signal: Option<i32>,
    },
}

// ---------------------------------------------------------------------------------------------
// The launcher process.

/// Runs the launcher on standard input/output (the worker's socket); returns the exit code.
///
/// Must be called before any other thread exists in this process: it forks.
pub fn serve() -> i32 {
    match serve_inner() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("raftlord peon-launcher: {e}");
            2
        }
    }
}

fn serve_inner() -> std::io::Result<()> {
    let mut sock = UnixStream::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut out = UnixStream::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    // Children are reaped through a signalfd, so SIGCHLD is blocked here (and unblocked again
    // in every peon).
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    let mut old_mask = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&chld), Some(&mut old_mask))?;
    let sfd = SignalFd::with_flags(&chld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (sock_ready, sfd_ready) = {
            let mut fds = [
                PollFd::new(sock.as_fd(), PollFlags::POLLIN),
                PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if sfd_ready {
            while let Ok(Some(_)) = sfd.read_signal() {}
            reap(&mut out)?;
        }
        if sock_ready {
            let n = match sock.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                // The worker is gone. Peons keep running; the next worker adopts them.
                return Ok(());
            }
            pending.extend_from_slice(&buf[..n]);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                // A peon must not keep the worker's socket or the signalfd open: the worker
                // learns that the launcher died from the socket closing.
                let inherited = [sock.as_raw_fd(), out.as_raw_fd(), sfd.as_raw_fd()];
                let event = match serde_json::from_slice::<Launch>(&line) {
                    Ok(req) => launch(&req, &old_mask, &inherited),
                    Err(e) => {
                        eprintln!("raftlord peon-launcher: ignoring a malformed request: {e}");
                        continue;
                    }
                };
                send(&mut out, &event)?;
            }
        }
    }
}

fn send(out: &mut UnixStream, event: &Event) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)
}

/// Reports every child that has ended.
fn reap(out: &mut UnixStream) -> std::io::Result<()> {
    loop {
        let event = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => Event::Exited {
                pid: pid.as_raw(),
                code: Some(code),
                signal: None,
            },
            Ok(WaitStatus::Signaled(pid, sig, _)) => Event::Exited {
                pid: pid.as_raw(),
                code: None,
                signal: Some(sig as i32),
            },
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return Ok(()),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        send(out, &event)?;
    }
}

/// Writes the task directory and forks the peon; the child closes `inherited`.
fn launch(req: &Launch, old_mask: &SigSet, inherited: &[RawFd]) -> Event {
    let refused = |e: std::io::Error| Event::Refused {
        id: req.id.clone(),
        error: e.to_string(),
    };
    let prepared = std::fs::create_dir_all(&req.dir)
        .and_then(|()| write_atomic(&req.dir.join("task.json"), req.task.as_bytes()))
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(req.dir.join("log"))
        });
    let log = match prepared {
        Ok(f) => f,
        Err(e) => return refused(e),
    };
    // SAFETY: the launcher is single-threaded (see `serve`), so the child starts with every
    // lock free and every data structure consistent.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { child }) => Event::Started {
            id: req.id.clone(),
            pid: child.as_raw(),
        },
        Ok(ForkResult::Child) => {
            for fd in inherited {
                // SAFETY: these descriptors belong to the launcher's socket and signalfd, whose
                // owners are never used or dropped in this child (it ends with `_exit`).
                let _ = nix::unistd::close(unsafe { std::os::fd::OwnedFd::from_raw_fd(*fd) });
            }
            let code = peon_child(&req.dir, &log, old_mask);
            let _ = std::io::stdout().flush();
            // SAFETY: ends the forked child at once, without running the launcher's exit
            // handlers or destructors; output was flushed above.
            unsafe { libc::_exit(code) }
        }
        Err(e) => refused(e.into()),
    }
}

/// The forked peon: its own process group, output to the task log, the signal mask of an
/// ordinary process, then the peon code on a fresh single-threaded runtime.
fn peon_child(dir: &Path, log: &std::fs::File, old_mask: &SigSet) -> i32 {
    let setup = || -> std::io::Result<()> {
        nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
        let null = std::fs::File::open("/dev/null")?;
        nix::unistd::dup2_stdin(&null)?;
        nix::unistd::dup2_stdout(log)?;
        nix::unistd::dup2_stderr(log)?;
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(old_mask), None)?;
        let _ = nix::sys::prctl::set_name(c"raftlord-peon");
        write_pid_file(dir, nix::unistd::getpid().as_raw())
    };
    if let Err(e) = setup() {
        eprintln!("raftlord peon: cannot set up the forked peon: {e}");
        return 2;
    }
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(super::peon::run(dir)),
        Err(e) => {
            eprintln!("raftlord peon: cannot start a runtime: {e}");
            2
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The worker's side.

type StartReply = Result<(i32, oneshot::Receiver<ExitStatus>), String>;

#[derive(Default)]
struct Waiters {
    starts: HashMap<String, oneshot::Sender<StartReply>>,
    exits: HashMap<i32, oneshot::Sender<ExitStatus>>,
    gone: bool,
}

/// A running launcher, as the worker sees it.
pub struct Launcher {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    waiters: Arc<Mutex<Waiters>>,
    _process: tokio::process::Child,
}

impl Launcher {
    /// Starts `exe peon-launcher`.
    pub fn start(exe: &Path, env: &[(String, String)]) -> std::io::Result<Launcher> {
        let (ours, theirs) = UnixStream::pair()?;
        let process = tokio::process::Command::new(exe)
            .arg("peon-launcher")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs.try_clone()?)))
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stderr(Stdio::inherit())
            .kill_on_drop(false)
            .spawn()?;
        ours.set_nonblocking(true)?;
        let (read, write) = tokio::net::UnixStream::from_std(ours)?.into_split();
        let waiters = Arc::new(Mutex::new(Waiters::default()));
        let reader_waiters = waiters.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Event>(&line) {
                    Ok(event) => deliver(&reader_waiters, event),
                    Err(e) => warn!(error = %e, "ignoring a malformed message from the peon launcher"),
                }
            }
            warn!("the peon launcher is gone; its peons are watched until they end");
            let mut w = lock(&reader_waiters);
            w.gone = true;
            for (_, tx) in w.starts.drain() {
                let _ = tx.send(Err("the peon launcher exited".to_string()));
            }
            // Dropping the exit senders tells their waiters the exit status is unknowable.
            w.exits.clear();
        });
        Ok(Launcher {
            writer: tokio::sync::Mutex::new(write),
            waiters,
            _process: process,
        })
    }

    /// Whether the launcher process has gone away.
    pub fn is_gone(&self) -> bool {
        lock(&self.waiters).gone
    }

    /// Starts the peon of task `id` in `dir`: its pid, and a receiver of its exit status (an
    /// error there means the launcher died first and the status cannot be known).
    pub async fn launch(&self, id: &str, dir: &Path, task: &str) -> StartReply {
        let (tx, rx) = oneshot::channel();
        {
            let mut w = lock(&self.waiters);
            if w.gone {
                return Err("the peon launcher exited".to_string());
            }
            w.starts.insert(id.to_string(), tx);
        }
        let mut line = serde_json::to_vec(&Launch {
            id: id.to_string(),
            dir: dir.to_path_buf(),
            task: task.to_string(),
        })
        .map_err(|e| e.to_string())?;
        line.push(b'\n');
        let written = self.writer.lock().await.write_all(&line).await;
        if let Err(e) = written {
            lock(&self.waiters).starts.remove(id);
            return Err(format!("cannot reach the peon launcher: {e}"));
        }
        rx.await.unwrap_or_else(|_| Err("the peon launcher exited".to_string()))
    }
}

fn lock(w: &Mutex<Waiters>) -> std::sync::MutexGuard<'_, Waiters> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

fn deliver(waiters: &Mutex<Waiters>, event: Event) {
    let mut w = lock(waiters);
    match event {
        Event::Started { id, pid } => {
            // The exit waiter is registered before the next message is read: the launcher
            // reports a start before it can report that child's exit.
            let (tx, rx) = oneshot::channel();
            w.exits.insert(pid, tx);
            if let Some(start) = w.starts.remove(&id) {
                let _ = start.send(Ok((pid, rx)));
            }
        }
        Event::Refused { id, error } => {
            if let Some(start) = w.starts.remove(&id) {
                let _ = start.send(Err(error));
            }
        }
        Event::Exited { pid, code, signal } => {
            let status = match (code, signal) {
                (Some(code), _) => ExitStatus::from_raw((code & 0xff) << 8),
                (None, Some(sig)) => ExitStatus::from_raw(sig & 0x7f),
                (None, None) => return,
            };
            if let Some(tx) = w.exits.remove(&pid) {
                let _ = tx.send(status);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Registers a launch of task `id` and returns the receiver of its start reply.
    fn pending(waiters: &Mutex<Waiters>, id: &str) -> oneshot::Receiver<StartReply> {
        let (tx, rx) = oneshot::channel();
        lock(waiters).starts.insert(id.into(), tx);
        rx
    }

    /// The exit status delivered for a launch of `id` as `pid` that ended with `code`/`signal`.
    fn ended(id: &str, pid: i32, code: Option<i32>, signal: Option<i32>) -> ExitStatus {
        let waiters = Mutex::new(Waiters::default());
        let mut start = pending(&waiters, id);
        deliver(&waiters, Event::Started { id: id.into(), pid });
        let (started, mut exit) = start.try_recv().unwrap().unwrap();
        assert_eq!(started, pid);
        deliver(&waiters, Event::Exited { pid, code, signal });
        exit.try_recv().unwrap()
    }

    #[test]
    fn exit_statuses_rebuild_as_the_process_reported_them() {
        let status = ended("t", 42, Some(3), None);
        assert_eq!(status.code(), Some(3));
        let status = ended("k", 43, None, Some(9));
        assert_eq!(status.signal(), Some(9));
        assert_eq!(status.code(), None);
    }

    #[test]
    fn a_refused_launch_reaches_its_caller() {
        let waiters = Mutex::new(Waiters::default());
        let mut start = pending(&waiters, "t");
        let error = "disk full".to_string();
        deliver(&waiters, Event::Refused { id: "t".into(), error });
        assert_eq!(start.try_recv().unwrap().unwrap_err(), "disk full");
    }
}
