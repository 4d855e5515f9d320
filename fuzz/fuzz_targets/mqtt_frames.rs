//! The embedded MQTT broker's relay (`adapters::mqtt::listener`): the frame splitter that
//! every client byte goes through before rumqttd sees it, and the peek at a PUBLISH's topic
//! for the gateway's tap. Fed in pieces as reads would cut it, the stream splits into the
//! same frames as fed whole, no frame is over the limit, and nothing panics.

#![no_main]

use aiot::adapters::mqtt::listener::{publishes_to_nodes, split_frame};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

const MAX_FRAME: usize = 4096;

fn frames(pieces: &[&[u8]]) -> (Vec<(u8, Vec<u8>)>, bool) {
    let mut read = BytesMut::new();
    let mut out = Vec::new();
    for piece in pieces {
        read.extend_from_slice(piece);
        loop {
            match split_frame(&mut read, MAX_FRAME) {
                Ok(Some((kind, frame))) => {
                    assert!(frame.len() <= MAX_FRAME);
                    assert_eq!(kind, frame[0] >> 4);
                    if kind == 3 {
                        let _ = publishes_to_nodes(&frame);
                    }
                    out.push((kind, frame.to_vec()));
                }
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(stream.len());
    let whole = frames(&[stream]);
    let split = frames(&[&stream[..cut], &stream[cut..]]);
    assert_eq!(whole, split);
});
