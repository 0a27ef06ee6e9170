//! Thin I/O glue between quinn streams and the sans-IO [`crate::wire`] codec, used by both
//! sides. All protocol decisions stay in `wire`; this only moves bytes.

use std::time::Duration;

use crate::wire::{self, CloseCode, Frame, WireError};

/// Why a frame could not be read from a stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    /// The connection was lost.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The stream was reset or ended early.
    #[error("stream: {0}")]
    Stream(String),
    /// The bytes were not a valid frame.
    #[error("protocol: {0}")]
    Wire(#[from] WireError),
    /// Nothing arrived in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl ReadFrameError {
    /// The close code to use if this error ends the connection.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ReadFrameError::Wire(e) => e.close_code(),
            ReadFrameError::Timeout(_) => CloseCode::HandshakeTimeout,
            _ => CloseCode::ProtocolViolation,
        }
    }
}

/// Reads exactly one frame from a stream that may stay open, buffering at most one frame of
/// at most `limit` bytes.
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    limit: usize,
    timeout: Duration,
) -> Result<Frame, ReadFrameError> {
    let mut dec = wire::FrameDecoder::new(limit);
    let fut = async {
        loop {
            if let Some(f) = dec.next_frame()? {
                return Ok(f);
            }
            let mut buf = vec![0u8; dec.wanted().clamp(1, 64 * 1024)];
            match recv.read(&mut buf).await {
                Ok(Some(n)) => dec.push(&buf[..n]),
                Ok(None) => return Err(WireError::Truncated.into()),
                Err(quinn::ReadError::ConnectionLost(e)) => return Err(e.into()),
                Err(e) => return Err(ReadFrameError::Stream(e.to_string())),
            }
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ReadFrameError::Timeout(timeout))?
}

/// Reads a whole stream that must hold exactly one frame of at most `limit` body bytes.
pub async fn read_only_frame(
    recv: &mut quinn::RecvStream,
    limit: usize,
) -> Result<Frame, ReadFrameError> {
    match recv.read_to_end(limit + wire::HEADER_LEN).await {
        Ok(data) => Ok(wire::decode_one(&data, limit)?),
        Err(quinn::ReadToEndError::TooLong) => Err(WireError::TooLarge {
            len: limit + 1,
            limit,
        }
        .into()),
        Err(quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(e))) => Err(e.into()),
        Err(e) => Err(ReadFrameError::Stream(e.to_string())),
    }
}

/// Closes a connection with a documented code.
pub fn close(conn: &quinn::Connection, code: CloseCode) {
    conn.close(code.as_u32().into(), code.reason());
}
