//! Minimal reader for the ZIP archives the 支払基金 publishes (stored or deflated entries).
//! Only what the master import needs: list entries and inflate them into memory.

use crate::error::{FeeError, Result};
use std::io::Read;

/// One file inside a ZIP archive, fully inflated.
pub struct ZipEntry {
    pub name: String,
    pub data: Vec<u8>,
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

/// Read every file entry of an archive held in memory. Directories are skipped.
pub fn read_zip(file: &str, bytes: &[u8]) -> Result<Vec<ZipEntry>> {
    let err = |reason: &str| FeeError::Zip {
        file: file.to_string(),
        reason: reason.to_string(),
    };
    // End of central directory: signature 0x06054b50, searched backwards (comment ≤ 65535 bytes).
    if bytes.len() < 22 {
        return Err(err("too short"));
    }
    let lowest = bytes.len().saturating_sub(22 + 65535);
    let mut eocd = None;
    let mut i = bytes.len() - 22;
    loop {
        if u32_at(bytes, i) == Some(0x0605_4b50) {
            eocd = Some(i);
            break;
        }
        if i == lowest {
            break;
        }
        i -= 1;
    }
    let eocd = eocd.ok_or_else(|| err("no end-of-central-directory record"))?;
    let count = u16_at(bytes, eocd + 10).ok_or_else(|| err("truncated"))? as usize;
    let mut pos = u32_at(bytes, eocd + 16).ok_or_else(|| err("truncated"))? as usize;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        if u32_at(bytes, pos) != Some(0x0201_4b50) {
            return Err(err("bad central directory entry"));
        }
        let flags = u16_at(bytes, pos + 8).ok_or_else(|| err("truncated"))?;
        let method = u16_at(bytes, pos + 10).ok_or_else(|| err("truncated"))?;
        let csize = u32_at(bytes, pos + 20).ok_or_else(|| err("truncated"))? as usize;
        let usize_ = u32_at(bytes, pos + 24).ok_or_else(|| err("truncated"))? as usize;
        let nlen = u16_at(bytes, pos + 28).ok_or_else(|| err("truncated"))? as usize;
        let xlen = u16_at(bytes, pos + 30).ok_or_else(|| err("truncated"))? as usize;
        let clen = u16_at(bytes, pos + 32).ok_or_else(|| err("truncated"))? as usize;
        let local = u32_at(bytes, pos + 42).ok_or_else(|| err("truncated"))? as usize;
        let raw_name = bytes
            .get(pos + 46..pos + 46 + nlen)
            .ok_or_else(|| err("truncated name"))?;
        let name = if flags & 0x0800 != 0 {
            String::from_utf8_lossy(raw_name).into_owned()
        } else {
            encoding_rs::SHIFT_JIS.decode(raw_name).0.into_owned()
        };
        pos += 46 + nlen + xlen + clen;
        if name.ends_with('/') {
            continue;
        }
        if u32_at(bytes, local) != Some(0x0403_4b50) {
            return Err(err("bad local header"));
        }
        let lnlen = u16_at(bytes, local + 26).ok_or_else(|| err("truncated"))? as usize;
        let lxlen = u16_at(bytes, local + 28).ok_or_else(|| err("truncated"))? as usize;
        let start = local + 30 + lnlen + lxlen;
        let body = bytes
            .get(start..start + csize)
            .ok_or_else(|| err("entry runs past end of file"))?;
        let data = match method {
            0 => body.to_vec(),
            8 => {
                let mut v = Vec::with_capacity(usize_);
                flate2::read::DeflateDecoder::new(body)
                    .read_to_end(&mut v)
                    .map_err(|e| err(&format!("inflate failed: {e}")))?;
                v
            }
            m => return Err(err(&format!("unsupported compression method {m}"))),
        };
        out.push(ZipEntry { name, data });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(read_zip("x.zip", b"not a zip").is_err());
        let mut fake = vec![0u8; 40];
        fake[18..22].copy_from_slice(&0x0605_4b50u32.to_le_bytes());
        fake[28..30].copy_from_slice(&5u16.to_le_bytes());
        assert!(read_zip("x.zip", &fake).is_err());
    }
}
