//! Encrypted, authenticated backup containers and key files.
//!
//! A container (`*.ibk`) holds a directory tree: a 40-byte header, then the
//! plaintext stream cut into chunks, each sealed with AES-256-GCM. The nonce
//! of a chunk is the header's random 8-byte prefix plus the chunk counter;
//! its associated data is the whole header, the counter and a "final" flag,
//! so chunks cannot be reordered, dropped, moved between containers or cut
//! off at the end (a container without its final chunk is refused as
//! truncated). The plaintext stream is a sequence of file records followed by
//! a manifest (paths, sizes, SHA-256) — the manifest is therefore encrypted
//! and authenticated like everything else.
//!
//! [`decrypt_to`] first verifies the whole container (every tag, every file
//! hash, the manifest) without writing anything; only then does it extract
//! into a fresh staging directory next to the destination and rename it into
//! place, so a tampered, truncated or wrong-key backup never touches the
//! destination.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use crate::error::{ErrorKind, Result, SecurityError};

/// Length of keys (backup key, token key) in bytes.
pub const KEY_LEN: usize = 32;
const MAGIC: &[u8; 8] = b"IRYOBAK\x01";
const HEADER_LEN: usize = 40;
/// Plaintext bytes per chunk.
pub const CHUNK_SIZE: usize = 64 * 1024;
const TAG_LEN: usize = 16;
const REC_FILE: u8 = 1;
const REC_MANIFEST: u8 = 2;
const MAX_MANIFEST: usize = 64 << 20;

/// Creates a key file with 32 random bytes, readable only by its owner
/// (mode 0600). Refuses to overwrite an existing file.
pub fn generate_key_file(path: &Path) -> Result<[u8; KEY_LEN]> {
    let mut key = [0u8; KEY_LEN];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| {
        SecurityError::new(
            if e.kind() == io::ErrorKind::AlreadyExists {
                ErrorKind::Conflict
            } else {
                ErrorKind::Storage
            },
            "鍵ファイルを作成できません(既に存在する可能性があります)",
            format!("cannot create key file {}: {e}", path.display()),
        )
    })?;
    f.write_all(&key)?;
    f.sync_all()?;
    Ok(key)
}

/// Reads a key file: exactly 32 bytes, not readable by group or others.
pub fn read_key_file(path: &Path) -> Result<[u8; KEY_LEN]> {
    let meta = fs::metadata(path).map_err(|e| {
        SecurityError::new(
            ErrorKind::NotFound,
            "鍵ファイルが見つかりません",
            format!("key file {}: {e}", path.display()),
        )
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(SecurityError::new(
                ErrorKind::Forbidden,
                "鍵ファイルの権限が広すぎます(0600にしてください)",
                format!(
                    "key file {} is accessible by group or others; chmod 600",
                    path.display()
                ),
            ));
        }
    }
    if meta.len() != KEY_LEN as u64 {
        return Err(SecurityError::invalid(
            "鍵ファイルの長さが正しくありません",
            "key file must hold exactly 32 bytes",
        ));
    }
    let bytes = fs::read(path)?;
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(&bytes);
    Ok(key)
}

fn key_id(key: &[u8; KEY_LEN]) -> [u8; 8] {
    let d = Sha256::new()
        .chain_update(b"iryo-backup-key-id\0")
        .chain_update(key)
        .finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&d[..8]);
    id
}

/// One file in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Relative path with `/` separators.
    pub path: String,
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// The authenticated table of contents of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub created: DateTime<Utc>,
    pub files: Vec<ManifestEntry>,
    pub total_size: u64,
}

fn tampered(en: impl Into<String>) -> SecurityError {
    SecurityError::integrity("バックアップが改ざんされているか、破損しています", en)
}

fn truncated() -> SecurityError {
    SecurityError::integrity(
        "バックアップが途中で切れています",
        "backup container is truncated",
    )
}

fn aad(header: &[u8], counter: u64, last: bool) -> Vec<u8> {
    let mut a = Vec::with_capacity(header.len() + 9);
    a.extend_from_slice(header);
    a.extend_from_slice(&counter.to_be_bytes());
    a.push(u8::from(last));
    a
}

fn nonce(prefix: &[u8], counter: u64) -> Result<[u8; 12]> {
    let c = u32::try_from(counter)
        .map_err(|_| SecurityError::invalid("バックアップが大きすぎます", "too many chunks"))?;
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(prefix);
    n[8..].copy_from_slice(&c.to_be_bytes());
    Ok(n)
}

/// Encrypting writer of the chunk stream.
struct ChunkWriter<W: Write> {
    out: W,
    cipher: Aes256Gcm,
    header: [u8; HEADER_LEN],
    buf: Vec<u8>,
    counter: u64,
}

impl<W: Write> ChunkWriter<W> {
    fn new(mut out: W, key: &[u8; KEY_LEN], now: DateTime<Utc>) -> Result<Self> {
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8] = 1; // version
        header[12..16].copy_from_slice(&(CHUNK_SIZE as u32).to_be_bytes());
        header[16..24].copy_from_slice(&key_id(key));
        rand::rngs::OsRng.fill_bytes(&mut header[24..32]);
        header[32..40].copy_from_slice(&now.timestamp().to_be_bytes());
        out.write_all(&header)?;
        Ok(ChunkWriter {
            out,
            cipher: Aes256Gcm::new_from_slice(key).map_err(SecurityError::crypto)?,
            header,
            buf: Vec::with_capacity(CHUNK_SIZE),
            counter: 0,
        })
    }

    fn seal(&mut self, last: bool) -> Result<()> {
        let n = nonce(&self.header[24..32], self.counter)?;
        let a = aad(&self.header, self.counter, last);
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&n),
                Payload {
                    msg: &self.buf,
                    aad: &a,
                },
            )
            .map_err(SecurityError::crypto)?;
        self.out.write_all(&(ct.len() as u32).to_be_bytes())?;
        self.out.write_all(&ct)?;
        self.buf.clear();
        self.counter += 1;
        Ok(())
    }

    fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let room = CHUNK_SIZE - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK_SIZE {
                self.seal(false)?;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<W> {
        self.seal(true)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Decrypting reader of the chunk stream.
struct ChunkReader<R: Read> {
    input: R,
    cipher: Aes256Gcm,
    header: [u8; HEADER_LEN],
    plain: Vec<u8>,
    pos: usize,
    counter: u64,
    done: bool,
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

impl<R: Read> ChunkReader<R> {
    fn new(mut input: R, key: &[u8; KEY_LEN]) -> Result<Self> {
        let mut header = [0u8; HEADER_LEN];
        if read_full(&mut input, &mut header)? < HEADER_LEN {
            return Err(truncated());
        }
        if &header[..8] != MAGIC || header[8] != 1 {
            return Err(tampered(
                "not an iryo backup container (bad magic or version)",
            ));
        }
        if u32::from_be_bytes([header[12], header[13], header[14], header[15]]) as usize
            != CHUNK_SIZE
        {
            return Err(tampered("unexpected chunk size"));
        }
        if header[16..24] != key_id(key) {
            return Err(SecurityError::new(
                ErrorKind::Unauthenticated,
                "バックアップの鍵が違います",
                "wrong key for this backup",
            ));
        }
        Ok(ChunkReader {
            input,
            cipher: Aes256Gcm::new_from_slice(key).map_err(SecurityError::crypto)?,
            header,
            plain: Vec::new(),
            pos: 0,
            counter: 0,
            done: false,
        })
    }

    fn created(&self) -> i64 {
        i64::from_be_bytes(self.header[32..40].try_into().unwrap_or([0; 8]))
    }

    /// Loads the next chunk; false at the end of the stream.
    fn next_chunk(&mut self) -> Result<bool> {
        if self.done {
            return Ok(false);
        }
        let mut len = [0u8; 4];
        if read_full(&mut self.input, &mut len)? < 4 {
            return Err(truncated());
        }
        let len = u32::from_be_bytes(len) as usize;
        if !(TAG_LEN..=CHUNK_SIZE + TAG_LEN).contains(&len) {
            return Err(tampered("chunk length out of range"));
        }
        let mut ct = vec![0u8; len];
        if read_full(&mut self.input, &mut ct)? < len {
            return Err(truncated());
        }
        let n = nonce(&self.header[24..32], self.counter)?;
        // A chunk opens either as a middle chunk or as the final one.
        let (pt, last) = match self.cipher.decrypt(
            Nonce::from_slice(&n),
            Payload {
                msg: &ct,
                aad: &aad(&self.header, self.counter, false),
            },
        ) {
            Ok(p) => (p, false),
            Err(_) => {
                let p = self
                    .cipher
                    .decrypt(
                        Nonce::from_slice(&n),
                        Payload {
                            msg: &ct,
                            aad: &aad(&self.header, self.counter, true),
                        },
                    )
                    .map_err(|_| {
                        tampered(format!("chunk {} failed authentication", self.counter))
                    })?;
                (p, true)
            }
        };
        if !last && pt.len() != CHUNK_SIZE {
            return Err(tampered("short middle chunk"));
        }
        self.counter += 1;
        self.plain = pt;
        self.pos = 0;
        if last {
            self.done = true;
            let mut extra = [0u8; 1];
            if read_full(&mut self.input, &mut extra)? != 0 {
                return Err(tampered("data after the final chunk"));
            }
        }
        Ok(true)
    }

    fn read_exact(&mut self, mut out: &mut [u8]) -> Result<()> {
        while !out.is_empty() {
            if self.pos == self.plain.len() && !self.next_chunk()? {
                return Err(tampered("record runs past the end of the stream"));
            }
            let take = (self.plain.len() - self.pos).min(out.len());
            out[..take].copy_from_slice(&self.plain[self.pos..self.pos + take]);
            self.pos += take;
            out = &mut out[take..];
        }
        Ok(())
    }

    fn at_end(&mut self) -> Result<bool> {
        while self.pos == self.plain.len() {
            if !self.next_chunk()? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn read_u8(&mut self) -> Result<u8> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b)?;
        Ok(b[0])
    }
}

fn collect_files(root: &Path, rel: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(root.join(rel))?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let ft = e.file_type()?;
        let name = e.file_name();
        let rel_path = rel.join(&name);
        if ft.is_symlink() {
            return Err(SecurityError::invalid(
                "バックアップ対象にシンボリックリンクがあります",
                format!(
                    "symbolic link not supported in backup: {}",
                    rel_path.display()
                ),
            ));
        } else if ft.is_dir() {
            collect_files(root, &rel_path, out)?;
        } else if ft.is_file() {
            let s = rel_path
                .components()
                .map(|c| c.as_os_str().to_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    SecurityError::invalid("ファイル名が不正です", "file name is not UTF-8")
                })?
                .join("/");
            out.push((s, root.join(&rel_path)));
        }
    }
    Ok(())
}

/// Encrypts every regular file under `src` into the container `dest`
/// (written to a temporary name, synced, then renamed). Returns the manifest.
pub fn encrypt_dir(
    src: &Path,
    dest: &Path,
    key: &[u8; KEY_LEN],
    now: DateTime<Utc>,
) -> Result<Manifest> {
    let src_abs = fs::canonicalize(src)?;
    let dest_dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if fs::canonicalize(dest_dir).is_ok_and(|d| d.starts_with(&src_abs)) {
        return Err(SecurityError::invalid(
            "バックアップの保存先をバックアップ対象の中に置くことはできません",
            "the backup container must not be inside the directory being backed up",
        ));
    }
    let mut files = Vec::new();
    collect_files(src, Path::new(""), &mut files)?;
    let tmp = dest.with_extension(format!("partial-{}", crate::random_token(6)));
    let result = (|| {
        let f = File::create(&tmp)?;
        let mut w = ChunkWriter::new(BufWriter::new(f), key, now)?;
        let mut manifest = Manifest {
            format: "iryo-backup/1".into(),
            created: now,
            files: Vec::new(),
            total_size: 0,
        };
        let mut buf = vec![0u8; 64 * 1024];
        for (rel, path) in &files {
            let mut f = File::open(path)?;
            let size = f.metadata()?.len();
            let path_bytes = rel.as_bytes();
            let plen = u16::try_from(path_bytes.len())
                .map_err(|_| SecurityError::invalid("ファイル名が長すぎます", "path too long"))?;
            w.write(&[REC_FILE])?;
            w.write(&plen.to_be_bytes())?;
            w.write(path_bytes)?;
            w.write(&size.to_be_bytes())?;
            let mut hasher = Sha256::new();
            let mut left = size;
            while left > 0 {
                let want = (buf.len() as u64).min(left) as usize;
                let n = read_full(&mut f, &mut buf[..want])?;
                if n < want {
                    return Err(SecurityError::storage(format!(
                        "{rel} shrank while being backed up"
                    )));
                }
                hasher.update(&buf[..n]);
                w.write(&buf[..n])?;
                left -= n as u64;
            }
            manifest.total_size += size;
            manifest.files.push(ManifestEntry {
                path: rel.clone(),
                size,
                sha256: hex::encode(hasher.finalize()),
            });
        }
        let mj = serde_json::to_vec(&manifest).map_err(SecurityError::storage)?;
        w.write(&[REC_MANIFEST])?;
        w.write(&(mj.len() as u32).to_be_bytes())?;
        w.write(&mj)?;
        let out = w.finish()?;
        out.into_inner()
            .map_err(|e| SecurityError::storage(e.error()))?
            .sync_all()?;
        fs::rename(&tmp, dest)?;
        Ok(manifest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn check_rel_path(p: &str) -> Result<PathBuf> {
    let path = Path::new(p);
    let ok = !p.is_empty()
        && !p.contains('\\')
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    if !ok {
        return Err(tampered(format!("unsafe path in backup: {p}")));
    }
    Ok(path.to_path_buf())
}

/// Reads the whole container; when `dest` is given, writes each file under it.
fn process(container: &Path, key: &[u8; KEY_LEN], dest: Option<&Path>) -> Result<Manifest> {
    let f = File::open(container).map_err(|e| {
        SecurityError::new(
            ErrorKind::NotFound,
            "バックアップが見つかりません",
            format!("{}: {e}", container.display()),
        )
    })?;
    let mut r = ChunkReader::new(BufReader::new(f), key)?;
    let mut seen: Vec<ManifestEntry> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if r.at_end()? {
            return Err(tampered("manifest missing"));
        }
        match r.read_u8()? {
            REC_FILE => {
                let mut l = [0u8; 2];
                r.read_exact(&mut l)?;
                let mut p = vec![0u8; u16::from_be_bytes(l) as usize];
                r.read_exact(&mut p)?;
                let p = String::from_utf8(p).map_err(|_| tampered("path is not UTF-8"))?;
                let rel = check_rel_path(&p)?;
                let mut s = [0u8; 8];
                r.read_exact(&mut s)?;
                let size = u64::from_be_bytes(s);
                let mut out = match dest {
                    Some(d) => {
                        let target = d.join(&rel);
                        if let Some(parent) = target.parent() {
                            fs::create_dir_all(parent)?;
                        }
                        Some(BufWriter::new(
                            OpenOptions::new()
                                .write(true)
                                .create_new(true)
                                .open(target)?,
                        ))
                    }
                    None => None,
                };
                let mut hasher = Sha256::new();
                let mut left = size;
                while left > 0 {
                    let n = (buf.len() as u64).min(left) as usize;
                    r.read_exact(&mut buf[..n])?;
                    hasher.update(&buf[..n]);
                    if let Some(o) = out.as_mut() {
                        o.write_all(&buf[..n])?;
                    }
                    left -= n as u64;
                }
                if let Some(o) = out {
                    o.into_inner()
                        .map_err(|e| SecurityError::storage(e.error()))?
                        .sync_all()?;
                }
                seen.push(ManifestEntry {
                    path: p,
                    size,
                    sha256: hex::encode(hasher.finalize()),
                });
            }
            REC_MANIFEST => {
                let mut l = [0u8; 4];
                r.read_exact(&mut l)?;
                let len = u32::from_be_bytes(l) as usize;
                if len > MAX_MANIFEST {
                    return Err(tampered("manifest too large"));
                }
                let mut m = vec![0u8; len];
                r.read_exact(&mut m)?;
                let manifest: Manifest = serde_json::from_slice(&m)
                    .map_err(|e| tampered(format!("manifest unreadable: {e}")))?;
                if !r.at_end()? {
                    return Err(tampered("data after the manifest"));
                }
                if manifest.files != seen {
                    return Err(tampered("files do not match the manifest"));
                }
                if manifest.created.timestamp() != r.created() {
                    return Err(tampered("manifest time differs from the header"));
                }
                return Ok(manifest);
            }
            _ => return Err(tampered("unknown record type")),
        }
    }
}

/// Verifies a container completely (authentication of every chunk, file
/// hashes, manifest) without writing anything.
pub fn verify_backup(container: &Path, key: &[u8; KEY_LEN]) -> Result<Manifest> {
    process(container, key, None)
}

/// Restores a container into `dest`, which must not exist yet (or be an
/// empty directory). Verifies everything first; writes nothing on failure.
pub fn decrypt_to(container: &Path, dest: &Path, key: &[u8; KEY_LEN]) -> Result<Manifest> {
    if dest.exists() {
        let empty = dest.is_dir() && fs::read_dir(dest)?.next().is_none();
        if !empty {
            return Err(SecurityError::new(
                ErrorKind::Conflict,
                "復元先が空ではありません",
                format!(
                    "restore destination {} exists and is not empty",
                    dest.display()
                ),
            ));
        }
    }
    verify_backup(container, key)?;
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("restore");
    let staging = parent.join(format!(".{name}.restoring-{}", crate::random_token(6)));
    fs::create_dir_all(&staging)?;
    match process(container, key, Some(&staging)) {
        Ok(m) => {
            if dest.exists() {
                fs::remove_dir(dest)?;
            }
            fs::rename(&staging, dest)?;
            Ok(m)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// File name of a backup made at `now`: `iryo-backup-YYYYMMDDTHHMMSSZ.ibk`
/// (sorts chronologically).
pub fn backup_file_name(now: DateTime<Utc>) -> String {
    format!("iryo-backup-{}.ibk", now.format("%Y%m%dT%H%M%SZ"))
}

/// Keeps the newest `keep` backups (`iryo-backup-*.ibk`) in `dir` and
/// deletes older ones. Returns the deleted paths.
pub fn rotate_generations(dir: &Path, keep: usize) -> Result<Vec<PathBuf>> {
    if keep == 0 {
        return Err(SecurityError::invalid(
            "保持する世代数は1以上にしてください",
            "keep must be at least 1",
        ));
    }
    let mut found: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("iryo-backup-") && n.ends_with(".ibk"))
        })
        .collect();
    found.sort();
    let excess = found.len().saturating_sub(keep);
    let removed: Vec<PathBuf> = found.drain(..excess).collect();
    for p in &removed {
        fs::remove_file(p)?;
    }
    Ok(removed)
}

/// Consistent copy of a live SQLite database (online backup API) into the
/// file `dest`, for [`encrypt_dir`]. Other connections may keep writing.
pub fn sqlite_snapshot(src: &rusqlite::Connection, dest: &Path) -> Result<()> {
    let mut out = rusqlite::Connection::open(dest)?;
    let b = rusqlite::backup::Backup::new(src, &mut out)?;
    b.run_to_completion(256, std::time::Duration::from_millis(5), None)?;
    Ok(())
}
