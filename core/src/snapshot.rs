//! MVCC snapshots (`pg_current_snapshot()`) and transaction visibility, for stitching an
//! initial snapshot to the replication stream (deploy-semantics SN-4, SN-5).

use std::fmt::Write as _;

use crate::pgoutput::Xid;

/// A 64-bit, epoch-qualified transaction id (`xid8`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct FullXid(pub u64);

impl FullXid {
    /// Widens a 32-bit xid from pgoutput against a nearby full xid `anchor` (the snapshot's
    /// `xmax`): the result is the full xid within ±2^31 of `anchor` whose low 32 bits are `xid`.
    pub fn widen(xid: Xid, anchor: Self) -> Self {
        // Truncation to the low 32 bits is the point: the signed distance between the two
        // 32-bit values locates `xid` relative to `anchor` across an epoch boundary.
        #[allow(clippy::cast_possible_truncation)]
        let delta = xid.0.wrapping_sub(anchor.0 as u32) as i32;
        Self(anchor.0.wrapping_add_signed(i64::from(delta)))
    }
}

/// `pg_current_snapshot()`: `xmin:xmax:xip_list`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PgSnapshot {
    /// Every xid below this had finished when the snapshot was taken.
    pub xmin: FullXid,
    /// Every xid at or above this had not started.
    pub xmax: FullXid,
    /// Xids in `[xmin, xmax)` still in progress, sorted.
    pub xip: Vec<FullXid>,
}

impl PgSnapshot {
    /// Parses Postgres's text form `xmin:xmax:xip1,xip2`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, ':');
        let xmin = FullXid(parts.next()?.parse().ok()?);
        let xmax = FullXid(parts.next()?.parse().ok()?);
        let xip_text = parts.next()?;
        let mut xip = Vec::new();
        for x in xip_text.split(',').filter(|s| !s.is_empty()) {
            xip.push(FullXid(x.parse().ok()?));
        }
        xip.sort_unstable();
        (xmin <= xmax).then_some(Self { xmin, xmax, xip })
    }

    /// Whether a transaction committed with 32-bit `xid` is visible to this snapshot, i.e. its
    /// changes are already in the snapshot's rows. Compared in 64 bits (SN-5).
    pub fn is_visible(&self, xid: Xid) -> bool {
        let full = FullXid::widen(xid, self.xmax);
        if full < self.xmin {
            return true;
        }
        if full >= self.xmax {
            return false;
        }
        #[cfg(feature = "sim")]
        if crate::mutant::is_active(crate::mutant::Mutant::SkipXipFilter) {
            // MUTANT (never on by default): transactions in progress at the snapshot count
            // as visible, so their changes are dropped.
            return true;
        }
        self.xip.binary_search(&full).is_err()
    }

    /// Whether `xid` started after the snapshot, which ends filtering for good (SN-4).
    pub fn is_after(&self, xid: Xid) -> bool {
        FullXid::widen(xid, self.xmax) >= self.xmax
    }

    /// The `snapshot-end` control message closing an initial snapshot (protocol.md §5.6).
    pub fn snapshot_end_json(&self) -> String {
        let mut out = String::from("{\"headers\":{\"control\":\"snapshot-end\",\"xip_list\":[");
        for (i, x) in self.xip.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(out, "{sep}\"{}\"", x.0);
        }
        let _ = write!(
            out,
            "],\"xmax\":\"{}\",\"xmin\":\"{}\"}}}}",
            self.xmax.0, self.xmin.0
        );
        out
    }
}

/// Postgres's text form `xmin:xmax:xip1,xip2`, as `pg_current_snapshot()::text` gives it.
impl std::fmt::Display for PgSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:", self.xmin.0, self.xmax.0)?;
        for (i, x) in self.xip.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{}", x.0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(text: &str) -> PgSnapshot {
        PgSnapshot::parse(text).expect("valid snapshot")
    }

    #[test]
    fn parses_postgres_text_form() {
        let s = snap("100:105:101,103");
        assert_eq!((s.xmin, s.xmax), (FullXid(100), FullXid(105)));
        assert_eq!(s.xip, vec![FullXid(101), FullXid(103)]);
        assert_eq!(snap("7:7:").xip, vec![]);
        assert!(PgSnapshot::parse("9:7:").is_none());
        assert!(PgSnapshot::parse("x:7:").is_none());
        assert_eq!(s.to_string(), "100:105:101,103");
        assert_eq!(snap("7:7:").to_string(), "7:7:");
    }

    #[test]
    fn transactions_in_progress_at_the_snapshot_are_not_visible() {
        let s = snap("100:105:101,103");
        assert!(s.is_visible(Xid(99)));
        assert!(s.is_visible(Xid(100)));
        assert!(!s.is_visible(Xid(101)));
        assert!(s.is_visible(Xid(102)));
        assert!(!s.is_visible(Xid(103)));
        assert!(!s.is_visible(Xid(105)));
        assert!(!s.is_visible(Xid(200)));
    }

    #[test]
    fn visibility_is_exact_above_epoch_zero() {
        // Epoch 3: full xids are 3 << 32 | low. xip membership must compare 64 bits (SN-5).
        let e = 3u64 << 32;
        let s = PgSnapshot {
            xmin: FullXid(e + 10),
            xmax: FullXid(e + 20),
            xip: vec![FullXid(e + 15)],
        };
        assert!(!s.is_visible(Xid(15)));
        assert!(s.is_visible(Xid(16)));
        assert!(s.is_visible(Xid(5)));
        assert!(!s.is_visible(Xid(25)));
    }

    #[test]
    fn widening_crosses_epoch_boundaries() {
        let anchor = FullXid((1u64 << 32) + 5);
        assert_eq!(
            FullXid::widen(Xid(u32::MAX), anchor),
            FullXid((1u64 << 32) - 1)
        );
        assert_eq!(FullXid::widen(Xid(7), anchor), FullXid((1u64 << 32) + 7));
        let s = PgSnapshot {
            xmin: FullXid((1 << 32) - 3),
            xmax: anchor,
            xip: vec![],
        };
        assert!(s.is_visible(Xid(u32::MAX)));
        assert!(!s.is_visible(Xid(5)));
    }

    #[test]
    fn snapshot_end_renders_decimal_strings() {
        assert_eq!(
            snap("750:752:751").snapshot_end_json(),
            r#"{"headers":{"control":"snapshot-end","xip_list":["751"],"xmax":"752","xmin":"750"}}"#
        );
    }
}
