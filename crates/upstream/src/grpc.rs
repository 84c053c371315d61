//! gRPC length-prefixed framing, checked as bytes stream past without buffering them.

/// Size of the prefix before each message: a compressed flag and a big-endian u32 length.
const PREFIX_LEN: usize = 5;

/// `grpc-status` of a successful call.
pub(crate) const GRPC_OK: &str = "0";
/// `grpc-status` for a malformed request.
pub(crate) const GRPC_INTERNAL: &str = "13";
/// `grpc-status` of an injected failure: UNAVAILABLE, which clients treat as retryable.
pub(crate) const GRPC_UNAVAILABLE: &str = "14";

/// Follows message boundaries across arbitrary data-frame splits, so that an echo can tell a
/// well-formed request from a truncated or garbled one once the stream ends.
#[derive(Debug, Default, Clone)]
pub(crate) struct FrameTracker {
    prefix: [u8; PREFIX_LEN],
    prefix_len: usize,
    remaining: u64,
    invalid: bool,
}

/// How a request's gRPC framing ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FramingOutcome {
    /// Every message was complete.
    Complete,
    /// The stream ended inside a prefix or a message.
    Truncated,
    /// A prefix had a compressed flag other than 0 or 1.
    BadFlag,
}

impl FrameTracker {
    /// Accounts for the next chunk of the request body.
    pub(crate) fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() && !self.invalid {
            if self.remaining > 0 {
                let take = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                self.remaining -= take as u64;
                chunk = &chunk[take..];
                continue;
            }
            let take = (PREFIX_LEN - self.prefix_len).min(chunk.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&chunk[..take]);
            self.prefix_len += take;
            chunk = &chunk[take..];
            if self.prefix_len == PREFIX_LEN {
                if self.prefix[0] > 1 {
                    self.invalid = true;
                }
                let [_, a, b, c, d] = self.prefix;
                self.remaining = u64::from(u32::from_be_bytes([a, b, c, d]));
                self.prefix_len = 0;
            }
        }
    }

    /// Judges the framing at the end of the stream.
    pub(crate) fn outcome(&self) -> FramingOutcome {
        if self.invalid {
            FramingOutcome::BadFlag
        } else if self.prefix_len != 0 || self.remaining != 0 {
            FramingOutcome::Truncated
        } else {
            FramingOutcome::Complete
        }
    }
}

impl FramingOutcome {
    /// The `grpc-status` code and `grpc-message` a server answers this outcome with: OK, or
    /// INTERNAL for a malformed request as real servers do.
    pub(crate) fn status(self) -> (&'static str, Option<&'static str>) {
        match self {
            FramingOutcome::Complete => (GRPC_OK, None),
            FramingOutcome::Truncated => (GRPC_INTERNAL, Some("truncated gRPC message")),
            FramingOutcome::BadFlag => (GRPC_INTERNAL, Some("invalid gRPC compressed flag")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(msg: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        v.extend_from_slice(msg);
        v
    }

    #[test]
    fn complete_across_any_split() {
        let mut wire = frame(b"hello");
        wire.extend(frame(b""));
        wire.extend(frame(&[7; 300]));
        for split in 0..wire.len() {
            for second in split..wire.len() {
                let mut t = FrameTracker::default();
                t.feed(&wire[..split]);
                t.feed(&wire[split..second]);
                t.feed(&wire[second..]);
                assert_eq!(t.outcome(), FramingOutcome::Complete, "{split} {second}");
            }
        }
    }

    #[test]
    fn empty_is_complete_and_cuts_are_truncated() {
        assert_eq!(FrameTracker::default().outcome(), FramingOutcome::Complete);
        let wire = frame(b"hello");
        for cut in 1..wire.len() {
            let mut t = FrameTracker::default();
            t.feed(&wire[..cut]);
            assert_eq!(t.outcome(), FramingOutcome::Truncated, "{cut}");
        }
    }

    #[test]
    fn bad_flag_is_reported() {
        let mut wire = frame(b"x");
        wire[0] = 9;
        let mut t = FrameTracker::default();
        t.feed(&wire);
        assert_eq!(t.outcome(), FramingOutcome::BadFlag);
    }
}
