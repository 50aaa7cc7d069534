//! The QEMU stream decoder fed arbitrary bytes in arbitrary chunks: frames come out within the
//! size limit, the buffer stays bounded, and a decode error is sticky.
#![no_main]

use libfuzzer_sys::fuzz_target;
use net_stack::qemu::{encode_frame, FrameDecoder};

fuzz_target!(|data: &[u8]| {
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let max_frame_len = 1 + usize::from(first) * 8;
    let mut decoder = FrameDecoder::new(max_frame_len);
    let mut frames = Vec::new();
    let mut failed = false;
    while let Some((&chunk, tail)) = rest.split_first() {
        let n = usize::from(chunk).min(tail.len());
        decoder.push(&tail[..n]);
        rest = &tail[n..];
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    assert!(!failed, "a frame after a decode error");
                    assert!(!frame.is_empty() && frame.len() <= max_frame_len);
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        // After `Ok(None)` at most one incomplete frame and its prefix are buffered.
        assert!(
            decoder.buffered() < 4 + max_frame_len,
            "decoder buffer grew"
        );
    }
    // Re-encoding the frames decodes to the same frames.
    let mut encoded = Vec::new();
    for f in &frames {
        encode_frame(f, &mut encoded);
    }
    let mut again = FrameDecoder::new(max_frame_len);
    again.push(&encoded);
    for f in &frames {
        assert_eq!(again.next_frame().unwrap().as_ref(), Some(f));
    }
    assert_eq!(again.next_frame().unwrap(), None);
});
