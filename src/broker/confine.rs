//! Running one command for an agent, confined.
//!
//! An agent asks the host to run a real program (`cargo test`) in its
//! workspace. [`run`] starts it so that a mistaken or hostile command cannot
//! hurt the machine, and says in [`Output::confinement`] what actually held
//! it. [`Support::detect`] finds out once what this kernel offers;
//! `cairn doctor` prints [`Support::describe`].
//!
//! # Protections, and what stands in when a kernel lacks one
//!
//! | what | primary | fallback |
//! |---|---|---|
//! | filesystem | Landlock: read+execute on system and toolchain dirs, write only in the workspace and `temp` | a user+mount namespace where everything is remounted read-only except the workspace and `temp` (reads are not restricted there) |
//! | network off | a fresh network namespace (no interface but a down loopback) | Landlock denies TCP bind/connect (ABI 4+); without a namespace, a seccomp filter refuses `socket()` for every family but Unix and netlink |
//! | privileges | `PR_SET_NO_NEW_PRIVS`: setuid binaries and file capabilities do nothing | — |
//! | other processes | Landlock (ABI 6+) scopes signals and abstract Unix sockets to the sandbox; Landlock always forbids ptrace, so `/proc/<daemon>/environ` is unreadable | none |
//! | fork bombs | a pids cgroup (`pids.max`), which also lets every descendant be killed | `RLIMIT_NPROC` inside a fresh user namespace (counts only the sandbox); without one, `RLIMIT_NPROC` = the uid's current threads + `max_processes` |
//! | runaway time | the process group (and cgroup) is SIGKILLed at the deadline, and again after the main process exits | — |
//! | runaway output | the first `output_cap` bytes of each stream are kept, the rest is read and discarded | — |
//! | secrets in the environment | the environment is rebuilt from scratch | — |
//!
//! `max_processes` counts threads, as both the kernel's `RLIMIT_NPROC` and
//! the pids controller do. `RLIMIT_NPROC` does not apply to root at all, so a
//! daemon running as root limits processes only when it can create a pids
//! cgroup; [`Support::describe`] says so. A process that leaves the process
//! group (`setsid`) survives the group kill unless a cgroup holds it.
//! `RLIMIT_CORE` is 0 and `RLIMIT_FSIZE` is [`FILE_SIZE_LIMIT`].
//!
//! Turning the network off also cuts loopback: a test suite that opens a
//! local server needs `network = true`.
//!
//! A user namespace is entered whenever the kernel allows one, even with
//! the network on: inside it `RLIMIT_NPROC` counts only the sandbox. The
//! daemon's uid and gid are mapped to themselves, so ownership looks the
//! same inside.
//!
//! Limits worth knowing: reads are confined only under Landlock (the mount
//! fallback leaves every file the user can read readable, and
//! `/proc/<pid>/environ` of the daemon with it); other processes' command
//! lines stay visible in `/proc`; Landlock ABI 1 refuses every rename or
//! link across directories, which some build tools need; tools that ignore
//! `TMPDIR` and write to `/tmp` are refused.
//!
//! # The environment
//!
//! Only these are set: `PATH` (a fixed system default, with the cargo bin
//! directory first when present), `HOME` and `TMPDIR` (both `temp`),
//! `LANG=C.UTF-8`, `TERM=dumb`, `CARGO_HOME` and `RUSTUP_HOME` when those
//! directories exist (with `HOME` moved, rustup's proxies and cargo would
//! otherwise find no toolchain and no registry cache), and the
//! [`Policy::env_pass`] names present in the daemon's environment. A name
//! containing `KEY`, `TOKEN`, `SECRET`, `PASSWORD`, `PASSWD` or `CREDENTIAL`
//! (in any case) is never passed, even when listed.
//!
//! # Between fork and exec
//!
//! The restrictions must apply to the child only: Landlock and namespaces
//! bind the calling thread and its future children, so applying them in the
//! daemon would confine the daemon. They are applied in `pre_exec`, after
//! `fork`, where a multithreaded parent leaves the child able to run only
//! async-signal-safe code: no allocation, no locks. So everything is prepared
//! before the fork — the Landlock ruleset is created and filled in the parent
//! (the crate allocates while doing so) and only its file descriptor crosses;
//! paths are `CString`s, the id maps are formatted, the seccomp program is
//! built, the cgroup's `cgroup.procs` is opened — and the child makes raw
//! system calls on that data (`ChildSetup::apply`). When a step fails the
//! child writes the step's number to a pipe, so the error names it.
//!
//! # Allowed programs
//!
//! Only `argv[0]` is checked. Allowing an interpreter (`sh`, `python3`) or a
//! program that runs others (`env`, `xargs`, `find`) allows everything; the
//! confinement still holds.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd,
    Ruleset, RulesetAttr, RulesetCreatedAttr, Scope,
};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The newest Landlock ABI whose features are used (scoping arrived in 6);
/// newer kernels are asked for no more than this, so behaviour only changes
/// when this line does.
const LANDLOCK_TARGET: ABI = ABI::V6;
const LANDLOCK_TARGET_VERSION: u32 = 6;

/// `RLIMIT_FSIZE`: the largest file a command may write (a process writing
/// past it gets SIGXFSZ).
pub const FILE_SIZE_LIMIT: u64 = 1 << 30;

/// The system part of the child's `PATH`, and where bare names are looked up.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Readable (and executable) under Landlock: what toolchains need to start.
const SYSTEM_READ: &[&str] = &[
    "/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/etc", "/opt", "/proc",
    "/sys", "/dev",
];

/// Device files a command may write (`> /dev/null` truncates, so that too).
const WRITABLE_DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full"];

/// Environment names that are never passed, whatever `env_pass` says.
const SECRET_MARKERS: &[&str] = &["KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL"];

/// Names the sandbox sets itself; `env_pass` cannot override them.
const FIXED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "TERM",
    "TMPDIR",
    "CARGO_HOME",
    "RUSTUP_HOME",
];

const READ_CHUNK: usize = 64 * 1024;

/// How long output is still read after the processes were killed: only a
/// process that escaped both the group and the cgroup can hold a pipe open.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// What the command may write (`tools.mode` in agent.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Nothing, except in the private temp dir.
    ReadOnly,
    /// The workspace and the private temp dir.
    WorkspaceWrite,
    /// Anything the user may write: no filesystem restriction. The network,
    /// process, privilege and environment rules still apply.
    Full,
}

/// How commands run for one agent (its `agent.toml`'s `[tools]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Policy {
    pub mode: Mode,
    /// Programs allowed: a bare name ("cargo") matches that program found
    /// on PATH; an absolute path prefix ("/usr/bin/") allows anything under
    /// it (and makes that directory readable).
    pub allow: Vec<String>,
    pub timeout: Duration,
    /// Bytes kept of stdout and of stderr each.
    pub output_cap: usize,
    pub network: bool,
    /// Run even when the confinement the policy asks for is not available.
    pub accept_unconfined: bool,
    /// Processes, threads included, the command may have at once.
    pub max_processes: u64,
    /// Extra environment variable names to pass through; see the module doc
    /// for the ones always set and the ones never passed.
    #[serde(rename = "env")]
    pub env_pass: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            mode: Mode::WorkspaceWrite,
            allow: Vec::new(),
            timeout: Duration::from_secs(600),
            output_cap: 1 << 20,
            network: false,
            accept_unconfined: false,
            max_processes: 256,
            env_pass: Vec::new(),
        }
    }
}

/// One command to run.
#[derive(Debug, Clone)]
pub struct Request {
    pub argv: Vec<String>,
    pub workspace: PathBuf,
    /// Private temp dir, created by the caller; also the command's `HOME`.
    pub temp: PathBuf,
    /// Shortens the policy's timeout, never lengthens it.
    pub timeout: Option<Duration>,
}

/// What the command did.
#[derive(Debug, Clone)]
pub struct Output {
    pub exit: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Either stream had more than `output_cap` bytes.
    pub truncated: bool,
    pub timed_out: bool,
    /// The protections that applied, joined by `+`: `landlock-fs`,
    /// `mount-ro`, `landlock-tcp`, `landlock-scope`, `netns`, `seccomp-net`,
    /// `pids-cgroup`, `nproc-userns`, `nproc-uid`, `nnp`; and `fs-open` or
    /// `net-open` when the policy wanted a restriction nothing could provide
    /// (possible only with `accept_unconfined`).
    pub confinement: &'static str,
}

/// Why a command did not run.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("program {program:?} is not allowed; {hint}")]
    NotAllowed { program: String, hint: String },
    #[error("cannot confine the command: {0}")]
    NoConfinement(String),
    #[error("bad command request: {0}")]
    Bad(String),
}

/// A pids cgroup this process may create children in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidsCgroup {
    /// The directory per-command cgroups are created under.
    pub dir: PathBuf,
    /// cgroup v2 (it has `cgroup.kill`); otherwise the v1 pids hierarchy.
    pub unified: bool,
}

/// What this machine offers, detected once by [`Support::detect`]. The
/// fields are public so a caller (or a test) can describe a machine that
/// lacks something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Support {
    /// The Landlock ABI the kernel reports; `None` without Landlock.
    pub landlock_abi: Option<u32>,
    /// A child can enter fresh user and network namespaces.
    pub user_namespaces: bool,
    /// Inside a user namespace, a mount namespace can be made read-only
    /// but for chosen directories (the filesystem fallback).
    pub mount_isolation: bool,
    /// seccomp filters can be installed.
    pub seccomp: bool,
    pub pids_cgroup: Option<PidsCgroup>,
    /// The daemon runs as root, for whom `RLIMIT_NPROC` does nothing.
    pub root: bool,
}

impl Support {
    /// Probes the kernel: asks Landlock for its ABI, and forks throwaway
    /// children that try the namespaces and the seccomp filter exactly as a
    /// command would get them. Takes a few milliseconds; call it once.
    pub fn detect() -> Support {
        let user_namespaces = probe_user_namespaces();
        Support {
            landlock_abi: landlock_abi(),
            user_namespaces,
            mount_isolation: user_namespaces && probe_mount_isolation(),
            seccomp: probe_seccomp(),
            pids_cgroup: find_pids_cgroup(),
            root: euid() == 0,
        }
    }

    /// A machine that offers nothing.
    pub fn none() -> Support {
        Support {
            landlock_abi: None,
            user_namespaces: false,
            mount_isolation: false,
            seccomp: false,
            pids_cgroup: None,
            root: euid() == 0,
        }
    }

    /// Whether commands can be kept to their workspace's filesystem.
    pub fn confined(&self) -> bool {
        self.landlock_abi.is_some() || (self.user_namespaces && self.mount_isolation)
    }

    /// One line per protection, for `cairn doctor`.
    pub fn describe(&self) -> Vec<String> {
        vec![
            self.describe_landlock(),
            self.describe_namespaces(),
            self.describe_seccomp(),
            self.describe_processes(),
            self.describe_verdict(),
        ]
    }

    fn describe_landlock(&self) -> String {
        match self.landlock_abi {
            None => "landlock: not available (kernel without it, or not enabled at boot)".into(),
            Some(abi) => {
                let mut parts = vec!["filesystem"];
                if abi < 2 {
                    parts.push("no cross-directory rename or link (ABI 1)");
                }
                if abi >= 4 {
                    parts.push("TCP bind/connect");
                }
                if abi >= 6 {
                    parts.push("signal and abstract-socket scoping");
                }
                format!("landlock: ABI {abi} ({})", parts.join(", "))
            }
        }
    }

    fn describe_namespaces(&self) -> String {
        match (self.user_namespaces, self.mount_isolation) {
            (false, _) => "user namespaces: not available (no private network namespace)".into(),
            (true, true) => "user namespaces: available (private network namespace; read-only mounts when Landlock is missing)".into(),
            (true, false) => "user namespaces: available (private network namespace; read-only mounts do not work)".into(),
        }
    }

    fn describe_seccomp(&self) -> String {
        if self.seccomp {
            "seccomp: available (refuses network sockets when there is no network namespace)".into()
        } else {
            "seccomp: not available".into()
        }
    }

    fn describe_processes(&self) -> String {
        match (&self.pids_cgroup, self.root, self.user_namespaces) {
            (Some(cg), _, _) => format!(
                "process limit: pids cgroup under {} (exact; every descendant is killed at the end)",
                cg.dir.display()
            ),
            (None, true, _) => "process limit: NOT ENFORCED (root ignores RLIMIT_NPROC and no pids cgroup can be created)".into(),
            (None, false, true) => "process limit: RLIMIT_NPROC in a private user namespace (exact)".into(),
            (None, false, false) => "process limit: RLIMIT_NPROC over all of this user's processes (approximate)".into(),
        }
    }

    fn describe_verdict(&self) -> String {
        if self.confined() {
            "confined: yes".into()
        } else {
            "confined: no (commands are refused unless accept_unconfined)".into()
        }
    }
}

/// Runs `req` under `policy`, confined as far as `support` allows; refuses
/// when the policy asks for confinement this machine cannot give (unless
/// `accept_unconfined`).
pub async fn run(support: &Support, policy: &Policy, req: &Request) -> Result<Output, Refused> {
    let program = check_allowed(policy, &req.argv)?;
    check_args(&req.argv)?;
    if policy.max_processes == 0 {
        return Err(Refused::Bad("max_processes must be at least 1".into()));
    }
    let dirs = Dirs::new(req, policy, &program)?;
    let mut plan = Plan::choose(support, policy)?;
    let timeout = req
        .timeout
        .map_or(policy.timeout, |t| t.min(policy.timeout));
    let deadline = Instant::now() + timeout;

    let mut reaper = Reaper::default();
    if plan.limit == ProcLimit::Cgroup {
        match support
            .pids_cgroup
            .as_ref()
            .map(|base| RunCgroup::create(base, policy.max_processes))
        {
            Some(Ok(cgroup)) => reaper.cgroup = Some(cgroup),
            _ => plan.limit = ProcLimit::without_cgroup(support),
        }
    }
    let (setup, failed_step) = ChildSetup::prepare(&plan, policy, &dirs, reaper.cgroup.as_ref())?;

    let mut cmd = command(
        &program,
        &req.argv,
        &dirs,
        child_env(policy, &dirs, &env_lookup),
    );
    // SAFETY: `apply` makes only raw system calls on data prepared above; it
    // neither allocates nor takes locks, so it is sound after a fork in a
    // multithreaded process.
    unsafe {
        cmd.pre_exec(move || setup.apply());
    }
    let spawned = cmd.spawn();
    drop(cmd); // the parent's copies of the child-side descriptors
    let mut child = spawned.map_err(|err| spawn_error(&req.argv[0], err, failed_step))?;
    reaper.pgid = child.id().and_then(|pid| i32::try_from(pid).ok());

    let done = supervise(&mut child, deadline, policy.output_cap, &mut reaper).await;
    Ok(Output {
        exit: done.status.and_then(|s| s.code()),
        signal: done.status.and_then(|s| s.signal()),
        truncated: done.stdout.truncated || done.stderr.truncated,
        stdout: done.stdout.buf,
        stderr: done.stderr.buf,
        timed_out: done.timed_out,
        confinement: plan.label(),
    })
}

/// Checks `argv[0]` against the allow-list and returns the program that
/// would run. The refusal names the policy line that would allow it.
pub fn check_allowed(policy: &Policy, argv: &[String]) -> Result<PathBuf, Refused> {
    let program = argv
        .first()
        .ok_or_else(|| Refused::Bad("empty command".into()))?;
    let search = Toolchain::detect().path();
    let resolved = resolve_program(program, &search)?;
    let allowed = policy
        .allow
        .iter()
        .any(|entry| entry_allows(entry, &resolved, &search));
    if allowed {
        Ok(resolved)
    } else {
        Err(not_allowed(policy, program))
    }
}

/// Finds the program: an absolute path as given (no `..`), a bare name on
/// `search`. Never canonicalized: rustup's proxies are one binary that reads
/// its own name.
fn resolve_program(program: &str, search: &str) -> Result<PathBuf, Refused> {
    if program.is_empty() || program.contains('\0') {
        return Err(Refused::Bad(format!("invalid program name {program:?}")));
    }
    if !program.contains('/') {
        return search
            .split(':')
            .map(|dir| Path::new(dir).join(program))
            .find(|candidate| is_executable(candidate))
            .ok_or_else(|| {
                Refused::Bad(format!("program {program:?} not found on PATH ({search})"))
            });
    }
    let path = Path::new(program);
    if !path.is_absolute() {
        return Err(Refused::Bad(format!(
            "program {program:?} must be a bare name or an absolute path"
        )));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(Refused::Bad(format!("program {program:?} contains \"..\"")));
    }
    if !is_executable(path) {
        return Err(Refused::Bad(format!(
            "program {program:?} is not an executable file"
        )));
    }
    Ok(path.to_path_buf())
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A bare entry allows the program it names on `search`; an absolute entry
/// allows what lies under it, by the path as given or by its real location.
fn entry_allows(entry: &str, resolved: &Path, search: &str) -> bool {
    if entry.starts_with('/') {
        let prefix = Path::new(entry);
        if prefix.components().any(|c| c == Component::ParentDir) {
            return false;
        }
        return resolved.starts_with(prefix)
            || fs::canonicalize(resolved).is_ok_and(|real| real.starts_with(prefix));
    }
    !entry.contains('/') && resolve_program(entry, search).is_ok_and(|found| found == resolved)
}

fn not_allowed(policy: &Policy, program: &str) -> Refused {
    let mut entries: Vec<String> = policy.allow.iter().map(|e| format!("{e:?}")).collect();
    entries.push(format!("{program:?}"));
    Refused::NotAllowed {
        program: program.to_string(),
        hint: format!(
            "add it to tools.allow in agent.toml: allow = [{}]",
            entries.join(", ")
        ),
    }
}

fn check_args(argv: &[String]) -> Result<(), Refused> {
    match argv.iter().find(|arg| arg.contains('\0')) {
        Some(arg) => Err(Refused::Bad(format!(
            "argument {arg:?} contains a NUL byte"
        ))),
        None => Ok(()),
    }
}

/// Where the cargo and rustup installations are, if any: their
/// directories are readable in the sandbox and named in its environment.
#[derive(Debug, Clone, Default)]
struct Toolchain {
    cargo_home: Option<PathBuf>,
    rustup_home: Option<PathBuf>,
}

impl Toolchain {
    fn detect() -> Toolchain {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let pick = |var: &str, default: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(default)))
                .filter(|dir| dir.is_absolute() && dir.is_dir())
        };
        Toolchain {
            cargo_home: pick("CARGO_HOME", ".cargo"),
            rustup_home: pick("RUSTUP_HOME", ".rustup"),
        }
    }

    /// The child's `PATH`: cargo's bin first, as rustup sets it up.
    fn path(&self) -> String {
        match self.cargo_home.as_ref().map(|home| home.join("bin")) {
            Some(bin) if bin.is_dir() && !bin.as_os_str().as_bytes().contains(&b':') => {
                format!("{}:{SYSTEM_PATH}", bin.display())
            }
            _ => SYSTEM_PATH.to_string(),
        }
    }

    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        self.cargo_home.iter().chain(self.rustup_home.iter())
    }
}

/// The directories one command touches, canonical.
struct Dirs {
    workspace: PathBuf,
    temp: PathBuf,
    tools: Toolchain,
    /// Readable besides the system and toolchain dirs: the program's
    /// directory and the allow-list's absolute prefixes.
    extra_read: Vec<PathBuf>,
}

impl Dirs {
    fn new(req: &Request, policy: &Policy, program: &Path) -> Result<Dirs, Refused> {
        let mut extra_read: Vec<PathBuf> = policy
            .allow
            .iter()
            .filter(|entry| entry.starts_with('/'))
            .map(PathBuf::from)
            .filter(|dir| dir.is_dir())
            .collect();
        extra_read.extend(program.parent().map(Path::to_path_buf));
        if let Some(real) = fs::canonicalize(program)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            extra_read.push(real);
        }
        Ok(Dirs {
            workspace: existing_dir(&req.workspace, "workspace")?,
            temp: existing_dir(&req.temp, "temp dir")?,
            tools: Toolchain::detect(),
            extra_read,
        })
    }
}

fn existing_dir(dir: &Path, what: &str) -> Result<PathBuf, Refused> {
    match fs::canonicalize(dir) {
        Ok(real) if real.is_dir() => Ok(real),
        _ => Err(Refused::Bad(format!(
            "{what} {} is not a directory",
            dir.display()
        ))),
    }
}

/// The child's whole environment; `lookup` reads the daemon's.
fn child_env(
    policy: &Policy,
    dirs: &Dirs,
    lookup: &dyn Fn(&str) -> Option<OsString>,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = vec![
        ("PATH".into(), dirs.tools.path().into()),
        ("HOME".into(), dirs.temp.clone().into()),
        ("TMPDIR".into(), dirs.temp.clone().into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("TERM".into(), "dumb".into()),
    ];
    if let Some(dir) = &dirs.tools.cargo_home {
        env.push(("CARGO_HOME".into(), dir.clone().into()));
    }
    if let Some(dir) = &dirs.tools.rustup_home {
        env.push(("RUSTUP_HOME".into(), dir.clone().into()));
    }
    for name in &policy.env_pass {
        if !passable_name(name) || env.iter().any(|(set, _)| set == OsStr::new(name)) {
            continue;
        }
        if let Some(value) = lookup(name) {
            env.push((name.into(), value));
        }
    }
    env
}

fn env_lookup(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// A name that may be passed through: well formed, not one the sandbox
/// sets, and not one that smells of a credential.
fn passable_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    !name.is_empty()
        && !name.contains(['=', '\0'])
        && !FIXED_ENV.contains(&upper.as_str())
        && !SECRET_MARKERS.iter().any(|marker| upper.contains(marker))
}

/// How the filesystem is held for one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FsGuard {
    /// `Mode::Full`: nothing asked.
    Off,
    Landlock,
    ReadOnlyMounts,
    /// Asked for, but nothing available (only with `accept_unconfined`).
    Missing,
}

/// How fork bombs are held for one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProcLimit {
    Cgroup,
    /// `RLIMIT_NPROC` set inside a fresh user namespace: the kernel counts
    /// only the sandbox's processes against it.
    NprocUserns,
    /// `RLIMIT_NPROC` without a namespace: it counts every process of the
    /// uid, so it is set to their current number plus `max_processes`.
    NprocUid,
    /// Root without a cgroup: the kernel exempts root from `RLIMIT_NPROC`.
    None,
}

impl ProcLimit {
    fn without_cgroup(support: &Support) -> ProcLimit {
        match (support.root, support.user_namespaces) {
            (true, _) => ProcLimit::None,
            (false, true) => ProcLimit::NprocUserns,
            (false, false) => ProcLimit::NprocUid,
        }
    }
}

/// Which protections one command gets, from what the policy asks and what
/// the machine offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    fs: FsGuard,
    net_off: bool,
    landlock_tcp: bool,
    landlock_scope: bool,
    /// A user namespace is used whenever one can be: it carries the network
    /// and mount namespaces and makes `RLIMIT_NPROC` count only the sandbox.
    userns: bool,
    netns: bool,
    seccomp_net: bool,
    limit: ProcLimit,
}

impl Plan {
    fn choose(support: &Support, policy: &Policy) -> Result<Plan, Refused> {
        let abi = support
            .landlock_abi
            .unwrap_or(0)
            .min(LANDLOCK_TARGET_VERSION);
        let fs = match policy.mode {
            Mode::Full => FsGuard::Off,
            _ if abi >= 1 => FsGuard::Landlock,
            _ if support.user_namespaces && support.mount_isolation => FsGuard::ReadOnlyMounts,
            _ => FsGuard::Missing,
        };
        let net_off = !policy.network;
        let netns = net_off && support.user_namespaces;
        let plan = Plan {
            fs,
            net_off,
            landlock_tcp: net_off && abi >= 4,
            landlock_scope: abi >= 6,
            userns: support.user_namespaces,
            netns,
            seccomp_net: net_off && !netns && support.seccomp,
            limit: match support.pids_cgroup {
                Some(_) => ProcLimit::Cgroup,
                None => ProcLimit::without_cgroup(support),
            },
        };
        if !policy.accept_unconfined {
            plan.refuse_if_open()?;
        }
        Ok(plan)
    }

    fn refuse_if_open(&self) -> Result<(), Refused> {
        if self.fs == FsGuard::Missing {
            return Err(Refused::NoConfinement(
                "this machine has neither Landlock nor user namespaces to keep writes in the workspace; set accept_unconfined to run anyway".into(),
            ));
        }
        if self.net_open() {
            return Err(Refused::NoConfinement(
                "this machine has no way to turn the network off (no Landlock ABI 4, user namespaces or seccomp); allow the network or set accept_unconfined".into(),
            ));
        }
        Ok(())
    }

    fn net_open(&self) -> bool {
        self.net_off && !(self.netns || self.landlock_tcp || self.seccomp_net)
    }

    fn uses_landlock(&self) -> bool {
        self.fs == FsGuard::Landlock || self.landlock_tcp || self.landlock_scope
    }

    fn unshare_flags(&self) -> libc::c_int {
        if !self.userns {
            return 0;
        }
        let mut flags = libc::CLONE_NEWUSER;
        if self.netns {
            flags |= libc::CLONE_NEWNET;
        }
        if self.fs == FsGuard::ReadOnlyMounts {
            flags |= libc::CLONE_NEWNS;
        }
        flags
    }

    /// What applied, for [`Output::confinement`].
    fn label(&self) -> &'static str {
        let tokens = [
            (self.fs == FsGuard::Landlock, "landlock-fs"),
            (self.fs == FsGuard::ReadOnlyMounts, "mount-ro"),
            (self.fs == FsGuard::Missing, "fs-open"),
            (self.landlock_tcp, "landlock-tcp"),
            (self.landlock_scope, "landlock-scope"),
            (self.netns, "netns"),
            (self.seccomp_net, "seccomp-net"),
            (self.net_open(), "net-open"),
            (self.limit == ProcLimit::Cgroup, "pids-cgroup"),
            (self.limit == ProcLimit::NprocUserns, "nproc-userns"),
            (self.limit == ProcLimit::NprocUid, "nproc-uid"),
            (true, "nnp"),
        ];
        let label: Vec<&str> = tokens
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, t)| *t)
            .collect();
        intern(label.join("+"))
    }
}

/// Gives each distinct label one `'static` copy. There are fewer than a few
/// dozen combinations, so the leak is bounded.
fn intern(label: String) -> &'static str {
    static LABELS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut labels = LABELS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = labels.iter().find(|known| **known == label) {
        return known;
    }
    let leaked: &'static str = Box::leak(label.into_boxed_str());
    labels.push(leaked);
    leaked
}

/// The Landlock ruleset for one command, created in the parent; only its
/// descriptor goes to the child. `None` when Landlock has nothing to do.
fn landlock_ruleset(plan: &Plan, policy: &Policy, dirs: &Dirs) -> Result<Option<OwnedFd>, Refused> {
    if !plan.uses_landlock() {
        return Ok(None);
    }
    let failed = |err: landlock::RulesetError| Refused::NoConfinement(format!("landlock: {err}"));
    let mut ruleset = Ruleset::default().set_compatibility(CompatLevel::BestEffort);
    if plan.fs == FsGuard::Landlock {
        ruleset = ruleset
            .handle_access(AccessFs::from_all(LANDLOCK_TARGET))
            .map_err(failed)?;
    }
    if plan.landlock_tcp {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(LANDLOCK_TARGET))
            .map_err(failed)?;
    }
    if plan.landlock_scope {
        ruleset = ruleset
            .scope(Scope::from_all(LANDLOCK_TARGET))
            .map_err(failed)?;
    }
    let mut created = ruleset.create().map_err(failed)?;
    if plan.fs == FsGuard::Landlock {
        for (path, access) in fs_rules(policy.mode, dirs) {
            // Missing paths (no /lib32 here, no ~/.rustup there) are skipped.
            if let Ok(fd) = PathFd::new(&path) {
                created = created
                    .add_rule(PathBeneath::new(fd, access))
                    .map_err(failed)?;
            }
        }
    }
    Ok(created.into())
}

/// Landlock's allow-list: everything not named here is neither readable nor
/// writable.
fn fs_rules(mode: Mode, dirs: &Dirs) -> Vec<(PathBuf, BitFlags<AccessFs>)> {
    let read = AccessFs::from_read(LANDLOCK_TARGET);
    let all = AccessFs::from_all(LANDLOCK_TARGET);
    let mut device = AccessFs::from_file(LANDLOCK_TARGET);
    device.remove(AccessFs::Execute);

    let mut rules: Vec<(PathBuf, BitFlags<AccessFs>)> = SYSTEM_READ
        .iter()
        .map(|dir| (PathBuf::from(dir), read))
        .collect();
    rules.extend(dirs.tools.dirs().map(|dir| (dir.clone(), read)));
    rules.extend(dirs.extra_read.iter().map(|dir| (dir.clone(), read)));
    // Where a distribution's /etc/resolv.conf really is (often under /run).
    if let Ok(resolv) = fs::canonicalize("/etc/resolv.conf") {
        rules.push((resolv, AccessFs::ReadFile.into()));
    }
    rules.extend(
        WRITABLE_DEVICES
            .iter()
            .map(|dev| (PathBuf::from(dev), device)),
    );
    let workspace = if mode == Mode::ReadOnly { read } else { all };
    rules.push((dirs.workspace.clone(), workspace));
    rules.push((dirs.temp.clone(), all));
    rules
}

/// The steps of [`ChildSetup::apply`], numbered for the failure pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    Group = 1,
    Cgroup,
    Unshare,
    IdMaps,
    Mounts,
    Chdir,
    Limits,
    NoNewPrivs,
    Seccomp,
    Landlock,
}

impl Step {
    const ALL: [Step; 10] = [
        Step::Group,
        Step::Cgroup,
        Step::Unshare,
        Step::IdMaps,
        Step::Mounts,
        Step::Chdir,
        Step::Limits,
        Step::NoNewPrivs,
        Step::Seccomp,
        Step::Landlock,
    ];

    fn from_byte(byte: u8) -> Option<Step> {
        Step::ALL.into_iter().find(|step| *step as u8 == byte)
    }

    fn name(self) -> &'static str {
        match self {
            Step::Group => "process group",
            Step::Cgroup => "joining the pids cgroup",
            Step::Unshare => "user/network namespaces",
            Step::IdMaps => "uid/gid maps",
            Step::Mounts => "read-only mounts",
            Step::Chdir => "entering the workspace",
            Step::Limits => "resource limits",
            Step::NoNewPrivs => "no_new_privs",
            Step::Seccomp => "seccomp filter",
            Step::Landlock => "landlock",
        }
    }
}

/// Everything the child does between fork and exec, prepared in the parent.
struct ChildSetup {
    /// Write end of a pipe: the number of the step that failed.
    failure: OwnedFd,
    cgroup_procs: Option<OwnedFd>,
    unshare: libc::c_int,
    id_maps: Option<IdMaps>,
    mounts: Option<ReadOnlyMounts>,
    workspace: CString,
    nproc: Option<libc::rlim_t>,
    seccomp: Option<Vec<libc::sock_filter>>,
    landlock: Option<OwnedFd>,
}

impl ChildSetup {
    /// Builds the child's part; also returns the read end of the failure
    /// pipe.
    fn prepare(
        plan: &Plan,
        policy: &Policy,
        dirs: &Dirs,
        cgroup: Option<&RunCgroup>,
    ) -> Result<(ChildSetup, OwnedFd), Refused> {
        let internal =
            |what: &str, err: io::Error| Refused::NoConfinement(format!("{what}: {err}"));
        let (failed_step, failure) = pipe().map_err(|e| internal("pipe", e))?;
        let cgroup_procs = cgroup
            .map(RunCgroup::procs_for_child)
            .transpose()
            .map_err(|e| internal("pids cgroup", e))?;
        let mounts = (plan.fs == FsGuard::ReadOnlyMounts)
            .then(|| ReadOnlyMounts::for_mode(policy.mode, dirs));
        let setup = ChildSetup {
            failure,
            cgroup_procs,
            unshare: plan.unshare_flags(),
            id_maps: plan.userns.then(IdMaps::current),
            mounts: mounts.transpose()?,
            workspace: c_path(&dirs.workspace)?,
            nproc: nproc_limit(plan.limit, policy.max_processes),
            seccomp: if plan.seccomp_net {
                socket_filter()
            } else {
                None
            },
            landlock: landlock_ruleset(plan, policy, dirs)?,
        };
        Ok((setup, failed_step))
    }

    /// Runs in the forked child. Only raw system calls on prepared data:
    /// nothing here may allocate or lock. The order matters: the cgroup is
    /// joined while still privileged to, `RLIMIT_NPROC` is set after
    /// `unshare` (so it counts in the new namespace), mounts happen before
    /// Landlock (which forbids them), seccomp needs no_new_privs.
    fn apply(&self) -> io::Result<()> {
        // SAFETY: setpgid(0, 0) on ourselves.
        self.step(Step::Group, || cvt(unsafe { libc::setpgid(0, 0) }))?;
        if let Some(procs) = &self.cgroup_procs {
            // "0" moves the writer itself, before anything can fork.
            self.step(Step::Cgroup, || write_all(procs.as_raw_fd(), b"0"))?;
        }
        if self.unshare != 0 {
            self.step(Step::Unshare, || {
                // SAFETY: unshare takes flags only; this child is single-threaded.
                cvt(unsafe { libc::unshare(self.unshare) })
            })?;
        }
        if let Some(maps) = &self.id_maps {
            self.step(Step::IdMaps, || maps.write())?;
        }
        if let Some(mounts) = &self.mounts {
            self.step(Step::Mounts, || mounts.apply())?;
        }
        // Again: a bind mount over the workspace hides the directory the
        // child was started in.
        self.step(Step::Chdir, || {
            // SAFETY: a valid NUL-terminated path.
            cvt(unsafe { libc::chdir(self.workspace.as_ptr()) })
        })?;
        self.step(Step::Limits, || self.set_limits())?;
        self.step(Step::NoNewPrivs, no_new_privs)?;
        if let Some(filter) = &self.seccomp {
            self.step(Step::Seccomp, || install_seccomp(filter))?;
        }
        if let Some(ruleset) = &self.landlock {
            self.step(Step::Landlock, || {
                landlock_restrict_self(ruleset.as_raw_fd())
            })?;
        }
        Ok(())
    }

    fn step(&self, step: Step, action: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        action().inspect_err(|_| {
            let byte = [step as u8];
            // SAFETY: a one-byte write from a live buffer to a descriptor we own.
            unsafe { libc::write(self.failure.as_raw_fd(), byte.as_ptr().cast(), 1) };
        })
    }

    fn set_limits(&self) -> io::Result<()> {
        lower_rlimit(libc::RLIMIT_CORE, 0)?;
        lower_rlimit(libc::RLIMIT_FSIZE, FILE_SIZE_LIMIT as libc::rlim_t)?;
        match self.nproc {
            Some(limit) => lower_rlimit(libc::RLIMIT_NPROC, limit),
            None => Ok(()),
        }
    }
}

fn nproc_limit(limit: ProcLimit, max_processes: u64) -> Option<libc::rlim_t> {
    let max = max_processes as libc::rlim_t;
    match limit {
        ProcLimit::NprocUserns => Some(max),
        ProcLimit::NprocUid => Some(threads_of_uid(uid()).saturating_add(max)),
        ProcLimit::Cgroup | ProcLimit::None => None,
    }
}

/// Threads the uid has now: `RLIMIT_NPROC` outside a user namespace
/// counts them all.
fn threads_of_uid(uid: u32) -> libc::rlim_t {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().as_bytes().iter().all(u8::is_ascii_digit))
        .filter_map(|e| fs::read_to_string(e.path().join("status")).ok())
        .filter(|status| status_field(status, "Uid:") == Some(uid as u64))
        .filter_map(|status| status_field(&status, "Threads:"))
        .sum()
}

/// The first number of a `/proc/<pid>/status` line.
fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The maps a fresh user namespace needs: the daemon's own uid and gid,
/// mapped to themselves so file ownership looks the same inside.
struct IdMaps {
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
}

impl IdMaps {
    fn current() -> IdMaps {
        IdMaps {
            uid_map: format!("{0} {0} 1\n", uid()).into_bytes(),
            gid_map: format!("{0} {0} 1\n", gid()).into_bytes(),
        }
    }

    /// In the child, right after `unshare`. An unprivileged gid map needs
    /// `setgroups` denied first.
    fn write(&self) -> io::Result<()> {
        write_file(c"/proc/self/setgroups", b"deny")?;
        write_file(c"/proc/self/uid_map", &self.uid_map)?;
        write_file(c"/proc/self/gid_map", &self.gid_map)
    }
}

/// The filesystem fallback: in a private mount namespace, everything is
/// made read-only except bind mounts of the writable directories.
struct ReadOnlyMounts {
    writable: Vec<CString>,
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;

impl ReadOnlyMounts {
    fn for_mode(mode: Mode, dirs: &Dirs) -> Result<ReadOnlyMounts, Refused> {
        let mut writable = Vec::new();
        if mode != Mode::ReadOnly {
            writable.push(c_path(&dirs.workspace)?);
        }
        writable.push(c_path(&dirs.temp)?);
        Ok(ReadOnlyMounts { writable })
    }

    /// In the child, inside fresh user and mount namespaces.
    fn apply(&self) -> io::Result<()> {
        let none = std::ptr::null();
        // SAFETY (all three blocks): valid NUL-terminated paths and a live
        // `MountAttr`; the calls only change this child's mount namespace.
        cvt(unsafe {
            libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                none.cast(),
            )
        })?;
        for dir in &self.writable {
            cvt(unsafe {
                libc::mount(
                    dir.as_ptr(),
                    dir.as_ptr(),
                    none,
                    libc::MS_BIND | libc::MS_REC,
                    none.cast(),
                )
            })?;
        }
        mount_setattr(
            c"/",
            libc::AT_RECURSIVE as libc::c_uint,
            MOUNT_ATTR_RDONLY,
            0,
        )?;
        for dir in &self.writable {
            mount_setattr(dir, 0, 0, MOUNT_ATTR_RDONLY)?;
        }
        Ok(())
    }
}

fn mount_setattr(path: &CStr, flags: libc::c_uint, set: u64, clear: u64) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a valid path and a live, correctly sized `mount_attr`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    cvt(if ret < 0 { -1 } else { 0 })
}

fn no_new_privs() -> io::Result<()> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
}

fn landlock_restrict_self(ruleset: RawFd) -> io::Result<()> {
    // SAFETY: the descriptor is a Landlock ruleset; flags 0.
    let ret = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) };
    cvt(if ret < 0 { -1 } else { 0 })
}

/// Sets both limits to `value`, or keeps a lower hard limit the daemon
/// already has (raising it would fail without privilege).
fn lower_rlimit(resource: libc::__rlimit_resource_t, value: libc::rlim_t) -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a live `rlimit` to fill.
    cvt(unsafe { libc::getrlimit(resource, &mut limit) })?;
    let value = value.min(limit.rlim_max);
    limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: a live `rlimit`.
    cvt(unsafe { libc::setrlimit(resource, &limit) })
}

/// The seccomp architecture this build runs as; `None` where the filter is
/// not written for the architecture.
const fn audit_arch() -> Option<u32> {
    if cfg!(target_arch = "x86_64") {
        Some(0xC000_003E)
    } else if cfg!(target_arch = "aarch64") {
        Some(0xC000_00B7)
    } else {
        None
    }
}

/// A classic-BPF seccomp program: `socket()` only for Unix and netlink
/// sockets (`EACCES` otherwise), no `io_uring` (it can open sockets without
/// `socket()`), and nothing from another architecture or the x32 ABI.
fn socket_filter() -> Option<Vec<libc::sock_filter>> {
    const ARCH_OFFSET: u32 = 4;
    const NR_OFFSET: u32 = 0;
    const ARG0_OFFSET: u32 = 16; // low half of args[0] (little endian)
    const X32_BIT: u32 = 0x4000_0000;
    let load = |offset| bpf(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, offset);
    let jeq = |k, jt, jf| bpf(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, jt, jf, k);
    let jge = |k, jt, jf| bpf(libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K, jt, jf, k);
    let ret = |k| bpf(libc::BPF_RET | libc::BPF_K, 0, 0, k);
    let errno = |e: libc::c_int| libc::SECCOMP_RET_ERRNO | (e as u32 & libc::SECCOMP_RET_DATA);
    // Jumps are forward offsets from the next instruction.
    Some(vec![
        /* 0 */ load(ARCH_OFFSET),
        /* 1 */ jeq(audit_arch()?, 0, 9), // other arch -> 11
        /* 2 */ load(NR_OFFSET),
        /* 3 */ jge(X32_BIT, 7, 0), // x32 -> 11
        /* 4 */ jeq(libc::SYS_io_uring_setup as u32, 5, 0), // -> 10
        /* 5 */ jeq(libc::SYS_socket as u32, 0, 3), // other syscall -> 9
        /* 6 */ load(ARG0_OFFSET),
        /* 7 */ jeq(libc::AF_UNIX as u32, 1, 0), // -> 9
        /* 8 */ jeq(libc::AF_NETLINK as u32, 0, 1), // -> 9, else 10
        /* 9 */ ret(libc::SECCOMP_RET_ALLOW),
        /* 10 */ ret(errno(libc::EACCES)),
        /* 11 */ ret(errno(libc::ENOSYS)),
    ])
}

fn bpf(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

fn install_seccomp(filter: &[libc::sock_filter]) -> io::Result<()> {
    let program = libc::sock_fprog {
        len: filter.len() as libc::c_ushort,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: a live program; the kernel copies it. no_new_privs is set.
    cvt(unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &program as *const libc::sock_fprog,
        )
    })
}

/// Opens, writes and closes: async-signal-safe, for `/proc/self` files.
fn write_file(path: &CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: a valid path; the descriptor is closed before returning.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    cvt(fd)?;
    let written = write_all(fd, data);
    // SAFETY: `fd` is ours and open.
    unsafe { libc::close(fd) };
    written
}

fn write_all(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: a live buffer of `data.len()` bytes.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// A negative return from libc becomes `errno`.
fn cvt(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: a live two-element array.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: pipe2 returned two fresh descriptors we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn c_path(path: &Path) -> Result<CString, Refused> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Refused::Bad(format!("path {} contains a NUL byte", path.display())))
}

fn uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

fn gid() -> u32 {
    // SAFETY: getgid cannot fail.
    unsafe { libc::getgid() }
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

fn command(
    program: &Path,
    argv: &[String],
    dirs: &Dirs,
    env: Vec<(OsString, OsString)>,
) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg0(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .envs(env)
        .current_dir(&dirs.workspace)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A spawn error names the confinement step that failed, when one did.
fn spawn_error(program: &str, err: io::Error, failed_step: OwnedFd) -> Refused {
    let mut byte = [0u8; 1];
    let step = match fs::File::from(failed_step).read(&mut byte) {
        Ok(1) => Step::from_byte(byte[0]),
        _ => None,
    };
    match step {
        Some(step) => Refused::NoConfinement(format!(
            "{} failed before {program:?} started: {err}",
            step.name()
        )),
        None => Refused::Bad(format!("could not start {program:?}: {err}")),
    }
}

/// One stream's kept bytes.
#[derive(Debug)]
struct Capped {
    buf: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl Capped {
    fn new(cap: usize) -> Capped {
        Capped {
            buf: Vec::new(),
            cap,
            truncated: false,
        }
    }

    /// Keeps what fits; capacity never exceeds `cap`, however much arrives.
    fn push(&mut self, bytes: &[u8]) {
        let room = self.cap - self.buf.len();
        if bytes.len() > room {
            self.truncated = true;
        }
        let kept = &bytes[..bytes.len().min(room)];
        if kept.is_empty() {
            return;
        }
        let wanted = (self.buf.len() + kept.len())
            .max(self.buf.capacity().saturating_mul(2))
            .min(self.cap);
        self.buf.reserve_exact(wanted - self.buf.len());
        self.buf.extend_from_slice(kept);
    }
}

/// Reads a stream to its end, keeping the first bytes: the child never
/// blocks on a full pipe, and memory stays at `cap` plus one chunk.
async fn drain<R: AsyncRead + Unpin>(reader: Option<R>, keep: &mut Capped) {
    let Some(mut reader) = reader else {
        return;
    };
    let mut chunk = vec![0u8; READ_CHUNK];
    while let Ok(n) = read_some(&mut reader, &mut chunk).await {
        if n == 0 {
            break;
        }
        keep.push(&chunk[..n]);
    }
}

async fn read_some<R: AsyncRead + Unpin>(reader: &mut R, chunk: &mut [u8]) -> io::Result<usize> {
    std::future::poll_fn(|cx| {
        let mut buf = ReadBuf::new(chunk);
        match Pin::new(&mut *reader).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.filled().len())),
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

struct Finished {
    status: Option<ExitStatus>,
    timed_out: bool,
    stdout: Capped,
    stderr: Capped,
}

/// Reads both streams while waiting for the main process or the deadline,
/// then kills whatever is left of the command and collects the rest.
async fn supervise(
    child: &mut Child,
    deadline: Instant,
    cap: usize,
    reaper: &mut Reaper,
) -> Finished {
    let mut stdout = Capped::new(cap);
    let mut stderr = Capped::new(cap);
    let (out_pipe, err_pipe) = (child.stdout.take(), child.stderr.take());
    // In a block, so the drains' borrows of the buffers end before they move.
    let (status, timed_out) = {
        let drains = async {
            tokio::join!(drain(out_pipe, &mut stdout), drain(err_pipe, &mut stderr));
        };
        tokio::pin!(drains);
        let mut drained = false;
        let exited = loop {
            tokio::select! {
                () = &mut drains, if !drained => drained = true,
                status = child.wait() => break Some(status.ok()),
                () = tokio::time::sleep_until(deadline) => break None,
            }
        };
        reaper.kill_now();
        let status = match exited {
            Some(status) => status,
            None => {
                let _ = child.start_kill();
                child.wait().await.ok()
            }
        };
        reaper.finish().await;
        if !drained {
            let _ = tokio::time::timeout(DRAIN_GRACE, &mut drains).await;
        }
        (status, exited.is_none())
    };
    Finished {
        status,
        timed_out,
        stdout,
        stderr,
    }
}

/// Kills what is left of a command: its process group, and its cgroup when
/// there is one. Dropping it (a cancelled `run`) kills too.
#[derive(Default)]
struct Reaper {
    pgid: Option<i32>,
    cgroup: Option<RunCgroup>,
    finished: bool,
}

impl Reaper {
    fn kill_now(&self) {
        if let Some(pgid) = self.pgid {
            // SAFETY: signalling a process group; ESRCH when it is gone.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill_once();
        }
    }

    /// Kills until the cgroup is empty, then removes it.
    async fn finish(&mut self) {
        self.kill_now();
        if let Some(cgroup) = &self.cgroup {
            for _ in 0..200 {
                if cgroup.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                cgroup.kill_once();
            }
            for _ in 0..40 {
                if cgroup.remove() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        self.finished = true;
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if !self.finished {
            self.kill_now();
            if let Some(cgroup) = &self.cgroup {
                cgroup.remove();
            }
        }
    }
}

/// One command's pids cgroup.
#[derive(Debug)]
struct RunCgroup {
    dir: PathBuf,
    unified: bool,
}

impl RunCgroup {
    fn create(base: &PidsCgroup, max: u64) -> io::Result<RunCgroup> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "cairn-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let cgroup = RunCgroup {
            dir: base.dir.join(name),
            unified: base.unified,
        };
        fs::create_dir(&cgroup.dir)?;
        if let Err(err) = fs::write(cgroup.dir.join("pids.max"), max.to_string()) {
            cgroup.remove();
            return Err(err);
        }
        Ok(cgroup)
    }

    /// `cgroup.procs`, opened by the parent; the child writes "0" to it.
    fn procs_for_child(&self) -> io::Result<OwnedFd> {
        let file = fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join("cgroup.procs"))?;
        Ok(file.into())
    }

    /// v2 kills atomically; v1 first forbids forks, then kills each member.
    fn kill_once(&self) {
        if self.unified && fs::write(self.dir.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        let _ = fs::write(self.dir.join("pids.max"), "0");
        for pid in self.members() {
            // SAFETY: signalling a listed member of our cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    fn members(&self) -> Vec<i32> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|procs| {
                procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn is_empty(&self) -> bool {
        self.members().is_empty()
    }

    fn remove(&self) -> bool {
        fs::remove_dir(&self.dir).is_ok() || !self.dir.exists()
    }
}

/// The Landlock ABI version, or `None` when the kernel has none.
fn landlock_abi() -> Option<u32> {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
    // SAFETY: the version query takes no attribute.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(version).ok().filter(|v| *v > 0)
}

/// Runs `body` in a forked child and says whether it succeeded. The body
/// must be async-signal-safe: only raw calls on data prepared before.
fn probe_in_child(body: impl Fn() -> io::Result<()>) -> bool {
    // SAFETY: the child runs only `body` (raw system calls) and `_exit`.
    match unsafe { libc::fork() } {
        -1 => false,
        0 => {
            let code = i32::from(body().is_err());
            // SAFETY: leaving the child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        pid => wait_exit_code(pid) == Some(0),
    }
}

fn wait_exit_code(pid: libc::pid_t) -> Option<i32> {
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own child with a live status word.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret == pid {
            return libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        }
        if ret < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return None;
        }
    }
}

fn probe_user_namespaces() -> bool {
    let maps = IdMaps::current();
    probe_in_child(|| {
        // SAFETY: unshare in the forked probe child.
        cvt(unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) })?;
        maps.write()
    })
}

/// Tries the read-only mount fallback in a scratch directory: the bind
/// mount must stay writable and its parent must say EROFS.
fn probe_mount_isolation() -> bool {
    let Some(area) = ProbeArea::create() else {
        return false;
    };
    let (Ok(rw), Ok(inside), Ok(outside)) = (
        c_path(&area.rw),
        c_path(&area.rw.join("probe")),
        c_path(&area.root.join("probe")),
    ) else {
        return false;
    };
    let maps = IdMaps::current();
    let mounts = ReadOnlyMounts { writable: vec![rw] };
    probe_in_child(|| {
        // SAFETY: unshare in the forked probe child.
        cvt(unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) })?;
        maps.write()?;
        mounts.apply()?;
        create_file(&inside)?;
        match create_file(&outside) {
            Err(err) if err.raw_os_error() == Some(libc::EROFS) => Ok(()),
            _ => Err(io::Error::from_raw_os_error(libc::EPERM)),
        }
    })
}

fn create_file(path: &CStr) -> io::Result<()> {
    // SAFETY: a valid path; the descriptor is closed at once.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
            0o600,
        )
    };
    cvt(fd)?;
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    Ok(())
}

/// A scratch directory for the mount probe, removed when dropped.
struct ProbeArea {
    root: PathBuf,
    rw: PathBuf,
}

impl ProbeArea {
    fn create() -> Option<ProbeArea> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let root = std::env::temp_dir().join(format!(
            "cairn-probe-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let rw = root.join("rw");
        fs::create_dir_all(&rw).ok()?;
        Some(ProbeArea { root, rw })
    }
}

impl Drop for ProbeArea {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Installs the socket filter in a child and checks that it refuses an
/// Internet socket and still allows a Unix one.
fn probe_seccomp() -> bool {
    let Some(filter) = socket_filter() else {
        return false;
    };
    probe_in_child(|| {
        no_new_privs()?;
        install_seccomp(&filter)?;
        // SAFETY: socket(2) with constant arguments in the probe child.
        let inet = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        if inet >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EACCES) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        // SAFETY: as above.
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) })
    })
}

/// The pids cgroup this process can create per-command cgroups in, tried
/// for real: v2 when its `cgroup.subtree_control` has `pids`, else v1.
fn find_pids_cgroup() -> Option<PidsCgroup> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let base = pids_cgroup_candidates(&mountinfo, &own)
        .into_iter()
        .find(|base| RunCgroup::create(base, 1).is_ok_and(|probe| probe.remove()))?;
    sweep_stale(&base);
    Some(base)
}

/// Kills and removes per-command cgroups whose daemon is gone: their
/// commands have nobody left to time them out.
fn sweep_stale(base: &PidsCgroup) {
    let Ok(entries) = fs::read_dir(&base.dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let owner = name
            .to_str()
            .and_then(|n| n.strip_prefix("cairn-"))
            .and_then(|rest| rest.split_once('-'))
            .map(|(pid, _)| pid.to_string());
        let Some(owner) = owner else {
            continue;
        };
        if owner.bytes().all(|b| b.is_ascii_digit()) && !Path::new("/proc").join(&owner).exists() {
            let stale = RunCgroup {
                dir: entry.path(),
                unified: base.unified,
            };
            stale.kill_once();
            stale.remove();
        }
    }
}

fn pids_cgroup_candidates(mountinfo: &str, own: &str) -> Vec<PidsCgroup> {
    let mut found = Vec::new();
    for line in own.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let unified = id == "0" && controllers.is_empty();
        let v1_pids = controllers.split(',').any(|c| c == "pids");
        if !unified && !v1_pids {
            continue;
        }
        let Some(dir) = cgroup_dir(mountinfo, unified, path) else {
            continue;
        };
        let delegates_pids = !unified
            || fs::read_to_string(dir.join("cgroup.subtree_control"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "pids"));
        if delegates_pids {
            found.push(PidsCgroup { dir, unified });
        }
    }
    found.sort_by_key(|c| !c.unified);
    found
}

/// Where the cgroup at `path` is mounted: a `cgroup2` mount, or a v1
/// `cgroup` mount with the pids controller.
fn cgroup_dir(mountinfo: &str, unified: bool, path: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let mount: Vec<&str> = mount.split(' ').collect();
        let fs: Vec<&str> = fs.split(' ').collect();
        let (root, point) = (*mount.get(3)?, *mount.get(4)?);
        let matches = match (unified, fs.first()) {
            (true, Some(&"cgroup2")) => true,
            (false, Some(&"cgroup")) => fs
                .get(2)
                .is_some_and(|opts| opts.split(',').any(|o| o == "pids")),
            _ => false,
        };
        if !matches {
            return None;
        }
        let below = path.strip_prefix(root)?.trim_matches('/');
        let point = Path::new(point);
        Some(if below.is_empty() {
            point.to_path_buf()
        } else {
            point.join(below)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::OnceLock;

    fn support() -> &'static Support {
        static SUPPORT: OnceLock<Support> = OnceLock::new();
        SUPPORT.get_or_init(Support::detect)
    }

    /// A workspace, a private temp dir, and a directory outside both.
    struct Dirs3 {
        _root: tempfile::TempDir,
        workspace: PathBuf,
        temp: PathBuf,
        outside: PathBuf,
    }

    fn dirs3() -> Dirs3 {
        let root = tempfile::tempdir().expect("tempdir");
        let [workspace, temp, outside] = ["workspace", "temp", "outside"].map(|name| {
            let dir = root.path().join(name);
            fs::create_dir(&dir).expect("mkdir");
            dir
        });
        Dirs3 {
            _root: root,
            workspace,
            temp,
            outside,
        }
    }

    fn policy(allow: &[&str]) -> Policy {
        Policy {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_secs(60),
            ..Policy::default()
        }
    }

    fn request(dirs: &Dirs3, argv: &[&str]) -> Request {
        Request {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            workspace: dirs.workspace.clone(),
            temp: dirs.temp.clone(),
            timeout: None,
        }
    }

    async fn sh(support: &Support, policy: &Policy, dirs: &Dirs3, script: &str) -> Output {
        run(support, policy, &request(dirs, &["sh", "-c", script]))
            .await
            .expect("the command runs")
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    /// Live (not zombie) processes with `arg` among their arguments.
    fn live_with_arg(arg: &str) -> usize {
        let Ok(entries) = fs::read_dir("/proc") else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| {
                let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
                let state = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                let zombie = state
                    .rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('Z'));
                !zombie && cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes())
            })
            .count()
    }

    /// Waits a little for killed processes to finish dying.
    fn none_left_with_arg(arg: &str) -> bool {
        (0..100).any(|_| {
            let none = live_with_arg(arg) == 0;
            if !none {
                std::thread::sleep(Duration::from_millis(20));
            }
            none
        })
    }

    fn rss_kib() -> u64 {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| status_field(&s, "VmRSS:"))
            .unwrap_or(0)
    }

    /// The detected support with the Landlock, namespace or seccomp parts
    /// switched off, to exercise each fallback on this machine.
    fn without(landlock: bool, userns: bool, seccomp: bool) -> Support {
        let mut s = support().clone();
        if !landlock {
            s.landlock_abi = None;
        }
        if !userns {
            s.user_namespaces = false;
            s.mount_isolation = false;
        }
        if !seccomp {
            s.seccomp = false;
        }
        s
    }

    #[test]
    fn detect_matches_the_kernel() {
        let s = support();
        assert_eq!(s.landlock_abi, landlock_abi());
        assert_eq!(s.root, euid() == 0);
        let lines = s.describe();
        assert_eq!(lines.len(), 5);
        let landlock = &lines[0];
        match s.landlock_abi {
            Some(abi) => assert!(landlock.contains(&format!("ABI {abi}")), "{landlock}"),
            None => assert!(landlock.contains("not available"), "{landlock}"),
        }
        assert_eq!(s.confined(), lines[4] == "confined: yes");
        for line in &lines {
            eprintln!("doctor: {line}");
        }
    }

    #[test]
    fn allowed_and_refused_programs() {
        let p = policy(&["sh", "/usr/bin/"]);
        let sh = check_allowed(&p, &["sh".into()]).expect("sh is allowed");
        assert!(sh.is_absolute() && sh.ends_with("sh"));
        assert!(check_allowed(&p, &["/usr/bin/head".into()]).is_ok());

        let only_cargo = policy(&["cargo"]);
        let err = check_allowed(&only_cargo, &["rm".into(), "-rf".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"program "rm" is not allowed; add it to tools.allow in agent.toml: allow = ["cargo", "rm"]"#
        );
        assert!(matches!(err, Refused::NotAllowed { ref program, .. } if program == "rm"));
    }

    #[test]
    fn path_prefixes_are_matched_by_component() {
        let p = policy(&["/usr/bi"]);
        assert!(matches!(
            check_allowed(&p, &["/usr/bin/head".into()]),
            Err(Refused::NotAllowed { .. })
        ));
        let p = policy(&["/usr/bin/"]);
        assert!(matches!(
            check_allowed(&p, &["/usr/bin/../bin/head".into()]),
            Err(Refused::Bad(_))
        ));
        assert!(matches!(
            check_allowed(&p, &["bin/head".into()]),
            Err(Refused::Bad(_))
        ));
        assert!(matches!(check_allowed(&p, &[]), Err(Refused::Bad(_))));
        assert!(matches!(
            check_allowed(
                &policy(&["no-such-tool-here"]),
                &["no-such-tool-here".into()]
            ),
            Err(Refused::Bad(_))
        ));
    }

    #[test]
    fn a_bare_entry_allows_its_absolute_path() {
        let p = policy(&["head"]);
        let head = check_allowed(&p, &["head".into()]).expect("head");
        let by_path = check_allowed(&p, &[head.to_string_lossy().into_owned()]).expect("same file");
        assert_eq!(head, by_path);
    }

    #[test]
    fn secret_names_are_never_passed() {
        for name in [
            "MY_API_KEY",
            "github_token",
            "DB_PASSWORD",
            "AWS_SECRET_ACCESS_KEY",
            "PATH",
            "HOME",
            "A=B",
            "",
        ] {
            assert!(!passable_name(name), "{name}");
        }
        for name in ["RUST_LOG", "CARGO_TERM_COLOR", "MY_SETTING"] {
            assert!(passable_name(name), "{name}");
        }
    }

    #[test]
    fn the_environment_is_rebuilt() {
        let d = dirs3();
        let dirs = Dirs {
            workspace: d.workspace.clone(),
            temp: d.temp.clone(),
            tools: Toolchain::default(),
            extra_read: Vec::new(),
        };
        let mut p = policy(&[]);
        p.env_pass = vec![
            "MY_API_KEY".into(),
            "MY_SETTING".into(),
            "ABSENT".into(),
            "HOME".into(),
        ];
        let lookup = |name: &str| {
            Some(OsString::from(format!("value-of-{name}"))).filter(|_| name != "ABSENT")
        };
        let env = child_env(&p, &dirs, &lookup);
        let names: Vec<&OsStr> = env.iter().map(|(n, _)| n.as_os_str()).collect();
        assert_eq!(
            names,
            ["PATH", "HOME", "TMPDIR", "LANG", "TERM", "MY_SETTING"]
        );
        assert_eq!(env[1].1, d.temp.as_os_str());
        assert_eq!(env[0].1, SYSTEM_PATH);
    }

    #[test]
    fn plans_refuse_what_the_machine_cannot_confine() {
        let none = Support::none();
        let strict = policy(&["sh"]);
        let err = Plan::choose(&none, &strict).unwrap_err();
        assert!(matches!(err, Refused::NoConfinement(_)), "{err}");
        let mut open_net = strict.clone();
        open_net.mode = Mode::Full;
        assert!(
            matches!(Plan::choose(&none, &open_net), Err(Refused::NoConfinement(m)) if m.contains("network"))
        );
        open_net.network = true;
        let plan = Plan::choose(&none, &open_net).expect("nothing to confine");
        assert!(!plan.uses_landlock());

        let tcp_only = Support {
            landlock_abi: Some(4),
            ..Support::none()
        };
        let plan = Plan::choose(&tcp_only, &strict).expect("landlock");
        assert_eq!(plan.fs, FsGuard::Landlock);
        assert!(plan.landlock_tcp && !plan.landlock_scope && !plan.netns);
        assert!(
            plan.label().starts_with("landlock-fs+landlock-tcp+"),
            "{}",
            plan.label()
        );
    }

    #[test]
    fn a_failed_step_is_named() {
        let (read, write) = pipe().expect("pipe");
        write_all(write.as_raw_fd(), &[Step::Landlock as u8]).expect("write");
        let err = spawn_error("cargo", io::Error::from_raw_os_error(libc::EPERM), read);
        assert!(
            matches!(err, Refused::NoConfinement(ref m) if m.starts_with("landlock failed before \"cargo\" started")),
            "{err}"
        );
        let (read, _write) = pipe().expect("pipe");
        let err = spawn_error("cargo", io::Error::from_raw_os_error(libc::ENOENT), read);
        assert!(matches!(err, Refused::Bad(_)), "{err}");
    }

    #[test]
    fn cgroup_mounts_are_found() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
31 25 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
32 25 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory";
        assert_eq!(
            cgroup_dir(mountinfo, false, "/agents/a1"),
            Some(PathBuf::from("/sys/fs/cgroup/pids/agents/a1"))
        );
        assert_eq!(
            cgroup_dir(mountinfo, false, "/"),
            Some(PathBuf::from("/sys/fs/cgroup/pids"))
        );
        assert_eq!(
            cgroup_dir(mountinfo, true, "/user.slice"),
            Some(PathBuf::from("/sys/fs/cgroup/unified/user.slice"))
        );
        assert_eq!(cgroup_dir("", true, "/"), None);
    }

    #[test]
    fn the_socket_filter_jumps_stay_inside() {
        let Some(filter) = socket_filter() else {
            assert!(audit_arch().is_none());
            return;
        };
        let jumps = filter
            .iter()
            .enumerate()
            .filter(|(_, insn)| u32::from(insn.code) & 0x07 == libc::BPF_JMP);
        for (at, insn) in jumps {
            let last = at + 1 + usize::from(insn.jt.max(insn.jf));
            assert!(last < filter.len(), "instruction {at} jumps past the end");
        }
    }

    #[tokio::test]
    async fn accept_unconfined_false_refuses_on_a_bare_machine() {
        let d = dirs3();
        let p = policy(&["sh"]);
        let bare = Support::none();
        assert!(!bare.confined());
        assert!(
            bare.describe()
                .iter()
                .any(|l| l.contains("refused unless accept_unconfined"))
        );
        let err = run(&bare, &p, &request(&d, &["sh", "-c", "echo hi > ran"]))
            .await
            .unwrap_err();
        assert!(matches!(err, Refused::NoConfinement(_)), "{err}");
        assert!(!d.workspace.join("ran").exists());

        let mut lenient = p.clone();
        lenient.accept_unconfined = true;
        let out = sh(&bare, &lenient, &d, "echo hi").await;
        assert_eq!(out.exit, Some(0));
        assert!(
            out.confinement.contains("fs-open") && out.confinement.contains("net-open"),
            "{}",
            out.confinement
        );
    }

    #[tokio::test]
    async fn bad_requests_are_refused() {
        let d = dirs3();
        let p = policy(&["sh"]);
        let mut req = request(&d, &["sh", "-c", "true"]);
        req.workspace = d.workspace.join("missing");
        assert!(matches!(
            run(support(), &p, &req).await,
            Err(Refused::Bad(_))
        ));
        let mut zero = p.clone();
        zero.max_processes = 0;
        assert!(matches!(
            run(support(), &zero, &request(&d, &["sh"])).await,
            Err(Refused::Bad(_))
        ));
    }

    #[tokio::test]
    async fn runs_in_the_workspace_with_stdin_closed() {
        let d = dirs3();
        let out = sh(
            support(),
            &policy(&["sh"]),
            &d,
            "pwd; cat; echo err >&2; exit 3",
        )
        .await;
        assert_eq!(out.exit, Some(3));
        assert_eq!(
            text(&out.stdout).trim(),
            fs::canonicalize(&d.workspace).unwrap().to_string_lossy()
        );
        assert_eq!(text(&out.stderr), "err\n");
        assert!(!out.timed_out && !out.truncated);
        assert!(out.confinement.ends_with("nnp"));
    }

    #[tokio::test]
    async fn huge_output_is_capped_quickly_in_bounded_memory() {
        let d = dirs3();
        let mut p = policy(&["sh"]);
        p.output_cap = 4096;
        let before = rss_kib();
        let out = sh(
            support(),
            &p,
            &d,
            "yes | head -c 100000000; yes error | head -c 50000000 >&2",
        )
        .await;
        assert_eq!(out.exit, Some(0));
        assert!(out.truncated);
        assert_eq!(out.stdout.len(), 4096);
        assert_eq!(out.stderr.len(), 4096);
        assert!(out.stdout.capacity() <= 4096 && out.stderr.capacity() <= 4096);
        assert!(out.stdout.starts_with(b"y\ny\n") && out.stderr.starts_with(b"error\n"));
        let grown = rss_kib().saturating_sub(before);
        assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    }

    #[tokio::test]
    async fn endless_output_is_cut_at_the_deadline() {
        let d = dirs3();
        let mut p = policy(&["yes"]);
        p.output_cap = 1000;
        let mut req = request(&d, &["yes"]);
        req.timeout = Some(Duration::from_millis(500));
        let out = run(support(), &p, &req).await.expect("runs");
        assert!(out.timed_out && out.truncated);
        assert_eq!(out.signal, Some(libc::SIGKILL));
        assert_eq!(out.stdout.len(), 1000);
    }

    #[tokio::test]
    async fn the_deadline_kills_the_whole_group() {
        let d = dirs3();
        let mut p = policy(&["sh"]);
        p.timeout = Duration::from_secs(1);
        let out = sh(support(), &p, &d, "sleep 97.31 & sleep 60").await;
        assert!(out.timed_out);
        assert_eq!(out.signal, Some(libc::SIGKILL));
        assert!(none_left_with_arg("97.31"), "the background sleep survived");
    }

    #[tokio::test]
    async fn the_request_timeout_only_shortens() {
        let d = dirs3();
        let mut req = request(&d, &["sh", "-c", "sleep 5"]);
        req.timeout = Some(Duration::from_millis(300));
        let out = run(support(), &policy(&["sh"]), &req).await.expect("runs");
        assert!(out.timed_out);
    }

    #[tokio::test]
    async fn leftovers_are_killed_when_the_main_process_exits() {
        let d = dirs3();
        let out = sh(
            support(),
            &policy(&["sh"]),
            &d,
            "sleep 97.32 & echo started",
        )
        .await;
        assert_eq!(out.exit, Some(0));
        assert_eq!(text(&out.stdout), "started\n");
        assert!(!out.timed_out);
        assert!(none_left_with_arg("97.32"), "the background sleep survived");
    }

    #[tokio::test]
    async fn fork_loops_are_bounded_by_max_processes() {
        let d = dirs3();
        let s = support();
        let mut p = policy(&["sh"]);
        p.max_processes = 24;
        p.timeout = Duration::from_secs(20);
        // 300 background sleeps, counted; dash stops at the first failed fork.
        let script = "i=0; while [ $i -lt 300 ]; do sleep 97.33 & i=$((i+1)); echo $i; done; echo all-started";
        let out = sh(s, &p, &d, script).await;
        let started: u64 = text(&out.stdout)
            .lines()
            .filter_map(|l| l.parse().ok())
            .max()
            .unwrap_or(0);
        let plan = Plan::choose(s, &p).expect("plan");
        if plan.limit == ProcLimit::None {
            // Root without a pids cgroup: documented as not enforced.
            assert!(s.describe()[3].contains("NOT ENFORCED"));
            assert!(!out.confinement.contains("pids") && !out.confinement.contains("nproc"));
        } else {
            assert!(started < 24, "{started} processes started");
            assert!(!text(&out.stdout).contains("all-started"));
            assert!(
                text(&out.stderr).to_lowercase().contains("fork"),
                "{}",
                text(&out.stderr)
            );
        }
        assert!(none_left_with_arg("97.33"), "sleeps survived");
        let after = sh(s, &policy(&["sh"]), &d, "echo fine").await;
        assert_eq!(text(&after.stdout), "fine\n");
    }

    /// Writes a file in the workspace, in temp, and outside both.
    const WRITE_THREE: &str =
        "echo w > \"$1/w\"; echo $?; echo t > \"$TMPDIR/t\"; echo $?; echo o > \"$2/o\"; echo $?";

    async fn write_three(support: &Support, mode: Mode) -> (Output, Dirs3) {
        let d = dirs3();
        let mut p = policy(&["sh"]);
        p.mode = mode;
        let ws = d.workspace.to_string_lossy().into_owned();
        let outside = d.outside.to_string_lossy().into_owned();
        let req = request(&d, &["sh", "-c", WRITE_THREE, "sh", &ws, &outside]);
        let out = run(support, &p, &req).await.expect("runs");
        (out, d)
    }

    fn statuses(out: &Output) -> Vec<String> {
        text(&out.stdout).lines().map(str::to_string).collect()
    }

    #[tokio::test]
    async fn landlock_keeps_writes_in_the_workspace() {
        let s = without(true, false, false);
        if s.landlock_abi.is_none() {
            assert!(support().describe()[0].contains("not available"));
            assert!(Plan::choose(&s, &policy(&["sh"])).is_err());
            return;
        }
        let (out, d) = write_three(&s, Mode::WorkspaceWrite).await;
        assert_eq!(statuses(&out), ["0", "0", "2"], "{}", text(&out.stderr));
        assert!(d.workspace.join("w").exists() && d.temp.join("t").exists());
        assert!(!d.outside.join("o").exists());
        assert!(text(&out.stderr).contains("Permission denied"));
        assert!(
            out.confinement.starts_with("landlock-fs"),
            "{}",
            out.confinement
        );
    }

    #[tokio::test]
    async fn landlock_read_only_mode_writes_only_temp() {
        let s = without(true, false, false);
        if s.landlock_abi.is_none() {
            assert!(!support().confined() || support().mount_isolation);
            return;
        }
        let (out, d) = write_three(&s, Mode::ReadOnly).await;
        assert_eq!(statuses(&out), ["2", "0", "2"], "{}", text(&out.stderr));
        assert!(!d.workspace.join("w").exists() && d.temp.join("t").exists());
    }

    #[tokio::test]
    async fn mount_fallback_keeps_writes_in_the_workspace() {
        let s = without(false, true, true);
        if !s.confined() {
            assert!(!support().mount_isolation);
            assert!(matches!(
                Plan::choose(&s, &policy(&["sh"])),
                Err(Refused::NoConfinement(_))
            ));
            return;
        }
        let (out, d) = write_three(&s, Mode::WorkspaceWrite).await;
        assert_eq!(statuses(&out), ["0", "0", "2"], "{}", text(&out.stderr));
        assert!(d.workspace.join("w").exists() && !d.outside.join("o").exists());
        assert!(text(&out.stderr).contains("Read-only file system"));
        assert!(
            out.confinement.starts_with("mount-ro+netns"),
            "{}",
            out.confinement
        );

        let (out, d) = write_three(&s, Mode::ReadOnly).await;
        assert_eq!(statuses(&out), ["2", "0", "2"], "{}", text(&out.stderr));
        assert!(!d.workspace.join("w").exists() && d.temp.join("t").exists());
    }

    #[tokio::test]
    async fn full_mode_does_not_restrict_the_filesystem() {
        let (out, d) = write_three(support(), Mode::Full).await;
        assert_eq!(statuses(&out), ["0", "0", "0"], "{}", text(&out.stderr));
        assert!(d.outside.join("o").exists());
        assert!(!out.confinement.contains("landlock-fs") && !out.confinement.contains("mount-ro"));
    }

    /// Tries to connect to a listener of this test process, then says
    /// whether it accepted anything.
    async fn connects(support: &Support, network: bool) -> (Output, bool) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let d = dirs3();
        let mut p = policy(&["bash"]);
        p.mode = Mode::Full;
        p.network = network;
        let script = format!("echo hi > /dev/tcp/127.0.0.1/{port}");
        let out = run(support, &p, &request(&d, &["bash", "-c", &script]))
            .await
            .expect("runs");
        (out, listener.accept().is_ok())
    }

    #[tokio::test]
    async fn network_is_off_by_default() {
        let (out, accepted) = connects(support(), false).await;
        assert!(!accepted && out.exit != Some(0), "{}", text(&out.stderr));
        let (out, accepted) = connects(support(), true).await;
        assert!(accepted && out.exit == Some(0), "{}", text(&out.stderr));
        assert!(!out.confinement.contains("netns") && !out.confinement.contains("tcp"));
    }

    #[tokio::test]
    async fn each_network_fallback_holds_alone() {
        let only_landlock = without(true, false, false);
        if only_landlock.landlock_abi.unwrap_or(0) >= 4 {
            let (out, accepted) = connects(&only_landlock, false).await;
            assert!(!accepted && out.exit != Some(0));
            assert!(
                text(&out.stderr).contains("Permission denied"),
                "{}",
                text(&out.stderr)
            );
            assert!(
                out.confinement.contains("landlock-tcp"),
                "{}",
                out.confinement
            );
            assert!(!out.confinement.contains("netns") && !out.confinement.contains("seccomp"));
        } else {
            assert!(!support().describe()[0].contains("TCP"));
        }
        let only_netns = without(false, true, false);
        if only_netns.user_namespaces {
            let (out, accepted) = connects(&only_netns, false).await;
            assert!(!accepted && out.exit != Some(0));
            assert!(out.confinement.contains("netns"));
        } else {
            assert!(support().describe()[1].contains("not available"));
        }
        let only_seccomp = without(false, false, true);
        if only_seccomp.seccomp {
            let (out, accepted) = connects(&only_seccomp, false).await;
            assert!(!accepted && out.exit != Some(0));
            assert!(
                out.confinement.contains("seccomp-net"),
                "{}",
                out.confinement
            );
        } else {
            assert!(support().describe()[2].contains("not available"));
        }
    }

    #[tokio::test]
    async fn the_daemon_is_out_of_reach() {
        let d = dirs3();
        let s = support();
        let me = std::process::id();
        let script = format!("cat /proc/{me}/environ >/dev/null; echo $?; kill -0 {me}; echo $?");
        let out = sh(s, &policy(&["sh"]), &d, &script).await;
        let codes = statuses(&out);
        match s.landlock_abi {
            Some(abi) => {
                assert_eq!(codes[0], "1", "environ was readable: {}", text(&out.stderr));
                let signal = if abi >= 6 { "1" } else { "0" };
                assert_eq!(codes[1], signal, "{}", text(&out.stderr));
            }
            None => assert!(s.describe()[0].contains("not available")),
        }
    }

    /// Runs in a copy of the test binary whose environment holds
    /// `MY_API_KEY`, so the daemon's real environment is what is scrubbed
    /// (setting variables in this multithreaded process would be unsound).
    #[tokio::test]
    async fn secrets_in_the_daemon_environment_stay_out() {
        const MARK: &str = "CONFINE_ENV_CHILD";
        let name = format!(
            "{}::secrets_in_the_daemon_environment_stay_out",
            module_path!().split_once("::").map_or("", |(_, rest)| rest)
        );
        if std::env::var_os(MARK).is_none() {
            let exe = std::env::current_exe().expect("test binary");
            let out = std::process::Command::new(exe)
                .args(["--exact", &name, "--nocapture", "--test-threads=1"])
                .env(MARK, "1")
                .env("MY_API_KEY", "sk-do-not-leak")
                .env("MY_SETTING", "visible")
                .output()
                .expect("rerun");
            let report = text(&out.stdout) + &text(&out.stderr);
            assert!(out.status.success(), "{report}");
            assert!(report.contains("1 passed"), "{report}");
            return;
        }
        let d = dirs3();
        let mut p = policy(&["env"]);
        p.env_pass = vec!["MY_API_KEY".into(), "MY_SETTING".into()];
        let out = run(support(), &p, &request(&d, &["env"]))
            .await
            .expect("runs");
        let env = text(&out.stdout);
        assert!(
            !env.contains("sk-do-not-leak") && !env.contains("MY_API_KEY"),
            "{env}"
        );
        assert!(env.contains("MY_SETTING=visible"), "{env}");
        assert!(!env.contains(MARK), "{env}");
        let mut names: Vec<&str> = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(n, _)| n)
            .collect();
        names.sort_unstable();
        for name in &names {
            assert!(
                [
                    "PATH",
                    "HOME",
                    "TMPDIR",
                    "LANG",
                    "TERM",
                    "CARGO_HOME",
                    "RUSTUP_HOME",
                    "MY_SETTING"
                ]
                .contains(name),
                "unexpected {name}"
            );
        }
    }

    #[tokio::test]
    async fn the_rust_toolchain_works_inside() {
        let d = dirs3();
        let p = policy(&["cargo"]);
        let found = check_allowed(&p, &["cargo".into()]);
        let Ok(_) = found else {
            assert!(matches!(found, Err(Refused::Bad(ref m)) if m.contains("not found")));
            return;
        };
        fs::write(
            d.workspace.join("Cargo.toml"),
            "[package]\nname = \"probe\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
        )
        .expect("manifest");
        fs::create_dir(d.workspace.join("src")).expect("src");
        fs::write(
            d.workspace.join("src/main.rs"),
            "fn main() { println!(\"built inside\"); }",
        )
        .expect("main");
        let mut req = request(&d, &["cargo", "run", "--offline", "--quiet"]);
        req.timeout = Some(Duration::from_secs(120));
        let out = run(support(), &p, &req).await.expect("runs");
        assert_eq!(out.exit, Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "built inside\n");
    }
}
