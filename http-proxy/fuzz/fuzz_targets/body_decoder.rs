//! The request body decoder (Content-Length and chunked, with extensions and trailers) over
//! arbitrary input split at arbitrary points: pieces stay within the limit, a Content-Length
//! body is exactly its length, and the outcome does not depend on how the bytes were split.
#![no_main]

use bytes::BytesMut;
use http_proxy::body::decode::{DecodeError, Decoder, RequestFraming, Step};
use libfuzzer_sys::fuzz_target;

/// What decoding produced: the body bytes, whether it completed, and the error if any.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    body: Vec<u8>,
    done: bool,
    error: Option<DecodeError>,
}

fn run(framing: RequestFraming, max_line: usize, max_piece: usize, pieces: &[&[u8]]) -> Outcome {
    let mut decoder = Decoder::new(framing, max_line, max_piece);
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut pieces = pieces.iter();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Step::Data(d)) => {
                assert!(
                    !d.is_empty() && d.len() <= max_piece.max(1),
                    "bad piece size"
                );
                body.extend_from_slice(&d);
            }
            Ok(Step::NeedMore) => match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None => {
                    let error = decoder.finish().err();
                    return Outcome {
                        body,
                        done: false,
                        error,
                    };
                }
            },
            Ok(Step::Done) => {
                assert!(decoder.is_done() && decoder.finish().is_ok());
                // Done is final.
                assert_eq!(decoder.decode(&mut buf), Ok(Step::Done));
                return Outcome {
                    body,
                    done: true,
                    error: None,
                };
            }
            Err(err) => {
                return Outcome {
                    body,
                    done: false,
                    error: Some(err),
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // [mode][max_line][max_piece][length: u16 BE][n splits][splits: n bytes][body...]
    if data.len() < 6 {
        return;
    }
    let framing = match data[0] % 3 {
        0 => RequestFraming::Chunked,
        1 => RequestFraming::Length(u64::from(u16::from_be_bytes([data[3], data[4]]))),
        _ => RequestFraming::Empty,
    };
    let max_line = 1 + usize::from(data[1]);
    let max_piece = usize::from(data[2]);
    let n = usize::from(data[5] % 16).min(data.len() - 6);
    let splits = &data[6..6 + n];
    let input = &data[6 + n..];
    let mut pieces = Vec::new();
    let mut rest = input;
    for &s in splits.iter().cycle().take(if n == 0 { 0 } else { 4096 }) {
        if rest.is_empty() {
            break;
        }
        let k = (usize::from(s) + 1).min(rest.len());
        pieces.push(&rest[..k]);
        rest = &rest[k..];
    }
    if !rest.is_empty() {
        pieces.push(rest);
    }
    let split = run(framing, max_line, max_piece, &pieces);
    let whole = run(framing, max_line, max_piece, &[input]);
    let bytewise: Vec<&[u8]> = input.chunks(1).collect();
    let bytes = run(framing, max_line, max_piece, &bytewise);
    assert_eq!(split, whole, "outcome depends on the split");
    assert_eq!(bytes, whole, "outcome depends on the split (byte by byte)");
    if let RequestFraming::Length(len) = framing {
        let expected = (len as usize).min(input.len());
        assert_eq!(whole.body, &input[..expected]);
        assert_eq!(whole.done, input.len() >= len as usize);
    }
});
