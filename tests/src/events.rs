//! `ctr events` as a child process, read line by line with a deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::ctr::Ctr;
use crate::poll;
use crate::process::Background;

/// One event line: `<date> <time> <zone> UTC <namespace> <topic> <json>`.
#[derive(Clone, Debug)]
pub struct Event {
    pub namespace: String,
    pub topic: String,
    pub payload: serde_json::Value,
    pub line: String,
}

impl Event {
    pub fn parse(line: &str) -> Option<Event> {
        // The topic is the first word starting with '/', the payload the
        // rest of the line; the namespace is the word before the topic.
        let words: Vec<&str> = line.split(' ').collect();
        let t = words.iter().position(|w| w.starts_with('/'))?;
        let payload = words[t + 1..].join(" ");
        Some(Event {
            namespace: words.get(t.checked_sub(1)?)?.to_string(),
            topic: words[t].to_string(),
            payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
            line: line.to_string(),
        })
    }

    /// The container an event is about (`container_id`, or `id` for
    /// container events).
    pub fn container_id(&self) -> Option<&str> {
        self.payload["container_id"]
            .as_str()
            .or_else(|| self.payload["id"].as_str())
    }
}

/// A running `ctr events` that is known to be subscribed.
pub struct Events {
    child: Background,
    ctr: Ctr,
    marker_ns: String,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Events {
    /// Starts `ctr events` and returns once it is subscribed: until then it
    /// would miss events. A namespace of its own is labelled again and again
    /// until the `/namespaces/update` for it shows up in the stream.
    #[track_caller]
    pub fn subscribe(ctr: &Ctr) -> Events {
        let marker_ns = format!(
            "cm-events-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ctr.ok(&["namespaces", "create", &marker_ns]);
        let events = Events {
            child: ctr.spawn(&["events"]),
            ctr: ctr.clone(),
            marker_ns,
        };
        let mut n = 0;
        poll::until(
            Duration::from_secs(30),
            "`ctr events` to be subscribed",
            || {
                n += 1;
                events.ctr.ok(&[
                    "namespaces",
                    "label",
                    &events.marker_ns,
                    &format!("seq={n}"),
                ]);
                if events.all().iter().any(|e| {
                    e.topic == "/namespaces/update"
                        && e.payload["name"] == events.marker_ns.as_str()
                }) {
                    Ok(())
                } else {
                    Err(format!(
                        "stdout so far: {:?}, stderr: {:?}",
                        String::from_utf8_lossy(&events.child.stdout_so_far()),
                        String::from_utf8_lossy(&events.child.stderr_so_far())
                    ))
                }
            },
        );
        events
    }

    /// Every complete event line seen so far.
    pub fn all(&self) -> Vec<Event> {
        let out = self.child.stdout_so_far();
        let text = String::from_utf8_lossy(&out);
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        complete.lines().filter_map(Event::parse).collect()
    }

    /// Events seen so far about container `id`, in order.
    pub fn for_container(&self, id: &str) -> Vec<Event> {
        self.all()
            .into_iter()
            .filter(|e| e.container_id() == Some(id))
            .collect()
    }

    /// Waits until an event about container `id` matches `pred`.
    #[track_caller]
    pub fn wait_for(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Event {
        poll::until(timeout, &format!("{what} event for {id}"), || {
            let seen = self.for_container(id);
            seen.iter().find(|e| pred(e)).cloned().ok_or_else(|| {
                let lines: Vec<&str> = seen.iter().map(|e| e.line.as_str()).collect();
                format!("events for {id} so far:\n{}", lines.join("\n"))
            })
        })
    }

    /// The topics of the events about container `id`, in order.
    pub fn topics(&self, id: &str) -> Vec<String> {
        self.for_container(id)
            .into_iter()
            .map(|e| e.topic)
            .collect()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = crate::process::run_quietly(
            self.ctr.command(&["namespaces", "remove", &self.marker_ns]),
            Duration::from_secs(30),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_event_lines() {
        let e = Event::parse(
            r#"2026-11-22 14:31:19.410051119 +0000 UTC default /tasks/exit {"container_id":"o1","id":"o1","pid":16998,"exit_status":137}"#,
        )
        .unwrap();
        assert_eq!(e.namespace, "default");
        assert_eq!(e.topic, "/tasks/exit");
        assert_eq!(e.payload["exit_status"], 137);
        assert_eq!(e.container_id(), Some("o1"));
        let c = Event::parse(r#"2026-11-22 14:31:18.866 +0000 UTC default /containers/create {"id":"o1","image":"x y"}"#).unwrap();
        assert_eq!(c.container_id(), Some("o1"));
        assert_eq!(c.payload["image"], "x y");
        assert!(Event::parse("garbage").is_none());
    }
}
