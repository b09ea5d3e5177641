//! A leak recording started from a cgroup's caches (`l`): the agent records the cgroup for
//! [`DURATION`], and the drill-in shows its top call sites as they come.
use std::time::Duration;

use tokio::sync::mpsc;

use crate::{
    api::LeakView,
    client::{Client, Endpoint},
    units::iec,
};

/// How long a recording from `top` lasts.
pub(crate) const DURATION: Duration = Duration::from_secs(60);
/// Call sites shown.
pub(crate) const SHOWN: usize = 6;

/// A reading of the recording of a cgroup (by path), or what went wrong.
pub(crate) type Reading = (String, Result<LeakView, String>);

#[derive(Debug, Default)]
pub(crate) struct LeakPanel {
    /// A cgroup the user asked to record, not yet handed to a recording task.
    requested: Option<String>,
    shown: Option<Reading>,
}

impl LeakPanel {
    pub(crate) fn request(&mut self, path: String) {
        self.shown = Some((path.clone(), Err("starting a leak recording...".into())));
        self.requested = Some(path);
    }

    pub(crate) fn take_request(&mut self) -> Option<String> {
        self.requested.take()
    }

    pub(crate) fn update(&mut self, reading: Reading) {
        self.shown = Some(reading);
    }

    /// The panel's text for the cgroup at `path`, if it was recorded: a title line, then its
    /// largest sites.
    pub(crate) fn lines(&self, path: &str) -> Option<Vec<String>> {
        let (recorded, reading) = self.shown.as_ref()?;
        if recorded != path {
            return None;
        }
        Some(match reading {
            Err(message) => vec![format!("leaks: {message}")],
            Ok(view) => {
                let mut lines = vec![format!(
                    "leaks ({}, {:.0} of {:.0} s; kmemcg leaks {} for more): {} call sites{}",
                    view.state,
                    view.recorded_seconds,
                    view.for_seconds,
                    view.cgroup,
                    view.sites.len(),
                    view.warnings
                        .first()
                        .map(|w| format!("; {w}"))
                        .unwrap_or_default()
                )];
                lines.extend(view.sites.iter().take(SHOWN).map(|s| {
                    format!(
                        "  {:<20} {:<36} {:>8} obj {:>10}  median age {:.0}s  oldest {:.0}s",
                        s.cache,
                        s.function,
                        s.objects,
                        iec(s.bytes),
                        s.median_age_seconds,
                        s.oldest_seconds
                    )
                }));
                lines
            }
        })
    }
}

/// The agent's endpoints for a recording: reads at `addr`, the change through the unix socket
/// (`KMEMCG_SOCKET`, else the default), as `kmemcg leaks` does.
pub(crate) fn endpoints(addr: &str) -> (Endpoint, Endpoint) {
    let socket = std::env::var("KMEMCG_SOCKET")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| crate::access::DEFAULT_SOCKET.into());
    (
        Endpoint::tcp(addr, None),
        Endpoint::socket(std::path::Path::new(&socket), Vec::new()),
    )
}

/// Records `path` and sends a reading every 2 s until the recording ends.
pub(crate) async fn record(
    (reads, writes): (Endpoint, Endpoint),
    path: String,
    tx: mpsc::Sender<Reading>,
) {
    let client = Client::with_endpoints(reads, writes);
    let id = match client.start_leaks(&path, DURATION).await {
        Ok(id) => id,
        Err(e) => {
            let _ = tx.send((path, Err(format!("{e:#}")))).await;
            return;
        }
    };
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let reading = client.leaks(id, Duration::from_secs(300)).await;
        let done = reading.as_ref().map_or(true, |v| v.state != "recording");
        if tx
            .send((path.clone(), reading.map_err(|e| format!("{e:#}"))))
            .await
            .is_err()
            || done
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::LeakSite;

    #[test]
    fn the_panel_shows_the_recorded_cgroup_only() {
        let mut panel = LeakPanel::default();
        assert_eq!(panel.lines("/a"), None);
        panel.request("/a".into());
        assert_eq!(panel.take_request().as_deref(), Some("/a"));
        assert_eq!(panel.take_request(), None);
        assert_eq!(
            panel.lines("/a"),
            Some(vec!["leaks: starting a leak recording...".to_string()])
        );
        let view = LeakView {
            cgroup: "/a".into(),
            state: "recording".into(),
            recorded_seconds: 4.0,
            for_seconds: 60.0,
            sites: vec![LeakSite {
                function: "alloc_empty_file+0x3c".into(),
                cache: "filp".into(),
                objects: 3500,
                bytes: 672_000,
                ..Default::default()
            }],
            ..Default::default()
        };
        panel.update(("/a".into(), Ok(view)));
        let lines = panel.lines("/a").unwrap_or_default();
        assert!(
            lines[0].starts_with("leaks (recording, 4 of 60 s"),
            "{lines:?}"
        );
        assert!(lines[1].contains("alloc_empty_file+0x3c") && lines[1].contains("3500"));
        assert_eq!(panel.lines("/b"), None);
    }
}
