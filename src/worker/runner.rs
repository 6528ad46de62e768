//! Running tasks in forked peon processes (Druid's `ForkingTaskRunner`), and finding them again
//! after the worker restarts.
//!
//! Each task gets a directory `<base>/tasks/<task id>/` holding:
//! - `task.json`: the spec, written before the peon starts;
//! - `log`: the peon's standard output and error;
//! - `peon.pid`: the peon's pid and its start time (to tell it from a reused pid);
//! - `status.json`, `report.json`: written by the peon;
//! - `final.json`: the outcome of a peon that did not exit 0 (its exit status is not on disk
//!   otherwise), kept until the leader has stored it.
//!
//! Peons are forked by the worker's peon launcher ([`super::launcher`]), or exec'd with a
//! configured peon command. A peon runs in its own process group, with its output going
//! straight to its log file, so a worker that stops or crashes leaves it running; the next
//! worker process adopts it through `peon.pid` and watches it until it ends. The outcome is
//! `status.json` when the peon exited normally, otherwise its exit code or signal. On completion
//! the log and report are linked (or copied) into the task log directory, which every node reads.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use super::launcher::Launcher;
use crate::tasks::spec::validate_id;
use crate::tasks::{TaskLocation, TaskState};
use crate::workers::TaskUpdate;

/// Where and how peons run.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Parent of the task directories (`<base>/tasks/<id>`).
    pub base_dir: PathBuf,
    /// Where finished tasks' logs and reports go (`<id>.log`, `<id>.report.json`).
    pub log_dir: PathBuf,
    /// The peon command; the task directory is appended. Default: this binary's `peon`.
    pub peon_command: Vec<String>,
    /// This binary, when peons are forked by a peon launcher (see [`super::launcher`]) rather
    /// than exec'd with `peon_command`: the default, and much cheaper per task.
    pub launcher: Option<PathBuf>,
    /// How long a peon gets after SIGTERM before SIGKILL.
    pub graceful_stop: Duration,
    /// Where the worker serves HTTP: the location reported for its tasks.
    pub location: TaskLocation,
    /// Environment every peon gets: the task API's URLs and the deep storage directory.
    pub peon_env: Vec<(String, String)>,
}

/// A task directory name that cannot escape the base directory.
#[derive(Debug, thiserror::Error)]
#[error("task id [{0}] cannot be used as a directory name")]
pub struct BadTaskDir(String);

/// Druid's `TaskStatus` as a peon writes it to `status.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeonStatus {
    pub id: String,
    pub status: TaskState,
    #[serde(default)]
    pub duration: i64,
    #[serde(default)]
    pub error_msg: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PidFile {
    pid: i32,
    start_time: u64,
}

#[derive(Debug, Clone)]
enum Local {
    /// Its peon is being started (by the launcher, or on a blocking thread: creating files can
    /// take milliseconds on a busy file system). `stop` is set when a stop came in meanwhile;
    /// the peon is then signalled as soon as it exists.
    Starting {
        stop: bool,
    },
    Running {
        pid: i32,
        stopping: bool,
    },
    Done(TaskUpdate),
}

/// The peons of one worker.
#[derive(Clone)]
pub struct PeonRunner {
    cfg: Arc<RunnerConfig>,
    tasks: Arc<Mutex<BTreeMap<String, Local>>>,
    changed: watch::Sender<u64>,
    launcher: Arc<tokio::sync::Mutex<Option<Arc<Launcher>>>>,
}

impl PeonRunner {
    /// A runner over `cfg.base_dir`, adopting whatever an earlier worker process left there.
    pub fn open(cfg: RunnerConfig) -> std::io::Result<PeonRunner> {
        std::fs::create_dir_all(cfg.base_dir.join("tasks"))?;
        std::fs::create_dir_all(&cfg.log_dir)?;
        let runner = PeonRunner {
            cfg: Arc::new(cfg),
            tasks: Arc::new(Mutex::new(BTreeMap::new())),
            changed: watch::channel(0).0,
            launcher: Arc::new(tokio::sync::Mutex::new(None)),
        };
        runner.adopt()?;
        Ok(runner)
    }

    /// Notified whenever a task starts or ends.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Local>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The directory of task `id`, refusing any id that would leave the base directory.
    pub fn task_dir(&self, id: &str) -> Result<PathBuf, BadTaskDir> {
        task_dir_in(&self.cfg.base_dir, id)
    }

    pub fn knows(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// Ids of the tasks this worker has (running or finished and unacknowledged).
    pub fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Every task as a report for the leader.
    pub fn report(&self) -> Vec<TaskUpdate> {
        self.lock()
            .iter()
            .map(|(id, l)| match l {
                Local::Starting { .. } | Local::Running { .. } => TaskUpdate {
                    id: id.clone(),
                    status: TaskState::Running,
                    location: Some(self.cfg.location.clone()),
                    duration: -1,
                    error_msg: None,
                },
                Local::Done(u) => u.clone(),
            })
            .collect()
    }

    /// Ids of running tasks.
    pub fn running(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, l)| matches!(l, Local::Starting { .. } | Local::Running { .. }))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Starts a peon for a task (once: a task already known is left alone): through the peon
    /// launcher, or else by writing its directory and exec'ing the peon command on a blocking
    /// thread.
    ///
    /// The task's `token` is written into the task directory first, readable by its owner only
    /// ([`crate::tasks::token`]).
    pub fn start(&self, id: &str, payload: &str, token: Option<&str>) {
        {
            let mut g = self.lock();
            if g.contains_key(id) {
                return;
            }
            g.insert(id.to_string(), Local::Starting { stop: false });
        }
        let runner = self.clone();
        let id = id.to_string();
        let payload = payload.to_string();
        let dir = match self.task_dir(&id) {
            Ok(d) => d,
            Err(e) => return self.finish_without_peon(&id, &e.to_string()),
        };
        if let Some(token) = token {
            if let Err(e) = write_private(&dir, crate::tasks::token::TOKEN_FILE, token) {
                return self.finish_without_peon(&id, &format!("the worker could not write the task's token: {e}"));
            }
        }
        if let Some(exe) = self.cfg.launcher.clone() {
            tokio::spawn(async move {
                if let Err(why) = runner.launch(&exe, &id, &dir, &payload).await {
                    runner.finish_without_peon(&id, &format!("the worker could not start a peon: {why}"));
                }
            });
        } else {
            tokio::task::spawn_blocking(move || {
                if let Err(e) = runner.spawn(&id, &dir, &payload) {
                    runner.finish_without_peon(&id, &format!("the worker could not start a peon: {e}"));
                }
            });
        }
    }

    /// Starts a peon through the launcher (starting the launcher first if there is none or
    /// it died), then waits for its exit status in the background.
    async fn launch(&self, exe: &Path, id: &str, dir: &Path, payload: &str) -> Result<(), String> {
        let launcher = {
            let mut slot = self.launcher.lock().await;
            match slot.as_ref().filter(|l| !l.is_gone()) {
                Some(l) => l.clone(),
                None => {
                    let l = Arc::new(
                        Launcher::start(exe, &self.cfg.peon_env)
                            .map_err(|e| format!("cannot start the peon launcher: {e}"))?,
                    );
                    *slot = Some(l.clone());
                    l
                }
            }
        };
        let (pid, exit) = launcher.launch(id, dir, payload).await?;
        let start_time = process_start_time(pid);
        self.started(id, pid);
        let runner = self.clone();
        let id = id.to_string();
        let started = Instant::now();
        tokio::spawn(async move {
            let how = match exit.await {
                Ok(status) => PeonExit::Child(Some(status)),
                Err(_) => {
                    // The launcher died first: watch the peon like an adopted one.
                    if let Some(t) = start_time {
                        watch_until_gone(pid, t).await;
                    }
                    PeonExit::Adopted
                }
            };
            let ran_for = started.elapsed();
            let _ = tokio::task::spawn_blocking(move || runner.finish(&id, how, ran_for)).await;
        });
        Ok(())
    }

    /// Records a peon as running; stops it at once if a stop came in while it was starting.
    fn started(&self, id: &str, pid: i32) {
        let stop_now = {
            let mut g = self.lock();
            let stop = matches!(g.get(id), Some(Local::Starting { stop: true }));
            g.insert(id.to_string(), Local::Running { pid, stopping: false });
            stop
        };
        info!(task_id = %id, pid, "peon started");
        self.bump();
        if stop_now {
            self.stop(id, "the task was stopped while its peon was starting");
        }
    }

    /// Records a final FAILED outcome for a task that has no peon.
    pub fn finish_without_peon(&self, id: &str, why: &str) {
        warn!(task_id = %id, reason = %why, "task failed without a peon");
        let update = TaskUpdate {
            id: id.to_string(),
            status: TaskState::Failed,
            location: None,
            duration: 0,
            error_msg: Some(why.to_string()),
        };
        self.lock().insert(id.to_string(), Local::Done(update));
        self.bump();
    }

    fn spawn(&self, id: &str, dir: &Path, payload: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        write_atomic(&dir.join("task.json"), payload.as_bytes())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("log"))?;
        let (program, args) = self
            .cfg
            .peon_command
            .split_first()
            .ok_or_else(|| std::io::Error::other("the peon command is empty"))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .arg(dir)
            .envs(self.cfg.peon_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("the peon exited at once"))? as i32;
        write_pid_file(dir, pid)?;
        self.started(id, pid);
        let runner = self.clone();
        let owned_id = id.to_string();
        let started = Instant::now();
        tokio::spawn(async move {
            let exit = child.wait().await;
            let ran_for = started.elapsed();
            let _ = tokio::task::spawn_blocking(move || runner.finish(&owned_id, PeonExit::Child(exit.ok()), ran_for))
                .await;
        });
        Ok(())
    }

    /// Asks a task's peon to stop: SIGTERM to its process group, SIGKILL after the grace
    /// period. A task this worker does not have is recorded as finished so that its slot is
    /// released.
    pub fn stop(&self, id: &str, why: &str) {
        let pid = {
            let mut g = self.lock();
            match g.get_mut(id) {
                Some(Local::Running { pid, stopping }) => {
                    if *stopping {
                        return;
                    }
                    *stopping = true;
                    *pid
                }
                Some(Local::Starting { stop }) => {
                    *stop = true;
                    return;
                }
                Some(Local::Done(_)) => return,
                None => {
                    drop(g);
                    self.finish_without_peon(id, why);
                    return;
                }
            }
        };
        info!(task_id = %id, pid, reason = %why, "stopping peon");
        let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
        let runner = self.clone();
        let id = id.to_string();
        let grace = self.cfg.graceful_stop;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let still = matches!(runner.lock().get(&id), Some(Local::Running { pid: p, .. }) if *p == pid);
            if still {
                warn!(task_id = %id, pid, "peon did not stop in time: SIGKILL");
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        });
    }

    /// Forgets a finished task whose outcome the leader has stored, deleting its directory in
    /// the background.
    pub fn forget(&self, id: &str) {
        let removed = {
            let mut g = self.lock();
            match g.get(id) {
                Some(Local::Done(_)) => g.remove(id).is_some(),
                _ => false,
            }
        };
        if removed {
            if let Ok(dir) = self.task_dir(id) {
                tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir));
            }
            self.bump();
        }
    }

    /// Records how a peon ended: pushes its log and report and writes `final.json`.
    fn finish(&self, id: &str, exit: PeonExit, ran_for: Duration) {
        let Ok(dir) = self.task_dir(id) else {
            return;
        };
        let update = outcome(id, &dir, &exit, ran_for);
        if let Err(e) = push_logs(&dir, &self.cfg.log_dir, id) {
            warn!(task_id = %id, error = %e, "could not copy the task's log to the task log directory");
        }
        // A peon that exited 0 is judged by its `status.json` alone, which a restarted worker
        // reads the same way; any other end is kept, since its exit status would be lost.
        let clean_exit = matches!(&exit, PeonExit::Child(Some(s)) if s.success());
        if !clean_exit {
            if let Ok(bytes) = serde_json::to_vec(&update) {
                if let Err(e) = write_atomic(&dir.join("final.json"), &bytes) {
                    warn!(task_id = %id, error = %e, "could not write final.json");
                }
            }
        }
        info!(task_id = %id, status = ?update.status, error = ?update.error_msg, "peon ended");
        self.lock().insert(id.to_string(), Local::Done(update));
        self.bump();
    }

    /// Finds the tasks an earlier worker process left: finished ones are reported again,
    /// live peons are watched, and peons that ended meanwhile are judged by `status.json`.
    fn adopt(&self) -> std::io::Result<()> {
        for entry in std::fs::read_dir(self.cfg.base_dir.join("tasks"))? {
            let entry = entry?;
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(dir) = self.task_dir(&id) else {
                continue;
            };
            if let Some(update) = read_json::<TaskUpdate>(&dir.join("final.json")) {
                info!(task_id = %id, "found a finished task from before the restart");
                self.lock().insert(id, Local::Done(update));
                continue;
            }
            let live = read_json::<PidFile>(&dir.join("peon.pid"))
                .filter(|p| p.pid > 0 && process_start_time(p.pid) == Some(p.start_time));
            match live {
                Some(p) => {
                    info!(task_id = %id, pid = p.pid, "adopted a running peon");
                    self.lock().insert(
                        id.clone(),
                        Local::Running {
                            pid: p.pid,
                            stopping: false,
                        },
                    );
                    let runner = self.clone();
                    let started = Instant::now();
                    tokio::spawn(async move {
                        watch_until_gone(p.pid, p.start_time).await;
                        runner.finish(&id, PeonExit::Adopted, started.elapsed());
                    });
                }
                None => self.finish(&id, PeonExit::Adopted, Duration::ZERO),
            }
        }
        self.bump();
        Ok(())
    }

    /// The log of a task: from its directory while the worker has it, else from the task
    /// log directory.
    pub fn log_path(&self, id: &str) -> Option<PathBuf> {
        let live = self.task_dir(id).ok().map(|d| d.join("log")).filter(|p| p.exists());
        live.or_else(|| log_file(&self.cfg.log_dir, id).ok().filter(|p| p.exists()))
    }

    /// The report of a task, found like [`Self::log_path`].
    pub fn report_path(&self, id: &str) -> Option<PathBuf> {
        let live = self
            .task_dir(id)
            .ok()
            .map(|d| d.join("report.json"))
            .filter(|p| p.exists());
        live.or_else(|| report_file(&self.cfg.log_dir, id).ok().filter(|p| p.exists()))
    }
}

enum PeonExit {
    /// Our child, with its exit status when it could be read.
    Child(Option<std::process::ExitStatus>),
    /// A peon from an earlier worker process: its exit status is unknowable.
    Adopted,
}

/// The outcome of a peon that ended (Druid's rule: `status.json` if the process exited with
/// 0, else FAILED with the exit code).
fn outcome(id: &str, dir: &Path, exit: &PeonExit, ran_for: Duration) -> TaskUpdate {
    use std::os::unix::process::ExitStatusExt;
    let failed = |msg: String| TaskUpdate {
        id: id.to_string(),
        status: TaskState::Failed,
        location: None,
        duration: ran_for.as_millis() as i64,
        error_msg: Some(msg),
    };
    if let PeonExit::Child(Some(status)) = exit {
        if let Some(sig) = status.signal() {
            let name = Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("unknown");
            return failed(format!("Task execution process was killed by signal {name} ({sig})"));
        }
        if let Some(code) = status.code().filter(|c| *c != 0) {
            return failed(format!(
                "Task execution process exited unsuccessfully with code[{code}]"
            ));
        }
    }
    let path = dir.join("status.json");
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(_) => return failed("The peon exited without writing status.json".into()),
    };
    match serde_json::from_slice::<PeonStatus>(&text) {
        Ok(s) if s.id == id && s.status.is_complete() => TaskUpdate {
            id: id.to_string(),
            status: s.status,
            location: None,
            duration: if s.duration >= 0 {
                s.duration
            } else {
                ran_for.as_millis() as i64
            },
            error_msg: s.error_msg,
        },
        Ok(s) if s.id != id => failed(format!("The peon wrote a status.json for another task [{}]", s.id)),
        Ok(_) => failed("The peon exited while its status.json still says RUNNING".into()),
        Err(e) => failed(format!("The peon wrote a malformed status.json: {e}")),
    }
}

pub fn task_dir_in(base: &Path, id: &str) -> Result<PathBuf, BadTaskDir> {
    validate_id("task id", id).map_err(|_| BadTaskDir(id.to_string()))?;
    let rel = Path::new(id);
    let mut parts = rel.components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None) => Ok(base.join("tasks").join(rel)),
        _ => Err(BadTaskDir(id.to_string())),
    }
}

/// Where a finished task's log is kept in the task log directory.
pub fn log_file(log_dir: &Path, id: &str) -> Result<PathBuf, BadTaskDir> {
    task_dir_in(Path::new(""), id)?;
    Ok(log_dir.join(format!("{id}.log")))
}

/// Where a finished task's report is kept in the task log directory.
pub fn report_file(log_dir: &Path, id: &str) -> Result<PathBuf, BadTaskDir> {
    task_dir_in(Path::new(""), id)?;
    Ok(log_dir.join(format!("{id}.report.json")))
}

/// Deletes the logs and reports in `log_dir` of tasks `known` does not know (their records
/// were pruned) that were last written before `before`. Returns how many files went.
pub fn prune_task_logs(log_dir: &Path, known: impl Fn(&str) -> bool, before: std::time::SystemTime) -> usize {
    let Ok(entries) = std::fs::read_dir(log_dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".report.json").or_else(|| name.strip_suffix(".log")) else {
            continue;
        };
        let old = e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < before);
        if old && !known(id) && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

fn push_logs(dir: &Path, log_dir: &Path, id: &str) -> std::io::Result<()> {
    let to_io = |e: BadTaskDir| std::io::Error::other(e.to_string());
    let log = dir.join("log");
    if log.exists() {
        copy_atomic(&log, &log_file(log_dir, id).map_err(to_io)?)?;
    }
    let report = dir.join("report.json");
    if report.exists() {
        copy_atomic(&report, &report_file(log_dir, id).map_err(to_io)?)?;
    }
    Ok(())
}

/// Puts `from` at `to` atomically: as a hard link when both are on one file system (no copy,
/// and no new inode, which matters on a worker creating and deleting thousands of task files),
/// else as a copy.
fn copy_atomic(from: &Path, to: &Path) -> std::io::Result<()> {
    let tmp = to.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(from, &tmp).is_err() {
        std::fs::copy(from, &tmp)?;
    }
    std::fs::rename(&tmp, to)
}

/// Writes `peon.pid`: the peon's pid and start time, by which a restarted worker finds it.
pub fn write_pid_file(dir: &Path, pid: i32) -> std::io::Result<()> {
    let pid_file = PidFile {
        pid,
        start_time: process_start_time(pid).unwrap_or(0),
    };
    write_atomic(&dir.join("peon.pid"), &serde_json::to_vec(&pid_file)?)
}

/// Waits until process `pid`, started at `start_time`, is gone (or a zombie).
async fn watch_until_gone(pid: i32, start_time: u64) {
    while process_start_time(pid) == Some(start_time) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes a file so that readers see the old content or the new, never a part.
///
/// Not fsynced: these files must survive the worker or peon process dying, which the page
/// cache covers. A machine crash takes the peons with it; then a missing `status.json` or
/// `final.json` correctly ends the task FAILED.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A process's start time (clock ticks since boot, `/proc/<pid>/stat` field 22), which with
/// the pid identifies it; `None` if there is no such process (or it is a zombie).
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // `rest` starts at field 3 (state).
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Writes `name` in `dir` (created if needed) with `contents`, readable by its owner only from
/// the moment it exists; a file already there is replaced.
pub fn write_private(dir: &Path, name: &str, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_of_pruned_tasks_go_once_old_and_others_stay() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["gone.log", "gone.report.json", "kept.log", "notes.txt"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        // Too recent: nothing goes.
        assert_eq!(
            prune_task_logs(dir.path(), |id| id == "kept", std::time::SystemTime::UNIX_EPOCH),
            0
        );
        assert_eq!(prune_task_logs(dir.path(), |id| id == "kept", later), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["kept.log", "notes.txt"]);
    }

    #[test]
    fn task_dirs_never_leave_the_base_directory() {
        let base = Path::new("/var/raftlord");
        assert_eq!(
            task_dir_in(base, "index_wiki_x").unwrap(),
            Path::new("/var/raftlord/tasks/index_wiki_x")
        );
        for bad in ["", ".", "..", "../etc", "a/b", "/etc/passwd", ".hidden", "a\nb"] {
            assert!(task_dir_in(base, bad).is_err(), "{bad:?} accepted");
            assert!(log_file(base, bad).is_err(), "{bad:?} accepted as a log name");
        }
    }

    #[test]
    fn start_time_identifies_this_process() {
        let me = std::process::id() as i32;
        assert!(process_start_time(me).is_some());
        assert_eq!(process_start_time(i32::MAX), None);
    }

    fn status_of(text: Option<&str>, exit: PeonExit) -> TaskUpdate {
        let dir = tempfile::tempdir().unwrap();
        if let Some(t) = text {
            std::fs::write(dir.path().join("status.json"), t).unwrap();
        }
        outcome("t1", dir.path(), &exit, Duration::from_millis(5))
    }

    #[test]
    fn outcome_follows_druids_rules() {
        use std::os::unix::process::ExitStatusExt;
        let ok = std::process::ExitStatus::from_raw(0);
        let good = r#"{"id":"t1","status":"SUCCESS","duration":42}"#;
        let u = status_of(Some(good), PeonExit::Child(Some(ok)));
        assert_eq!((u.status, u.duration, u.error_msg), (TaskState::Success, 42, None));

        let killed = std::process::ExitStatus::from_raw(9);
        let u = status_of(Some(good), PeonExit::Child(Some(killed)));
        assert_eq!(u.status, TaskState::Failed);
        assert!(u.error_msg.unwrap().contains("SIGKILL"));

        let code3 = std::process::ExitStatus::from_raw(3 << 8);
        let u = status_of(None, PeonExit::Child(Some(code3)));
        assert!(u.error_msg.unwrap().contains("code[3]"));

        let u = status_of(None, PeonExit::Child(Some(ok)));
        assert_eq!(
            u.error_msg.as_deref(),
            Some("The peon exited without writing status.json")
        );
        let u = status_of(Some("{not json"), PeonExit::Adopted);
        assert!(u
            .error_msg
            .unwrap()
            .starts_with("The peon wrote a malformed status.json"));
        let u = status_of(Some(r#"{"id":"t1","status":"RUNNING"}"#), PeonExit::Adopted);
        assert_eq!(u.status, TaskState::Failed);
        let u = status_of(Some(r#"{"id":"t2","status":"SUCCESS"}"#), PeonExit::Adopted);
        assert!(u.error_msg.unwrap().contains("another task"));
    }
}
