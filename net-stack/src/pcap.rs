//! pcap capture of the frames crossing the virtual NIC, via the `pcap-file` crate.

use std::io::Write;

use pcap_file::pcap::{PcapHeader, PcapPacket};
use pcap_file::{DataLink, Endianness, TsResolution};
use smoltcp::time::Instant;

use crate::observer::{Direction, FrameObserver};

/// A `FrameObserver` that writes each frame as a pcap record (LINKTYPE_ETHERNET, microseconds;
/// timestamps are the stack's `Instant`s, i.e. whatever clock the driver passes to `poll`).
pub struct PcapWriter<W: Write> {
    writer: pcap_file::pcap::PcapWriter<W>,
    error: Option<std::io::Error>,
}

fn io_error(err: pcap_file::PcapError) -> std::io::Error {
    match err {
        pcap_file::PcapError::IoError(err) => err,
        other => std::io::Error::other(other.to_string()),
    }
}

impl<W: Write> PcapWriter<W> {
    /// Writes the pcap global header to `writer` (little-endian, snaplen 65535).
    pub fn new(writer: W) -> std::io::Result<Self> {
        let header = PcapHeader {
            endianness: Endianness::Little,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::MicroSecond,
            ..PcapHeader::default()
        };
        let writer = pcap_file::pcap::PcapWriter::with_header(writer, header).map_err(io_error)?;
        Ok(PcapWriter {
            writer,
            error: None,
        })
    }

    /// Writes one frame; `on_frame` calls this and keeps the first error for `take_error`.
    pub fn write_frame(&mut self, frame: &[u8], now: Instant) -> std::io::Result<()> {
        let micros = u64::try_from(now.total_micros()).unwrap_or(0);
        let timestamp = std::time::Duration::from_micros(micros);
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        self.writer
            .write_packet(&PcapPacket::new(timestamp, len, frame))
            .map(|_| ())
            .map_err(io_error)
    }

    /// The first write error seen by `on_frame`, if any (later frames are not written).
    pub fn take_error(&mut self) -> Option<std::io::Error> {
        self.error.take()
    }

    /// The underlying writer.
    pub fn into_inner(self) -> W {
        self.writer.into_writer()
    }
}

impl<W: Write> FrameObserver for PcapWriter<W> {
    fn on_frame(&mut self, _direction: Direction, frame: &[u8], now: Instant) {
        if self.error.is_none() {
            if let Err(err) = self.write_frame(frame, now) {
                self.error = Some(err);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn writes_header_and_records_byte_exact() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        w.on_frame(
            Direction::ToGuest,
            &[1, 2, 3],
            Instant::from_micros(2_000_005),
        );
        let bytes = w.into_inner();
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, // magic (LE, µs), version 2.4
            0, 0, 0, 0, 0, 0, 0, 0,             // thiszone, sigfigs
            0xff, 0xff, 0, 0, 1, 0, 0, 0,       // snaplen 65535, LINKTYPE_ETHERNET
            2, 0, 0, 0, 5, 0, 0, 0,             // ts 2 s 5 µs
            3, 0, 0, 0, 3, 0, 0, 0,             // incl_len, orig_len
            1, 2, 3,
        ];
        assert_eq!(bytes, expected);
    }
}
