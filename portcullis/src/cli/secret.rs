//! `portcullis secret`: seed, read and rotate secrets in an encrypted file store.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

use portcullis_token::secret::{
    FileKey, FileStore, KdfParams, KeyringStore, SecretStore, SecretValue, StoreError,
};

/// Seed, read and rotate secrets in an encrypted file store (AES-256-GCM; the key comes from
/// a passphrase through Argon2id, or from the OS keyring).
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    printf %s \"$TOKEN\" | portcullis secret --file app.pcs put api/refresh-token\n  \
    portcullis secret --file app.pcs list\n  \
    portcullis secret --file app.pcs get api/refresh-token --reveal\n  \
    portcullis secret --file app.pcs --keyring delete api/refresh-token")]
pub(crate) struct SecretArgs {
    /// The encrypted store file (created by the first `put`, mode 0600).
    #[arg(long, value_name = "PATH")]
    file: PathBuf,
    /// Environment variable holding the passphrase.
    #[arg(
        long,
        value_name = "VAR",
        default_value = "PORTCULLIS_PASSPHRASE",
        conflicts_with = "keyring"
    )]
    passphrase_env: String,
    /// Take the file key from the OS keyring instead (a random key is created by the first
    /// `put`). On Linux that is the kernel user keyring, reachable from any session keyring
    /// set-up (login, `keyctl session -`, service managers, cron); it survives logout (Linux
    /// 5.3 and later) but never a reboot, after which the file cannot be opened: use a
    /// passphrase for a store that must outlive a reboot.
    #[arg(long)]
    keyring: bool,
    /// Keyring service the file key is filed under (with --keyring).
    #[arg(long, value_name = "NAME", default_value = "portcullis")]
    keyring_service: String,
    /// Argon2id memory cost in KiB for a new passphrase file (at least 8192).
    #[arg(long, value_name = "KIB", default_value_t = 64 * 1024)]
    kdf_memory_kib: u32,
    /// Argon2id passes for a new passphrase file.
    #[arg(long, value_name = "N", default_value_t = 3)]
    kdf_passes: u32,
    #[command(subcommand)]
    action: SecretAction,
}

#[derive(clap::Subcommand, Debug)]
enum SecretAction {
    /// Store a secret read from stdin (one trailing newline is dropped).
    Put {
        /// Secret name.
        name: String,
    },
    /// Show whether a secret is set; print its value only with --reveal.
    Get {
        /// Secret name.
        name: String,
        /// Write the value to stdout.
        #[arg(long)]
        reveal: bool,
    },
    /// Remove a secret.
    Delete {
        /// Secret name.
        name: String,
    },
    /// List the stored names.
    List,
}

/// Runs `portcullis secret`.
pub(crate) fn run(args: SecretArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(execute(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    // One line, whatever the message holds.
    let line: String = message.replace(['\n', '\r'], " ");
    eprintln!("portcullis secret: {line}");
    ExitCode::FAILURE
}

fn keyring_entry_name(file: &Path) -> String {
    let absolute = match (file.parent(), file.file_name()) {
        (Some(dir), Some(name)) => {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::canonicalize(dir)
                .map(|d| d.join(name))
                .unwrap_or_else(|_| file.to_owned())
        }
        _ => file.to_owned(),
    };
    format!("file-key:{}", absolute.display())
}

/// What survives what, said at every `put` that keeps the file key in the OS keyring.
#[cfg(target_os = "linux")]
const KEYRING_DURABILITY: Option<&str> = Some(
    "the file key is in the Linux kernel user keyring: it survives logout (Linux 5.3 and later) \
     but not a reboot, after which this file cannot be opened; use a passphrase \
     (--passphrase-env) for a store that must outlive a reboot",
);
#[cfg(not(target_os = "linux"))]
const KEYRING_DURABILITY: Option<&str> = None;

async fn key_for(args: &SecretArgs) -> Result<FileKey, String> {
    if args.keyring {
        let keyring = KeyringStore::new(args.keyring_service.clone());
        let entry = keyring_entry_name(&args.file);
        // A file whose key is gone gets no new key: that would only hide the loss behind a
        // "wrong key" error and leave a useless key behind.
        if std::fs::metadata(&args.file).is_ok()
            && keyring.get(&entry).await.map_err(store_error)?.is_none()
        {
            return Err(format!(
                "the key of {} is not in the OS keyring (service {:?}){}: the file cannot be opened without it",
                args.file.display(),
                args.keyring_service,
                if cfg!(target_os = "linux") {
                    "; kernel keyrings are emptied by a reboot"
                } else {
                    ""
                }
            ));
        }
        return keyring.file_key(&entry).await.map_err(store_error);
    }
    let passphrase = std::env::var(&args.passphrase_env).map_err(|_| {
        format!(
            "environment variable {} is not set: put the passphrase there, name another with --passphrase-env, or use --keyring",
            args.passphrase_env
        )
    })?;
    if passphrase.is_empty() {
        return Err(format!(
            "environment variable {} is empty: a passphrase is required",
            args.passphrase_env
        ));
    }
    let params =
        KdfParams::new(args.kdf_memory_kib, args.kdf_passes, 1).map_err(|e| e.to_string())?;
    Ok(FileKey::passphrase(passphrase).with_kdf_params(params))
}

fn store_error(e: StoreError) -> String {
    e.to_string()
}

async fn execute(args: SecretArgs) -> Result<(), String> {
    // Only `put` creates a store: reading a file that is not there is a mistake (a wrong path),
    // not an empty store, and must not leave a new key in the keyring either.
    if !matches!(args.action, SecretAction::Put { .. }) && !args.file.exists() {
        return Err(format!(
            "no secret store at {}: the file does not exist (the first `put` creates it)",
            args.file.display()
        ));
    }
    let key = key_for(&args).await?;
    let store = FileStore::open(&args.file, key)
        .await
        .map_err(store_error)?;
    let file = args.file.display().to_string();
    match args.action {
        SecretAction::Put { name } => {
            let mut value = Vec::new();
            std::io::stdin()
                .read_to_end(&mut value)
                .map_err(|e| format!("cannot read the value from stdin: {e}"))?;
            if value.ends_with(b"\n") {
                value.pop();
                if value.ends_with(b"\r") {
                    value.pop();
                }
            }
            if value.is_empty() {
                return Err("empty value on stdin: pipe the secret in".into());
            }
            store
                .put(&name, SecretValue::new(value))
                .await
                .map_err(store_error)?;
            eprintln!("stored {name} in {file}");
            if args.keyring
                && let Some(note) = KEYRING_DURABILITY
            {
                eprintln!("note: {note}");
            }
        }
        SecretAction::Get { name, reveal } => {
            let value = store
                .get(&name)
                .await
                .map_err(store_error)?
                .ok_or_else(|| format!("no secret named {name:?} in {file}"))?;
            if reveal {
                let mut out = std::io::stdout().lock();
                out.write_all(value.expose())
                    .and_then(|()| out.flush())
                    .map_err(|e| format!("cannot write to stdout: {e}"))?;
            } else {
                println!(
                    "{name} is set ({} bytes); pass --reveal to print it",
                    value.len()
                );
            }
        }
        SecretAction::Delete { name } => {
            if !store.delete(&name).await.map_err(store_error)? {
                return Err(format!("no secret named {name:?} in {file}"));
            }
            eprintln!("deleted {name} from {file}");
        }
        SecretAction::List => {
            for name in store.list().await.map_err(store_error)? {
                println!("{name}");
            }
        }
    }
    Ok(())
}
