//! Step 6 of the flow (`hold` mode): where WebSocket frames begin and end in the bytes.
//!
//! The plain-TCP tunnel ([`super::tunnel`]) feeds each direction's bytes to a [`Frames`]
//! as they pass, so that when sluice ends a session itself it knows which peers are
//! between two frames and may be sent a close frame ([`close_frame`]).

use super::Stop;

/// Follows WebSocket frame boundaries in a byte stream (RFC 6455 §5.2): the header of
/// the frame being read, then how much of its payload is still to come. Headers are
/// read byte by byte (at most 14); payloads are skipped whole.
#[derive(Debug, Default)]
pub(super) struct Frames {
    head: [u8; 14],
    have: u8,
    need: u8,
    remaining: u64,
}

impl Frames {
    pub(super) fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// Whether the last whole frame was a close frame: its sender has closed its side of
    /// the WebSocket (RFC 6455 §5.5.1: nothing may follow it).
    pub(super) fn closed(&self) -> bool {
        // At a boundary, `head` still holds the header of the last frame.
        self.at_boundary() && self.head[0] & 0x0f == 0x8
    }

    pub(super) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.remaining -= skip as u64;
                data = &data[skip..];
                continue;
            }
            self.head[usize::from(self.have)] = data[0];
            self.have += 1;
            data = &data[1..];
            if self.have == 2 {
                let ext = match self.head[1] & 0x7f {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
                self.need = 2 + ext + mask;
            }
            if self.have >= 2 && self.have == self.need {
                let h = &self.head;
                self.remaining = match h[1] & 0x7f {
                    126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
                    127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
                    n => u64::from(n),
                };
                self.have = 0;
                self.need = 0;
            }
        }
    }
}

/// A close frame with `stop`'s code and reason; masked with `mask` (towards the edge,
/// as a client's frames must be), or not (towards the client).
pub(super) fn close_frame(stop: &Stop, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut payload = u16::from(stop.code).to_be_bytes().to_vec();
    payload.extend_from_slice(&stop.reason.as_bytes()[..stop.reason.len().min(123)]);
    let mut frame = vec![0x88, payload.len() as u8];
    if let Some(mask) = mask {
        frame[1] |= 0x80;
        frame.extend_from_slice(&mask);
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    frame.extend_from_slice(&payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_boundaries_are_followed_across_reads() {
        let mut f = Frames::default();
        assert!(f.at_boundary());
        // A masked text frame of 5 bytes, split in three reads.
        let frame = [0x81, 0x85, 1, 2, 3, 4, b'h', b'e', b'l', b'l', b'o'];
        f.feed(&frame[..1]);
        assert!(!f.at_boundary());
        f.feed(&frame[1..7]);
        assert!(!f.at_boundary());
        f.feed(&frame[7..]);
        assert!(f.at_boundary());
        // 16-bit and 64-bit lengths, unmasked, then an empty ping, in one read.
        let mut bytes = vec![0x82, 126, 0x01, 0x00];
        bytes.extend(std::iter::repeat_n(0u8, 256));
        bytes.extend([0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        bytes.extend(std::iter::repeat_n(0u8, 65536));
        bytes.extend([0x89, 0x00]);
        f.feed(&bytes[..bytes.len() - 1]);
        assert!(!f.at_boundary());
        f.feed(&bytes[bytes.len() - 1..]);
        assert!(f.at_boundary());
    }

    #[test]
    fn a_close_frame_is_noticed_once_it_has_passed_whole() {
        let mut f = Frames::default();
        assert!(!f.closed());
        // A text frame, then a masked close frame with code 1000, split.
        f.feed(&[0x81, 0x01, b'x']);
        assert!(!f.closed());
        let close = [0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2];
        f.feed(&close[..7]);
        assert!(!f.closed());
        f.feed(&close[7..]);
        assert!(f.closed());
        // Anything after it (which a peer must not send) and it no longer counts.
        f.feed(&[0x89]);
        assert!(!f.closed());
        f.feed(&[0x00]);
        assert!(!f.closed());
    }

    #[test]
    fn injected_close_frames_are_well_formed() {
        let stop = Stop {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Away,
            reason: "shutdown",
        };
        assert_eq!(
            close_frame(&stop, None),
            [&[0x88, 10, 0x03, 0xe9][..], b"shutdown"].concat()
        );
        let masked = close_frame(&stop, Some([1, 2, 3, 4]));
        assert_eq!(&masked[..6], &[0x88, 0x80 | 10, 1, 2, 3, 4]);
        let unmasked: Vec<u8> = masked[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4])
            .collect();
        assert_eq!(unmasked, [&[0x03, 0xe9][..], b"shutdown"].concat());
    }
}
