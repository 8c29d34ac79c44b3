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
///
/// # Errors
///
/// Any [`DecodeError`] but [`DecodeError::StreamingNotNegotiated`]: the bytes are not one
/// well-formed message that may arrive `stream_block` a stream block.
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
        Self {
            proto_version,
            stream_block: StreamBlock::Outside,
        }
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
    /// # Errors
    ///
    /// A [`DecodeError`] when the bytes are not one well-formed message that may come next. The
    /// decoder's state is then unchanged, but the connection is not worth continuing.
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
            first_segment: r.u8("first-segment flag")? != 0,
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
    let replica_identity =
        ReplicaIdentity::from_byte(byte).ok_or(DecodeError::UnknownReplicaIdentity {
            offset,
            found: byte,
        })?;
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
    Ok(Relation {
        xid,
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    })
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
    Ok(Update {
        xid,
        relation,
        old,
        new,
    })
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
    Ok(Truncate {
        xid,
        options,
        relations,
    })
}

fn message(r: &mut Reader<'_>, xid: Option<Xid>) -> Result<PgOutputMessage, DecodeError> {
    let flags = r.u8("message flags")?;
    let lsn = r.lsn("message LSN")?;
    let prefix = r.string("message prefix")?;
    let content = Bytes::copy_from_slice(r.counted("message content")?);
    Ok(PgOutputMessage::Message {
        xid,
        is_transactional: flags & 1 != 0,
        lsn,
        prefix,
        content,
    })
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
        b't' => r.counted_text("text column value").map(ColumnValue::Text),
        b'b' => {
            let raw = r.counted("binary column value")?;
            Ok(ColumnValue::Binary(Bytes::copy_from_slice(raw)))
        }
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
        Self {
            tag,
            rest: body,
            offset: 1,
        }
    }

    const fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            return Ok(());
        }
        Err(DecodeError::TrailingBytes {
            tag: self.tag,
            offset: self.offset,
            count: self.rest.len(),
        })
    }

    fn take(&mut self, len: usize, expected: &'static str) -> Result<&'a [u8], DecodeError> {
        let (head, rest) = self
            .rest
            .split_at_checked(len)
            .ok_or_else(|| self.truncated(expected))?;
        self.rest = rest;
        self.offset += len;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, expected: &'static str) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or_else(|| self.truncated(expected))?;
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
        self.array(expected)
            .map(|bytes| Lsn(u64::from_be_bytes(bytes)))
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
        let len = self
            .rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.truncated(field))?;
        let raw = self.take(len, field)?;
        self.take(1, field)?; // the NUL, found above
        self.utf8(raw, offset, field)
    }

    /// Bytes prefixed by their Int32 length.
    fn counted(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.length(field)?;
        self.take(len, field)
    }

    /// UTF-8 text prefixed by its Int32 length.
    fn counted_text(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = self.length(field)?;
        let offset = self.offset;
        let raw = self.take(len, field)?;
        self.utf8(raw, offset, field)
    }

    /// An Int32 length prefix, which must not be negative.
    fn length(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let offset = self.offset;
        let length = self.i32(field)?;
        usize::try_from(length).map_err(|_| DecodeError::InvalidLength {
            tag: self.tag,
            offset,
            length,
            field,
        })
    }

    fn utf8(&self, raw: &[u8], offset: usize, field: &'static str) -> Result<String, DecodeError> {
        match str::from_utf8(raw) {
            Ok(text) => Ok(text.to_owned()),
            Err(source) => Err(DecodeError::InvalidUtf8 {
                tag: self.tag,
                offset,
                field,
                source,
            }),
        }
    }

    const fn truncated(&self, expected: &'static str) -> DecodeError {
        DecodeError::Truncated {
            tag: self.tag,
            offset: self.offset,
            expected,
        }
    }

    const fn unknown_kind(&self, offset: usize, found: u8, expected: &'static str) -> DecodeError {
        DecodeError::UnknownTupleKind {
            tag: self.tag,
            offset,
            found,
            expected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test-only encoder: the inverse of `decode`, writing the xid prefix when `xid` is `Some`.
    fn encode(message: &PgOutputMessage) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        match message {
            PgOutputMessage::Begin(begin) => {
                w.u8(b'B')
                    .u64(begin.final_lsn.0)
                    .i64(begin.commit_time_micros)
                    .u32(begin.xid.0);
            }
            PgOutputMessage::Commit(commit) => w.u8(b'C').commit(commit),
            PgOutputMessage::Origin { origin_lsn, name } => {
                w.u8(b'O').u64(origin_lsn.0).string(name);
            }
            PgOutputMessage::Relation(relation) => w.tag_xid(b'R', relation.xid).relation(relation),
            PgOutputMessage::Type {
                xid,
                oid,
                namespace,
                name,
            } => {
                w.tag_xid(b'Y', *xid)
                    .u32(oid.0)
                    .string(namespace)
                    .string(name);
            }
            PgOutputMessage::Insert(insert) => {
                w.tag_xid(b'I', insert.xid)
                    .u32(insert.relation.0)
                    .u8(b'N')
                    .tuple(&insert.new);
            }
            PgOutputMessage::Update(update) => w.update(update),
            PgOutputMessage::Delete(delete) => {
                w.tag_xid(b'D', delete.xid)
                    .u32(delete.relation.0)
                    .old_tuple(&delete.old);
            }
            PgOutputMessage::Truncate(truncate) => w.truncate(truncate),
            PgOutputMessage::Message {
                xid,
                is_transactional,
                lsn,
                prefix,
                content,
            } => {
                w.tag_xid(b'M', *xid)
                    .u8((*is_transactional).into())
                    .u64(lsn.0);
                w.string(prefix).counted(content);
            }
            PgOutputMessage::StreamStart { xid, first_segment } => {
                w.u8(b'S').u32(xid.0).u8((*first_segment).into());
            }
            PgOutputMessage::StreamStop => {
                w.u8(b'E');
            }
            PgOutputMessage::StreamCommit { xid, commit } => w.u8(b'c').u32(xid.0).commit(commit),
            PgOutputMessage::StreamAbort { xid, subxid } => {
                w.u8(b'A').u32(xid.0).u32(subxid.0);
            }
        }
        w.0
    }

    struct Writer(Vec<u8>);

    impl Writer {
        fn u8(&mut self, value: u8) -> &mut Self {
            self.0.push(value);
            self
        }

        fn u16(&mut self, value: u16) -> &mut Self {
            self.0.extend_from_slice(&value.to_be_bytes());
            self
        }

        fn u32(&mut self, value: u32) -> &mut Self {
            self.0.extend_from_slice(&value.to_be_bytes());
            self
        }

        fn i32(&mut self, value: i32) -> &mut Self {
            self.0.extend_from_slice(&value.to_be_bytes());
            self
        }

        fn u64(&mut self, value: u64) -> &mut Self {
            self.0.extend_from_slice(&value.to_be_bytes());
            self
        }

        fn i64(&mut self, value: i64) -> &mut Self {
            self.0.extend_from_slice(&value.to_be_bytes());
            self
        }

        fn string(&mut self, value: &str) -> &mut Self {
            self.0.extend_from_slice(value.as_bytes());
            self.u8(0)
        }

        fn counted(&mut self, value: &[u8]) -> &mut Self {
            self.i32(i32::try_from(value.len()).expect("small value"));
            self.0.extend_from_slice(value);
            self
        }

        fn tag_xid(&mut self, tag: u8, xid: Option<Xid>) -> &mut Self {
            self.u8(tag);
            if let Some(xid) = xid {
                self.u32(xid.0);
            }
            self
        }

        fn commit(&mut self, commit: &Commit) {
            self.u8(commit.flags)
                .u64(commit.commit_lsn.0)
                .u64(commit.end_lsn.0);
            self.i64(commit.commit_time_micros);
        }

        fn update(&mut self, update: &Update) {
            self.tag_xid(b'U', update.xid).u32(update.relation.0);
            if let Some(old) = &update.old {
                self.old_tuple(old);
            }
            self.u8(b'N').tuple(&update.new);
        }

        fn truncate(&mut self, truncate: &Truncate) {
            let count = u32::try_from(truncate.relations.len()).expect("few relations");
            self.tag_xid(b'T', truncate.xid)
                .u32(count)
                .u8(truncate.options);
            for oid in &truncate.relations {
                self.u32(oid.0);
            }
        }

        fn relation(&mut self, relation: &Relation) {
            self.u32(relation.oid.0)
                .string(&relation.namespace)
                .string(&relation.name);
            self.u8(relation.replica_identity.as_byte());
            self.u16(u16::try_from(relation.columns.len()).expect("few columns"));
            for column in &relation.columns {
                self.u8(column.is_key.into()).string(&column.name);
                self.u32(column.type_oid.0).i32(column.type_modifier);
            }
        }

        fn old_tuple(&mut self, old: &OldTuple) -> &mut Self {
            self.u8(if old.is_key_only() { b'K' } else { b'O' })
                .tuple(old.tuple())
        }

        fn tuple(&mut self, tuple: &TupleData) -> &mut Self {
            self.u16(u16::try_from(tuple.0.len()).expect("few columns"));
            for value in &tuple.0 {
                match value {
                    ColumnValue::Null => self.u8(b'n'),
                    ColumnValue::UnchangedToast => self.u8(b'u'),
                    ColumnValue::Text(text) => self.u8(b't').counted(text.as_bytes()),
                    ColumnValue::Binary(bytes) => self.u8(b'b').counted(bytes),
                };
            }
            self
        }
    }

    fn text(value: &str) -> ColumnValue {
        ColumnValue::Text(value.to_owned())
    }

    fn row(values: &[ColumnValue]) -> TupleData {
        TupleData(values.to_vec())
    }

    fn sample_commit() -> Commit {
        Commit {
            flags: 0,
            commit_lsn: Lsn(0x1_0000_0010),
            end_lsn: Lsn(0x1_0000_0040),
            commit_time_micros: 847_000_000_000_000,
        }
    }

    fn sample_relation(xid: Option<Xid>) -> Relation {
        let column = |is_key, name: &str, type_oid, type_modifier| RelationColumn {
            is_key,
            name: name.to_owned(),
            type_oid: Oid(type_oid),
            type_modifier,
        };
        Relation {
            xid,
            oid: Oid(16_384),
            namespace: "public".to_owned(),
            name: "items".to_owned(),
            replica_identity: ReplicaIdentity::Index,
            columns: vec![column(true, "id", 23, -1), column(false, "title", 1043, 84)],
        }
    }

    /// Messages a change can carry, with `xid` as their streamed-xid prefix.
    fn data_messages(xid: Option<Xid>) -> Vec<PgOutputMessage> {
        let new = row(&[
            text("1"),
            ColumnValue::Null,
            ColumnValue::UnchangedToast,
            text("é✓"),
        ]);
        let binary = row(&[
            ColumnValue::Binary(Bytes::from_static(&[0, 0, 0, 1])),
            text(""),
        ]);
        let relation = Oid(16_384);
        let update = |old| {
            PgOutputMessage::Update(Update {
                xid,
                relation,
                old,
                new: new.clone(),
            })
        };
        let delete = |old| PgOutputMessage::Delete(Delete { xid, relation, old });
        vec![
            PgOutputMessage::Relation(sample_relation(xid)),
            PgOutputMessage::Relation(Relation {
                columns: vec![],
                ..sample_relation(xid)
            }),
            PgOutputMessage::Type {
                xid,
                oid: Oid(16_400),
                namespace: "public".to_owned(),
                name: "mood".to_owned(),
            },
            PgOutputMessage::Insert(Insert {
                xid,
                relation,
                new: new.clone(),
            }),
            PgOutputMessage::Insert(Insert {
                xid,
                relation,
                new: binary.clone(),
            }),
            PgOutputMessage::Insert(Insert {
                xid,
                relation,
                new: TupleData::default(),
            }),
            update(None),
            update(Some(OldTuple::Key(row(&[text("1"), ColumnValue::Null])))),
            update(Some(OldTuple::Full(binary))),
            delete(OldTuple::Key(row(&[text("7")]))),
            delete(OldTuple::Full(new.clone())),
            PgOutputMessage::Truncate(Truncate {
                xid,
                options: 3,
                relations: vec![relation, Oid(9)],
            }),
            PgOutputMessage::Truncate(Truncate {
                xid,
                options: 0,
                relations: vec![],
            }),
            PgOutputMessage::Message {
                xid,
                is_transactional: true,
                lsn: Lsn(0x2_0000_0000),
                prefix: "ampere".to_owned(),
                content: Bytes::from_static(b"\x00hello"),
            },
        ]
    }

    /// Every message kind, each with the stream block it is valid in.
    fn samples() -> Vec<(StreamBlock, PgOutputMessage)> {
        let outside = [
            PgOutputMessage::Begin(Begin {
                final_lsn: Lsn(0x1_0000_0010),
                commit_time_micros: -5,
                xid: Xid(726),
            }),
            PgOutputMessage::Commit(sample_commit()),
            PgOutputMessage::Origin {
                origin_lsn: Lsn(77),
                name: "pg_16385".to_owned(),
            },
            PgOutputMessage::StreamStart {
                xid: Xid(734),
                first_segment: true,
            },
            PgOutputMessage::StreamStart {
                xid: Xid(734),
                first_segment: false,
            },
            PgOutputMessage::StreamCommit {
                xid: Xid(734),
                commit: sample_commit(),
            },
            PgOutputMessage::StreamAbort {
                xid: Xid(734),
                subxid: Xid(735),
            },
        ];
        let inside = [
            PgOutputMessage::StreamStop,
            PgOutputMessage::Origin {
                origin_lsn: Lsn(78),
                name: String::new(),
            },
        ];
        let outside = outside.into_iter().chain(data_messages(None));
        let inside = inside.into_iter().chain(data_messages(Some(Xid(735))));
        let outside = outside.map(|message| (StreamBlock::Outside, message));
        outside
            .chain(inside.map(|message| (StreamBlock::Inside, message)))
            .collect()
    }

    fn hex(text: &str) -> Vec<u8> {
        let pairs = text.as_bytes().chunks_exact(2);
        assert!(pairs.remainder().is_empty(), "odd hex length: {text}");
        let byte = |pair| u8::from_str_radix(str::from_utf8(pair).expect("ASCII"), 16);
        pairs.map(|pair| byte(pair).expect("hex digits")).collect()
    }

    /// Deterministic xorshift64 so that failures replay.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: usize) -> usize {
            usize::try_from(self.next() % u64::try_from(bound).expect("fits")).expect("fits")
        }
    }

    #[test]
    fn round_trips_every_message_kind() {
        let samples = samples();
        for (stream_block, message) in &samples {
            let bytes = encode(message);
            assert_eq!(
                decode(&bytes, *stream_block).as_ref(),
                Ok(message),
                "{bytes:02x?}"
            );
        }
        let tags: std::collections::BTreeSet<u8> = samples
            .iter()
            .map(|(_, message)| encode(message)[0])
            .collect();
        assert_eq!(tags.len(), 14, "every message kind is sampled: {tags:?}");
    }

    #[test]
    fn every_prefix_of_a_valid_message_is_a_truncation_error() {
        for (stream_block, message) in samples() {
            let bytes = encode(&message);
            for len in 0..bytes.len() {
                match decode(&bytes[..len], stream_block) {
                    Err(DecodeError::Truncated { offset, .. }) => {
                        assert!(offset <= len, "offset {offset} beyond prefix {len}");
                    }
                    Err(DecodeError::Empty) => assert_eq!(len, 0),
                    other => panic!("prefix {len} of {message:?} decoded as {other:?}"),
                }
            }
        }
    }

    #[test]
    fn rejects_trailing_bytes_after_every_message_kind() {
        for (stream_block, message) in samples() {
            let mut bytes = encode(&message);
            let end = bytes.len();
            bytes.extend_from_slice(&[0, 0]);
            let error = decode(&bytes, stream_block).expect_err("trailing bytes");
            let expected = DecodeError::TrailingBytes {
                tag: MessageTag(bytes[0]),
                offset: end,
                count: 2,
            };
            assert_eq!(error, expected);
        }
    }

    #[test]
    fn never_panics_on_random_bytes() {
        const TAGS: &[u8] = b"BCORYIUDTMSEcA";
        let mut rng = XorShift(0x5eed_1e55_0bad_cafe);
        let mut decoder = Decoder::new(ProtoVersion::V2);
        for _ in 0..20_000 {
            let len = rng.below(48);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next().to_le_bytes()[0]).collect();
            // Mostly valid tags and small counts and lengths, or nearly everything is rejected at
            // the first or second field and the deeper parsers go unexercised.
            if let Some(first) = bytes.first_mut() {
                if rng.below(8) != 0 {
                    *first = TAGS[rng.below(TAGS.len())];
                }
            }
            for byte in bytes.iter_mut().skip(1) {
                if rng.below(3) == 0 {
                    *byte = b"\x00\x01\x02NKOntub"[rng.below(10)];
                }
            }
            let _ = decode(&bytes, StreamBlock::Outside);
            let _ = decode(&bytes, StreamBlock::Inside);
            let _ = decoder.decode(&bytes);
        }
    }

    #[test]
    fn never_panics_on_mutated_valid_messages() {
        let mut rng = XorShift(0x0dd_ba11);
        let samples: Vec<_> = samples()
            .into_iter()
            .map(|(b, m)| (b, encode(&m)))
            .collect();
        for _ in 0..20_000 {
            let (stream_block, bytes) = &samples[rng.below(samples.len())];
            let mut bytes = bytes.clone();
            for _ in 0..=rng.below(3) {
                let at = rng.below(bytes.len());
                bytes[at] = rng.next().to_le_bytes()[0];
            }
            let _ = decode(&bytes, *stream_block);
        }
    }

    #[test]
    fn decodes_a_begin_relation_insert_commit_as_postgres_15_emits_them() {
        // Captured from Postgres 15.18, proto_version 1: INSERT INTO t VALUES (1, 'a') on
        // CREATE TABLE t (id int PRIMARY KEY, v text).
        let mut decoder = Decoder::new(ProtoVersion::V1);
        let begin = decoder.decode(&hex("4200000000015056e8000303cf49cd08ae000002d6"));
        let expected = Begin {
            final_lsn: "0/15056E8".parse().expect("lsn"),
            commit_time_micros: 0x0003_03cf_49cd_08ae,
            xid: Xid(726),
        };
        assert_eq!(begin, Ok(PgOutputMessage::Begin(expected)));

        let relation = decoder.decode(&hex(
            "52000040007075626c69630074006400020169640000000017ffffffff00760000000019ffffffff",
        ));
        let column = |is_key, name: &str, type_oid| RelationColumn {
            is_key,
            name: name.to_owned(),
            type_oid: Oid(type_oid),
            type_modifier: -1,
        };
        let expected = Relation {
            xid: None,
            oid: Oid(16_384),
            namespace: "public".to_owned(),
            name: "t".to_owned(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![column(true, "id", 23), column(false, "v", 25)],
        };
        assert_eq!(relation, Ok(PgOutputMessage::Relation(expected)));

        let insert = decoder.decode(&hex("49000040004e0002740000000131740000000161"));
        let new = row(&[text("1"), text("a")]);
        assert_eq!(
            insert,
            Ok(PgOutputMessage::Insert(Insert {
                xid: None,
                relation: Oid(16_384),
                new
            }))
        );

        let commit = decoder.decode(&hex("430000000000015056e80000000001505718000303cf49cd08ae"));
        let expected = Commit {
            flags: 0,
            commit_lsn: Lsn(0x0150_56e8),
            end_lsn: Lsn(0x0150_5718),
            commit_time_micros: 0x0003_03cf_49cd_08ae,
        };
        assert_eq!(commit, Ok(PgOutputMessage::Commit(expected)));
    }

    #[test]
    fn decodes_updates_deletes_truncates_and_messages_as_postgres_15_emits_them() {
        // Captured from Postgres 15.18 on the table of the test above.
        let relation = Oid(16_384);
        let cases = [
            // UPDATE t SET v = 'b' WHERE id = 1: no old tuple under REPLICA IDENTITY DEFAULT.
            (
                "55000040004e0002740000000131740000000162",
                PgOutputMessage::Update(Update {
                    xid: None,
                    relation,
                    old: None,
                    new: row(&[text("1"), text("b")]),
                }),
            ),
            // UPDATE t SET id = 3 WHERE id = 2 under REPLICA IDENTITY FULL, v NULL.
            (
                "55000040004f00027400000001326e4e00027400000001336e",
                PgOutputMessage::Update(Update {
                    xid: None,
                    relation,
                    old: Some(OldTuple::Full(row(&[text("2"), ColumnValue::Null]))),
                    new: row(&[text("3"), ColumnValue::Null]),
                }),
            ),
            // UPDATE big SET n = 1 on a row whose `doc` is TOASTed and unchanged.
            (
                "550000400d4e000374000000013174000000013175",
                PgOutputMessage::Update(Update {
                    xid: None,
                    relation: Oid(16_397),
                    old: None,
                    new: row(&[text("1"), text("1"), ColumnValue::UnchangedToast]),
                }),
            ),
            // DELETE FROM t WHERE id = 1: the key only.
            (
                "44000040004b00027400000001316e",
                PgOutputMessage::Delete(Delete {
                    xid: None,
                    relation,
                    old: OldTuple::Key(row(&[text("1"), ColumnValue::Null])),
                }),
            ),
            // TRUNCATE t.
            (
                "54000000010000004000",
                PgOutputMessage::Truncate(Truncate {
                    xid: None,
                    options: 0,
                    relations: vec![relation],
                }),
            ),
            // SELECT pg_logical_emit_message(true, 'pfx', 'hi').
            (
                "4d01000000000150654070667800000000026869",
                PgOutputMessage::Message {
                    xid: None,
                    is_transactional: true,
                    lsn: Lsn(0x0150_6540),
                    prefix: "pfx".to_owned(),
                    content: Bytes::from_static(b"hi"),
                },
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                decode(&hex(bytes), StreamBlock::Outside),
                Ok(expected),
                "{bytes}"
            );
        }
    }

    #[test]
    fn decodes_a_stream_abort_as_postgres_15_emits_it() {
        // Captured from Postgres 15.18, proto_version 2, streaming on: a large transaction that
        // rolled back after one stream block; the whole transaction aborts, so subxid is xid.
        let abort = decode(&hex("41000002e3000002e3"), StreamBlock::Outside);
        let expected = PgOutputMessage::StreamAbort {
            xid: Xid(739),
            subxid: Xid(739),
        };
        assert_eq!(abort, Ok(expected));
    }

    #[test]
    fn decodes_a_streamed_transaction_as_postgres_15_emits_it() {
        // Captured from Postgres 15.18, proto_version 2, streaming on, logical_decoding_work_mem
        // 64kB: one transaction inserting 2991 rows into t under REPLICA IDENTITY FULL, cut to
        // the first insert of its first stream block and its last, empty, stream block.
        fn next(decoder: &mut Decoder, bytes: &str) -> PgOutputMessage {
            decoder.decode(&hex(bytes)).expect(bytes)
        }
        let mut decoder = Decoder::new(ProtoVersion::V2);
        let d = &mut decoder;
        let xid = Xid(734);
        assert_eq!(
            next(d, "53000002de01"),
            PgOutputMessage::StreamStart {
                xid,
                first_segment: true
            }
        );
        let relation = next(
            d,
            concat!(
                "52000002de000040007075626c69630074006600020169640000000017ffffffff01760000000019",
                "ffffffff"
            ),
        );
        let PgOutputMessage::Relation(relation) = relation else {
            panic!("{relation:?}")
        };
        assert_eq!(relation.xid, Some(xid));
        assert_eq!(relation.replica_identity, ReplicaIdentity::Full);
        let insert = format!(
            "49000002de000040004e0002740000000231307400000032{}",
            "78".repeat(50)
        );
        let insert = next(d, &insert);
        let new = row(&[text("10"), text(&"x".repeat(50))]);
        let expected = Insert {
            xid: Some(xid),
            relation: Oid(16_384),
            new,
        };
        assert_eq!(insert, PgOutputMessage::Insert(expected));
        assert_eq!(next(d, "45"), PgOutputMessage::StreamStop);
        assert!(!d.is_in_stream());

        assert_eq!(
            next(d, "53000002de00"),
            PgOutputMessage::StreamStart {
                xid,
                first_segment: false
            }
        );
        assert!(d.is_in_stream());
        assert_eq!(next(d, "45"), PgOutputMessage::StreamStop);
        let commit = next(
            d,
            "63000002de000000000001588f580000000001588f88000303cf4a02c669",
        );
        let expected = Commit {
            flags: 0,
            commit_lsn: Lsn(0x0158_8f58),
            end_lsn: Lsn(0x0158_8f88),
            commit_time_micros: 0x0003_03cf_4a02_c669,
        };
        assert_eq!(
            commit,
            PgOutputMessage::StreamCommit {
                xid,
                commit: expected
            }
        );
    }

    #[test]
    fn decoder_tracks_stream_blocks_and_reads_the_xid_prefix_only_inside_them() {
        let mut decoder = Decoder::new(ProtoVersion::V2);
        let insert = |xid| {
            PgOutputMessage::Insert(Insert {
                xid,
                relation: Oid(1),
                new: row(&[]),
            })
        };
        let start = PgOutputMessage::StreamStart {
            xid: Xid(9),
            first_segment: true,
        };
        for (message, is_in_stream) in [
            (insert(None), false),
            (start, true),
            (insert(Some(Xid(10))), true),
            (PgOutputMessage::StreamStop, false),
            (insert(None), false),
        ] {
            assert_eq!(decoder.decode(&encode(&message)), Ok(message));
            assert_eq!(decoder.is_in_stream(), is_in_stream);
        }
    }

    #[test]
    fn decoder_rejects_streaming_messages_under_protocol_version_1() {
        let mut decoder = Decoder::new(ProtoVersion::V1);
        let start = encode(&PgOutputMessage::StreamStart {
            xid: Xid(9),
            first_segment: true,
        });
        let error = decoder.decode(&start);
        assert_eq!(
            error,
            Err(DecodeError::StreamingNotNegotiated {
                tag: MessageTag(b'S')
            })
        );
        assert!(!decoder.is_in_stream());
        assert_eq!(decoder.proto_version().as_u32(), 1);
    }

    #[test]
    fn rejects_messages_on_the_wrong_side_of_a_stream_block() {
        let begin = Begin {
            final_lsn: Lsn(1),
            commit_time_micros: 0,
            xid: Xid(1),
        };
        let outside_only = [
            PgOutputMessage::Begin(begin),
            PgOutputMessage::Commit(sample_commit()),
            PgOutputMessage::StreamStart {
                xid: Xid(2),
                first_segment: false,
            },
            PgOutputMessage::StreamCommit {
                xid: Xid(2),
                commit: sample_commit(),
            },
            PgOutputMessage::StreamAbort {
                xid: Xid(2),
                subxid: Xid(3),
            },
        ];
        let misplaced = outside_only
            .iter()
            .map(|message| (StreamBlock::Inside, message))
            .chain([(StreamBlock::Outside, &PgOutputMessage::StreamStop)]);
        for (stream_block, message) in misplaced {
            let bytes = encode(message);
            let tag = MessageTag(bytes[0]);
            let expected = DecodeError::MisplacedInStreamBlock { tag, stream_block };
            assert_eq!(decode(&bytes, stream_block), Err(expected));
        }
        // A decoder that fails leaves its stream block as it was.
        let mut decoder = Decoder::new(ProtoVersion::V2);
        assert!(decoder.decode(b"E").is_err());
        assert!(!decoder.is_in_stream());
    }

    #[test]
    fn rejects_unknown_tags_including_protocol_version_3_two_phase_messages() {
        for tag in [b'b', b'P', b'K', b'r', b'p', b'k', 0] {
            let error = decode(&[tag, 0, 0, 0, 0], StreamBlock::Outside);
            assert_eq!(
                error,
                Err(DecodeError::UnknownTag {
                    tag: MessageTag(tag)
                })
            );
        }
        assert_eq!(decode(&[], StreamBlock::Outside), Err(DecodeError::Empty));
    }

    #[test]
    fn rejects_unknown_tuple_kinds_with_their_offset() {
        let cases: [(&[u8], usize, u8); 4] = [
            (b"I\0\0\0\x01X", 5, b'X'),
            (b"U\0\0\0\x01\0", 5, 0),
            (b"D\0\0\0\x01N\0\0", 5, b'N'),
            (b"I\0\0\0\x01N\0\x02nx", 9, b'x'),
        ];
        for (bytes, offset, found) in cases {
            match decode(bytes, StreamBlock::Outside) {
                Err(DecodeError::UnknownTupleKind {
                    offset: at,
                    found: byte,
                    ..
                }) => {
                    assert_eq!((at, byte), (offset, found), "{bytes:?}");
                }
                other => panic!("{bytes:?} decoded as {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_text_values_and_names_that_are_not_utf8() {
        let insert = b"I\0\0\0\x01N\0\x01t\0\0\0\x02\xc3\x28";
        match decode(insert, StreamBlock::Outside) {
            Err(DecodeError::InvalidUtf8 {
                offset: 13,
                field: "text column value",
                ..
            }) => {}
            other => panic!("decoded as {other:?}"),
        }
        let origin = b"O\0\0\0\0\0\0\0\x01\xff\0";
        match decode(origin, StreamBlock::Outside) {
            Err(DecodeError::InvalidUtf8 {
                offset: 9,
                field: "origin name",
                ..
            }) => {}
            other => panic!("decoded as {other:?}"),
        }
    }

    #[test]
    fn rejects_negative_lengths_and_unknown_replica_identities() {
        let insert = b"I\0\0\0\x01N\0\x01b\xff\xff\xff\xff";
        let error = decode(insert, StreamBlock::Outside);
        let expected = DecodeError::InvalidLength {
            tag: MessageTag(b'I'),
            offset: 9,
            length: -1,
            field: "binary column value",
        };
        assert_eq!(error, Err(expected));
        let relation = b"R\0\0\0\x01\0t\0x\0\0";
        let error = decode(relation, StreamBlock::Outside);
        assert_eq!(
            error,
            Err(DecodeError::UnknownReplicaIdentity {
                offset: 8,
                found: b'x'
            })
        );
    }

    #[test]
    fn survives_counts_far_larger_than_the_message() {
        // A lying count must fail as truncated without reserving memory for the claimed items.
        let truncate = b"T\xff\xff\xff\xff\0\0\0\0\x01";
        assert!(matches!(
            decode(truncate, StreamBlock::Outside),
            Err(DecodeError::Truncated { offset: 10, .. })
        ));
        let insert = b"I\0\0\0\x01N\xff\xffn";
        assert!(matches!(
            decode(insert, StreamBlock::Outside),
            Err(DecodeError::Truncated { offset: 9, .. })
        ));
    }

    #[test]
    fn errors_name_the_tag_offset_and_expected_field() {
        let error = decode(b"B\0\0", StreamBlock::Outside).expect_err("truncated");
        assert_eq!(
            error.to_string(),
            "pgoutput 'B' message truncated at byte 1: expected final LSN"
        );
        let error = decode(b"\x01", StreamBlock::Outside).expect_err("unknown");
        assert_eq!(error.to_string(), "unknown pgoutput message tag 0x01");
    }

    #[test]
    fn accessors_read_flags_and_kinds() {
        let truncate = Truncate {
            xid: None,
            options: 3,
            relations: vec![],
        };
        assert!(truncate.is_cascade());
        assert!(truncate.is_restart_identity());
        let old = OldTuple::Key(row(&[text("1")]));
        assert!(old.is_key_only());
        assert_eq!(old.tuple().0[0].as_text(), Some("1"));
        assert_eq!(ColumnValue::Null.as_text(), None);
        for identity in [
            ReplicaIdentity::Default,
            ReplicaIdentity::Nothing,
            ReplicaIdentity::Full,
            ReplicaIdentity::Index,
        ] {
            assert_eq!(
                ReplicaIdentity::from_byte(identity.as_byte()),
                Some(identity)
            );
        }
    }
}
