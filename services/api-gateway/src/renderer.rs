//! Where templates are rendered: in this process, or in child processes under a memory bound.
//!
//! minijinja's fuel bounds the instructions a template runs and [`crate::template`] caps each
//! rendered part, but neither sees the values an expression builds on the way: a loop that
//! doubles a string 30 times and prints only its length allocates gigabytes while staying
//! within both. No engine setting bounds that, so the gateway renders in child processes
//! that bound themselves instead:
//!
//! - the child is the service's own binary, re-executed with a hidden subcommand that calls
//!   [`serve_render_jobs`]; before reading any job it lowers its own `RLIMIT_DATA` to
//!   [`CHILD_MEMORY`] (heap and anonymous mappings; an allocation past it aborts the child)
//!   and `RLIMIT_CORE` to 0, and before each job its `RLIMIT_CPU` to [`JOB_CPU`] beyond the
//!   CPU time used so far (past it the kernel kills it);
//! - the parent gives each job [`JOB_DEADLINE`] of wall-clock time and kills the child after
//!   it. A child that dies or is killed answers its job with a 422 naming the template, and
//!   the next job gets a fresh child;
//! - children are kept between jobs (a [`Renderer::isolated`] pool of at most one per CPU,
//!   started on demand), so a render costs a pipe round trip, not a process start.
//!
//! [`Renderer::in_process`] renders on the calling thread, bounded only by fuel and the size
//! cap: for the crate's unit tests, which run without the binary.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postwire_proto::FieldError;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;

use crate::template::{render_job, RenderError, RenderJob, Rendered};

/// Heap a render child may use (`RLIMIT_DATA`): room for a `max_message_size` body rendered
/// from large variables, far below what would trouble the host.
pub const CHILD_MEMORY: u64 = 256 * 1024 * 1024;

/// CPU time one job may use in a child (`RLIMIT_CPU`, whole seconds), should the parent's
/// deadline not stop it first.
pub const JOB_CPU: Duration = Duration::from_secs(3);

/// Wall-clock time a child has to answer one job before it is killed.
pub const JOB_DEADLINE: Duration = Duration::from_secs(5);

/// Why a render could not be run at all (as opposed to a template that broke its bounds).
#[derive(Debug, thiserror::Error)]
pub enum RendererError {
    #[error("cannot start the render process {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the render process answered something other than a result: {0}")]
    Protocol(String),
}

/// Where [`crate::template::render_send`] renders.
#[derive(Clone)]
pub struct Renderer {
    pool: Option<Arc<Pool>>,
}

impl Renderer {
    /// On the calling thread: fuel and the output cap only, no memory bound.
    pub fn in_process() -> Self {
        Self { pool: None }
    }

    /// In children started as `program args…`, a command that runs [`serve_render_jobs`]
    /// (the `postwire` binary's hidden `render-template` subcommand).
    pub fn isolated(program: PathBuf, args: Vec<OsString>) -> Self {
        Self::isolated_with(program, args, JOB_DEADLINE)
    }

    fn isolated_with(program: PathBuf, args: Vec<OsString>, deadline: Duration) -> Self {
        let size = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8));
        Self {
            pool: Some(Arc::new(Pool {
                program,
                args,
                deadline,
                idle: Mutex::new(Vec::new()),
                busy: Semaphore::new(size),
            })),
        }
    }

    /// Whether renders run in bounded children.
    pub fn is_isolated(&self) -> bool {
        self.pool.is_some()
    }

    /// Renders `job`: the parts, [`RenderError::Invalid`] for a template that cannot be
    /// rendered (including one that broke the child's bounds), or
    /// [`RenderError::Renderer`] when no child could be run.
    pub async fn render(&self, job: RenderJob) -> Result<Rendered, RenderError> {
        match &self.pool {
            None => render_job(&job).map_err(RenderError::Invalid),
            Some(pool) => pool.render(&job).await,
        }
    }
}

/// A job's answer on the child's stdout: one JSON line.
#[derive(Serialize, Deserialize)]
enum Reply {
    Rendered(Rendered),
    Invalid(Vec<FieldError>),
}

/// Render children: idle ones kept for the next job, at most `busy`'s permits at work.
struct Pool {
    program: PathBuf,
    args: Vec<OsString>,
    /// [`JOB_DEADLINE`], shorter in tests.
    deadline: Duration,
    idle: Mutex<Vec<RenderChild>>,
    busy: Semaphore,
}

/// One child and its pipes. Killed when dropped.
struct RenderChild {
    process: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// How a job sent to a child ended, when it did not answer.
enum Lost {
    /// The child closed its pipes (died, or was killed by its own limits).
    Died(std::io::Error),
    /// It answered garbage.
    Protocol(String),
}

impl Pool {
    async fn render(&self, job: &RenderJob) -> Result<Rendered, RenderError> {
        let mut line = serde_json::to_vec(job).map_err(|e| {
            RenderError::Renderer(RendererError::Protocol(format!("cannot encode the job: {e}")))
        })?;
        line.push(b'\n');
        let _permit = self.busy.acquire().await.expect("the semaphore is never closed");
        let mut child = match self.take_idle() {
            Some(child) => child,
            None => self.spawn()?,
        };
        match tokio::time::timeout(self.deadline, child.exchange(&line)).await {
            Ok(Ok(reply)) => {
                self.idle.lock().expect("idle render children").push(child);
                match reply {
                    Reply::Rendered(rendered) => Ok(rendered),
                    Reply::Invalid(errors) => Err(RenderError::Invalid(errors)),
                }
            }
            Ok(Err(Lost::Protocol(what))) => {
                Err(RenderError::Renderer(RendererError::Protocol(what)))
            }
            Ok(Err(Lost::Died(e))) => {
                let status = child.reap().await;
                tracing::warn!(template = %job.template_id, status = %status_text(&status), error = %e,
                    "a template render process died; the send is refused");
                Err(out_of_bounds(&job.template_id))
            }
            Err(_) => {
                let status = child.reap().await;
                tracing::warn!(template = %job.template_id, status = %status_text(&status),
                    "a template render ran past its deadline and was killed");
                Err(out_of_bounds(&job.template_id))
            }
        }
    }

    /// An idle child still alive (one that ended while idle is dropped, not blamed on a job).
    fn take_idle(&self) -> Option<RenderChild> {
        let mut idle = self.idle.lock().expect("idle render children");
        while let Some(mut child) = idle.pop() {
            if matches!(child.process.try_wait(), Ok(None)) {
                return Some(child);
            }
        }
        None
    }

    fn spawn(&self) -> Result<RenderChild, RenderError> {
        let spawned = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let mut process = spawned.map_err(|source| {
            RenderError::Renderer(RendererError::Spawn {
                program: self.program.display().to_string(),
                source,
            })
        })?;
        let (Some(stdin), Some(stdout)) = (process.stdin.take(), process.stdout.take()) else {
            unreachable!("both pipes were asked for");
        };
        Ok(RenderChild { process, stdin, stdout: BufReader::new(stdout) })
    }
}

impl RenderChild {
    /// Sends one job line and reads its reply line.
    async fn exchange(&mut self, job: &[u8]) -> Result<Reply, Lost> {
        self.stdin.write_all(job).await.map_err(Lost::Died)?;
        self.stdin.flush().await.map_err(Lost::Died)?;
        let mut reply = String::new();
        match self.stdout.read_line(&mut reply).await {
            Ok(0) => Err(Lost::Died(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => serde_json::from_str(&reply).map_err(|e| Lost::Protocol(e.to_string())),
            Err(e) => Err(Lost::Died(e)),
        }
    }

    /// Kills the child (if its limits have not already) and says how it ended.
    async fn reap(mut self) -> Option<ExitStatus> {
        let _ = self.process.start_kill();
        self.process.wait().await.ok()
    }
}

/// A child's end for the log: `exit status: 1`, `signal: 9 (SIGKILL)`, or `unknown`.
fn status_text(status: &Option<ExitStatus>) -> String {
    status.map_or_else(|| "unknown".into(), |s| s.to_string())
}

/// The 422 of a template that broke the child's bounds.
fn out_of_bounds(template_id: &str) -> RenderError {
    RenderError::Invalid(vec![FieldError {
        field: "template_id".into(),
        message: format!(
            "template `{template_id}` could not be rendered within its bounds ({} MiB of memory, \
             {} s): it builds values too large or runs too long",
            CHILD_MEMORY / (1024 * 1024),
            JOB_DEADLINE.as_secs()
        ),
    }])
}

/// The child's side: lowers this process's limits, then renders one job per line of `input`
/// and writes one reply line to `output` each, until `input` ends. Run by the `postwire`
/// binary's hidden `render-template` subcommand, single-threaded and before anything else.
pub fn serve_render_jobs(
    input: impl std::io::BufRead,
    output: impl std::io::Write,
) -> std::io::Result<()> {
    limit_self(CHILD_MEMORY)?;
    answer_jobs(input, output, || limit_cpu_from_now(JOB_CPU))
}

/// The job loop of [`serve_render_jobs`], calling `before_each` ahead of every render.
fn answer_jobs(
    input: impl std::io::BufRead,
    mut output: impl std::io::Write,
    mut before_each: impl FnMut() -> std::io::Result<()>,
) -> std::io::Result<()> {
    for line in input.lines() {
        let line = line?;
        let job: RenderJob = serde_json::from_str(&line)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        // Freed before rendering: the job's text is no longer needed, its parsed copy is.
        drop(line);
        before_each()?;
        let reply = match render_job(&job) {
            Ok(rendered) => Reply::Rendered(rendered),
            Err(errors) => Reply::Invalid(errors),
        };
        drop(job);
        serde_json::to_writer(&mut output, &reply)?;
        output.write_all(b"\n")?;
        output.flush()?;
    }
    Ok(())
}

/// `RLIMIT_DATA` (heap, anonymous and private writable mappings: what a growing string
/// takes) to `memory`, and no core files from a child the kernel or an allocation failure kills.
fn limit_self(memory: u64) -> std::io::Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lower = |resource: Resource, to: u64| {
        let hard = getrlimit(resource).maximum;
        let to = hard.map_or(to, |hard| hard.min(to));
        setrlimit(resource, Rlimit { current: Some(to), maximum: Some(to) })
    };
    lower(Resource::Data, memory)?;
    lower(Resource::Core, 0)?;
    Ok(())
}

/// Sets the soft `RLIMIT_CPU` to `budget` past the CPU time used so far (the hard limit is
/// left alone, so the next job can move the soft one on again). At the soft limit the kernel
/// sends SIGXCPU, which this process does not handle: it ends.
fn limit_cpu_from_now(budget: Duration) -> std::io::Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let used = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    let used = u64::try_from(used.tv_sec).unwrap_or(0);
    let hard = getrlimit(Resource::Cpu).maximum;
    let soft = used + budget.as_secs().max(1) + 1;
    let soft = hard.map_or(soft, |hard| hard.min(soft));
    setrlimit(Resource::Cpu, Rlimit { current: Some(soft), maximum: hard })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn job(text: &str) -> RenderJob {
        RenderJob {
            template_id: "tpl_1".into(),
            subject: "Hi {{ name }}".into(),
            text: Some(text.into()),
            html: None,
            variables: BTreeMap::from([("name".to_string(), serde_json::json!("Ann"))]),
            max_size: 1_000_000,
        }
    }

    #[test]
    fn a_job_and_its_reply_travel_as_one_line_each() {
        let jobs = [job("Dear {{ name }}\n"), job("{{ missing }}")]
            .iter()
            .map(|j| serde_json::to_string(j).unwrap() + "\n")
            .collect::<String>();
        let mut out = Vec::new();
        let mut renders = 0;
        answer_jobs(jobs.as_bytes(), &mut out, || {
            renders += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(renders, 2, "the per-job limit is set before every job");
        let out = String::from_utf8(out).unwrap();
        let replies: Vec<Reply> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(replies.len(), 2, "one line per reply: {out}");
        assert!(
            matches!(&replies[0], Reply::Rendered(r) if r.text.as_deref() == Some("Dear Ann\n"))
        );
        assert!(matches!(&replies[1], Reply::Invalid(e) if e[0].field == "variables.missing"));
    }

    #[tokio::test]
    async fn a_renderer_that_cannot_start_its_child_is_an_internal_error_not_a_422() {
        let renderer = Renderer::isolated("/nonexistent/postwire".into(), vec![]);
        match renderer.render(job("x")).await {
            Err(RenderError::Renderer(RendererError::Spawn { .. })) => {}
            other => panic!("expected a spawn error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_child_that_dies_mid_job_refuses_the_send_with_a_422_naming_the_template() {
        // `true` reads nothing and exits: the same as a child killed by its memory limit.
        let renderer = Renderer::isolated("true".into(), vec![]);
        match renderer.render(job("x")).await {
            Err(RenderError::Invalid(errors)) => {
                assert_eq!(errors[0].field, "template_id");
                assert!(errors[0].message.contains("tpl_1"), "{}", errors[0].message);
            }
            other => panic!("expected a 422, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_child_that_never_answers_is_killed_at_the_deadline() {
        let deadline = Duration::from_millis(300);
        let renderer = Renderer::isolated_with("sleep".into(), vec!["3600".into()], deadline);
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(5), renderer.render(job("x")))
            .await
            .expect("the render is given up at its deadline");
        assert!(started.elapsed() >= deadline);
        match outcome {
            Err(RenderError::Invalid(errors)) => assert_eq!(errors[0].field, "template_id"),
            other => panic!("expected a 422, got {other:?}"),
        }
    }
}
