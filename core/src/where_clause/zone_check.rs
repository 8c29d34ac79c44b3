//! Whether the database server reads a time zone as ampere does.
//!
//! ampere evaluates `AT TIME ZONE` with its own copy of the IANA database (`tz.rs`); Postgres
//! uses its server's copy. Where the two differ (a tzdb release changed a zone's rules or its
//! history, or the server's build keeps `backzone` history), a where clause would select other
//! rows at replication time than the snapshot did. So before a shape with a named zone is
//! created, the server is asked for its wall clock at a set of instants
//! ([`Zone::probe_instants`]) and the answers are compared with ampere's
//! ([`Zone::check_server`]); a difference refuses the clause (a 400 naming the zone and the
//! first instant they disagree at), never a silent divergence.
//!
//! The instants: every week from 1800 to 2100 (before 1800 every zone is on local mean time,
//! which both copies record once per zone; from 2037 on both extrapolate the zone's POSIX
//! rule, which these weeks cover for 63 years), and for each transition ampere knows in that
//! span the second before it and the second it starts. A rule that only the server has is
//! found if it lasts a week or more somewhere in the span; shorter differences, and
//! differences only after 2100, are not looked for.

use std::fmt;

use super::tz::{timestamp_of_unix, Zone};

/// 1800-01-01 00:00:00 UTC, Unix seconds.
const PROBE_START_UNIX: i64 = -5_364_662_400;
/// 2100-01-01 00:00:00 UTC, Unix seconds.
const PROBE_END_UNIX: i64 = 4_102_444_800;
/// One probe a week between the two.
const PROBE_STEP_SECS: i64 = 7 * 86_400;

/// Why the server does not read a zone as ampere does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ZoneMismatch {
    /// The server does not know the zone (`time zone "…" not recognized`).
    Unknown {
        /// The zone's canonical name.
        zone: String,
    },
    /// Its wall clock differs from ampere's; the first probed instant where it does.
    Differs {
        /// The zone's canonical name.
        zone: String,
        /// The instant, Unix seconds.
        unix: i64,
        /// ampere's wall clock there, Unix seconds read as if UTC.
        ampere: i64,
        /// The server's wall clock there, `None` if it gave fewer answers than asked.
        server: Option<i64>,
    },
}

impl fmt::Display for ZoneMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown { zone } => write!(
                f,
                "the database server does not recognize time zone \"{zone}\", which ampere \
                 knows; update the server's time zone data (tzdata) or use another zone"
            ),
            Self::Differs {
                zone,
                unix,
                ampere,
                server,
            } => {
                write!(
                    f,
                    "the database server's data for time zone \"{zone}\" differs from \
                     ampere's: at {} UTC ampere reads {}",
                    unix_text(*unix),
                    unix_text(*ampere)
                )?;
                match server {
                    Some(server) => write!(f, ", the server {}", unix_text(*server))?,
                    None => f.write_str(", the server gave no answer")?,
                }
                f.write_str(
                    ", so rows would be filtered otherwise than Postgres filters them; update \
                     the server's time zone data (tzdata) or use another zone",
                )
            }
        }
    }
}

impl std::error::Error for ZoneMismatch {}

/// `unix` (whole seconds) as Postgres prints a timestamp.
fn unix_text(unix: i64) -> String {
    timestamp_of_unix(unix).map_or_else(|| format!("{unix} s"), |ts| ts.to_string())
}

impl Zone {
    /// The instants (Unix seconds, ascending, distinct) at which [`Zone::check_server`]
    /// compares the server's wall clock with ampere's (module docs).
    pub fn probe_instants(&self) -> Vec<i64> {
        let weeks = (PROBE_START_UNIX..PROBE_END_UNIX).step_by(PROBE_STEP_SECS as usize);
        let mut instants: Vec<i64> = weeks.collect();
        for transition in self.transitions_between(PROBE_START_UNIX, PROBE_END_UNIX) {
            instants.extend([transition - 1, transition]);
        }
        instants.sort_unstable();
        instants.dedup();
        instants
    }

    /// This zone's wall clock at Unix second `unix`, as Unix seconds read as if UTC: what
    /// Postgres's `extract(epoch FROM to_timestamp(unix) AT TIME ZONE zone)` gives.
    pub fn wall_clock_at(&self, unix: i64) -> i64 {
        unix + self.utc_offset_at(unix)
    }

    /// Compares the server's wall clocks (`server[i]` at `instants[i]`, from the port's
    /// `time_zone_wall_clocks`; `None` if it does not know the zone) with ampere's: the first
    /// instant they differ at, if any.
    pub fn check_server(
        &self,
        instants: &[i64],
        server: Option<&[i64]>,
    ) -> Result<(), ZoneMismatch> {
        let zone = || self.name().to_owned();
        let Some(server) = server else {
            return Err(ZoneMismatch::Unknown { zone: zone() });
        };
        for (i, &unix) in instants.iter().enumerate() {
            let ampere = self.wall_clock_at(unix);
            let theirs = server.get(i).copied();
            if theirs != Some(ampere) {
                return Err(ZoneMismatch::Differs {
                    zone: zone(),
                    unix,
                    ampere,
                    server: theirs,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str) -> Zone {
        Zone::lookup(name).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn the_probes_cover_every_week_and_both_sides_of_every_transition() {
        let new_york = zone("America/New_York");
        let probes = new_york.probe_instants();
        assert!(
            probes.windows(2).all(|w| w[0] < w[1]),
            "ascending, distinct"
        );
        assert_eq!(probes.first(), Some(&PROBE_START_UNIX));
        assert!(probes.last().is_some_and(|&last| last < PROBE_END_UNIX));
        assert!(probes.windows(2).all(|w| w[1] - w[0] <= PROBE_STEP_SECS));
        // 2024-03-10 07:00:00 UTC: New York springs forward.
        let spring = 1_710_054_000;
        assert!(probes.contains(&(spring - 1)) && probes.contains(&spring));
        assert_eq!(new_york.wall_clock_at(spring - 1) - (spring - 1), -5 * 3600);
        assert_eq!(new_york.wall_clock_at(spring) - spring, -4 * 3600);
    }

    #[test]
    fn a_server_that_agrees_passes_and_the_first_difference_is_named() {
        let zone = zone("Europe/Paris");
        let probes = zone.probe_instants();
        let mut server: Vec<i64> = probes.iter().map(|&u| zone.wall_clock_at(u)).collect();
        assert_eq!(zone.check_server(&probes, Some(&server)), Ok(()));

        let i = probes.len() / 2;
        server[i] += 3600;
        server[i + 1] += 3600;
        let mismatch = zone
            .check_server(&probes, Some(&server))
            .expect_err("differs");
        let ampere = zone.wall_clock_at(probes[i]);
        let expected = ZoneMismatch::Differs {
            zone: "Europe/Paris".into(),
            unix: probes[i],
            ampere,
            server: Some(ampere + 3600),
        };
        assert_eq!(mismatch, expected);
        let text = mismatch.to_string();
        assert!(
            text.starts_with("the database server's data for time zone \"Europe/Paris\" differs"),
            "{text}"
        );
        assert!(
            text.contains("update the server's time zone data (tzdata)"),
            "{text}"
        );

        let short = zone
            .check_server(&probes, Some(&server[..3]))
            .expect_err("too few answers");
        assert!(
            matches!(short, ZoneMismatch::Differs { unix, server: None, .. } if unix == probes[3]),
            "{short:?}"
        );
        let unknown = zone.check_server(&probes, None).expect_err("unknown");
        assert_eq!(
            unknown.to_string(),
            "the database server does not recognize time zone \"Europe/Paris\", which ampere \
             knows; update the server's time zone data (tzdata) or use another zone"
        );
    }
}
