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

/// Reads the key from `<data_dir>/server.key`, creating it on first use. Processes that start at
/// once on a new data directory all end up with the same key: the first file in place wins.
pub fn load_or_create(data_dir: &Path) -> Result<String, KeyError> {
    let path = data_dir.join(KEY_FILE);
    match read(&path) {
        Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    let (tmp, key) = write_temporary(data_dir)?;
    // A link, unlike a rename, never replaces a key another process put there meanwhile.
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(&path),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Reads the key from `<data_dir>/server.key` without ever making one.
pub fn load(data_dir: &Path) -> Result<String, KeyError> {
    read(&data_dir.join(KEY_FILE))
}

/// Writes a fresh key, replacing any old one, and returns it.
pub fn write_new(data_dir: &Path) -> Result<String, KeyError> {
    let path = data_dir.join(KEY_FILE);
    let (tmp, key) = write_temporary(data_dir)?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(key)
}

fn read(path: &Path) -> Result<String, KeyError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let key = text.trim().to_owned();
    if key.is_empty() {
        return Err(KeyError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(key)
}

/// A new key in a file of its own next to the key file (owner-readable only, on disk).
fn write_temporary(data_dir: &Path) -> Result<(PathBuf, String), KeyError> {
    std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let key = uuid::Uuid::new_v4().to_string();
    let tmp = data_dir.join(format!("{KEY_FILE}.{key}.new"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    writeln!(file, "{key}").map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    Ok((tmp, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_starting_together_share_one_key() {
        let dir = std::env::temp_dir().join(format!("coronium-key-{}", uuid::Uuid::new_v4()));
        let keys: Vec<String> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| load_or_create(&dir).unwrap()))
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
        assert_eq!(load_or_create(&dir).unwrap(), keys[0]);
        let fresh = write_new(&dir).unwrap();
        assert_ne!(fresh, keys[0]);
        assert_eq!(load_or_create(&dir).unwrap(), fresh);
        let files = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(files, 1, "no temporary files left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
