//! Decoding of `pgoutput` logical replication messages: the payload of each `XLogData` message.
//!
//! This module owns the wire format of protocol version 1 and the version 2 streaming additions
//! (Stream Start, Stop, Commit and Abort, and the xid that prefixes Relation, Type, Insert, Update,
//! Delete, Truncate and Message inside a stream block). It turns bytes into typed
//! [`PgOutputMessage`]s and nothing else: it does no I/O, keeps no relation cache (matching tuple
//! columns to [`Relation`] columns is the caller's job) and never panics, whatever the input.
//!
//! Callers make one [`Decoder`] per replication connection, with the `proto_version` they asked
//! for in `START_REPLICATION`, and feed it every `XLogData` payload in order, so that it knows
//! whether a stream block is open. [`decode`] is the stateless form for one-shot use.

use std::fmt;
use std::str::{self, Utf8Error};

use bytes::Bytes;

use crate::lsn::Lsn;

/// A Postgres object identifier (`oid`): of a relation or of a type.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Oid(pub u32);

/// A Postgres transaction id (`xid`), of a top-level transaction or of a subtransaction.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Xid(pub u32);

/// The first byte of a `pgoutput` message, naming its kind (`'B'` for Begin, …).
///
/// `Display` shows printable ASCII quoted (`'B'`) and anything else in hex (`0x00`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct MessageTag(pub u8);

/// The logical replication protocol version negotiated through `proto_version`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum ProtoVersion {
    /// Version 1: whole transactions only, sent at commit.
    V1,
    /// Version 2 (Postgres 14+): adds streaming of large in-progress transactions.
    V2,
}

/// Whether a message arrives between Stream Start and Stream Stop.
///
/// Inside a stream block, data messages carry the xid of the (sub)transaction they belong to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum StreamBlock {
    /// Not in a stream block: normal transactions, and Stream Commit or Stream Abort.
    Outside,
    /// Between Stream Start and Stream Stop.
    Inside,
}

/// Decodes the `pgoutput` messages of one replication connection, tracking stream blocks.
#[derive(Clone, Debug)]
pub struct Decoder {
    proto_version: ProtoVersion,
    stream_block: StreamBlock,
}

/// One decoded `pgoutput` message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PgOutputMessage {
    /// Start of a transaction sent whole, at its commit.
    Begin(Begin),
    /// End of a transaction opened by [`PgOutputMessage::Begin`].
    Commit(Commit),
    /// The transaction was replicated into this server from another one.
    Origin {
        /// The LSN of the commit on the origin server.
        origin_lsn: Lsn,
        /// The replication origin's name.
        name: String,
    },
    /// The schema of a relation; sent before the first change to it and after each DDL.
    Relation(Relation),
    /// A data type used by a following [`Relation`], for types outside `pg_catalog`.
    Type {
        /// The streamed (sub)transaction, inside a stream block.
        xid: Option<Xid>,
        /// The type's OID, as in [`RelationColumn::type_oid`].
        oid: Oid,
        /// The type's schema; empty for `pg_catalog`.
        namespace: String,
        /// The type's name.
        name: String,
    },
    /// A row inserted.
    Insert(Insert),
    /// A row updated.
    Update(Update),
    /// A row deleted.
    Delete(Delete),
    /// One `TRUNCATE` of one or more relations.
    Truncate(Truncate),
    /// A message from `pg_logical_emit_message` (only with the `messages` option).
    Message {
        /// The streamed (sub)transaction, inside a stream block.
        xid: Option<Xid>,
        /// Whether the message was emitted as part of its transaction.
        is_transactional: bool,
        /// The LSN of the message.
        lsn: Lsn,
        /// The prefix given to `pg_logical_emit_message`.
        prefix: String,
        /// The content, uninterpreted.
        content: Bytes,
    },
    /// Opens a stream block: a chunk of the changes of an in-progress transaction.
    StreamStart {
        /// The streamed top-level transaction.
        xid: Xid,
        /// Whether this is the transaction's first stream block.
        first_segment: bool,
    },
    /// Closes the current stream block.
    StreamStop,
    /// A streamed transaction committed; its changes are all in earlier stream blocks.
    StreamCommit {
        /// The streamed top-level transaction.
        xid: Xid,
        /// Commit details, laid out as in [`PgOutputMessage::Commit`].
        commit: Commit,
    },
    /// A streamed transaction, or one of its subtransactions, aborted.
    StreamAbort {
        /// The streamed top-level transaction.
        xid: Xid,
        /// The aborted subtransaction; equal to `xid` when the whole transaction aborted.
        subxid: Xid,
    },
}

/// The Begin message: start of a transaction.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Commit time in microseconds since the Postgres epoch, 2000-01-01 00:00 UTC.
    pub commit_time_micros: i64,
    /// The transaction.
    pub xid: Xid,
}

/// The Commit message (and the body of Stream Commit).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Commit {
    /// Currently unused; Postgres sends 0.
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The end of the commit record: where to resume after this transaction.
    pub end_lsn: Lsn,
    /// Commit time in microseconds since the Postgres epoch, 2000-01-01 00:00 UTC.
    pub commit_time_micros: i64,
}

/// The Relation message: the schema of a published table as of the following changes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Relation {
    /// The streamed (sub)transaction, inside a stream block.
    pub xid: Option<Xid>,
    /// The relation's OID, as in [`Insert::relation`] and friends.
    pub oid: Oid,
    /// The relation's schema; empty for `pg_catalog`.
    pub namespace: String,
    /// The relation's name.
    pub name: String,
    /// Which old values updates and deletes carry.
    pub replica_identity: ReplicaIdentity,
    /// The published columns, in the order tuple data lists them.
    pub columns: Vec<RelationColumn>,
}

/// A relation's `REPLICA IDENTITY` setting (`pg_class.relreplident`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ReplicaIdentity {
    /// `'d'`: the primary key, if any.
    Default,
    /// `'n'`: nothing.
    Nothing,
    /// `'f'`: all columns.
    Full,
    /// `'i'`: the columns of a chosen unique index.
    Index,
}

/// One column of a [`Relation`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RelationColumn {
    /// Whether the column is part of the replica identity (flag bit 1).
    pub is_key: bool,
    /// The column's name.
    pub name: String,
    /// The column's type.
    pub type_oid: Oid,
    /// The type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
}

/// The column values of one row, in the order of [`Relation::columns`].
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct TupleData(pub Vec<ColumnValue>);

/// One column value in a [`TupleData`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ColumnValue {
    /// SQL `NULL`.
    Null,
    /// A TOASTed value that did not change; its value is not sent.
    UnchangedToast,
    /// The value in the type's text output format, checked to be UTF-8.
    Text(String),
    /// The value in the type's binary format (only with the `binary` option).
    Binary(Bytes),
}

/// The old row of an [`Update`] or [`Delete`], and which columns it holds.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum OldTuple {
    /// `'K'`: only the replica identity columns are set; the others are [`ColumnValue::Null`].
    Key(TupleData),
    /// `'O'`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(TupleData),
}

/// The Insert message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Insert {
    /// The streamed (sub)transaction, inside a stream block.
    pub xid: Option<Xid>,
    /// The relation, described by an earlier [`Relation`] message.
    pub relation: Oid,
    /// The inserted row.
    pub new: TupleData,
}

/// The Update message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Update {
    /// The streamed (sub)transaction, inside a stream block.
    pub xid: Option<Xid>,
    /// The relation, described by an earlier [`Relation`] message.
    pub relation: Oid,
    /// The old row; sent only when the replica identity is `FULL` or a key column changed.
    pub old: Option<OldTuple>,
    /// The new row; unchanged TOASTed columns are [`ColumnValue::UnchangedToast`].
    pub new: TupleData,
}

/// The Delete message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Delete {
    /// The streamed (sub)transaction, inside a stream block.
    pub xid: Option<Xid>,
    /// The relation, described by an earlier [`Relation`] message.
    pub relation: Oid,
    /// The deleted row's replica identity, or the whole row.
    pub old: OldTuple,
}

/// The Truncate message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Truncate {
    /// The streamed (sub)transaction, inside a stream block.
    pub xid: Option<Xid>,
    /// Bit 1: `CASCADE`; bit 2: `RESTART IDENTITY`.
    pub options: u8,
    /// The truncated relations.
    pub relations: Vec<Oid>,
}

/// Why a `pgoutput` message could not be decoded. Offsets count from the tag byte, at 0.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum DecodeError {
    /// The payload was empty.
    #[error("empty pgoutput message: expected a message tag")]
    Empty,
    /// The payload ended before a field did.
    #[error("pgoutput {tag} message truncated at byte {offset}: expected {expected}")]
    Truncated {
        /// The message's tag.
        tag: MessageTag,
        /// Where the missing field starts.
        offset: usize,
        /// The field that is missing.
        expected: &'static str,
    },
    /// The tag names no message of protocol version 1 or 2.
    #[error("unknown pgoutput message tag {tag}")]
    UnknownTag {
        /// The unknown tag.
        tag: MessageTag,
    },
    /// A streaming message arrived although protocol version 1 was negotiated.
    #[error("pgoutput {tag} message needs protocol version 2, but version 1 was negotiated")]
    StreamingNotNegotiated {
        /// The streaming message's tag.
        tag: MessageTag,
    },
    /// A message arrived where the stream-block rules forbid it (Begin inside a block, …).
    #[error("pgoutput {tag} message is not allowed {stream_block} a stream block")]
    MisplacedInStreamBlock {
        /// The misplaced message's tag.
        tag: MessageTag,
        /// Where it arrived.
        stream_block: StreamBlock,
    },
    /// A tuple marker (`'K'`, `'O'`, `'N'`) or column kind (`'n'`, `'u'`, `'t'`, `'b'`) was
    /// something else.
    #[error(
        "pgoutput {tag} message has {} at byte {offset}: expected {expected}",
        show_byte(.found)
    )]
    UnknownTupleKind {
        /// The message's tag.
        tag: MessageTag,
        /// Where the unknown byte is.
        offset: usize,
        /// The byte found there.
        found: u8,
        /// What was allowed there.
        expected: &'static str,
    },
    /// A Relation message's replica identity was not `'d'`, `'n'`, `'f'` or `'i'`.
    #[error("pgoutput 'R' message has replica identity {} at byte {offset}", show_byte(.found))]
    UnknownReplicaIdentity {
        /// Where the unknown byte is.
        offset: usize,
        /// The byte found there.
        found: u8,
    },
    /// A length prefix was negative.
    #[error("pgoutput {tag} message has length {length} at byte {offset} for {field}")]
    InvalidLength {
        /// The message's tag.
        tag: MessageTag,
        /// Where the length is.
        offset: usize,
        /// The length read.
        length: i32,
        /// The field it prefixes.
        field: &'static str,
    },
    /// A name or a text column value was not UTF-8.
    #[error("pgoutput {tag} message has invalid UTF-8 in {field} starting at byte {offset}")]
    InvalidUtf8 {
        /// The message's tag.
        tag: MessageTag,
        /// Where the field's bytes start; the source error says how far in they are valid.
        offset: usize,
        /// The field.
        field: &'static str,
        /// The UTF-8 error.
        #[source]
        source: Utf8Error,
    },
    /// Bytes were left over after the message's last field.
    #[error("pgoutput {tag} message has {count} trailing bytes at byte {offset}")]
    TrailingBytes {
        /// The message's tag.
        tag: MessageTag,
        /// Where the message should have ended.
        offset: usize,
        /// How many bytes followed.
        count: usize,
    },
}

/// Decodes one `pgoutput` message, given whether it arrived inside a stream block.
///
/// Accepts all messages of protocol versions 1 and 2. Prefer [`Decoder`], which tracks the
/// stream block and the negotiated version itself.
pub fn decode(data: &[u8], stream_block: StreamBlock) -> Result<PgOutputMessage, DecodeError> {
    let (&tag, body) = data.split_first().ok_or(DecodeError::Empty)?;
    let tag = MessageTag(tag);
    if !tag.is_allowed(stream_block) {
        return Err(DecodeError::MisplacedInStreamBlock { tag, stream_block });
    }
    let mut r = Reader::new(tag, body);
    let message = decode_body(&mut r, stream_block)?;
    r.finish()?;
    Ok(message)
}

impl MessageTag {
    /// Whether the tag is one of the messages protocol version 2 added for streaming.
    pub const fn is_streaming(self) -> bool {
        matches!(self.0, b'S' | b'E' | b'c' | b'A')
    }

    /// Whether the message carries its (sub)transaction's xid first when inside a stream block.
    const fn has_streamed_xid(self) -> bool {
        matches!(self.0, b'R' | b'Y' | b'I' | b'U' | b'D' | b'T' | b'M')
    }

    /// Whether a message with this tag may arrive inside or outside a stream block.
    const fn is_allowed(self, stream_block: StreamBlock) -> bool {
        match self.0 {
            b'B' | b'C' | b'S' | b'c' | b'A' => matches!(stream_block, StreamBlock::Outside),
            b'E' => matches!(stream_block, StreamBlock::Inside),
            _ => true,
        }
    }
}

impl fmt::Display for MessageTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", char::from(self.0))
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

/// Shows a byte found in a message the way [`MessageTag`] shows tags.
const fn show_byte(byte: &u8) -> MessageTag {
    MessageTag(*byte)
}

impl ProtoVersion {
    /// The number to pass as `proto_version` in `START_REPLICATION`.
    pub const fn as_u32(self) -> u32 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
        }
    }
}

impl fmt::Display for StreamBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Outside => "outside",
            Self::Inside => "inside",
        })
    }
}

impl Decoder {
    /// A decoder for a new replication connection: outside any stream block.
    pub const fn new(proto_version: ProtoVersion) -> Self {
        Self { proto_version, stream_block: StreamBlock::Outside }
    }

    /// The negotiated protocol version.
    pub const fn proto_version(&self) -> ProtoVersion {
        self.proto_version
    }

    /// Whether the last Stream Start has not been closed by a Stream Stop yet.
    pub const fn is_in_stream(&self) -> bool {
        matches!(self.stream_block, StreamBlock::Inside)
    }

    /// Decodes the next `XLogData` payload of the connection, in order.
    ///
    /// On error the decoder's state is unchanged; the connection is then not worth continuing.
    pub fn decode(&mut self, data: &[u8]) -> Result<PgOutputMessage, DecodeError> {
        if let Some(&tag) = data.first() {
            let tag = MessageTag(tag);
            if tag.is_streaming() && self.proto_version == ProtoVersion::V1 {
                return Err(DecodeError::StreamingNotNegotiated { tag });
            }
        }
        let message = decode(data, self.stream_block)?;
        match message {
            PgOutputMessage::StreamStart { .. } => self.stream_block = StreamBlock::Inside,
            PgOutputMessage::StreamStop => self.stream_block = StreamBlock::Outside,
            _ => {}
        }
        Ok(message)
    }
}

impl ReplicaIdentity {
    /// The `pg_class.relreplident` byte: `'d'`, `'n'`, `'f'` or `'i'`.
    pub const fn as_byte(self) -> u8 {
        match self {
            Self::Default => b'd',
            Self::Nothing => b'n',
            Self::Full => b'f',
            Self::Index => b'i',
        }
    }

    /// The replica identity a `pg_class.relreplident` byte names, if any.
    pub const fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            b'd' => Some(Self::Default),
            b'n' => Some(Self::Nothing),
            b'f' => Some(Self::Full),
            b'i' => Some(Self::Index),
            _ => None,
        }
    }
}

impl ColumnValue {
    /// The text of a [`ColumnValue::Text`]; `None` for the other kinds.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text(text) => Some(text),
            Self::Null | Self::UnchangedToast | Self::Binary(_) => None,
        }
    }
}

impl OldTuple {
    /// The old row's values, whichever kind it is.
    pub const fn tuple(&self) -> &TupleData {
        match self {
            Self::Key(tuple) | Self::Full(tuple) => tuple,
        }
    }

    /// Whether only the replica identity columns are set (`'K'`).
    pub const fn is_key_only(&self) -> bool {
        matches!(self, Self::Key(_))
    }
}

impl Truncate {
    /// Whether `TRUNCATE … CASCADE` was used.
    pub const fn is_cascade(&self) -> bool {
        self.options & 1 != 0
    }

    /// Whether `TRUNCATE … RESTART IDENTITY` was used.
    pub const fn is_restart_identity(&self) -> bool {
        self.options & 2 != 0
    }
}

/// Decodes everything after the tag; the tag's placement is already checked.
fn decode_body(
    r: &mut Reader<'_>,
    stream_block: StreamBlock,
) -> Result<PgOutputMessage, DecodeError> {
    // Inside a stream block Postgres prefixes data messages with the (sub)transaction's xid.
    let xid = match stream_block {
        StreamBlock::Inside if r.tag.has_streamed_xid() => {
            Some(r.xid("xid of the streamed transaction")?)
        }
        StreamBlock::Inside | StreamBlock::Outside => None,
    };
    let message = match r.tag.0 {
        b'B' => PgOutputMessage::Begin(begin(r)?),
        b'C' => PgOutputMessage::Commit(commit(r)?),
        b'O' => PgOutputMessage::Origin {
            origin_lsn: r.lsn("origin commit LSN")?,
            name: r.string("origin name")?,
        },
        b'R' => PgOutputMessage::Relation(relation(r, xid)?),
        b'Y' => PgOutputMessage::Type {
            xid,
            oid: r.oid("type OID")?,
            namespace: r.string("type namespace")?,
            name: r.string("type name")?,
        },
        b'I' => PgOutputMessage::Insert(insert(r, xid)?),
        b'U' => PgOutputMessage::Update(update(r, xid)?),
        b'D' => PgOutputMessage::Delete(delete(r, xid)?),
        b'T' => PgOutputMessage::Truncate(truncate(r, xid)?),
        b'M' => message(r, xid)?,
        b'S' => PgOutputMessage::StreamStart {
            xid: r.xid("xid of the streamed transaction")?,
            first_segment: r.u8("first-segment flag")? == 1,
        },
        b'E' => PgOutputMessage::StreamStop,
        b'c' => PgOutputMessage::StreamCommit {
            xid: r.xid("xid of the streamed transaction")?,
            commit: commit(r)?,
        },
        b'A' => PgOutputMessage::StreamAbort {
            xid: r.xid("xid of the streamed transaction")?,
            subxid: r.xid("xid of the aborted subtransaction")?,
        },
        _ => return Err(DecodeError::UnknownTag { tag: r.tag }),
    };
    Ok(message)
}

fn begin(r: &mut Reader<'_>) -> Result<Begin, DecodeError> {
    Ok(Begin {
        final_lsn: r.lsn("final LSN")?,
        commit_time_micros: r.i64("commit timestamp")?,
        xid: r.xid("xid")?,
    })
}

fn commit(r: &mut Reader<'_>) -> Result<Commit, DecodeError> {
    Ok(Commit {
        flags: r.u8("commit flags")?,
        commit_lsn: r.lsn("commit LSN")?,
        end_lsn: r.lsn("end LSN")?,
        commit_time_micros: r.i64("commit timestamp")?,
    })
}

fn relation(r: &mut Reader<'_>, xid: Option<Xid>) -> Result<Relation, DecodeError> {
    let oid = r.oid("relation OID")?;
    let namespace = r.string("relation namespace")?;
    let name = r.string("relation name")?;
    let offset = r.offset;
    let byte = r.u8("replica identity")?;
    let replica_identity = ReplicaIdentity::from_byte(byte)
        .ok_or(DecodeError::UnknownReplicaIdentity { offset, found: byte })?;
    let count = r.u16("column count")?;
    // A column takes at least 10 bytes (flags, empty name, type OID, modifier); bounding the
    // allocation by what is left keeps a lying count from reserving memory.
    let mut columns = Vec::with_capacity(usize::from(count).min(r.remaining() / 10));
    for _ in 0..count {
        columns.push(RelationColumn {
            is_key: r.u8("column flags")? & 1 != 0,
            name: r.string("column name")?,
            type_oid: r.oid("column type OID")?,
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(Relation { xid, oid, namespace, name, replica_identity, columns })
}

fn insert(r: &mut Reader<'_>, xid: Option<Xid>) -> Result<Insert, DecodeError> {
    let relation = r.oid("relation OID")?;
    let new = new_tuple(r)?;
    Ok(Insert { xid, relation, new })
}

fn update(r: &mut Reader<'_>, xid: Option<Xid>) -> Result<Update, DecodeError> {
    let relation = r.oid("relation OID")?;
    let offset = r.offset;
    let (old, new) = match r.u8("tuple kind 'K', 'O' or 'N'")? {
        b'K' => (Some(OldTuple::Key(tuple(r)?)), new_tuple(r)?),
        b'O' => (Some(OldTuple::Full(tuple(r)?)), new_tuple(r)?),
        b'N' => (None, tuple(r)?),
        found => return Err(r.unknown_kind(offset, found, "tuple kind 'K', 'O' or 'N'")),
    };
    Ok(Update { xid, relation, old, new })
}

fn delete(r: &mut Reader<'_>, xid: Option<Xid>) -> Result<Delete, DecodeError> {
    let relation = r.oid("relation OID")?;
    let offset = r.offset;
    let old = match r.u8("tuple kind 'K' or 'O'")? {
        b'K' => OldTuple::Key(tuple(r)?),
        b'O' => OldTuple::Full(tuple(r)?),
        found => return Err(r.unknown_kind(offset, found, "tuple kind 'K' or 'O'")),
    };
    Ok(Delete { xid, relation, old })
}

fn truncate(r: &mut Reader<'_>, xid: Option<Xid>) -> Result<Truncate, DecodeError> {
    let count = r.u32("relation count")?;
    let options = r.u8("truncate options")?;
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    let mut relations = Vec::with_capacity(count.min(r.remaining() / 4));
    for _ in 0..count {
        relations.push(r.oid("relation OID")?);
    }
    Ok(Truncate { xid, options, relations })
}

fn message(r: &mut Reader<'_>, xid: Option<Xid>) -> Result<PgOutputMessage, DecodeError> {
    let flags = r.u8("message flags")?;
    let lsn = r.lsn("message LSN")?;
    let prefix = r.string("message prefix")?;
    let content = Bytes::copy_from_slice(r.counted("message content")?);
    Ok(PgOutputMessage::Message { xid, is_transactional: flags & 1 != 0, lsn, prefix, content })
}

/// Reads the `'N'` marker and the new tuple after it.
fn new_tuple(r: &mut Reader<'_>) -> Result<TupleData, DecodeError> {
    let offset = r.offset;
    match r.u8("tuple kind 'N'")? {
        b'N' => tuple(r),
        found => Err(r.unknown_kind(offset, found, "tuple kind 'N'")),
    }
}

fn tuple(r: &mut Reader<'_>) -> Result<TupleData, DecodeError> {
    let count = r.u16("tuple column count")?;
    // Every column takes at least its kind byte; see `relation` for why this bound.
    let mut columns = Vec::with_capacity(usize::from(count).min(r.remaining()));
    for _ in 0..count {
        columns.push(column_value(r)?);
    }
    Ok(TupleData(columns))
}

fn column_value(r: &mut Reader<'_>) -> Result<ColumnValue, DecodeError> {
    const KINDS: &str = "column kind 'n', 'u', 't' or 'b'";
    let offset = r.offset;
    match r.u8(KINDS)? {
        b'n' => Ok(ColumnValue::Null),
        b'u' => Ok(ColumnValue::UnchangedToast),
        b't' => {
            let value_offset = r.offset;
            let raw = r.counted("text column value")?;
            Ok(ColumnValue::Text(r.utf8(raw, value_offset, "text column value")?))
        }
        b'b' => Ok(ColumnValue::Binary(Bytes::copy_from_slice(r.counted("binary column value")?))),
        found => Err(r.unknown_kind(offset, found, KINDS)),
    }
}

/// A cursor over one message's bytes that reports shortfalls as [`DecodeError`]s.
struct Reader<'a> {
    tag: MessageTag,
    rest: &'a [u8],
    /// Offset of `rest` in the whole message; the tag is byte 0.
    offset: usize,
}

impl<'a> Reader<'a> {
    const fn new(tag: MessageTag, body: &'a [u8]) -> Self {
        Self { tag, rest: body, offset: 1 }
    }

    const fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            return Ok(());
        }
        Err(DecodeError::TrailingBytes { tag: self.tag, offset: self.offset, count: self.rest.len() })
    }

    fn take(&mut self, len: usize, expected: &'static str) -> Result<&'a [u8], DecodeError> {
        let (head, rest) = self.rest.split_at_checked(len).ok_or_else(|| self.truncated(expected))?;
        self.rest = rest;
        self.offset += len;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, expected: &'static str) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self.rest.split_first_chunk::<N>().ok_or_else(|| self.truncated(expected))?;
        self.rest = rest;
        self.offset += N;
        Ok(*head)
    }

    fn u8(&mut self, expected: &'static str) -> Result<u8, DecodeError> {
        self.array(expected).map(u8::from_be_bytes)
    }

    fn u16(&mut self, expected: &'static str) -> Result<u16, DecodeError> {
        self.array(expected).map(u16::from_be_bytes)
    }

    fn u32(&mut self, expected: &'static str) -> Result<u32, DecodeError> {
        self.array(expected).map(u32::from_be_bytes)
    }

    fn i32(&mut self, expected: &'static str) -> Result<i32, DecodeError> {
        self.array(expected).map(i32::from_be_bytes)
    }

    fn i64(&mut self, expected: &'static str) -> Result<i64, DecodeError> {
        self.array(expected).map(i64::from_be_bytes)
    }

    fn lsn(&mut self, expected: &'static str) -> Result<Lsn, DecodeError> {
        self.array(expected).map(|bytes| Lsn(u64::from_be_bytes(bytes)))
    }

    fn xid(&mut self, expected: &'static str) -> Result<Xid, DecodeError> {
        self.u32(expected).map(Xid)
    }

    fn oid(&mut self, expected: &'static str) -> Result<Oid, DecodeError> {
        self.u32(expected).map(Oid)
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let offset = self.offset;
        let len = self.rest.iter().position(|&b| b == 0).ok_or_else(|| self.truncated(field))?;
        let raw = self.take(len, field)?;
        self.take(1, field)?; // the NUL, found above
        self.utf8(raw, offset, field)
    }

    /// Bytes prefixed by their Int32 length.
    fn counted(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let offset = self.offset;
        let length = self.i32(field)?;
        let len = usize::try_from(length).map_err(|_| DecodeError::InvalidLength {
            tag: self.tag,
            offset,
            length,
            field,
        })?;
        self.take(len, field)
    }

    fn utf8(&self, raw: &[u8], offset: usize, field: &'static str) -> Result<String, DecodeError> {
        match str::from_utf8(raw) {
            Ok(text) => Ok(text.to_owned()),
            Err(source) => Err(DecodeError::InvalidUtf8 { tag: self.tag, offset, field, source }),
        }
    }

    const fn truncated(&self, expected: &'static str) -> DecodeError {
        DecodeError::Truncated { tag: self.tag, offset: self.offset, expected }
    }

    const fn unknown_kind(&self, offset: usize, found: u8, expected: &'static str) -> DecodeError {
        DecodeError::UnknownTupleKind { tag: self.tag, offset, found, expected }
    }
}
