//! TCP keepalive and `TCP_USER_TIMEOUT` for every database socket: the SQL connections (which
//! tokio-postgres dials, told through its `Config`) and the replication connection (which
//! [`crate::pg`] dials itself and configures with [`TcpSettings::apply`]).
//!
//! Owns: where each setting comes from. `ELECTRIC_DATABASE_TCP_KEEPALIVE_IDLE`, `_INTERVAL`,
//! `_COUNT` and `ELECTRIC_DATABASE_TCP_USER_TIMEOUT` ([`TcpOptions`]) are ampere's own, so they
//! win; libpq's URL parameters (`keepalives`, `keepalives_idle`, `keepalives_interval`,
//! `keepalives_retries`, `tcp_user_timeout`) fill in what they leave unset; the OS's settings
//! fill in the rest. Keepalive is on unless the URL says `keepalives=0` and no variable asks
//! for it (libpq's default is on, as is tokio-postgres's). `tcp_user_timeout` in a URL is in
//! milliseconds, as libpq reads it (tokio-postgres alone would read seconds).
//!
//! Never: opens sockets, or touches a unix socket (neither option exists there).

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tokio_postgres::Config;

/// The socket settings from outside the URL (ampere's variables).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpOptions {
    /// `ELECTRIC_DATABASE_TCP_KEEPALIVE_IDLE`: idle time before the first probe.
    pub keepalive_idle: Option<Duration>,
    /// `ELECTRIC_DATABASE_TCP_KEEPALIVE_INTERVAL`: time between probes.
    pub keepalive_interval: Option<Duration>,
    /// `ELECTRIC_DATABASE_TCP_KEEPALIVE_COUNT`: unanswered probes before the connection drops.
    pub keepalive_count: Option<u32>,
    /// `ELECTRIC_DATABASE_TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged.
    pub user_timeout: Option<Duration>,
}

impl TcpOptions {
    fn sets_keepalive(&self) -> bool {
        self.keepalive_idle.is_some()
            || self.keepalive_interval.is_some()
            || self.keepalive_count.is_some()
    }
}

/// What one URL's sockets get: the variables over the URL's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSettings {
    /// `None`: `SO_KEEPALIVE` off.
    pub keepalive: Option<Keepalive>,
    /// `None`: the OS's (no `TCP_USER_TIMEOUT`).
    pub user_timeout: Option<Duration>,
}

/// Keepalive probing; a `None` keeps the OS's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// `TCP_KEEPIDLE`.
    pub idle: Option<Duration>,
    /// `TCP_KEEPINTVL`.
    pub interval: Option<Duration>,
    /// `TCP_KEEPCNT`.
    pub count: Option<u32>,
}

impl TcpSettings {
    /// Merges `options` into `config` (already parsed from a URL, whose `tcp_user_timeout`
    /// in milliseconds is `url_user_timeout`) and returns what its sockets get. tokio-postgres
    /// then applies the same settings to the SQL sockets it dials.
    pub(crate) fn resolve(config: &mut Config, url: &UrlTcp, options: &TcpOptions) -> Self {
        let is_keepalive = options.sets_keepalive() || url.keepalives.unwrap_or(true);
        config.keepalives(is_keepalive);
        let keepalive = is_keepalive.then(|| Keepalive {
            idle: options.keepalive_idle.or(url.keepalives_idle),
            interval: options.keepalive_interval.or(url.keepalives_interval),
            count: options.keepalive_count.or(url.keepalives_retries),
        });
        if let Some(keepalive) = keepalive {
            // Unset, tokio-postgres's idle is 2 h, Linux's default too.
            if let Some(idle) = keepalive.idle {
                config.keepalives_idle(idle);
            }
            if let Some(interval) = keepalive.interval {
                config.keepalives_interval(interval);
            }
            if let Some(count) = keepalive.count {
                config.keepalives_retries(count);
            }
        }
        let user_timeout = options.user_timeout.or(url.tcp_user_timeout);
        if let Some(timeout) = user_timeout {
            config.tcp_user_timeout(timeout);
        }
        Self {
            keepalive,
            user_timeout,
        }
    }

    /// Sets `SO_KEEPALIVE` (with `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT` where given)
    /// and `TCP_USER_TIMEOUT` on `socket`, as tokio-postgres does on the sockets it dials.
    pub fn apply(&self, socket: &TcpStream) -> io::Result<()> {
        let socket = SockRef::from(socket);
        match self.keepalive {
            None => socket.set_keepalive(false)?,
            Some(keepalive) => {
                let mut params = TcpKeepalive::new();
                if let Some(idle) = keepalive.idle {
                    params = params.with_time(idle);
                }
                if let Some(interval) = keepalive.interval {
                    params = params.with_interval(interval);
                }
                if let Some(count) = keepalive.count {
                    params = params.with_retries(count);
                }
                socket.set_tcp_keepalive(&params)?;
            }
        }
        #[cfg(target_os = "linux")]
        if let Some(timeout) = self.user_timeout {
            socket.set_tcp_user_timeout(Some(timeout))?;
        }
        Ok(())
    }
}

/// libpq's socket parameters as a URL gave them (read before tokio-postgres parses the rest).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct UrlTcp {
    pub(crate) keepalives: Option<bool>,
    pub(crate) keepalives_idle: Option<Duration>,
    pub(crate) keepalives_interval: Option<Duration>,
    pub(crate) keepalives_retries: Option<u32>,
    /// libpq: milliseconds.
    pub(crate) tcp_user_timeout: Option<Duration>,
}

/// The URL parameters [`UrlTcp`] reads.
pub(crate) const URL_PARAMETERS: [&str; 5] = [
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "tcp_user_timeout",
];

/// A URL parameter libpq defines that ampere cannot read.
#[derive(Debug, thiserror::Error)]
#[error(
    "{parameter}={value:?} in the database URL is not {what}: give a whole number (libpq's \
     meaning), or leave it out"
)]
pub struct UrlTcpError {
    parameter: String,
    value: String,
    what: &'static str,
}

impl UrlTcp {
    /// Reads one of [`URL_PARAMETERS`]; zero (or less) means the OS default, as in libpq.
    pub(crate) fn set(&mut self, key: &str, value: &str) -> Result<(), UrlTcpError> {
        let invalid = |what| UrlTcpError {
            parameter: key.to_owned(),
            value: value.to_owned(),
            what,
        };
        let number = value
            .trim()
            .parse::<i64>()
            .map_err(|_| invalid("a whole number"))?;
        let positive = u64::try_from(number).ok().filter(|n| *n > 0);
        let seconds = positive.map(Duration::from_secs);
        match key {
            "keepalives" => self.keepalives = Some(number != 0),
            "keepalives_idle" => self.keepalives_idle = seconds,
            "keepalives_interval" => self.keepalives_interval = seconds,
            "keepalives_retries" => {
                let count = positive.map(u32::try_from).transpose();
                self.keepalives_retries = count.map_err(|_| invalid("a probe count"))?;
            }
            "tcp_user_timeout" => self.tcp_user_timeout = positive.map(Duration::from_millis),
            _ => unreachable!("invariant: the caller routes only URL_PARAMETERS here"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected loopback socket (the listener's end is returned to keep it open).
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    fn resolve(url: &[(&str, &str)], options: &TcpOptions) -> (TcpSettings, Config) {
        let mut parsed = UrlTcp::default();
        for (key, value) in url {
            parsed.set(key, value).unwrap();
        }
        let mut config = Config::new();
        let settings = TcpSettings::resolve(&mut config, &parsed, options);
        (settings, config)
    }

    #[tokio::test]
    async fn apply_sets_keepalive_probes_and_user_timeout_as_getsockopt_reads_them() {
        let (socket, _server) = socket_pair().await;
        let settings = TcpSettings {
            keepalive: Some(Keepalive {
                idle: Some(Duration::from_secs(31)),
                interval: Some(Duration::from_secs(7)),
                count: Some(4),
            }),
            user_timeout: Some(Duration::from_millis(12_500)),
        };
        settings.apply(&socket).unwrap();
        let read = SockRef::from(&socket);
        assert!(read.keepalive().unwrap());
        assert_eq!(read.tcp_keepalive_time().unwrap(), Duration::from_secs(31));
        assert_eq!(
            read.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(7)
        );
        assert_eq!(read.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(
            read.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(12_500))
        );

        let off = TcpSettings {
            keepalive: None,
            user_timeout: None,
        };
        off.apply(&socket).unwrap();
        assert!(!read.keepalive().unwrap());
    }

    #[tokio::test]
    async fn unset_probe_settings_keep_the_oss_values() {
        let (socket, _server) = socket_pair().await;
        let read = SockRef::from(&socket);
        let os_interval = read.tcp_keepalive_interval().unwrap();
        let os_count = read.tcp_keepalive_retries().unwrap();
        let settings = TcpSettings {
            keepalive: Some(Keepalive {
                idle: Some(Duration::from_secs(45)),
                interval: None,
                count: None,
            }),
            user_timeout: None,
        };
        settings.apply(&socket).unwrap();
        assert!(read.keepalive().unwrap());
        assert_eq!(read.tcp_keepalive_time().unwrap(), Duration::from_secs(45));
        assert_eq!(read.tcp_keepalive_interval().unwrap(), os_interval);
        assert_eq!(read.tcp_keepalive_retries().unwrap(), os_count);
        assert_eq!(read.tcp_user_timeout().unwrap(), None);
    }

    #[test]
    fn variables_override_url_parameters_which_fill_in_the_rest() {
        let url = [
            ("keepalives_idle", "100"),
            ("keepalives_interval", "20"),
            ("tcp_user_timeout", "1500"),
        ];
        let options = TcpOptions {
            keepalive_idle: Some(Duration::from_secs(30)),
            keepalive_count: Some(3),
            ..TcpOptions::default()
        };
        let (settings, config) = resolve(&url, &options);
        let expected = Keepalive {
            idle: Some(Duration::from_secs(30)),
            interval: Some(Duration::from_secs(20)),
            count: Some(3),
        };
        assert_eq!(settings.keepalive, Some(expected));
        assert_eq!(settings.user_timeout, Some(Duration::from_millis(1500)));
        // tokio-postgres gets the same, for the SQL sockets it dials
        assert!(config.get_keepalives());
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(
            config.get_keepalives_interval(),
            Some(Duration::from_secs(20))
        );
        assert_eq!(config.get_keepalives_retries(), Some(3));
        assert_eq!(
            config.get_tcp_user_timeout(),
            Some(&Duration::from_millis(1500))
        );

        let options = TcpOptions {
            user_timeout: Some(Duration::from_secs(60)),
            ..TcpOptions::default()
        };
        let (settings, _) = resolve(&url, &options);
        assert_eq!(settings.user_timeout, Some(Duration::from_secs(60)));
    }

    #[test]
    fn keepalives_0_turns_probing_off_unless_a_variable_asks_for_it() {
        let (settings, config) = resolve(&[("keepalives", "0")], &TcpOptions::default());
        assert_eq!(settings.keepalive, None);
        assert!(!config.get_keepalives());
        let options = TcpOptions {
            keepalive_interval: Some(Duration::from_secs(5)),
            ..TcpOptions::default()
        };
        let (settings, config) = resolve(&[("keepalives", "0")], &options);
        assert!(settings.keepalive.is_some());
        assert!(config.get_keepalives());
        // nothing set anywhere: on, with the OS's probe settings
        let (settings, _) = resolve(&[], &TcpOptions::default());
        let os = Keepalive {
            idle: None,
            interval: None,
            count: None,
        };
        assert_eq!(settings.keepalive, Some(os));
        assert_eq!(settings.user_timeout, None);
    }

    #[test]
    fn url_values_follow_libpq_zero_is_the_default_and_garbage_names_the_parameter() {
        let (settings, _) = resolve(
            &[("keepalives_idle", "0"), ("tcp_user_timeout", "0")],
            &TcpOptions::default(),
        );
        assert_eq!(settings.keepalive.and_then(|k| k.idle), None);
        assert_eq!(settings.user_timeout, None);
        let err = UrlTcp::default().set("keepalives_idle", "30s").unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("keepalives_idle=\"30s\"") && message.contains("whole number"),
            "{message}"
        );
    }
}
