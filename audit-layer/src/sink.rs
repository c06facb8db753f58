//! Where audit entries go: JSON lines files with size-based rotation, memory, or your own.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::record::AuditEntry;

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
/// concurrent writers of the same sink never interleave. I/O errors are counted
/// ([`write_errors`](Self::write_errors)), never raised into a request.
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
    /// for appending, and [`BuildError::ZeroCapacity`](crate::BuildError::ZeroCapacity) for
    /// a zero `max_bytes`.
    pub fn open(self) -> Result<JsonLinesFile, crate::BuildError> {
        if self.max_bytes == 0 {
            return Err(crate::BuildError::ZeroCapacity {
                what: "json lines file max_bytes",
            });
        }
        let file = open_append(&self.path).map_err(|source| crate::BuildError::OpenLog {
            path: self.path.clone(),
            source,
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
            }),
        })
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
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

    fn rotate(&self, state: &mut FileState) -> io::Result<()> {
        state.file = None;
        let path = &self.inner.path;
        if self.inner.max_files == 0 {
            let f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(path)?;
            drop(f);
        } else {
            for n in (1..self.inner.max_files).rev() {
                match std::fs::rename(rotated(path, n), rotated(path, n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(path, rotated(path, 1))?;
        }
        state.file = Some(open_append(path)?);
        state.size = 0;
        Ok(())
    }
}

impl AuditSink for JsonLinesFile {
    fn write(&self, entry: &AuditEntry<'_>) {
        let mut line = match serde_json::to_vec(entry) {
            Ok(l) => l,
            Err(_) => {
                self.inner.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        line.push(b'\n');
        let Ok(mut state) = self.inner.state.lock() else {
            self.inner.errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let len = line.len() as u64;
        let full = state.size > 0 && state.size + len > self.inner.max_bytes;
        if full && self.rotate(&mut state).is_err() {
            self.inner.errors.fetch_add(1, Ordering::Relaxed);
        }
        // Keep writing to whatever file we can open, rather than lose entries.
        if state.file.is_none() {
            match open_append(&self.inner.path) {
                Ok(f) => {
                    state.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                    state.file = Some(f);
                }
                Err(_) => {
                    self.inner.errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        let Some(file) = state.file.as_mut() else {
            return;
        };
        match file.write_all(&line) {
            Ok(()) => {
                state.size += len;
                self.inner.lines.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.inner.errors.fetch_add(1, Ordering::Relaxed);
            }
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
