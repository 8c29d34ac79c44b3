//! The framed protocol between [`super::SimPg`] and the model's server.
//!
//! A frame is a 12-byte header — body length, sequence number and FNV-1a checksum of
//! sequence and body, each a big-endian `u32` — then a JSON body. Sequence numbers count the
//! frames of one direction from 0. A frame out of sequence, with a bad checksum or an absurd
//! length is a connection error: the byte stream can no longer be trusted, so nothing is
//! mis-parsed after a lost or reordered segment.
//!
//! Reads and writes are cancel-safe: bytes leave the read buffer only as a complete frame
//! (after the last `.await`), and leave the write buffer only once written.

use std::io;

use bytes::{Buf, BufMut, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

/// The largest frame body accepted.
const FRAME_BODY_MAX: usize = 256 << 20;
/// Header bytes: length, sequence, checksum.
const HEADER_LEN: usize = 12;
/// Bytes reserved ahead of each socket read.
const READ_CHUNK: usize = 16 * 1024;

/// Why a framed connection failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    /// The socket failed.
    #[error("socket error")]
    Io(#[from] io::Error),
    /// The peer closed the connection.
    #[error("connection closed by the peer")]
    Closed,
    /// A frame header announced an impossible length.
    #[error("frame of {len} bytes exceeds the limit")]
    TooLarge {
        /// The announced length.
        len: usize,
    },
    /// A frame arrived out of sequence (a segment was lost or reordered).
    #[error("frame {found} arrived where frame {expected} was due")]
    Sequence {
        /// The sequence number due.
        expected: u32,
        /// The one found.
        found: u32,
    },
    /// A frame's checksum did not match.
    #[error("frame {seq} has a bad checksum")]
    Checksum {
        /// Its sequence number.
        seq: u32,
    },
    /// A frame body was not the expected JSON.
    #[error("frame body is not a valid message")]
    Json(#[from] serde_json::Error),
}

/// A client's request or message.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(crate) enum ClientMessage {
    /// The first frame: opens a backend.
    Startup {
        /// `replication=database`.
        replication: bool,
    },
    /// `pg_try_advisory_lock(hashtext('<slot>'))`.
    TryAdvisoryLock { slot: String },
    /// LB-1's query without terminating.
    StaleLockHolders { slot: String, own_pid: i32 },
    /// `pg_terminate_backend(pid)`.
    TerminateBackend { pid: i32 },
    /// A catalog lookup.
    TableSchema { relation: WireRelation },
    /// `SELECT oid, relnamespace, relname FROM pg_class WHERE oid = ANY(oids)`.
    RelationNames { oids: Vec<u32> },
    /// io-real's time zone probe: `extract(epoch FROM to_timestamp(s) AT TIME ZONE zone)`
    /// for each of `instants`.
    TimeZoneWallClocks { zone: String, instants: Vec<i64> },
    /// `CREATE PUBLICATION`.
    CreatePublication { publication: String },
    /// `SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = …`.
    PublicationComment { publication: String },
    /// io-real's `reserve_stamps` transaction: read the comment, raise the reservation.
    ReserveStamps { publication: String, through: u64 },
    /// `pg_drop_replication_slot` of an inactive slot (none is fine).
    DropSlot { slot: String },
    /// `CREATE_REPLICATION_SLOT`.
    CreateSlot { slot: String, temporary: bool },
    /// `SELECT … FROM pg_replication_slots WHERE slot_name = …`.
    SlotInfo { slot: String },
    /// `START_REPLICATION SLOT … LOGICAL 0/0 (publication_names …)`.
    StartReplication { slot: String, publication: String },
    /// `ALTER PUBLICATION … ADD TABLE` (+ `REPLICA IDENTITY FULL`).
    AddTable {
        publication: String,
        relation: WireRelation,
    },
    /// io-real's membership query: is the table in `pg_publication_tables` of `publication`
    /// (and its replica identity, which the model does not have: always `FULL`).
    PublicationMembership {
        publication: String,
        relation: WireRelation,
    },
    /// `pg_current_snapshot()`: the read transaction's inside one.
    CurrentSnapshot,
    /// `pg_current_wal_lsn()`: the end of WAL now.
    CurrentWalLsn,
    /// How many of `xids` are in progress.
    XactsInProgress { xids: Vec<u64> },
    /// `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`.
    BeginRead,
    /// `LOCK TABLE … IN ACCESS SHARE MODE` (in a read transaction).
    LockTable { relation: WireRelation },
    /// The snapshot rows query, in a read transaction: the named columns of every row its
    /// snapshot sees (the where clause is the caller's to apply, as the model has no SQL).
    SnapshotRows {
        relation: WireRelation,
        columns: Vec<String>,
    },
    /// `COMMIT` of the read transaction.
    Commit,
    /// A standby status update (streaming only).
    StandbyStatus {
        write: u64,
        flush: u64,
        apply: u64,
        reply_requested: bool,
    },
}

/// A server reply or streamed message.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(crate) enum ServerMessage {
    /// Startup done: the backend's pid and `IDENTIFY_SYSTEM`.
    Ready {
        pid: i32,
        system_id: u64,
        timeline: u32,
        xlogpos: u64,
    },
    /// A boolean result.
    Bool(bool),
    /// Pids.
    Pids(Vec<i32>),
    /// A count.
    Count(u64),
    /// A command without result.
    Done,
    /// A publication's row, or none.
    Publication(Option<WirePublication>),
    /// A table, or none.
    Table(Option<WireTable>),
    /// The tables that exist among those asked about, with their names.
    Relations(Vec<(u32, WireRelation)>),
    /// Wall clocks read as Unix seconds; `None` for a zone the server does not recognize.
    WallClocks(Option<Vec<i64>>),
    /// Whether a publication publishes a table; `None` when there is no such table.
    Membership(Option<bool>),
    /// A slot was created.
    SlotCreated { consistent_point: u64 },
    /// A slot's row, or none.
    Slot(Option<WireSlot>),
    /// `START_REPLICATION` succeeded: streaming follows.
    CopyBoth,
    /// `pg_current_snapshot()` as text.
    Snapshot(String),
    /// A WAL position.
    Lsn(u64),
    /// A snapshot's rows.
    Rows(Vec<Vec<Option<String>>>),
    /// `XLogData` (`data` in hex).
    XLogData {
        wal_start: u64,
        wal_end: u64,
        data: String,
    },
    /// Primary keepalive.
    Keepalive { wal_end: u64, reply_requested: bool },
    /// `ErrorResponse`.
    Error {
        sqlstate: String,
        message: String,
        detail: Option<String>,
    },
}

/// A publication's row on the wire.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(crate) struct WirePublication {
    /// Its comment (`obj_description`), if any.
    pub(crate) comment: Option<String>,
}

/// A relation name on the wire.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(crate) struct WireRelation {
    pub(crate) schema: String,
    pub(crate) table: String,
}

/// A table on the wire.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(crate) struct WireTable {
    pub(crate) oid: u32,
    pub(crate) columns: Vec<WireColumn>,
}

/// A column on the wire.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(crate) struct WireColumn {
    pub(crate) name: String,
    pub(crate) type_oid: u32,
    pub(crate) typname: String,
    pub(crate) not_null: bool,
    pub(crate) pk_index: Option<u32>,
}

/// A slot's `pg_replication_slots` row on the wire.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(crate) struct WireSlot {
    pub(crate) confirmed_flush_lsn: u64,
    pub(crate) active: bool,
    pub(crate) wal_status: String,
}

/// A byte stream carrying frames, split so one task can write while it waits to read.
#[derive(Debug)]
pub(crate) struct Framed<S> {
    pub(crate) reader: FrameReader<ReadHalf<S>>,
    pub(crate) writer: FrameWriter<WriteHalf<S>>,
}

impl<S> Framed<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    pub(crate) fn new(stream: S) -> Self {
        let (read, write) = tokio::io::split(stream);
        Self {
            reader: FrameReader {
                stream: read,
                buf: BytesMut::with_capacity(READ_CHUNK),
                seq: 0,
            },
            writer: FrameWriter {
                stream: write,
                buf: BytesMut::new(),
                seq: 0,
            },
        }
    }

    /// Encodes a message into the write buffer (sent by [`FrameWriter::flush`]).
    pub(crate) fn queue<T: Serialize>(&mut self, message: &T) -> Result<(), WireError> {
        self.writer.queue(message)
    }

    /// Bytes queued but not yet written.
    pub(crate) fn pending_write(&self) -> usize {
        self.writer.buf.len()
    }

    /// Queues and writes one message.
    pub(crate) async fn send<T: Serialize>(&mut self, message: &T) -> Result<(), WireError> {
        self.writer.queue(message)?;
        self.writer.flush().await
    }

    /// The next message. Cancel-safe.
    pub(crate) async fn recv<T: DeserializeOwned>(&mut self) -> Result<T, WireError> {
        self.reader.recv().await
    }

    /// Best effort: writes what the socket takes right now, without waiting.
    pub(crate) fn try_flush(&mut self) {
        use futures::FutureExt as _;
        let _ = self.writer.flush().now_or_never();
    }
}

/// The writing half: a buffer of encoded frames.
#[derive(Debug)]
pub(crate) struct FrameWriter<W> {
    stream: W,
    buf: BytesMut,
    /// Sequence number of the next frame.
    seq: u32,
}

impl<W: AsyncWrite + Unpin + Send> FrameWriter<W> {
    fn queue<T: Serialize>(&mut self, message: &T) -> Result<(), WireError> {
        let body = serde_json::to_vec(message)?;
        let len = u32::try_from(body.len())
            .ok()
            .filter(|_| body.len() <= FRAME_BODY_MAX)
            .ok_or(WireError::TooLarge { len: body.len() })?;
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.buf.reserve(HEADER_LEN + body.len());
        self.buf.put_u32(len);
        self.buf.put_u32(seq);
        self.buf.put_u32(checksum(seq, &body));
        self.buf.put_slice(&body);
        Ok(())
    }

    /// Writes out the buffer. Cancel-safe: bytes leave it only once written.
    pub(crate) async fn flush(&mut self) -> Result<(), WireError> {
        while !self.buf.is_empty() {
            if self.stream.write_buf(&mut self.buf).await? == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero).into());
            }
        }
        self.stream.flush().await?;
        Ok(())
    }
}

/// The reading half: a buffer of received bytes.
#[derive(Debug)]
pub(crate) struct FrameReader<R> {
    stream: R,
    buf: BytesMut,
    /// Sequence number of the next frame due.
    seq: u32,
}

impl<R: AsyncRead + Unpin + Send> FrameReader<R> {
    /// The next message. Cancel-safe: the only await appends to the buffer, and a frame
    /// leaves it only when complete, after the last await.
    pub(crate) async fn recv<T: DeserializeOwned>(&mut self) -> Result<T, WireError> {
        loop {
            if let Some(message) = self.split_frame()? {
                return Ok(message);
            }
            self.buf.reserve(READ_CHUNK);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(WireError::Closed);
            }
        }
    }

    /// Takes one complete frame off the buffer, checking sequence and checksum.
    fn split_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, WireError> {
        let Some(header) = self.buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let word =
            |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (len, seq, sum) = (word(0) as usize, word(4), word(8));
        if len > FRAME_BODY_MAX {
            return Err(WireError::TooLarge { len });
        }
        if seq != self.seq {
            return Err(WireError::Sequence {
                expected: self.seq,
                found: seq,
            });
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let mut frame = self.buf.split_to(HEADER_LEN + len);
        frame.advance(HEADER_LEN);
        if checksum(seq, &frame) != sum {
            return Err(WireError::Checksum { seq });
        }
        self.seq = self.seq.wrapping_add(1);
        Ok(Some(serde_json::from_slice(&frame)?))
    }
}

/// FNV-1a over the sequence number and the body.
fn checksum(seq: u32, body: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in seq.to_be_bytes().iter().chain(body) {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// Lowercase hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xF)]));
    }
    out
}

/// The bytes of lowercase or uppercase hex; `None` if it is not hex.
pub(crate) fn from_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use tokio::io::duplex;

    use super::*;

    /// The bytes `messages` are framed into.
    fn framed_bytes(messages: &[ClientMessage]) -> Vec<u8> {
        let mut framed = Framed::new(duplex(1).0);
        for message in messages {
            framed.queue(message).unwrap();
        }
        framed.writer.buf.to_vec()
    }

    #[tokio::test]
    async fn a_recv_dropped_mid_frame_loses_nothing() {
        let bytes = framed_bytes(&[
            ClientMessage::CurrentSnapshot,
            ClientMessage::TerminateBackend { pid: 7 },
        ]);
        let (mut feeder, stream) = duplex(1 << 16);
        let mut receiver = Framed::new(stream);
        feeder.write_all(&bytes[..5]).await.unwrap();
        tokio::select! {
            biased;
            _ = receiver.recv::<ClientMessage>() => panic!("half a frame must not complete"),
            () = tokio::task::yield_now() => {}
        }
        feeder.write_all(&bytes[5..]).await.unwrap();
        let first: ClientMessage = receiver.recv().await.unwrap();
        let second: ClientMessage = receiver.recv().await.unwrap();
        assert_eq!(first, ClientMessage::CurrentSnapshot);
        assert_eq!(second, ClientMessage::TerminateBackend { pid: 7 });
    }

    #[tokio::test]
    async fn a_missing_frame_is_a_sequence_error() {
        let one = framed_bytes(&[ClientMessage::CurrentSnapshot]);
        let two = framed_bytes(&[
            ClientMessage::CurrentSnapshot,
            ClientMessage::CurrentSnapshot,
        ]);
        let (mut feeder, stream) = duplex(1 << 16);
        let mut receiver = Framed::new(stream);
        feeder.write_all(&two[one.len()..]).await.unwrap(); // frame 0 lost
        let err = receiver.recv::<ClientMessage>().await.unwrap_err();
        assert!(
            matches!(
                err,
                WireError::Sequence {
                    expected: 0,
                    found: 1
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_corrupted_frame_is_a_checksum_error() {
        let mut bytes = framed_bytes(&[ClientMessage::XactsInProgress { xids: vec![12] }]);
        let last = bytes.len() - 3;
        bytes[last] ^= 1;
        let (mut feeder, stream) = duplex(1 << 16);
        let mut receiver = Framed::new(stream);
        feeder.write_all(&bytes).await.unwrap();
        let err = receiver.recv::<ClientMessage>().await.unwrap_err();
        assert!(matches!(err, WireError::Checksum { seq: 0 }), "{err:?}");
    }

    #[test]
    fn hex_round_trips() {
        let bytes = [0_u8, 1, 0xAB, 0xFF];
        assert_eq!(to_hex(&bytes), "0001abff");
        assert_eq!(from_hex("0001abff").unwrap(), bytes);
        assert_eq!(from_hex("0001ABFF").unwrap(), bytes);
        assert!(from_hex("abc").is_none());
        assert!(from_hex("zz").is_none());
    }
}
