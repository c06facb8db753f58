//! Where audit entries go: JSON lines files with size-based rotation, memory, or your own.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::record::AuditEntry;
use crate::schema;

/// Receives every audit entry: request records, security events outside requests and
/// anomalies.
///
/// Implemented for closures `Fn(&AuditEntry<'_>)`. Sinks are called synchronously on the
/// thread that produced the entry (possibly inside the `tracing` dispatcher): keep them
/// quick, and do not emit `tracing` events from them.
pub trait AuditSink: Send + Sync + 'static {
    /// Writes one entry. Failures are the sink's to count or report; they never fail a
    /// request.
    fn write(&self, entry: &AuditEntry<'_>);
}

impl<F> AuditSink for F
where
    F: Fn(&AuditEntry<'_>) + Send + Sync + 'static,
{
    fn write(&self, entry: &AuditEntry<'_>) {
        self(entry)
    }
}

/// Appends entries as JSON lines (one ECS object per line) to a file, rotating it by size:
/// when the next line would make the file exceed `max_bytes`, `audit.jsonl` becomes
/// `audit.jsonl.1`, `.1` becomes `.2`, and so on up to `max_files` rotated files (the oldest
/// is deleted).
///
/// Each line is written with one `write` call on a file opened in append mode, so
/// concurrent writers of the same sink never interleave. I/O errors never fail a request:
/// they are counted ([`write_errors`](Self::write_errors)) and raised as a `tracing` event
/// (see below).
///
/// # Security
/// - A new log file is created readable and writable by its owner only (mode `0600` on
///   Unix); an existing file keeps its mode.
/// - A symbolic link at the log path is never followed, when the sink opens and whenever it
///   reopens the file after a rotation (on Unix the open itself refuses it, `O_NOFOLLOW`, so
///   there is no window between a check and the open): whoever can write to the log's
///   directory cannot make the sink append to, or truncate, another file. Anything but a
///   regular file (a FIFO, a device) is refused too. At [`open`](JsonLinesFileBuilder::open)
///   this is [`BuildError::UnsafeLog`](crate::BuildError::UnsafeLog); later, a write
///   failure. Rotation renames files, which never follows links either. (Off Unix, the link
///   check is made just before the open.)
/// - A failed write or rotation raises a `WARN` event with target `portcullis::audit`,
///   `event.action = "audit.sink.write"`, `event.outcome = "failure"`, `event.reason`
///   `"io_error"` or `"unsafe_path"`, `error.message` and `portcullis.failure.count`: at
///   most one per minute, each counting the failures since the previous one, so a full disk
///   does not flood the logs. An event due while the sink runs inside the `tracing`
///   dispatcher (where it would be dropped) waits for the next write made outside it.
///
/// ```no_run
/// use portcullis_audit::JsonLinesFile;
///
/// let sink = JsonLinesFile::builder("/var/log/portcullis/audit.jsonl")
///     .max_bytes(50 * 1024 * 1024)
///     .max_files(10)
///     .open()?;
/// # Ok::<(), portcullis_audit::BuildError>(())
/// ```
#[derive(Clone)]
pub struct JsonLinesFile {
    inner: Arc<FileInner>,
}

struct FileInner {
    path: PathBuf,
    max_bytes: u64,
    max_files: usize,
    state: Mutex<FileState>,
    errors: AtomicU64,
    lines: AtomicU64,
    alarm: Alarm,
}

struct FileState {
    file: Option<File>,
    size: u64,
}

impl fmt::Debug for JsonLinesFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonLinesFile")
            .field("path", &self.inner.path)
            .field("max_bytes", &self.inner.max_bytes)
            .field("max_files", &self.inner.max_files)
            .finish()
    }
}

/// Builds a [`JsonLinesFile`].
#[derive(Debug, Clone)]
pub struct JsonLinesFileBuilder {
    path: PathBuf,
    max_bytes: u64,
    max_files: usize,
}

impl JsonLinesFileBuilder {
    /// Rotates when the file would grow past this size (10 MiB by default). A single line
    /// larger than this still gets written, alone in its file.
    pub fn max_bytes(mut self, max: u64) -> Self {
        self.max_bytes = max;
        self
    }

    /// Keeps this many rotated files (5 by default; 0 keeps none: the file is truncated
    /// when full).
    pub fn max_files(mut self, max: usize) -> Self {
        self.max_files = max;
        self
    }

    /// Opens (creates or appends to) the file.
    ///
    /// # Errors
    ///
    /// [`BuildError::OpenLog`](crate::BuildError::OpenLog) when the file cannot be opened
    /// for appending, [`BuildError::UnsafeLog`](crate::BuildError::UnsafeLog) when the path
    /// is a symbolic link or not a regular file, and
    /// [`BuildError::ZeroCapacity`](crate::BuildError::ZeroCapacity) for a zero `max_bytes`.
    pub fn open(self) -> Result<JsonLinesFile, crate::BuildError> {
        if self.max_bytes == 0 {
            return Err(crate::BuildError::ZeroCapacity {
                what: "json lines file max_bytes",
            });
        }
        let file = open_log(&self.path).map_err(|e| match e {
            OpenError::Unsafe(what) => crate::BuildError::UnsafeLog {
                path: self.path.clone(),
                what,
            },
            OpenError::Io(source) => crate::BuildError::OpenLog {
                path: self.path.clone(),
                source,
            },
        })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(JsonLinesFile {
            inner: Arc::new(FileInner {
                path: self.path,
                max_bytes: self.max_bytes,
                max_files: self.max_files,
                state: Mutex::new(FileState {
                    file: Some(file),
                    size,
                }),
                errors: AtomicU64::new(0),
                lines: AtomicU64::new(0),
                alarm: Alarm::default(),
            }),
        })
    }
}

const SYMLINK: &str = "a symbolic link";
const NOT_REGULAR: &str = "not a regular file";

/// Why a log file was not opened.
enum OpenError {
    /// A symbolic link, FIFO or device is where the log file should be.
    Unsafe(&'static str),
    Io(io::Error),
}

/// Opens `path` for appending, creating it owner-only. Never follows a symbolic link at
/// `path` and refuses anything but a regular file (checked on the opened descriptor;
/// `O_NONBLOCK` keeps a FIFO from blocking the open, and means nothing for a regular file).
fn open_log(path: &Path) -> Result<File, OpenError> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    #[cfg(not(unix))]
    if is_symlink(path) {
        return Err(OpenError::Unsafe(SYMLINK));
    }
    let file = options.open(path).map_err(|e| {
        // O_NOFOLLOW fails with ELOOP (EMLINK on some BSDs): name the cause.
        if is_symlink(path) {
            OpenError::Unsafe(SYMLINK)
        } else {
            OpenError::Io(e)
        }
    })?;
    match file.metadata() {
        Ok(m) if m.is_file() => Ok(file),
        Ok(_) => Err(OpenError::Unsafe(NOT_REGULAR)),
        Err(e) => Err(OpenError::Io(e)),
    }
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// One failed write or rotation, as the `audit.sink.write` event reports it.
struct Failure {
    reason: &'static str,
    message: String,
}

impl Failure {
    fn io(what: &str, path: &Path, error: &io::Error) -> Self {
        Failure {
            reason: schema::reason::IO_ERROR,
            message: format!("{what} {}: {error}", path.display()),
        }
    }

    fn open(path: &Path, error: OpenError) -> Self {
        match error {
            OpenError::Unsafe(what) => Failure {
                reason: schema::reason::UNSAFE_PATH,
                message: format!(
                    "refusing to reopen {}: it is {what}; expected a regular file",
                    path.display()
                ),
            },
            OpenError::Io(e) => Failure::io("cannot reopen", path, &e),
        }
    }
}

/// The least time between two `audit.sink.write` failure events of one sink.
const FAILURE_EVENT_INTERVAL: Duration = Duration::from_secs(60);

/// Raises the failure event, at most once per [`FAILURE_EVENT_INTERVAL`].
#[derive(Default)]
struct Alarm {
    /// Whether failures wait to be reported (checked without the lock on each write).
    pending: AtomicBool,
    state: Mutex<AlarmState>,
}

#[derive(Default)]
struct AlarmState {
    /// The latest failure not reported yet.
    last: Option<Failure>,
    /// Failures since the previous event.
    unreported: u64,
    /// When the previous event was raised.
    raised_at: Option<Instant>,
}

impl Alarm {
    /// Records `failure` (if any) and raises the event when one is due. Never called with
    /// the sink's file lock held: the event may come back to this sink through the audit
    /// collector.
    fn notify(&self, failure: Option<Failure>) {
        if failure.is_none() && !self.pending.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if let Some(failure) = failure {
            state.last = Some(failure);
            state.unreported += 1;
            self.pending.store(true, Ordering::Release);
        }
        let now = Instant::now();
        if state
            .raised_at
            .is_some_and(|at| now < at + FAILURE_EVENT_INTERVAL)
        {
            return;
        }
        // Inside the `tracing` dispatcher an event is dropped: keep it for a later write.
        if tracing::dispatcher::get_default(|d| d.is::<tracing::subscriber::NoSubscriber>()) {
            return;
        }
        let Some(last) = state.last.take() else {
            return;
        };
        let count = std::mem::take(&mut state.unreported);
        state.raised_at = Some(now);
        self.pending.store(false, Ordering::Release);
        drop(state);
        tracing::warn!(
            target: "portcullis::audit",
            {
            "event.kind" = schema::kind::ALERT,
            "event.action" = schema::action::SINK_WRITE,
            "event.outcome" = schema::outcome::FAILURE,
            "event.reason" = last.reason,
            "error.message" = last.message.as_str(),
            "portcullis.failure.count" = count,
            },
            "audit sink lost entries ({count} failed writes since the last report): {}",
            last.message
        );
    }
}

impl JsonLinesFile {
    /// Starts building a sink writing to `path`.
    pub fn builder(path: impl Into<PathBuf>) -> JsonLinesFileBuilder {
        JsonLinesFileBuilder {
            path: path.into(),
            max_bytes: 10 * 1024 * 1024,
            max_files: 5,
        }
    }

    /// Opens `path` with the default limits.
    ///
    /// # Errors
    ///
    /// See [`JsonLinesFileBuilder::open`].
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, crate::BuildError> {
        Self::builder(path).open()
    }

    /// The path of the current file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The path of the `n`-th rotated file (1 is the most recent).
    pub fn rotated_path(&self, n: usize) -> PathBuf {
        rotated(&self.inner.path, n)
    }

    /// How many writes or rotations failed.
    pub fn write_errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    /// How many lines were written.
    pub fn lines_written(&self) -> u64 {
        self.inner.lines.load(Ordering::Relaxed)
    }

    fn rotate(&self, state: &mut FileState) -> Result<(), Failure> {
        state.file = None;
        let path = &self.inner.path;
        if self.inner.max_files == 0 {
            // Truncate in place, through a descriptor opened without following links.
            let file = open_log(path).map_err(|e| Failure::open(path, e))?;
            file.set_len(0)
                .map_err(|e| Failure::io("cannot truncate", path, &e))?;
            state.file = Some(file);
            state.size = 0;
            return Ok(());
        }
        // `rename` never follows links: a link planted at a rotated name is replaced, and
        // its target is left alone.
        for n in (1..self.inner.max_files).rev() {
            let (from, to) = (rotated(path, n), rotated(path, n + 1));
            match std::fs::rename(&from, &to) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(Failure::io("cannot rotate", &from, &e));
                }
                _ => {}
            }
        }
        std::fs::rename(path, rotated(path, 1))
            .map_err(|e| Failure::io("cannot rotate", path, &e))?;
        state.file = Some(open_log(path).map_err(|e| Failure::open(path, e))?);
        state.size = 0;
        Ok(())
    }

    /// Appends one line; `false` when it was lost. Each failure (a failed rotation, which
    /// alone loses nothing when a file can still be written, among them) goes to `failures`.
    fn append(&self, line: &[u8], failures: &mut Vec<Failure>) -> bool {
        let Ok(mut state) = self.inner.state.lock() else {
            failures.push(Failure {
                reason: schema::reason::IO_ERROR,
                message: format!(
                    "audit log {} is unusable: a writer panicked",
                    self.inner.path.display()
                ),
            });
            return false;
        };
        let len = line.len() as u64;
        let full = state.size > 0 && state.size + len > self.inner.max_bytes;
        if full && let Err(failure) = self.rotate(&mut state) {
            failures.push(failure);
        }
        // Keep writing to whatever file we can open, rather than lose entries.
        if state.file.is_none() {
            match open_log(&self.inner.path) {
                Ok(f) => {
                    state.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                    state.file = Some(f);
                }
                Err(e) => {
                    failures.push(Failure::open(&self.inner.path, e));
                    return false;
                }
            }
        }
        let Some(file) = state.file.as_mut() else {
            return false;
        };
        match file.write_all(line) {
            Ok(()) => {
                state.size += len;
                true
            }
            Err(e) => {
                failures.push(Failure::io("cannot write to", &self.inner.path, &e));
                false
            }
        }
    }
}

impl AuditSink for JsonLinesFile {
    fn write(&self, entry: &AuditEntry<'_>) {
        let mut failures = Vec::new();
        match serde_json::to_vec(entry) {
            Ok(mut line) => {
                line.push(b'\n');
                if self.append(&line, &mut failures) {
                    self.inner.lines.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => failures.push(Failure {
                reason: schema::reason::IO_ERROR,
                message: format!("cannot serialize an audit entry: {e}"),
            }),
        }
        // The file lock is released: the event may come back here through the collector.
        if failures.is_empty() {
            self.inner.alarm.notify(None);
        }
        for failure in failures {
            self.inner.errors.fetch_add(1, Ordering::Relaxed);
            self.inner.alarm.notify(Some(failure));
        }
    }
}

/// Keeps the last `capacity` entries in memory, as JSON values: for tests, demos and a
/// "recent security events" endpoint.
#[derive(Clone, Debug)]
pub struct MemorySink {
    inner: Arc<Mutex<VecDeque<serde_json::Value>>>,
    capacity: usize,
}

impl MemorySink {
    /// Keeps at most `capacity` entries (the oldest are dropped).
    pub fn new(capacity: usize) -> Self {
        MemorySink {
            inner: Arc::new(Mutex::new(VecDeque::new())),
            capacity,
        }
    }

    /// The entries held, oldest first.
    pub fn entries(&self) -> Vec<serde_json::Value> {
        self.inner
            .lock()
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The entries whose `event.action` is `action`.
    pub fn with_action(&self, action: &str) -> Vec<serde_json::Value> {
        self.entries()
            .into_iter()
            .filter(|e| e["event.action"] == action)
            .collect()
    }
}

impl AuditSink for MemorySink {
    fn write(&self, entry: &AuditEntry<'_>) {
        if self.capacity == 0 {
            return;
        }
        let Ok(value) = serde_json::to_value(entry) else {
            return;
        };
        if let Ok(mut q) = self.inner.lock() {
            if q.len() >= self.capacity {
                q.pop_front();
            }
            q.push_back(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{SecurityEvent, field};

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-audit-{name}-{}-{}",
            std::process::id(),
            time::OffsetDateTime::now_utc().unix_timestamp_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn event(i: usize) -> SecurityEvent {
        SecurityEvent::new("portcullis::test").with(field::USER_ID, format!("user-{i:04}"))
    }

    #[test]
    fn writes_one_json_object_per_line_and_rotates_by_size() {
        let dir = temp_dir("rotate");
        let path = dir.join("audit.jsonl");
        let sink = JsonLinesFile::builder(&path)
            .max_bytes(600)
            .max_files(2)
            .open()
            .unwrap();
        for i in 0..40 {
            sink.write(&AuditEntry::Event(&event(i)));
        }
        assert_eq!(sink.write_errors(), 0);
        assert_eq!(sink.lines_written(), 40);
        let mut all = Vec::new();
        for p in [sink.rotated_path(2), sink.rotated_path(1), path.clone()] {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(
                text.len() as u64 <= 600,
                "{} is {} bytes",
                p.display(),
                text.len()
            );
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                all.push(v["user.id"].as_str().unwrap().to_owned());
            }
        }
        assert!(
            !sink.rotated_path(3).exists(),
            "only 2 rotated files are kept"
        );
        // The newest entries survive, in order, and nothing in between is lost.
        let last = all.last().unwrap();
        assert_eq!(last, "user-0039");
        let first: usize = all[0][5..].parse().unwrap();
        let expected: Vec<String> = (first..40).map(|i| format!("user-{i:04}")).collect();
        assert_eq!(all, expected);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn concurrent_writers_never_interleave_lines() {
        let dir = temp_dir("concurrent");
        let path = dir.join("audit.jsonl");
        let sink = JsonLinesFile::builder(&path)
            .max_bytes(16 * 1024)
            .max_files(100)
            .open()
            .unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let sink = sink.clone();
                s.spawn(move || {
                    for i in 0..500 {
                        sink.write(&AuditEntry::Event(&event(t * 1000 + i)));
                    }
                });
            }
        });
        assert_eq!(sink.lines_written(), 2000);
        let mut count = 0;
        for n in 0..=100 {
            let p = if n == 0 {
                path.clone()
            } else {
                sink.rotated_path(n)
            };
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            for line in text.lines() {
                serde_json::from_str::<serde_json::Value>(line).unwrap();
                count += 1;
            }
        }
        assert_eq!(count, 2000);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn appends_to_an_existing_file() {
        let dir = temp_dir("append");
        let path = dir.join("audit.jsonl");
        JsonLinesFile::open(&path)
            .unwrap()
            .write(&AuditEntry::Event(&event(1)));
        JsonLinesFile::open(&path)
            .unwrap()
            .write(&AuditEntry::Event(&event(2)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unopenable_path_is_a_clear_error() {
        let err = JsonLinesFile::open("/nonexistent-dir-for-portcullis/audit.jsonl").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent-dir-for-portcullis/audit.jsonl"),
            "{msg}"
        );
    }

    /// The `portcullis::audit` events raised while `f` runs (a scoped subscriber with the
    /// audit collector of `auditor`, if given), as field maps.
    fn capture(
        auditor: Option<&crate::Auditor>,
        f: impl FnOnce(),
    ) -> Vec<std::collections::HashMap<String, String>> {
        use tracing_subscriber::layer::SubscriberExt;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let events = Events(seen.clone());
        let subscriber = tracing_subscriber::registry()
            .with(auditor.map(crate::Auditor::collector))
            .with(events);
        tracing::subscriber::with_default(subscriber, f);
        let seen = seen.lock().unwrap();
        seen.iter()
            .filter(|e: &&std::collections::HashMap<String, String>| {
                e.get("target").map(String::as_str) == Some("portcullis::audit")
            })
            .cloned()
            .collect()
    }

    struct Events(Arc<Mutex<Vec<std::collections::HashMap<String, String>>>>);

    struct Fields<'a>(&'a mut std::collections::HashMap<String, String>);

    impl tracing::field::Visit for Fields<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut map = std::collections::HashMap::new();
            map.insert("target".to_owned(), event.metadata().target().to_owned());
            map.insert("level".to_owned(), event.metadata().level().to_string());
            event.record(&mut Fields(&mut map));
            self.0.lock().unwrap().push(map);
        }
    }

    fn sink_failures(
        events: &[std::collections::HashMap<String, String>],
    ) -> Vec<&std::collections::HashMap<String, String>> {
        events
            .iter()
            .filter(|e| e.get("event.action").map(String::as_str) == Some("audit.sink.write"))
            .collect()
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    #[test]
    fn log_files_are_created_owner_only() {
        let dir = temp_dir("mode");
        let path = dir.join("audit.jsonl");
        let sink = JsonLinesFile::builder(&path)
            .max_bytes(300)
            .max_files(2)
            .open()
            .unwrap();
        assert_eq!(mode(&path), 0o600, "a new log file is owner-only");
        for i in 0..10 {
            sink.write(&AuditEntry::Event(&event(i)));
        }
        assert_eq!(sink.write_errors(), 0);
        assert!(sink.rotated_path(1).exists(), "the log rotated");
        assert_eq!(mode(&path), 0o600, "the file made after a rotation too");
        assert_eq!(mode(&sink.rotated_path(1)), 0o600);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_at_the_log_path_is_refused_and_its_target_untouched() {
        let dir = temp_dir("symlink-open");
        let target = dir.join("passwd");
        std::fs::write(&target, "root:x:0:0\n").unwrap();
        let path = dir.join("audit.jsonl");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let err = JsonLinesFile::open(&path).unwrap_err();
        assert!(
            matches!(&err, crate::BuildError::UnsafeLog { path: p, what } if *p == path && *what == SYMLINK),
            "{err:?}"
        );
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "root:x:0:0\n");

        // A dangling link does not make the sink create its target either.
        let elsewhere = dir.join("created-elsewhere");
        let dangling = dir.join("dangling.jsonl");
        std::os::unix::fs::symlink(&elsewhere, &dangling).unwrap();
        let err = JsonLinesFile::open(&dangling).unwrap_err();
        assert!(
            matches!(err, crate::BuildError::UnsafeLog { .. }),
            "{err:?}"
        );
        assert!(!elsewhere.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_device_at_the_log_path_is_refused() {
        let err = JsonLinesFile::open("/dev/null").unwrap_err();
        assert!(
            matches!(err, crate::BuildError::UnsafeLog { what, .. } if what == NOT_REGULAR),
            "{err:?}"
        );
    }

    /// Writes `n` entries whose lines fill a 300-byte file: the next write rotates.
    fn fill(sink: &JsonLinesFile, n: usize) {
        for i in 0..n {
            sink.write(&AuditEntry::Event(&event(i)));
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_swapped_in_is_not_followed_when_the_log_is_truncated() {
        let dir = temp_dir("symlink-truncate");
        let target = dir.join("precious");
        std::fs::write(&target, "keep me\n").unwrap();
        let path = dir.join("audit.jsonl");
        let sink = JsonLinesFile::builder(&path)
            .max_bytes(300)
            .max_files(0)
            .open()
            .unwrap();
        fill(&sink, 2);
        assert_eq!(sink.write_errors(), 0);
        // An attacker with write access to the directory swaps the log for a link.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let events = capture(None, || fill(&sink, 4));
        assert_eq!(
            std::fs::read_to_string(&target).unwrap(),
            "keep me\n",
            "neither truncated nor appended to"
        );
        assert!(sink.write_errors() > 0);
        let failures = sink_failures(&events);
        assert_eq!(failures.len(), 1, "{events:?}");
        assert_eq!(failures[0]["event.reason"], "unsafe_path");
        assert_eq!(failures[0]["event.outcome"], "failure");
        assert!(failures[0]["error.message"].contains("symbolic link"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_at_the_log_path_and_the_rotation_target_are_not_followed_when_rotating() {
        let dir = temp_dir("symlink-rotate");
        let target = dir.join("precious");
        std::fs::write(&target, "keep me\n").unwrap();
        let path = dir.join("audit.jsonl");
        let sink = JsonLinesFile::builder(&path)
            .max_bytes(300)
            .max_files(2)
            .open()
            .unwrap();
        // Links planted at the rotation target and, in place of the log, at the log path.
        std::os::unix::fs::symlink(&target, sink.rotated_path(1)).unwrap();
        fill(&sink, 2);
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        fill(&sink, 6);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
        assert_eq!(sink.write_errors(), 0, "rotation moved the links away");
        assert!(!is_symlink(&path), "the sink made a fresh log file");
        assert_eq!(mode(&path), 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().count() > 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn write_failures_raise_one_event_per_interval() {
        let dir = temp_dir("write-failure");
        let path = dir.join("audit.jsonl");
        let sink = JsonLinesFile::builder(&path)
            .max_bytes(300)
            .max_files(2)
            .open()
            .unwrap();
        fill(&sink, 2);
        assert_eq!(sink.write_errors(), 0);
        // The log's directory goes away: rotating and reopening fail, entries are lost.
        std::fs::remove_dir_all(&dir).unwrap();
        let events = capture(None, || fill(&sink, 10));
        let lost = sink.write_errors();
        assert!(lost >= 10, "{lost}");
        let failures = sink_failures(&events);
        assert_eq!(
            failures.len(),
            1,
            "one event, not one per failure: {events:?}"
        );
        let first = failures[0];
        assert_eq!(first["level"], "WARN");
        assert_eq!(first["event.outcome"], "failure");
        assert_eq!(first["event.reason"], "io_error");
        assert!(
            first["error.message"].contains(&*path.to_string_lossy()),
            "{first:?}"
        );
        assert_eq!(first["portcullis.failure.count"], "1");

        // A minute later the next failure raises the next event, counting those between.
        tokio::time::advance(FAILURE_EVENT_INTERVAL).await;
        let events = capture(None, || fill(&sink, 1));
        let failures = sink_failures(&events);
        assert_eq!(failures.len(), 1, "{events:?}");
        let count: u64 = failures[0]["portcullis.failure.count"].parse().unwrap();
        assert_eq!(
            1 + count + 1,
            sink.write_errors(),
            "every failure is counted once"
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn failure_events_reach_the_collector_and_never_loop_back() {
        let dir = temp_dir("write-failure-collector");
        let path = dir.join("audit.jsonl");
        let file = JsonLinesFile::builder(&path)
            .max_bytes(300)
            .max_files(2)
            .open()
            .unwrap();
        let memory = MemorySink::new(100);
        let auditor = crate::Auditor::builder()
            .sink(file.clone())
            .sink(memory.clone())
            .build()
            .unwrap();
        for i in 0..2 {
            auditor.ingest(&event(i));
        }
        std::fs::remove_dir_all(&dir).unwrap();
        let events = capture(Some(&auditor), || {
            // Raised inside the dispatcher: the sink's event would be dropped there, so it
            // waits for the next write made outside it.
            tracing::warn!(
                target: "portcullis::pin",
                { "event.action" = "tls.pin.check", "event.outcome" = "failure" },
                "pin violation"
            );
            assert!(memory.with_action("audit.sink.write").is_empty());
            // Outside the dispatcher: raised, collected, and written to the other sink
            // (its own copy fails again and is only counted).
            auditor.ingest(&event(3));
        });
        assert_eq!(sink_failures(&events).len(), 1, "{events:?}");
        let recorded = memory.with_action("audit.sink.write");
        assert_eq!(recorded.len(), 1, "{recorded:?}");
        assert_eq!(recorded[0]["event.reason"], "io_error");
        let count = recorded[0]["portcullis.failure.count"]
            .as_u64()
            .expect("a count");
        assert!(count >= 2, "the deferred failure is counted: {count}");
        assert!(
            file.write_errors() > count,
            "the copy that came back failed too"
        );
    }

    #[test]
    fn memory_sink_is_bounded() {
        let sink = MemorySink::new(3);
        for i in 0..10 {
            sink.write(&AuditEntry::Event(&event(i)));
        }
        let e = sink.entries();
        assert_eq!(e.len(), 3);
        assert_eq!(e[2]["user.id"], "user-0009");
    }
}
