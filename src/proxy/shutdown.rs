//! Requests to shut down, as the front ends take them: the first asks for a graceful stop
//! (in-flight work may finish within `--shutdown-timeout`), a second for an immediate one. The
//! process's SIGINT and SIGTERM make them ([`Shutdown::on_signals`], which `app` sets up before
//! anything starts); a test or an embedding program makes its own ([`Shutdown::requested`]).

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

/// Where shutdown requests come from.
#[derive(Debug)]
pub struct Shutdown(Source);

#[derive(Debug)]
enum Source {
    /// SIGINT and SIGTERM.
    Signals {
        interrupt: Signal,
        terminate: Signal,
    },
    /// [`Trigger::request`].
    Requests(mpsc::Receiver<&'static str>),
}

/// Makes shutdown requests for a [`Shutdown::requested`].
#[derive(Debug, Clone)]
pub struct Trigger(mpsc::Sender<&'static str>);

impl Trigger {
    /// Asks the front end to shut down; `why` is logged as the signal would be. Only the first
    /// two unread requests count (a graceful stop, then an immediate one); more are dropped.
    pub fn request(&self, why: &'static str) {
        let _ = self.0.try_send(why);
    }
}

impl Shutdown {
    /// Requests from SIGINT and SIGTERM, listened for from now on (so a signal never finds the
    /// default, fatal, handler). Needs the runtime.
    pub fn on_signals() -> anyhow::Result<Self> {
        Ok(Self(Source::Signals {
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
        }))
    }

    /// Requests made with the returned [`Trigger`] alone.
    pub fn requested() -> (Trigger, Self) {
        let (tx, rx) = mpsc::channel(2);
        (Trigger(tx), Self(Source::Requests(rx)))
    }

    /// The next request, by name (`SIGINT`, `SIGTERM`, or the trigger's reason). Pending for
    /// ever once no trigger is left.
    pub async fn recv(&mut self) -> &'static str {
        match &mut self.0 {
            Source::Signals {
                interrupt,
                terminate,
            } => {
                tokio::select! {
                    _ = interrupt.recv() => "SIGINT",
                    _ = terminate.recv() => "SIGTERM",
                }
            }
            Source::Requests(rx) => match rx.recv().await {
                Some(why) => why,
                None => std::future::pending().await,
            },
        }
    }
}
