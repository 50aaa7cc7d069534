//! The bodies the origins serve and the checks compare against: the deterministic blob
//! (whole, or streamed by [`BlobReader`]) and sha256 in hex.

use sha2::{Digest, Sha256};

/// The deterministic body served at `/blob/<len>`: xorshift output no compressor or dedup
/// can fake.
pub fn blob(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 4);
    let mut x: u32 = 0x9e37_79b9;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// [`blob`]'s bytes produced as they are read, so a large body costs no memory.
pub struct BlobReader {
    x: u32,
    left: usize,
    /// Bytes of the current word not handed out yet (little-endian, like [`blob`]).
    pending: [u8; 4],
    pending_len: usize,
}

impl BlobReader {
    /// The first `len` bytes of the blob.
    pub fn new(len: usize) -> Self {
        Self {
            x: 0x9e37_79b9,
            left: len,
            pending: [0; 4],
            pending_len: 0,
        }
    }
}

impl std::io::Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min(self.left);
        let mut n = 0;
        while n < want {
            if self.pending_len == 0 {
                self.x ^= self.x << 13;
                self.x ^= self.x >> 17;
                self.x ^= self.x << 5;
                self.pending = self.x.to_le_bytes();
                self.pending_len = 4;
            }
            let start = 4 - self.pending_len;
            let take = (want - n).min(self.pending_len);
            buf[n..n + take].copy_from_slice(&self.pending[start..start + take]);
            self.pending_len -= take;
            n += take;
        }
        self.left -= n;
        Ok(n)
    }
}

/// Hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn blob_reader_yields_the_blob_whatever_the_read_sizes() {
        for len in [0, 1, 3, 4, 5, 1000, 65_537] {
            for step in [1, 3, 4, 7, 4096, 100_000] {
                let mut reader = BlobReader::new(len);
                let mut out = Vec::new();
                let mut buf = vec![0; step];
                loop {
                    let n = reader.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    out.extend_from_slice(&buf[..n]);
                }
                assert_eq!(out, blob(len), "len {len}, reads of {step}");
            }
        }
    }
}
