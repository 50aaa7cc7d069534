//! Wisp packets: whatever parses emits back to the same bytes (parsing is strict, so the
//! encoding is canonical), and every extension entry that decodes re-encodes to an entry that
//! decodes to the same value.
#![no_main]

use fetch_transport::wisp::packet::{ClientExtension, Packet, Payload, ServerExtension};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let packet = match Packet::parse(data) {
        Ok(packet) => packet,
        Err(err) => {
            let _ = err.to_string();
            return;
        }
    };
    let bytes = packet.to_vec();
    assert_eq!(bytes.len(), packet.buffer_len());
    assert_eq!(bytes, data, "emit(parse(x)) == x");
    assert_eq!(Packet::parse(&bytes).as_ref(), Ok(&packet));

    let Payload::Info(info) = &packet.payload else {
        return;
    };
    for raw in &info.extensions {
        if let Ok(ext) = ServerExtension::parse(raw) {
            let encoded = ext.to_raw().expect("a decoded server entry encodes");
            assert_eq!(encoded.id(), raw.id());
            assert_eq!(ServerExtension::parse(&encoded).as_ref(), Ok(&ext));
        }
        if let Ok(ext) = ClientExtension::parse(raw) {
            // Client entries have no flags to normalise: the bytes come back unchanged.
            let encoded = ext.to_raw().expect("a decoded client entry encodes");
            assert_eq!(&encoded, raw);
        }
    }
});
