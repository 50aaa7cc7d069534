//! QEMU stream framing (`-netdev stream`/`socket`): each frame is preceded by its length as a
//! 4-byte big-endian integer. A sans-IO decoder fed arbitrary chunks, and the encoder.

/// Beyond this length prefix the stream is not QEMU framing (or lost sync): nothing after it can
/// be trusted, so the decoder fails instead of guessing.
pub const MAX_TRUSTED_LEN: usize = 64 * 1024;

/// The byte stream cannot be decoded any further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A length prefix above 64 KiB: not QEMU framing, or the stream lost sync.
    #[error("frame length {0} exceeds 65536 bytes: the stream is not QEMU framing or lost sync")]
    LengthUntrusted(u32),
}

/// Splits a QEMU framed byte stream into frames, whatever the chunking of `push`.
///
/// Frames longer than `max_frame_len` (but within 64 KiB) and empty frames are skipped and
/// counted in `dropped`; at most one frame plus one chunk is ever buffered.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    max_frame_len: usize,
    skip: usize,
    dropped: u64,
    error: Option<DecodeError>,
}

impl FrameDecoder {
    /// A decoder that delivers frames of at most `max_frame_len` bytes.
    pub fn new(max_frame_len: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            max_frame_len,
            skip: 0,
            dropped: 0,
            error: None,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, mut bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if self.skip > 0 {
            let n = self.skip.min(bytes.len());
            self.skip -= n;
            bytes = &bytes[n..];
        }
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed, or the error that stops
    /// the stream (returned again on every later call).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        loop {
            if let Some(err) = self.error {
                return Err(err);
            }
            let pending = &self.buf[self.start..];
            let Some(prefix) = pending.get(..4) else {
                return Ok(None);
            };
            let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
            let n = len as usize;
            if n > MAX_TRUSTED_LEN {
                self.error = Some(DecodeError::LengthUntrusted(len));
                self.buf = Vec::new();
                self.start = 0;
                continue;
            }
            if n == 0 || n > self.max_frame_len {
                // Skip it: drop what is buffered of it and the rest as it arrives.
                self.dropped += 1;
                let available = pending.len() - 4;
                if available >= n {
                    self.start += 4 + n;
                } else {
                    self.skip = n - available;
                    self.buf.clear();
                    self.start = 0;
                }
                continue;
            }
            if pending.len() < 4 + n {
                return Ok(None);
            }
            let frame = pending[4..4 + n].to_vec();
            self.start += 4 + n;
            if self.start == self.buf.len() {
                self.buf.clear();
                self.start = 0;
            }
            return Ok(Some(frame));
        }
    }

    /// Frames skipped so far (empty or longer than `max_frame_len`).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// Appends `frame` with its length prefix to `out`.
///
/// # Panics
/// If `frame` is longer than `u32::MAX` bytes (no Ethernet frame is).
pub fn encode_frame(frame: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(frame.len()).expect("frame longer than 4 GiB");
    out.reserve(4 + frame.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(frame);
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn frames() -> Vec<Vec<u8>> {
        (0..20u8)
            .map(|i| {
                (0..(i as usize * 97 % 1500 + 1))
                    .map(|j| (j as u8) ^ i)
                    .collect()
            })
            .collect()
    }

    fn stream(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            encode_frame(f, &mut out);
        }
        out
    }

    fn drain(d: &mut FrameDecoder, out: &mut Vec<Vec<u8>>) {
        while let Some(f) = d.next_frame().unwrap() {
            out.push(f);
        }
    }

    #[test]
    fn encodes_length_prefix() {
        let mut out = vec![9];
        encode_frame(&[1, 2, 3], &mut out);
        assert_eq!(out, [9, 0, 0, 0, 3, 1, 2, 3]);
    }

    #[test]
    fn byte_by_byte_round_trip() {
        let frames = frames();
        let bytes = stream(&frames);
        let mut d = FrameDecoder::new(1514);
        let mut got = Vec::new();
        for b in &bytes {
            d.push(std::slice::from_ref(b));
            drain(&mut d, &mut got);
        }
        assert_eq!(got, frames);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn random_splits_round_trip() {
        let frames = frames();
        let bytes = stream(&frames);
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..50 {
            let mut d = FrameDecoder::new(1514);
            let mut got = Vec::new();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let n = ((seed >> 33) as usize % 3000 + 1).min(rest.len());
                d.push(&rest[..n]);
                rest = &rest[n..];
                drain(&mut d, &mut got);
            }
            assert_eq!(got, frames);
        }
    }

    #[test]
    fn zero_length_and_oversized_frames_are_skipped() {
        let mut bytes = Vec::new();
        encode_frame(&[], &mut bytes);
        encode_frame(&[7; 2000], &mut bytes);
        encode_frame(&[1, 2], &mut bytes);
        // Oversized frame split so that its tail arrives in a later chunk.
        let mut d = FrameDecoder::new(1514);
        let mut got = Vec::new();
        d.push(&bytes[..100]);
        drain(&mut d, &mut got);
        d.push(&bytes[100..1000]);
        drain(&mut d, &mut got);
        d.push(&bytes[1000..]);
        drain(&mut d, &mut got);
        assert_eq!(got, vec![vec![1, 2]]);
        assert_eq!(d.dropped(), 2);
    }

    #[test]
    fn garbage_prefix_is_an_error_that_sticks() {
        let mut d = FrameDecoder::new(1514);
        d.push(b"GET / HTTP/1.1\r\n");
        let err = d.next_frame().unwrap_err();
        assert_eq!(
            err,
            DecodeError::LengthUntrusted(u32::from_be_bytes(*b"GET "))
        );
        assert!(err.to_string().contains("not QEMU framing"));
        let mut more = Vec::new();
        encode_frame(&[1], &mut more);
        d.push(&more);
        assert_eq!(d.next_frame(), Err(err));
        // Exactly 64 KiB is still trusted (and skipped as oversized).
        let mut d = FrameDecoder::new(1514);
        d.push(&(MAX_TRUSTED_LEN as u32).to_be_bytes());
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.dropped(), 1);
    }
}
