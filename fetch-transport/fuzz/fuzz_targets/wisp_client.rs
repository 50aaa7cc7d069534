//! The Wisp client after a handshake, fed arbitrary server messages interleaved with opens,
//! sends, closes and drains: it must never panic, and what it holds must stay within its
//! configured limits.
//!
//! Input: `[flags]` then operations. flags bit 0: v2 handshake (else v1); bits 1-2: the v2
//! server's password extension (none / optional / required); bit 3: credentials configured;
//! bit 4: stream open confirmation offered; bit 5: UDP offered; bits 6-7: initial credit
//! 0 / 1 / 4 / 128. Each operation is a byte whose low 3 bits pick it (see `run`).
#![no_main]

use fetch_transport::wisp::{Client, ClientConfig, CloseReason, Event, StreamId, StreamType};
use libfuzzer_sys::fuzz_target;

const MAX_QUEUED: usize = 256;
const MAX_PENDING_DATA: usize = 256;
const MAX_PENDING_EVENTS: usize = 16;
const MAX_STREAMS: usize = 8;
const MAX_PAYLOAD: usize = 32;
/// The longest message an operation can build: a 1-byte length, or 5 + a 1-byte length.
const MAX_MESSAGE: usize = 5 + 255;

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some(flags) = input.byte() else {
        return;
    };
    let mut config = ClientConfig::builder()
        .max_queued_bytes(MAX_QUEUED)
        .max_pending_data(MAX_PENDING_DATA)
        .max_pending_events(MAX_PENDING_EVENTS)
        .max_open_streams(MAX_STREAMS)
        .max_data_payload(MAX_PAYLOAD);
    if flags & 0b1000 != 0 {
        config = config.password("user", "secret");
    }
    let mut client = Client::new(config.build().expect("valid limits"));
    let credit: u32 = [0, 1, 4, 128][usize::from(flags >> 6)];
    handshake(&mut client, flags, credit);
    run(&mut client, &mut input);
});

fn handshake(client: &mut Client, flags: u8, credit: u32) {
    let mut continue_0 = vec![0x03, 0, 0, 0, 0];
    continue_0.extend_from_slice(&credit.to_le_bytes());
    let password = (flags >> 1) & 0b11;
    let satisfiable = if flags & 1 == 1 {
        let mut info = vec![0x05, 0, 0, 0, 0, 2, 0];
        if flags & 0b10_0000 != 0 {
            info.extend_from_slice(&[0x01, 0, 0, 0, 0]);
        }
        if password != 0 {
            info.extend_from_slice(&[0x02, 1, 0, 0, 0, u8::from(password >= 2)]);
        }
        if flags & 0b1_0000 != 0 {
            info.extend_from_slice(&[0x05, 0, 0, 0, 0]);
        }
        client.handle_message(&info).expect("no events pending");
        let answer = client.poll_transmit().expect("INFO or CLOSE");
        assert!(client.poll_transmit().is_none());
        let satisfiable = password < 2 || flags & 0b1000 != 0;
        assert_eq!(answer[0], if satisfiable { 0x05 } else { 0x04 });
        satisfiable
    } else {
        true
    };
    client
        .handle_message(&continue_0)
        .expect("no events pending");
    assert_eq!(client.is_ready(), satisfiable);
    while client.poll_event().is_some() {}
}

fn stream(input: &mut Input<'_>) -> StreamId {
    StreamId::new(1 + u32::from(input.byte().unwrap_or(0) % 10)).expect("nonzero")
}

fn run(client: &mut Client, input: &mut Input<'_>) {
    while let Some(op) = input.byte() {
        match op & 0b111 {
            // A raw message of up to 255 bytes.
            0 => {
                let len = usize::from(input.byte().unwrap_or(0));
                let _ = client.handle_message(input.bytes(len));
            }
            // A message with a valid type and a small stream ID, so it reaches the streams.
            1 => {
                let kind = 1 + input.byte().unwrap_or(0) % 5;
                let id = u32::from(input.byte().unwrap_or(0) % 10);
                let len = usize::from(input.byte().unwrap_or(0));
                let mut message = vec![kind];
                message.extend_from_slice(&id.to_le_bytes());
                message.extend_from_slice(input.bytes(len));
                let _ = client.handle_message(&message);
            }
            2 => {
                let kind = if op & 0b1000 == 0 {
                    StreamType::Tcp
                } else {
                    StreamType::Udp
                };
                let host = ["example.com", "10.0.0.1", "", "::1"][usize::from(op >> 6)];
                let _ = client.open(kind, host, u16::from(op));
            }
            3 => {
                let id = stream(input);
                let len = usize::from(input.byte().unwrap_or(0) % 100);
                let bytes = input.bytes(len);
                if let Ok(taken) = client.send(id, bytes) {
                    assert!(taken <= bytes.len());
                }
            }
            4 => {
                let id = stream(input);
                let reason = CloseReason::from(input.byte().unwrap_or(2));
                let _ = client.close(id, reason);
            }
            5 => drain_events(client),
            6 => while client.poll_transmit().is_some() {},
            _ => {
                drain_events(client);
                while client.poll_transmit().is_some() {}
            }
        }
        check_bounds(client);
    }
}

fn drain_events(client: &mut Client) {
    while let Some(event) = client.poll_event() {
        if let Event::Data { bytes, .. } = event {
            assert!(bytes.len() <= MAX_MESSAGE);
        }
    }
    assert_eq!(client.pending_events(), (0, 0));
}

fn check_bounds(client: &Client) {
    let (events, data) = client.pending_events();
    // One message past the limit at most: the limit is checked before each message. A CLOSE
    // of the connection adds one event per stream; draining the transmit queue adds at most
    // one Writable per stream.
    assert!(
        events <= MAX_PENDING_EVENTS + 2 * MAX_STREAMS + 2,
        "{events} events"
    );
    assert!(
        data <= MAX_PENDING_DATA + MAX_MESSAGE,
        "{data} bytes pending"
    );
    // One packet past the limit at most (a DATA packet, or a CONNECT/CLOSE): opens are
    // refused once it is reached, but closes are not, so up to one CLOSE per stream too.
    assert!(
        client.queued_transmit_bytes() <= MAX_QUEUED + 5 + MAX_PAYLOAD + MAX_STREAMS * 6,
        "{} bytes queued",
        client.queued_transmit_bytes()
    );
    assert!(client.open_streams() <= MAX_STREAMS);
}
