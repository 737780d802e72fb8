//! The server key: a UUID generated on first start into the data directory (`server.key`,
//! readable by its owner only), unless the configuration gives one.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const KEY_FILE: &str = "server.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} does not hold a server key")]
    Empty { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads the key from `<data_dir>/server.key`, creating it on first use.
pub fn load_or_create(data_dir: &Path) -> Result<String, KeyError> {
    let path = data_dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let key = text.trim().to_owned();
            if key.is_empty() {
                return Err(KeyError::Empty { path });
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_new(data_dir),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Writes a fresh key, replacing any old one, and returns it.
pub fn write_new(data_dir: &Path) -> Result<String, KeyError> {
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let path = data_dir.join(KEY_FILE);
    let tmp = data_dir.join(format!("{KEY_FILE}.new"));
    let key = uuid::Uuid::new_v4().to_string();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    writeln!(file, "{key}").map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(key)
}
