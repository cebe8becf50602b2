//! Binary log frames: raw step output with a fixed 29-byte header.
//!
//! ```text
//! byte 0       kind (1 = log)
//! bytes 1..9   attempt id, i64 big-endian
//! bytes 9..17  sequence number, u64 big-endian
//! bytes 17..21 step index, u32 big-endian
//! bytes 21..29 byte offset of this chunk in the step's output, u64 big-endian
//! bytes 29..   the output, at most MAX_LOG_CHUNK bytes
//! ```

use crate::{AttemptId, DecodeError, MAX_LOG_CHUNK};

pub const LOG_FRAME_KIND: u8 = 1;
pub const LOG_FRAME_HEADER_LEN: usize = 29;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFrame {
    pub attempt: AttemptId,
    pub seq: u64,
    pub step: u32,
    pub offset: u64,
    pub data: Vec<u8>,
}

impl LogFrame {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LOG_FRAME_HEADER_LEN + self.data.len());
        out.push(LOG_FRAME_KIND);
        out.extend_from_slice(&self.attempt.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.step.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    pub fn decode(frame: &[u8]) -> Result<Self, DecodeError> {
        if frame.len() < LOG_FRAME_HEADER_LEN {
            return Err(DecodeError::LogFrame("shorter than its header"));
        }
        if frame.len() > LOG_FRAME_HEADER_LEN + MAX_LOG_CHUNK {
            return Err(DecodeError::TooLarge {
                size: frame.len(),
                limit: LOG_FRAME_HEADER_LEN + MAX_LOG_CHUNK,
            });
        }
        let (header, data) = frame.split_at(LOG_FRAME_HEADER_LEN);
        if header[0] != LOG_FRAME_KIND {
            return Err(DecodeError::LogFrame("unknown binary frame kind"));
        }
        let attempt = i64::from_be_bytes(array8(&header[1..9]));
        let seq = u64::from_be_bytes(array8(&header[9..17]));
        let mut step = [0u8; 4];
        step.copy_from_slice(&header[17..21]);
        let offset = u64::from_be_bytes(array8(&header[21..29]));
        if data.is_empty() {
            return Err(DecodeError::LogFrame("empty log chunk"));
        }
        Ok(LogFrame {
            attempt,
            seq,
            step: u32::from_be_bytes(step),
            offset,
            data: data.to_vec(),
        })
    }
}

fn array8(bytes: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(bytes);
    out
}
